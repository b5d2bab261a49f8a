//! A span per RPC and one log line when it completes.
//!
//! Every `gatehouse.v1.Gateway` call runs inside an `rpc` span (target
//! `gatehouse::rpc`) with the method, the session id when the request names
//! one (or once `OpenSession` made one), the caller's tenant, the session's
//! backend and the correlation id. When the call completes, one event with
//! target `gatehouse::rpc` records the method, session id, status code and
//! duration. For `StreamEvents` that is when the stream ends. Filter them
//! like any target, e.g. `RUST_LOG=info,gatehouse::rpc=warn` to keep only
//! failures.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tonic::{Code, Request, Status};
use tracing::field::{Empty, display};
use tracing::{Instrument, Span};

use super::input::{MAX_LOGGED, loggable, plausible_id};

/// The metadata a client may set to tie a call to its own records, used when
/// the request has no correlation id field of its own.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// One RPC being served.
pub(super) struct Rpc {
    method: &'static str,
    span: Span,
    started: Instant,
    session_id: OnceLock<String>,
    tenant: OnceLock<String>,
    backend: OnceLock<String>,
    correlation_id: String,
}

impl Rpc {
    /// Starts the span for `method`. `session_id` and `correlation_id` are
    /// the request's fields (empty when it has none).
    pub fn start<T>(
        method: &'static str,
        request: &Request<T>,
        session_id: &str,
        correlation_id: &str,
    ) -> Self {
        // Client text: escaped and cut before it reaches a log line.
        let correlation_id: String = if correlation_id.is_empty() {
            request
                .metadata()
                .get(CORRELATION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|s| loggable(s, MAX_LOGGED))
                .unwrap_or_default()
        } else {
            loggable(correlation_id, MAX_LOGGED)
        };
        let span = tracing::info_span!(
            target: "gatehouse::rpc",
            "rpc",
            method = %method,
            session_id = Empty,
            tenant = Empty,
            backend = Empty,
            correlation_id = Empty,
        );
        if !correlation_id.is_empty() {
            span.record("correlation_id", display(&correlation_id));
        }
        let rpc = Self {
            method,
            span,
            started: Instant::now(),
            session_id: OnceLock::new(),
            tenant: OnceLock::new(),
            backend: OnceLock::new(),
            correlation_id,
        };
        rpc.session(session_id);
        rpc
    }

    /// Records the session id (once). An id that cannot be one is not
    /// recorded: the handler refuses it.
    pub fn session(&self, id: &str) {
        if !id.is_empty() && plausible_id(id) && self.session_id.set(id.to_string()).is_ok() {
            self.span.record("session_id", display(id));
        }
    }

    /// Records the caller's tenant (once).
    pub fn tenant(&self, tenant: &str) {
        if self.tenant.set(tenant.to_string()).is_ok() {
            self.span.record("tenant", display(tenant));
        }
    }

    /// Records the session's backend (once), as the client named it
    /// (escaped and cut) or as the registry resolved it.
    pub fn backend(&self, backend: &str) {
        if self.backend.get().is_some() {
            return;
        }
        let backend = loggable(backend, MAX_LOGGED);
        self.span.record("backend", display(&backend));
        let _ = self.backend.set(backend);
    }

    /// Runs the handler body inside the span and logs its completion.
    pub async fn run<R>(&self, body: impl Future<Output = Result<R, Status>>) -> Result<R, Status> {
        let result = body.instrument(self.span.clone()).await;
        let code = result.as_ref().err().map_or(Code::Ok, Status::code);
        self.finish(code, None);
        result
    }

    /// Wraps a response stream so the completion is logged when it ends.
    pub fn stream<S>(self, inner: S) -> LoggedStream<S> {
        LoggedStream {
            inner,
            rpc: Some(self),
            items: 0,
            code: None,
        }
    }

    fn finish(&self, code: Code, items: Option<u64>) {
        let elapsed = self.started.elapsed();
        // Unset fields are left out of the line.
        fn get(c: &OnceLock<String>) -> Option<tracing::field::DisplayValue<&str>> {
            c.get().map(|s| display(s.as_str()))
        }
        let (session_id, tenant, backend) =
            (get(&self.session_id), get(&self.tenant), get(&self.backend));
        let code_name = crate::proto::code_name(code);
        let ms = millis(elapsed);
        let correlation_id =
            (!self.correlation_id.is_empty()).then(|| display(self.correlation_id.as_str()));
        macro_rules! done {
            ($level:ident) => {
                tracing::$level!(
                    target: "gatehouse::rpc",
                    parent: None,
                    method = %self.method,
                    session_id,
                    tenant,
                    backend,
                    correlation_id,
                    code = %code_name,
                    ms,
                    events = items,
                    "rpc"
                )
            };
        }
        if matches!(code, Code::Internal | Code::Unknown | Code::DataLoss) {
            done!(warn);
        } else {
            done!(info);
        }
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A response stream that logs its RPC's completion when it ends: `OK` when
/// it ran out, the error's code when it ended with one, `CANCELLED` when the
/// client went away first.
pub(super) struct LoggedStream<S> {
    inner: S,
    rpc: Option<Rpc>,
    items: u64,
    code: Option<Code>,
}

impl<S, T> Stream for LoggedStream<S>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => self.items += 1,
            Poll::Ready(Some(Err(status))) => self.code = Some(status.code()),
            Poll::Ready(None) => {
                let code = self.code.unwrap_or(Code::Ok);
                if let Some(rpc) = self.rpc.take() {
                    rpc.finish(code, Some(self.items));
                }
            }
            Poll::Pending => {}
        }
        polled
    }
}

impl<S> Drop for LoggedStream<S> {
    fn drop(&mut self) {
        if let Some(rpc) = self.rpc.take() {
            rpc.finish(self.code.unwrap_or(Code::Cancelled), Some(self.items));
        }
    }
}
