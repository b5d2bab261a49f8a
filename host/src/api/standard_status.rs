//! A request over the size limit: tonic's decoder answers `OUT_OF_RANGE`,
//! the gRPC specification says `RESOURCE_EXHAUSTED`. This layer rewrites that
//! one status so clients see the standard code.
//!
//! (tonic's own `grpc-timeout` layer, which answers `CANCELLED`, sits
//! outside every user layer; the registry answers `DEADLINE_EXCEEDED` a
//! little before it instead, counting from the [`RequestStart`] this layer
//! records.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tower::{Layer, Service};

/// When the request reached the service stack: the client's `grpc-timeout`
/// counts from here, not from when a handler gets to run.
#[derive(Debug, Clone, Copy)]
pub struct RequestStart(pub std::time::Instant);

/// Rewrites tonic's non-standard oversize status (see the module docs) and
/// stamps every request with its [`RequestStart`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StandardStatusLayer;

impl<S> Layer<S> for StandardStatusLayer {
    type Service = StandardStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StandardStatus { inner }
    }
}

/// The service [`StandardStatusLayer`] makes.
#[derive(Debug, Clone)]
pub struct StandardStatus<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for StandardStatus<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        request
            .extensions_mut()
            .insert(RequestStart(std::time::Instant::now()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            fix(response.headers_mut());
            Ok(response)
        })
    }
}

fn fix(headers: &mut http::HeaderMap) {
    let code = headers.get("grpc-status").map(|v| v.as_bytes().to_vec());
    let message = headers
        .get("grpc-message")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).replace("%20", " "))
        .unwrap_or_default();
    let standard = match code.as_deref() {
        Some(b"11") if message.contains("message length too large") => "8",
        _ => return,
    };
    headers.insert("grpc-status", HeaderValue::from_static(standard));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: &'static str, message: &'static str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static(code));
        h.insert("grpc-message", HeaderValue::from_static(message));
        fix(&mut h);
        h
    }

    #[test]
    fn rewrites_only_the_oversize_status() {
        let code = |h: http::HeaderMap| h["grpc-status"].to_str().unwrap().to_string();
        assert_eq!(
            code(status(
                "11",
                "Error,%20decoded%20message%20length%20too%20large"
            )),
            "8"
        );
        assert_eq!(code(status("11", "resume past the end")), "11");
        assert_eq!(code(status("1", "client went away")), "1");
    }
}
