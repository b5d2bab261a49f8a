//! Whether the gateway is starting, serving or draining, reported three
//! ways:
//!
//! - gRPC `grpc.health.v1.Health`, for the whole server (`""`) and for
//!   `gatehouse.v1.Gateway`: `NOT_SERVING` while the backends load,
//!   `SERVING` once they have, `NOT_SERVING` again from the first moment of
//!   a shutdown, while sessions drain;
//! - `GET /readyz` on the metrics port: 200 while serving, 503 otherwise;
//! - `GET /healthz` on the metrics port: 200 as long as the process answers
//!   (liveness).
//!
//! The gRPC port is bound before the backends load, so probes get an answer
//! at once; until the backends are loaded, Gateway calls are refused with
//! `UNAVAILABLE` by [`Gate`].

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Service;

use crate::api::{GatewayApi, LiveCell};
use crate::phase::{GatewayPhase, Phase};

/// The gateway's health, shared by the gRPC health service and the HTTP
/// endpoints.
#[derive(Clone)]
pub struct Health {
    phase: GatewayPhase,
    reporter: HealthReporter,
    service: &'static str,
}

impl Health {
    /// Health of a gateway in `phase` (starting), reporting through
    /// `reporter` for the whole server and for the service named `service`.
    pub async fn starting(
        reporter: HealthReporter,
        service: &'static str,
        phase: GatewayPhase,
    ) -> Self {
        let health = Self {
            phase,
            reporter,
            service,
        };
        health.report(ServingStatus::NotServing).await;
        health
    }

    async fn report(&self, status: ServingStatus) {
        // The reporter starts the whole server ("") as SERVING; it must
        // follow the gateway's phase like the service does.
        self.reporter.set_service_status("", status).await;
        self.reporter.set_service_status(self.service, status).await;
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// Backends are loaded: `SERVING`.
    pub async fn serving(&self) {
        // Only from Starting: never walk a shutdown back.
        if self.phase.serve() {
            self.report(ServingStatus::Serving).await;
        }
    }

    /// A drain has begun: `NOT_SERVING` from now on.
    pub async fn draining(&self) {
        self.phase.drain();
        self.report(ServingStatus::NotServing).await;
    }

    /// A shutdown has begun: `NOT_SERVING` from now on.
    pub async fn shutting_down(&self) {
        self.phase.shut_down();
        self.report(ServingStatus::NotServing).await;
    }

    /// `/healthz` and `/readyz`, to merge into the metrics HTTP router.
    pub fn routes(&self) -> axum::Router {
        use axum::http::StatusCode;
        use axum::routing::get;
        let ready = self.clone();
        axum::Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(move || {
                    let phase = ready.phase();
                    async move {
                        let code = if phase == Phase::Serving {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        };
                        // A shutdown drains its sessions too: probes
                        // have always read it as `draining`.
                        let word = match phase {
                            Phase::ShuttingDown => Phase::Draining.as_str(),
                            other => other.as_str(),
                        };
                        (code, format!("{word}\n"))
                    }
                }),
            )
    }
}

/// The Gateway service's place on the server: it answers `UNAVAILABLE`
/// until the gateway's live parts (`api::LiveCell`) hold the real service,
/// so the server can listen (and answer health checks) before the
/// backends are loaded.
#[derive(Clone)]
pub struct Gate {
    live: LiveCell,
}

impl Gate {
    /// The gate in front of `live`'s Gateway service.
    pub fn new(live: LiveCell) -> Self {
        Self { live }
    }
}

impl NamedService for Gate {
    const NAME: &'static str = <GatewayApi as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for Gate
where
    GatewayApi:
        Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    <GatewayApi as Service<http::Request<B>>>::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.live.get() {
            Some(live) => {
                let mut service = live.gateway.clone();
                Box::pin(async move {
                    futures::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                    service.call(request).await
                })
            }
            None => Box::pin(async {
                Ok(
                    Status::unavailable("the gateway is starting: its backends are loading")
                        .into_http(),
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_go_starting_serving_draining_and_never_back() {
        let (reporter, _service) = tonic_health::server::health_reporter();
        let health =
            Health::starting(reporter, "gatehouse.v1.Gateway", GatewayPhase::default()).await;
        assert_eq!(health.phase(), Phase::Starting);
        health.serving().await;
        assert_eq!(health.phase(), Phase::Serving);
        health.draining().await;
        health.serving().await;
        assert_eq!(health.phase(), Phase::Draining);
        health.shutting_down().await;
        assert_eq!(health.phase(), Phase::ShuttingDown);
    }
}
