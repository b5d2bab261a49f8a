//! The HTTP port's server: `/metrics` (the model is `crate::metrics`),
//! plus the routes the wiring adds (health, the console), behind the
//! port's Host check and activity layer.

use std::sync::Arc;

use crate::metrics::Metrics;

/// Serves `/metrics`, plus the routes of `extra` (`/healthz`, `/readyz`),
/// on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: crate::transport::Acceptor,
    metrics: Arc<Metrics>,
    http_hosts: &[String],
    extra: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    tracing::info!(addr = %listener.local_addr(), "metrics listening");
    let hosts = crate::transport::HostCheckLayer::new(
        http_hosts,
        metrics.transport.http_host_refused.clone(),
    );
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    let app = app
        .merge(extra)
        .layer(hosts)
        .layer(crate::transport::ActivityLayer(
            crate::transport::Protocol::Http,
        ));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<crate::transport::Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
