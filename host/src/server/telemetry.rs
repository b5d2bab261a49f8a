//! Logs for `gatehouse serve`: `tracing` events on stderr as text or JSON
//! lines, filtered with `RUST_LOG`-style directives.
//!
//! Spans worth knowing: `rpc` (target `gatehouse::rpc`: method, session id,
//! tenant, backend, correlation id) around every gRPC call, followed by one
//! `rpc` event when the call completes (method, session id, status code,
//! duration in `ms`); and `session` (session id, tenant, backend) around
//! everything a session's worker does, including the plugin's own log lines
//! (target `gatehouse::guest`).
//!
//! ```text
//! RUST_LOG=info                          # the default
//! RUST_LOG=info,gatehouse::rpc=warn      # no per-call lines, except failures
//! RUST_LOG=debug,h2=info,tower=info      # everything of ours
//! ```
//!
//! Built with the `otlp` cargo feature, the spans are also exported over
//! OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the service name
//! `gatehouse` unless `OTEL_SERVICE_NAME` says otherwise.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the current span's fields under
    /// `span`.
    Json,
}

type Boxed = Box<dyn Layer<tracing_subscriber::layer::Layered<EnvFilter, Registry>> + Send + Sync>;

/// What [`init`] set up; [`Telemetry::shutdown`] flushes what is still
/// buffered (OTLP spans) before the process exits.
#[derive(Default)]
#[must_use = "shut it down at exit to flush exported spans"]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporters. Call it while the tokio runtime
    /// still runs.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("gatehouse: flushing OTLP spans: {e}");
        }
    }
}

/// Installs the global subscriber. `filter` is `RUST_LOG` syntax; a bad
/// directive is an error rather than silently logging something else. With
/// the `otlp` feature this must run inside a tokio runtime.
pub fn init(format: LogFormat, filter: &str) -> Result<Telemetry, String> {
    let filter = EnvFilter::builder()
        .parse(filter)
        .map_err(|e| format!("bad log filter {filter:?}: {e}"))?;
    #[allow(unused_mut)]
    let mut layers: Vec<Boxed> = vec![match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    }];
    #[allow(unused_mut)]
    let mut telemetry = Telemetry::default();
    #[cfg(feature = "otlp")]
    if let Some((layer, provider)) = otlp::layer()? {
        layers.push(layer);
        telemetry.provider = Some(provider);
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(telemetry)
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;

    use super::Boxed;

    /// The OTLP layer, when an endpoint is configured.
    pub(super) fn layer() -> Result<Option<(Boxed, SdkTracerProvider)>, String> {
        let configured = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
        if !configured {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "gatehouse".into());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        let tracer = provider.tracer("gatehouse");
        let layer = tracing_opentelemetry::layer().with_tracer(tracer).boxed();
        Ok(Some((layer, provider)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filters_are_refused() {
        assert!(init(LogFormat::Text, "info,gatehouse::rpc=loud").is_err());
    }
}
