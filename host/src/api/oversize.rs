//! gRPC says an oversized message is `RESOURCE_EXHAUSTED`; tonic's decoder
//! answers `OUT_OF_RANGE`. This layer rewrites that one status so clients see
//! the standard code.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tower::{Layer, Service};

/// Rewrites tonic's "message length too large" `OUT_OF_RANGE` to
/// `RESOURCE_EXHAUSTED`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OversizeLayer;

impl<S> Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Oversize { inner }
    }
}

/// The service [`OversizeLayer`] makes.
#[derive(Debug, Clone)]
pub struct Oversize<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for Oversize<S>
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            let out_of_range = headers
                .get("grpc-status")
                .is_some_and(|v| v.as_bytes() == b"11");
            let too_large = headers.get("grpc-message").is_some_and(|v| {
                let m = String::from_utf8_lossy(v.as_bytes());
                m.contains("message length too large")
                    || m.contains("message%20length%20too%20large")
            });
            if out_of_range && too_large {
                headers.insert("grpc-status", HeaderValue::from_static("8"));
            }
            Ok(response)
        })
    }
}
