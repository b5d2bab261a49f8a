//! The read-only pages: backends, tenants, the audit log and the charts.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::guard::{St, Viewer, to_login};
use super::views::{AuditRow, BackendRow, TenantRow, mib, percent};
use crate::api::backend_version;
use crate::proto::admin::v1 as admin;

/// Backends and their loaded versions.
pub async fn backends(State(c): St, Viewer { admin, registry }: Viewer) -> Response {
    let rows: Vec<BackendRow> = registry
        .backends_for(&admin.caller)
        .into_iter()
        .map(|(v, state)| BackendRow::new(&backend_version(&v, state)))
        .collect();
    c.page(
        &admin,
        "backends.html",
        "backends",
        json!({ "backends": rows }),
    )
}

/// Tenants' sessions and memory against their quotas, and the gateway's
/// memory budget.
pub async fn tenants(State(c): St, Viewer { admin, registry }: Viewer) -> Response {
    let keys = c
        .keys
        .list(admin::ListKeysRequest::default())
        .await
        .map(|r| r.keys)
        .unwrap_or_default();
    let memory = registry.memory();
    let rows: Vec<TenantRow> = c
        .auth
        .tenants()
        .iter()
        .map(|t| {
            let reserved = memory.tenant(t.name(), t.max_memory()).reserved();
            let keys = keys.iter().filter(|k| k.tenant == t.name()).count();
            TenantRow::new(t, keys, reserved)
        })
        .collect();
    let gateway = json!({
        "sessions": registry.open_count(),
        "memory": mib(memory.reserved()),
        "budget": mib(memory.limit()),
        "percent": percent(memory.reserved(), memory.limit()),
    });
    c.page(
        &admin,
        "tenants.html",
        "tenants",
        json!({ "tenants": rows, "gateway": gateway }),
    )
}

/// The audit log's paging.
#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    before: i64,
}

/// The audit log, newest first, 100 a page.
pub async fn audit(State(c): St, headers: HeaderMap, Query(q): Query<AuditQuery>) -> Response {
    let Some(admin) = c.admin(&headers) else {
        return to_login();
    };
    let request = admin::ListAuditEventsRequest {
        limit: 100,
        before_id: q.before,
    };
    match c.keys.audit(request).await {
        Ok(r) => {
            let older = if r.events.len() == 100 {
                r.events.last().map(|e| e.id)
            } else {
                None
            };
            let rows: Vec<AuditRow> = r.events.iter().map(AuditRow::new).collect();
            c.page(
                &admin,
                "audit.html",
                "audit",
                json!({ "events": rows, "older": older }),
            )
        }
        Err(s) => c.page(
            &admin,
            "audit.html",
            "audit",
            json!({ "events": [], "error": s.message() }),
        ),
    }
}

/// The last hour per backend and tenant, as inline SVG charts.
pub async fn charts(State(c): St, headers: HeaderMap) -> Response {
    let Some(admin) = c.admin(&headers) else {
        return to_login();
    };
    let charts = c.charts.get().map(|ch| ch.render()).unwrap_or_default();
    c.page(
        &admin,
        "charts.html",
        "charts",
        json!({ "charts": charts, "every": super::charts::EVERY.as_secs() }),
    )
}
