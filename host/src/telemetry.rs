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

/// Installs the global subscriber. `filter` is `RUST_LOG` syntax; a bad
/// directive is an error rather than silently logging something else.
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = EnvFilter::builder()
        .parse(filter)
        .map_err(|e| format!("bad log filter {filter:?}: {e}"))?;
    let mut layers: Vec<Boxed> = Vec::new();
    layers.push(match format {
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
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filters_are_refused() {
        assert!(init(LogFormat::Text, "info,gatehouse::rpc=loud").is_err());
    }
}
