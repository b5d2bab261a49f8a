//! Who is asking: the signed-in admin of a request (its sign-in live and
//! its key still an admin key), the CSRF check of every form post, and
//! the client's address.
//!
//! A form post is checked in that order by [`Posted`]: no live sign-in is
//! refused `401` before the body is read; a body that is not the form
//! (missing or malformed fields, `csrf` included) or a forged token `403`.
//! Every refusal is a console page, with the console's headers.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::Console;
use super::signin::{SESSION_COOKIE, SignIn, cookie, same_token};
use crate::api::AuthError;
use crate::registry::{Caller, Registry};
use crate::transport::Peer;

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
    /// A post whose body is not the form (a field missing, `csrf`
    /// included, or not form-encoded).
    #[error("The form was missing or malformed; nothing was changed.")]
    BadForm,
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
    pub(super) fn check_key(&self, key: &str) -> Result<Caller, AuthError> {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
            .map_err(|_| AuthError::Malformed)?;
        headers.insert(header::AUTHORIZATION, value);
        let caller = self.auth.authorize(&headers, None, "Console")?;
        if !caller.admin {
            return Err(AuthError::MissingScope {
                scope: crate::keys::Scope::Admin,
                method: "Console".into(),
                tenant: caller.tenant_name().to_string(),
                key: caller.key.as_deref().unwrap_or("-").to_string(),
            });
        }
        Ok(caller)
    }

    /// The signed-in admin of this request, if the sign-in is live and its
    /// key still an admin key; a dead sign-in is ended.
    pub(super) fn admin(&self, headers: &HeaderMap) -> Option<Admin> {
        let token = cookie(headers, SESSION_COOKIE)?;
        let sign_in = self.sign_ins.get(token)?;
        match self.check_key(&sign_in.key) {
            Ok(caller) => Some(Admin { caller, sign_in }),
            Err(_) => {
                self.sign_ins.end(token);
                None
            }
        }
    }

    pub(super) fn registry(&self) -> Result<&Arc<Registry>, Refusal> {
        self.live
            .get()
            .map(|l| &l.registry)
            .ok_or(Refusal::Starting)
    }

    /// The page saying why a request was refused.
    pub(super) fn refuse(&self, why: Refusal) -> Response {
        let (status, title) = match why {
            Refusal::SignedOut => (StatusCode::UNAUTHORIZED, "Signed out"),
            Refusal::BadCsrf | Refusal::BadForm => (StatusCode::FORBIDDEN, "Form refused"),
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

/// A form that carries the sign-in's CSRF token.
pub(super) trait CsrfField {
    /// The token the form carries.
    fn csrf(&self) -> &str;
}

/// A form with nothing but its CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

impl CsrfField for CsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// A form post of a signed-in admin, its CSRF token checked; see the
/// module docs for the order of the checks. Its rejection is the
/// refusal's page.
pub(super) struct Posted<T> {
    /// Who posted it.
    pub(super) admin: Admin,
    /// The form.
    pub(super) form: T,
}

impl<T: DeserializeOwned + CsrfField + Send> FromRequest<Arc<Console>> for Posted<T> {
    type Rejection = Response;

    async fn from_request(request: Request, c: &Arc<Console>) -> Result<Self, Response> {
        // The sign-in first: an anonymous post is refused unread.
        let Some(admin) = c.admin(request.headers()) else {
            return Err(c.refuse(Refusal::SignedOut));
        };
        let Ok(Form(form)) = Form::<T>::from_request(request, c).await else {
            return Err(c.refuse(Refusal::BadForm));
        };
        if !same_token(form.csrf(), &admin.sign_in.csrf) {
            return Err(c.refuse(Refusal::BadCsrf));
        }
        Ok(Self { admin, form })
    }
}

/// A page request from a signed-in admin on a gateway whose backends are
/// loaded: the page handlers' one prologue. Without a live sign-in the
/// browser goes to the sign-in page; while the backends load the page
/// says so.
pub(super) struct Viewer {
    /// The signed-in admin.
    pub(super) admin: Admin,
    /// The gateway's registry.
    pub(super) registry: Arc<Registry>,
}

impl Viewer {
    /// The viewer of `parts`, or why not: [`Refusal::SignedOut`] without a
    /// live sign-in, [`Refusal::Starting`] while the backends load.
    fn of(parts: &Parts, c: &Console) -> Result<Self, Refusal> {
        let admin = c.admin(&parts.headers).ok_or(Refusal::SignedOut)?;
        let registry = Arc::clone(c.registry()?);
        Ok(Self { admin, registry })
    }
}

impl FromRequestParts<Arc<Console>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Console>) -> Result<Self, Response> {
        Self::of(parts, c).map_err(|why| match why {
            Refusal::SignedOut => to_login(),
            why => c.refuse(why),
        })
    }
}

/// A [`Viewer`] for a page's script (the sessions table's refresh): a
/// redirect would hand the script the sign-in page as rows, so without a
/// live sign-in it gets `401` and goes to the sign-in page itself.
pub(super) struct Fetcher(pub(super) Viewer);

impl FromRequestParts<Arc<Console>> for Fetcher {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Console>) -> Result<Self, Response> {
        Viewer::of(parts, c).map(Self).map_err(|why| c.refuse(why))
    }
}

/// The client's address (its IPv4 address, or IPv6), when the server
/// handed the connection's peer to the request.
pub(super) struct ClientIp(pub(super) Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .and_then(|ConnectInfo(peer)| peer.remote)
            .map(|a| a.ip());
        Ok(Self(ip))
    }
}
