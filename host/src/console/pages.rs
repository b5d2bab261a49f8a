//! The console's pages and form actions. Every page but sign-in needs a
//! live sign-in whose key is still an admin key; every form carries the
//! sign-in's CSRF token (sign-in itself a double-submitted one).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Console;
use super::signin::{
    LOGIN_CSRF_COOKIE, SESSION_COOKIE, SIGN_IN_LIFETIME, SignIn, cookie, random_token, same_token,
    set_cookie,
};
use super::views::{AuditRow, BackendRow, KeyRow, SessionRow, TenantRow};
use crate::api::{Via, backend_version, session_info};
use crate::keystore::AuditEntry;
use crate::proto::admin::v1 as admin;
use crate::registry::{Caller, Registry};

type St = State<Arc<Console>>;

/// Why a request was refused before it did anything.
#[derive(Debug, Clone, Copy, thiserror::Error)]
enum Refusal {
    /// No live sign-in, or its key is no longer an admin key.
    #[error("Your console sign-in has ended (or its key was revoked). Sign in again.")]
    SignedOut,
    /// A form whose CSRF token is not the sign-in's.
    #[error("The form's CSRF token does not match this sign-in; nothing was changed.")]
    BadCsrf,
    /// The backends are still loading.
    #[error("The gateway is still loading its backends.")]
    Starting,
}

/// A request from a signed-in admin.
struct Admin {
    caller: Caller,
    sign_in: SignIn,
}

impl Console {
    /// The admin caller of `key`, checked as the gRPC layer checks a call
    /// (`Console` needs the admin scope like any RPC outside the Gateway).
    fn check_key(&self, key: &str) -> Option<Caller> {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {}", key.trim())).ok()?;
        headers.insert(header::AUTHORIZATION, value);
        self.auth
            .authorize(&headers, None, "Console")
            .ok()
            .filter(|c| c.admin)
    }

    /// The signed-in admin of this request, if the sign-in is live and its
    /// key still an admin key; a dead sign-in is ended.
    fn admin(&self, headers: &HeaderMap) -> Option<Admin> {
        let token = cookie(headers, SESSION_COOKIE)?;
        let sign_in = self.sign_ins.get(token)?;
        match self.check_key(&sign_in.key) {
            Some(caller) => Some(Admin { caller, sign_in }),
            None => {
                self.sign_ins.end(token);
                None
            }
        }
    }

    /// The admin of a form post whose CSRF token matches.
    fn form_admin(&self, headers: &HeaderMap, csrf: &str) -> Result<Admin, Refusal> {
        let admin = self.admin(headers).ok_or(Refusal::SignedOut)?;
        if !same_token(csrf, &admin.sign_in.csrf) {
            return Err(Refusal::BadCsrf);
        }
        Ok(admin)
    }

    fn registry(&self) -> Result<&Arc<Registry>, Refusal> {
        self.registry.get().ok_or(Refusal::Starting)
    }

    /// The page saying why a request was refused.
    fn refuse(&self, why: Refusal) -> Response {
        let (status, title) = match why {
            Refusal::SignedOut => (StatusCode::UNAUTHORIZED, "Signed out"),
            Refusal::BadCsrf => (StatusCode::FORBIDDEN, "Form refused"),
            Refusal::Starting => (StatusCode::SERVICE_UNAVAILABLE, "Starting"),
        };
        self.message(status, title, &why.to_string())
    }

    fn message(&self, status: StatusCode, title: &str, text: &str) -> Response {
        self.templates.page(
            status,
            "message.html",
            json!({ "title": title, "text": text, "signed_in": false }),
        )
    }

    /// A page for `admin`, with what the layout needs.
    fn page(&self, admin: &Admin, name: &str, nav: &str, mut context: Value) -> Response {
        context["nav"] = nav.into();
        context["csrf"] = admin.sign_in.csrf.clone().into();
        context["actor"] = admin.caller.key.as_deref().unwrap_or("-").into();
        context["signed_in"] = true.into();
        self.templates.page(StatusCode::OK, name, context)
    }
}

fn to_login() -> Response {
    Redirect::to("/console/login").into_response()
}

/// `/console`: the sessions page.
pub async fn home() -> Redirect {
    Redirect::to("/console/sessions")
}

/// The sign-in form, with a fresh double-submit CSRF cookie.
pub async fn login_form(State(c): St, headers: HeaderMap) -> Response {
    if c.admin(&headers).is_some() {
        return Redirect::to("/console/sessions").into_response();
    }
    login_page(&c, StatusCode::OK, None)
}

fn login_page(c: &Console, status: StatusCode, error: Option<&str>) -> Response {
    let Some(csrf) = random_token() else {
        return c.message(StatusCode::INTERNAL_SERVER_ERROR, "Error", "No randomness.");
    };
    let mut r = c.templates.page(
        status,
        "login.html",
        json!({ "csrf": csrf, "error": error, "signed_in": false }),
    );
    let cookie = set_cookie(LOGIN_CSRF_COOKIE, &csrf, Duration::from_secs(3600), c.tls);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The sign-in form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    csrf: String,
    key: String,
}

/// Signs in with an admin key.
pub async fn login(State(c): St, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_token(&form.csrf, expected) {
        return login_page(
            &c,
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired or was not sent by this console. Try again."),
        );
    }
    let Some(caller) = c.check_key(&form.key) else {
        return login_page(
            &c,
            StatusCode::UNAUTHORIZED,
            Some("That is not an admin key of this gateway (or it was revoked or expired)."),
        );
    };
    let Some(token) = c.sign_ins.start(form.key.trim().to_string()) else {
        return c.message(StatusCode::INTERNAL_SERVER_ERROR, "Error", "No randomness.");
    };
    c.keys
        .record(
            &caller,
            Via::Console,
            AuditEntry {
                action: "console.sign_in",
                target: String::new(),
                detail: String::new(),
            },
        )
        .await;
    let mut r = Redirect::to("/console/sessions").into_response();
    for value in [
        set_cookie(SESSION_COOKIE, &token, SIGN_IN_LIFETIME, c.tls),
        set_cookie(LOGIN_CSRF_COOKIE, "", Duration::ZERO, c.tls),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// A form with nothing but its CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// Signs out.
pub async fn logout(State(c): St, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    let admin = match c.form_admin(&headers, &form.csrf) {
        Ok(a) => a,
        Err(why) => return c.refuse(why),
    };
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        c.sign_ins.end(token);
    }
    c.keys
        .record(
            &admin.caller,
            Via::Console,
            AuditEntry {
                action: "console.sign_out",
                target: String::new(),
                detail: String::new(),
            },
        )
        .await;
    let mut r = Redirect::to("/console/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(SESSION_COOKIE, "", Duration::ZERO, c.tls)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

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
pub async fn sessions(State(c): St, headers: HeaderMap, Query(f): Query<Filters>) -> Response {
    let Some(admin) = c.admin(&headers) else {
        return to_login();
    };
    let registry = match c.registry() {
        Ok(r) => r,
        Err(why) => return c.refuse(why),
    };
    let (rows, choices) = filtered(registry, &admin.caller, &f);
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
pub async fn session_rows(State(c): St, headers: HeaderMap, Query(f): Query<Filters>) -> Response {
    let Some(admin) = c.admin(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let registry = match c.registry() {
        Ok(r) => r,
        Err(why) => return c.refuse(why),
    };
    let (rows, _) = filtered(registry, &admin.caller, &f);
    let live = rows.iter().filter(|r| r.live).count();
    let mut context = json!({ "sessions": rows, "live": live });
    context["csrf"] = admin.sign_in.csrf.clone().into();
    c.templates
        .page(StatusCode::OK, "session_rows.html", context)
}

/// One session.
pub async fn session(State(c): St, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(admin) = c.admin(&headers) else {
        return to_login();
    };
    let registry = match c.registry() {
        Ok(r) => r,
        Err(why) => return c.refuse(why),
    };
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
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let admin = match c.form_admin(&headers, &form.csrf) {
        Ok(a) => a,
        Err(why) => return c.refuse(why),
    };
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

/// Backends and their loaded versions.
pub async fn backends(State(c): St, headers: HeaderMap) -> Response {
    let Some(admin) = c.admin(&headers) else {
        return to_login();
    };
    let registry = match c.registry() {
        Ok(r) => r,
        Err(why) => return c.refuse(why),
    };
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

/// Tenants' sessions against their quotas.
pub async fn tenants(State(c): St, headers: HeaderMap) -> Response {
    let Some(admin) = c.admin(&headers) else {
        return to_login();
    };
    let keys = c
        .keys
        .list(admin::ListKeysRequest::default())
        .await
        .map(|r| r.keys)
        .unwrap_or_default();
    let rows: Vec<TenantRow> = c
        .auth
        .tenants()
        .iter()
        .map(|t| TenantRow::new(t, keys.iter().filter(|k| k.tenant == t.name()).count()))
        .collect();
    c.page(
        &admin,
        "tenants.html",
        "tenants",
        json!({ "tenants": rows }),
    )
}

/// Keys, with the create form; `created` is a key just made, shown once.
async fn keys_page(
    c: &Console,
    admin: &Admin,
    created: Option<Value>,
    error: Option<String>,
) -> Response {
    let (rows, list_error) = match c
        .keys
        .list(admin::ListKeysRequest {
            tenant: String::new(),
            include_inactive: true,
        })
        .await
    {
        Ok(r) => (r.keys.iter().map(KeyRow::new).collect::<Vec<_>>(), None),
        Err(s) => (Vec::new(), Some(s.message().to_string())),
    };
    let tenants: Vec<String> = c
        .auth
        .tenants()
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    c.page(
        admin,
        "keys.html",
        "keys",
        json!({
            "keys": rows,
            "tenants": tenants,
            "created": created,
            "error": error.or(list_error),
            "store": c.auth.store().map(|s| s.path().display().to_string()),
        }),
    )
}

/// The keys page.
pub async fn keys(State(c): St, headers: HeaderMap) -> Response {
    let Some(admin) = c.admin(&headers) else {
        return to_login();
    };
    keys_page(&c, &admin, None, None).await
}

/// The create-key form: one checkbox per scope.
#[derive(Deserialize)]
pub struct CreateKeyForm {
    csrf: String,
    tenant: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires: String,
    #[serde(default, rename = "sessions:open")]
    sessions_open: Option<String>,
    #[serde(default, rename = "sessions:use")]
    sessions_use: Option<String>,
    #[serde(default, rename = "sessions:read")]
    sessions_read: Option<String>,
    #[serde(default, rename = "backends:read")]
    backends_read: Option<String>,
    #[serde(default)]
    admin: Option<String>,
}

/// Creates a key and shows it, once.
pub async fn create_key(
    State(c): St,
    headers: HeaderMap,
    Form(form): Form<CreateKeyForm>,
) -> Response {
    let admin = match c.form_admin(&headers, &form.csrf) {
        Ok(a) => a,
        Err(why) => return c.refuse(why),
    };
    let scopes: Vec<String> = [
        ("sessions:open", &form.sessions_open),
        ("sessions:use", &form.sessions_use),
        ("sessions:read", &form.sessions_read),
        ("backends:read", &form.backends_read),
        ("admin", &form.admin),
    ]
    .into_iter()
    .filter(|(_, on)| on.is_some())
    .map(|(s, _)| s.to_string())
    .collect();
    let expires_in = match form.expires.trim() {
        "" => None,
        text => match crate::cli::parse_expiry(text) {
            Ok(d) => Some(crate::api_duration(d)),
            Err(e) => return keys_page(&c, &admin, None, Some(format!("expires: {e}"))).await,
        },
    };
    let request = admin::CreateKeyRequest {
        tenant: form.tenant,
        scopes,
        name: form.name,
        expires_in,
    };
    match c.keys.create(&admin.caller, Via::Console, request).await {
        Ok(r) => {
            let id = r.info.map(|i| i.id).unwrap_or_default();
            keys_page(&c, &admin, Some(json!({ "id": id, "key": r.key })), None).await
        }
        Err(s) => keys_page(&c, &admin, None, Some(s.message().to_string())).await,
    }
}

/// Revokes a key.
pub async fn revoke_key(
    State(c): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let admin = match c.form_admin(&headers, &form.csrf) {
        Ok(a) => a,
        Err(why) => return c.refuse(why),
    };
    match c.keys.revoke(&admin.caller, Via::Console, &id).await {
        Ok(_) => Redirect::to("/console/keys").into_response(),
        Err(s) => keys_page(&c, &admin, None, Some(s.message().to_string())).await,
    }
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
