//! The sessions pages: the live list (and the rows the refresh script
//! fetches), one session, and closing one.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::guard::{CsrfForm, Fetcher, Posted, St, Viewer};
use super::views::SessionRow;
use crate::api::{Via, session_info};
use crate::keystore::AuditEntry;
use crate::registry::{Caller, Registry};

/// The sessions list's filters.
#[derive(Deserialize, Default)]
pub struct Filters {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    backend: String,
    #[serde(default)]
    state: String,
}

/// The sessions the filters select, newest first, and every value each
/// filter could take.
fn filtered(registry: &Registry, caller: &Caller, f: &Filters) -> (Vec<SessionRow>, Value) {
    let all: Vec<SessionRow> = registry
        .list(caller)
        .iter()
        .rev()
        .map(|s| SessionRow::new(&session_info(s, |t| registry.wall(t))))
        .collect();
    let options = |pick: fn(&SessionRow) -> &str| -> Vec<String> {
        all.iter()
            .map(|r| pick(r).to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let choices = json!({
        "tenants": options(|r| &r.tenant),
        "backends": options(|r| &r.backend),
        "states": options(|r| &r.state),
    });
    let keep = |want: &str, have: &str| want.is_empty() || want == have;
    let rows = all
        .into_iter()
        .filter(|r| {
            keep(&f.tenant, &r.tenant) && keep(&f.backend, &r.backend) && keep(&f.state, &r.state)
        })
        .collect();
    (rows, choices)
}

/// Live sessions, filtered; the table refreshes itself.
pub async fn sessions(
    State(c): St,
    Viewer { admin, registry }: Viewer,
    Query(f): Query<Filters>,
) -> Response {
    let (rows, choices) = filtered(&registry, &admin.caller, &f);
    let live = rows.iter().filter(|r| r.live).count();
    c.page(
        &admin,
        "sessions.html",
        "sessions",
        json!({
            "sessions": rows,
            "live": live,
            "choices": choices,
            "filter": { "tenant": f.tenant, "backend": f.backend, "state": f.state },
        }),
    )
}

/// The sessions table's rows alone, for the refresh script; 401 once the
/// sign-in has ended, so the script can go to the sign-in page.
pub async fn session_rows(
    State(c): St,
    Fetcher(Viewer { admin, registry }): Fetcher,
    Query(f): Query<Filters>,
) -> Response {
    let (rows, _) = filtered(&registry, &admin.caller, &f);
    let live = rows.iter().filter(|r| r.live).count();
    let mut context = json!({ "sessions": rows, "live": live });
    context["csrf"] = admin.sign_in.csrf.clone().into();
    c.templates
        .page(StatusCode::OK, "session_rows.html", context)
}

/// One session.
pub async fn session(
    State(c): St,
    Viewer { admin, registry }: Viewer,
    Path(id): Path<String>,
) -> Response {
    match registry.lookup(&admin.caller, &id) {
        Ok(s) => {
            let row = SessionRow::new(&session_info(&s, |t| registry.wall(t)));
            c.page(&admin, "session.html", "sessions", json!({ "s": row }))
        }
        Err(e) => c.message(StatusCode::NOT_FOUND, "No such session", &e.to_string()),
    }
}

/// Closes a session, as `CloseSession` would for an admin.
pub async fn close_session(
    State(c): St,
    Path(id): Path<String>,
    Posted { admin, .. }: Posted<CsrfForm>,
) -> Response {
    // Not a `Viewer`: a post is refused `401` unread (a `Viewer` would
    // redirect, and refuse a loading gateway before the sign-in), so the
    // "still loading" check comes after the form's.
    let registry = match c.registry() {
        Ok(r) => r,
        Err(why) => return c.refuse(why),
    };
    match registry.close(&admin.caller, &id).await {
        Ok(result) => {
            c.keys
                .record(
                    &admin.caller,
                    Via::Console,
                    AuditEntry {
                        action: "session.close",
                        target: id,
                        detail: if result.already_closed {
                            "already closed".into()
                        } else {
                            String::new()
                        },
                    },
                )
                .await;
            Redirect::to("/console/sessions").into_response()
        }
        Err(e) => c.message(StatusCode::NOT_FOUND, "Not closed", &e.to_string()),
    }
}
