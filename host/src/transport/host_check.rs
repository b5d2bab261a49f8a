//! The HTTP port answers only requests addressed to it: a `Host` (or
//! HTTP/2 `:authority`) that is an IP address, `localhost`, or a name in
//! `server.http_hosts`. A page on another site whose name was made to
//! resolve to this machine (DNS rebinding) sends its own name as the host,
//! and is refused `421 Misdirected Request`, so it cannot read `/metrics`
//! or reach the console. Requests without a host (HTTP/1.0 health
//! checkers) are not from a browser and pass.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tower::{Layer, Service};

/// The names the HTTP port answers to, besides IP addresses and
/// `localhost`; see the module docs.
#[derive(Debug, Clone)]
pub struct HostCheckLayer {
    names: Arc<[String]>,
    refused: Counter,
}

impl HostCheckLayer {
    /// Accepts `names` (lower-case; `*.example.com` for any name under
    /// it), counting refusals in `refused`.
    pub fn new(names: &[String], refused: Counter) -> Self {
        Self {
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            refused,
        }
    }

    /// Whether a request for `host` (with or without a port) is answered.
    fn allows(&self, host: &str) -> bool {
        let host = strip_port(host).to_ascii_lowercase();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() || host == "localhost" || host.ends_with(".localhost") {
            return true;
        }
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => *n == host,
        })
    }
}

/// `host` without its `:port` (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|h| h.find(']')) {
        return &host[..end + 2];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

impl<S> Layer<S> for HostCheckLayer {
    type Service = HostCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HostCheck {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`HostCheckLayer`] makes.
#[derive(Debug, Clone)]
pub struct HostCheck<S> {
    inner: S,
    layer: HostCheckLayer,
}

impl<S, B> Service<http::Request<B>> for HostCheck<S>
where
    S: Service<http::Request<B>, Response = axum::response::Response>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = axum::response::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            });
        match host {
            Some(h) if !self.layer.allows(&h) => {
                self.layer.refused.inc();
                let response = axum::response::IntoResponse::into_response((
                    http::StatusCode::MISDIRECTED_REQUEST,
                    "unknown host: this port answers IP addresses, localhost and server.http_hosts\n",
                ));
                Box::pin(std::future::ready(Ok(response)))
            }
            _ => Box::pin(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_localhost_and_listed_names_are_answered() {
        let layer = HostCheckLayer::new(
            &["gw.example.com".into(), "*.internal.example".into()],
            Counter::default(),
        );
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9464",
            "[::1]:9464",
            "[::1]",
            "127.0.0.9:9464",
            "localhost:9464",
            "LOCALHOST",
            "gw.example.com:9464",
            "a.internal.example",
        ] {
            assert!(layer.allows(ok), "{ok}");
        }
        for refused in [
            "attacker.example:9464",
            "gw.example.com.attacker.example",
            "internal.example",
            "xinternal.example",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!layer.allows(refused), "{refused}");
        }
    }
}
