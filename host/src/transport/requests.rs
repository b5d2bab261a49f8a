//! Where a request starts and ends, as the HTTP servers see it: one layer
//! in both (tonic's and axum's) counts every request of a connection from
//! its start to the end of its response body into the connection's
//! [`Activity`], and keeps a connection admitted on the health reserve
//! (see `limit.rs`) to the health checks: anything else on it is refused.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use super::activity::{Activity, RequestGuard};
use super::peer::Peer;

/// Which server the layer sits in: what a health check is there and how a
/// refusal is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The gRPC port: `grpc.health.v1.Health` is the health check.
    Grpc,
    /// The HTTP port: `/healthz` and `/readyz`.
    Http,
}

impl Protocol {
    fn is_health(self, path: &str) -> bool {
        match self {
            Protocol::Grpc => path.starts_with("/grpc.health.v1.Health/"),
            Protocol::Http => matches!(path, "/healthz" | "/readyz"),
        }
    }

    /// The answer to anything but a health check on a reserved connection.
    fn refusal<B>(self) -> http::Response<ActivityBody<B>> {
        let mut response = http::Response::new(ActivityBody::Empty);
        if self == Protocol::Http {
            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        let headers = response.headers_mut();
        match self {
            Protocol::Grpc => {
                headers.insert(
                    "content-type",
                    http::HeaderValue::from_static("application/grpc"),
                );
                headers.insert("grpc-status", http::HeaderValue::from_static("14"));
                headers.insert(
                    "grpc-message",
                    http::HeaderValue::from_static(
                        "server.max_connections%20reached:%20this%20connection%20serves%20health%20checks%20only",
                    ),
                );
            }
            Protocol::Http => {
                headers.insert("connection", http::HeaderValue::from_static("close"));
            }
        }
        response
    }
}

/// Counts every request of a connection from its start to the end of its
/// response body; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct ActivityLayer(pub Protocol);

impl<S> Layer<S> for ActivityLayer {
    type Service = ActivityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ActivityService {
            inner,
            protocol: self.0,
        }
    }
}

/// The service [`ActivityLayer`] makes.
#[derive(Debug, Clone)]
pub struct ActivityService<S> {
    inner: S,
    protocol: Protocol,
}

/// The connection's activity, from tonic's connect info or axum's.
fn activity<B>(request: &http::Request<B>) -> Option<std::sync::Arc<Activity>> {
    let ext = request.extensions();
    ext.get::<Peer>()
        .or_else(|| ext.get::<axum::extract::ConnectInfo<Peer>>().map(|c| &c.0))
        .map(|p| std::sync::Arc::clone(&p.activity))
}

impl<S, B, R> Service<http::Request<B>> for ActivityService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<ActivityBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let activity = activity(&request);
        if let Some(a) = &activity
            && a.is_reserved()
            && !self.protocol.is_health(request.uri().path())
        {
            let refusal = self.protocol.refusal();
            return Box::pin(std::future::ready(Ok(refusal)));
        }
        let guard = activity.map(|a| a.begin());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| ActivityBody::Counted {
                inner,
                guard: guard.map(Box::new),
            }))
        })
    }
}

/// A response body that keeps its request counted until it ends.
#[derive(Debug)]
pub enum ActivityBody<B> {
    /// A served response.
    Counted {
        /// The body.
        inner: B,
        /// Dropped when the body ends.
        guard: Option<Box<RequestGuard>>,
    },
    /// A refusal: no body.
    Empty,
}

impl<B> Body for ActivityBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.get_mut() {
            ActivityBody::Counted { inner, guard } => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(None) = polled {
                    guard.take();
                }
                polled
            }
            ActivityBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ActivityBody::Counted { inner, .. } => inner.is_end_stream(),
            ActivityBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ActivityBody::Counted { inner, .. } => inner.size_hint(),
            ActivityBody::Empty => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_connections_serve_health_checks_only() {
        assert!(Protocol::Grpc.is_health("/grpc.health.v1.Health/Check"));
        assert!(!Protocol::Grpc.is_health("/gatehouse.v1.Gateway/Invoke"));
        assert!(Protocol::Http.is_health("/healthz"));
        assert!(Protocol::Http.is_health("/readyz"));
        assert!(!Protocol::Http.is_health("/metrics"));
        let r = Protocol::Grpc.refusal::<()>();
        assert_eq!(r.headers()["grpc-status"], "14");
        let r = Protocol::Http.refusal::<()>();
        assert_eq!(r.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    }
}
