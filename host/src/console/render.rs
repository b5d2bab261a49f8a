//! Templates, the static files and the headers every console response
//! carries.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::Environment;
use serde::Serialize;

/// Every page: no caching, no framing, scripts and styles only from the
/// console itself.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("sessions.html", include_str!("templates/sessions.html")),
    (
        "session_rows.html",
        include_str!("templates/session_rows.html"),
    ),
    ("session.html", include_str!("templates/session.html")),
    ("backends.html", include_str!("templates/backends.html")),
    ("tenants.html", include_str!("templates/tenants.html")),
    ("keys.html", include_str!("templates/keys.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("charts.html", include_str!("templates/charts.html")),
    ("message.html", include_str!("templates/message.html")),
];

/// The parsed templates. Autoescaping is on for every `.html` template.
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Parses the embedded templates; a broken one is a bug caught by the
    /// tests, and renders as an error page rather than panicking.
    pub fn new() -> Self {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            if let Err(e) = env.add_template(name, source) {
                tracing::error!("console template {name}: {e}");
            }
        }
        Self { env }
    }

    /// Renders `name` with `context` as a page with status `status`.
    pub fn page<S: Serialize>(&self, status: StatusCode, name: &str, context: S) -> Response {
        match self.env.get_template(name).and_then(|t| t.render(context)) {
            Ok(html) => secured(status, "text/html; charset=utf-8", html),
            Err(e) => {
                tracing::error!("console template {name}: {e:#}");
                secured(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    "the console could not render this page; see the gateway's log\n".into(),
                )
            }
        }
    }
}

/// A response with the console's security headers.
pub fn secured(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `/console/static/console.css`
pub async fn css() -> Response {
    let mut r = secured(
        StatusCode::OK,
        "text/css; charset=utf-8",
        include_str!("static/console.css").into(),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    r
}

/// `/console/static/console.js`
pub async fn script() -> Response {
    let mut r = secured(
        StatusCode::OK,
        "text/javascript; charset=utf-8",
        include_str!("static/console.js").into(),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }
}
