//! The keys page: listing, creating (the new key shown once) and revoking.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Console;
use super::guard::{Admin, CsrfField, CsrfForm, Posted, St, to_login};
use super::views::KeyRow;
use crate::api::Via;
use crate::proto::admin::v1 as admin;

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

impl CsrfField for CreateKeyForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// Creates a key and shows it, once.
pub async fn create_key(State(c): St, Posted { admin, form }: Posted<CreateKeyForm>) -> Response {
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
    Path(id): Path<String>,
    Posted { admin, .. }: Posted<CsrfForm>,
) -> Response {
    match c.keys.revoke(&admin.caller, Via::Console, &id).await {
        Ok(_) => Redirect::to("/console/keys").into_response(),
        Err(s) => keys_page(&c, &admin, None, Some(s.message().to_string())).await,
    }
}
