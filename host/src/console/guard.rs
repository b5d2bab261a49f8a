//! Who is asking: the signed-in admin of a request (its sign-in live and
//! its key still an admin key), and the CSRF check of every form post.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Console;
use super::signin::{SESSION_COOKIE, SignIn, cookie, same_token};
use crate::registry::{Caller, Registry};

/// The console's state, as handlers take it.
pub(super) type St = State<Arc<Console>>;

/// Why a request was refused before it did anything.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub(super) enum Refusal {
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
pub(super) struct Admin {
    /// The admin's caller, as the gRPC layer resolves it.
    pub(super) caller: Caller,
    /// The sign-in.
    pub(super) sign_in: SignIn,
}

impl Console {
    /// The admin caller of `key`, checked as the gRPC layer checks a call
    /// (`Console` needs the admin scope like any RPC outside the Gateway).
    pub(super) fn check_key(&self, key: &str) -> Option<Caller> {
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
    pub(super) fn admin(&self, headers: &HeaderMap) -> Option<Admin> {
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
    pub(super) fn form_admin(&self, headers: &HeaderMap, csrf: &str) -> Result<Admin, Refusal> {
        let admin = self.admin(headers).ok_or(Refusal::SignedOut)?;
        if !same_token(csrf, &admin.sign_in.csrf) {
            return Err(Refusal::BadCsrf);
        }
        Ok(admin)
    }

    pub(super) fn registry(&self) -> Result<&Arc<Registry>, Refusal> {
        self.registry.get().ok_or(Refusal::Starting)
    }

    /// The page saying why a request was refused.
    pub(super) fn refuse(&self, why: Refusal) -> Response {
        let (status, title) = match why {
            Refusal::SignedOut => (StatusCode::UNAUTHORIZED, "Signed out"),
            Refusal::BadCsrf => (StatusCode::FORBIDDEN, "Form refused"),
            Refusal::Starting => (StatusCode::SERVICE_UNAVAILABLE, "Starting"),
        };
        self.message(status, title, &why.to_string())
    }

    pub(super) fn message(&self, status: StatusCode, title: &str, text: &str) -> Response {
        self.templates.page(
            status,
            "message.html",
            json!({ "title": title, "text": text, "signed_in": false }),
        )
    }

    /// A page for `admin`, with what the layout needs.
    pub(super) fn page(
        &self,
        admin: &Admin,
        name: &str,
        nav: &str,
        mut context: Value,
    ) -> Response {
        context["nav"] = nav.into();
        context["csrf"] = admin.sign_in.csrf.clone().into();
        context["actor"] = admin.caller.key.as_deref().unwrap_or("-").into();
        context["signed_in"] = true.into();
        self.templates.page(StatusCode::OK, name, context)
    }
}

/// The redirect to the sign-in page.
pub(super) fn to_login() -> Response {
    Redirect::to("/console/login").into_response()
}

/// A form with nothing but its CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    pub(super) csrf: String,
}
