//! The web console at `/console` on the HTTP port: sign in with an admin
//! key, then see live sessions (and close them), backends and their
//! versions, tenants' use of their quotas, keys (create, revoke), the
//! audit log and the last hour in charts. Server-rendered HTML (minijinja templates embedded in the
//! binary) and one small vendored script that refreshes the sessions table.
//!
//! The console reads and acts only through what the gRPC API uses: the
//! registry's caller-checked functions with the signed-in admin's
//! [`Caller`], and [`KeyAdmin`] for keys and the audit log. See
//! docs/console.md for the security model.

mod charts;
mod guard;
mod keys;
mod login;
mod pages;
mod render;
mod sessions;
mod signin;
mod views;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::routing::{get, post};

use crate::api::{Authenticator, FailureThrottle, KeyAdmin, LiveCell};

use self::signin::SignIns;

/// Whether to serve the console: `server.console` is on, the HTTP port is
/// on, and it is loopback or serves TLS (or `server.allow_plaintext` says
/// a TLS proxy is in front). A key typed into a page must not cross a
/// network in plaintext; a public plaintext port keeps its metrics and
/// health but no console, with a warning.
pub fn enabled(config: &crate::config::Config) -> bool {
    let server = &config.server;
    let Some(addr) = server.metrics_listen else {
        return false;
    };
    if !server.console {
        return false;
    }
    if addr.ip().is_loopback() || server.http_tls.is_some() || server.allow_plaintext {
        return true;
    }
    tracing::warn!(
        %addr,
        "server.console: the HTTP port is not loopback and has no TLS ([server.http_tls]); \
         the console is off there (metrics and health are served as before)"
    );
    false
}

/// The console's shared state.
pub struct Console {
    auth: Authenticator,
    keys: KeyAdmin,
    /// The registry comes with the gateway's live parts.
    live: LiveCell,
    sign_ins: SignIns,
    /// Failed sign-ins per address, shared with the gRPC API's failed
    /// authentications; `None` when `server.max_auth_failures_per_sec` is
    /// off.
    throttle: Option<Arc<FailureThrottle>>,
    /// Whether the HTTP port serves TLS: cookies are then `Secure`.
    tls: bool,
    templates: render::Templates,
    /// The last hour's figures for `/console/charts`.
    charts: OnceLock<Arc<charts::Charts>>,
}

impl Console {
    /// A console over `auth`'s tenants and key store, its failed sign-ins
    /// counted by `throttle`; pages that need the registry answer 503 until
    /// `live` has the gateway's live parts.
    pub fn new(
        auth: Authenticator,
        tls: bool,
        throttle: Option<Arc<FailureThrottle>>,
        live: LiveCell,
    ) -> Arc<Self> {
        Arc::new(Self {
            keys: KeyAdmin::new(auth.clone()),
            auth,
            live,
            sign_ins: SignIns::default(),
            throttle,
            tls,
            templates: render::Templates::new(),
            charts: OnceLock::new(),
        })
    }

    /// Starts sampling `metrics` for the charts; the sampler ends with the
    /// console.
    pub fn start_charts(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.charts.set(charts::Charts::start(metrics));
    }

    /// The console's routes, all under `/console`.
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/console", get(login::home))
            .route("/console/", get(login::home))
            .route("/console/login", get(login::login_form).post(login::login))
            .route("/console/logout", post(login::logout))
            .route("/console/sessions", get(sessions::sessions))
            .route("/console/sessions/rows", get(sessions::session_rows))
            .route("/console/sessions/{id}", get(sessions::session))
            .route(
                "/console/sessions/{id}/close",
                post(sessions::close_session),
            )
            .route("/console/backends", get(pages::backends))
            .route("/console/tenants", get(pages::tenants))
            .route("/console/keys", get(keys::keys).post(keys::create_key))
            .route("/console/keys/{id}/revoke", post(keys::revoke_key))
            .route("/console/audit", get(pages::audit))
            .route("/console/charts", get(pages::charts))
            .route("/console/static/console.css", get(render::css))
            .route("/console/static/console.js", get(render::script))
            .with_state(Arc::clone(self))
    }
}
