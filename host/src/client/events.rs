//! A session's event stream that resumes by itself after a dropped
//! connection or a stream the server ended with an error.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::stream::BoxStream;
use tonic::{Code, Status, Streaming};

use super::{Error, Inner};
use crate::proto::v1 as pb;

/// How an [`EventStream`] retries after its stream breaks.
///
/// Backoff doubles from `initial_backoff` up to `max_backoff`, with a little
/// jitter; the retry count starts again after every event received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePolicy {
    /// Retries in a row before the stream gives up with the last error.
    pub max_retries: u32,
    /// The wait before the first retry.
    pub initial_backoff: Duration,
    /// The longest wait between retries.
    pub max_backoff: Duration,
}

impl Default for ResumePolicy {
    /// Ten retries, 50 ms doubling up to 2 s: about ten seconds of outage.
    fn default() -> Self {
        Self {
            max_retries: 10,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl ResumePolicy {
    /// Never retry: the first error ends the stream.
    pub fn never() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// The wait before retry number `attempt` (from 1).
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_backoff);
        // Up to a quarter more, so many clients cut off at once do not
        // come back in lockstep.
        let jitter = rand::random_range(0.0..0.25);
        base.mul_f64(1.0 + jitter).min(self.max_backoff.max(base))
    }
}

/// The events of one session, as a [`Stream`].
///
/// When the stream breaks (the connection drops, or the server ends it with
/// `UNAVAILABLE` and similar), it subscribes again with
/// `resume_after_sequence` set to the last sequence it yielded, so the
/// caller sees every event the replay buffer still holds exactly once (a
/// gap shows in [`pb::Event::dropped_before`]). It ends cleanly (`None`)
/// when the session closes, and also when a resume finds the session gone
/// (`NOT_FOUND`) or no longer `READY` (`FAILED_PRECONDITION`). Other errors,
/// and breaks past the [`ResumePolicy`], end it with one `Err` item.
///
/// Nothing is sent until the stream is first polled.
pub struct EventStream {
    start: Option<Resumer>,
    inner: Option<BoxStream<'static, Result<pb::Event, Error>>>,
    last: Arc<AtomicU64>,
    resumes: Arc<AtomicU64>,
}

impl EventStream {
    pub(super) fn new(client: Inner, session_id: String, resume_after: Option<u64>) -> Self {
        let last = Arc::new(AtomicU64::new(resume_after.unwrap_or(0)));
        let resumes = Arc::new(AtomicU64::new(0));
        Self {
            start: Some(Resumer {
                client,
                session_id,
                resume_after,
                policy: ResumePolicy::default(),
                last: Arc::clone(&last),
                resumes: Arc::clone(&resumes),
                streaming: None,
                subscribed: false,
                attempts: 0,
                done: false,
            }),
            inner: None,
            last,
            resumes,
        }
    }

    /// Sets how breaks are retried (before the first poll).
    pub fn resume_policy(mut self, policy: ResumePolicy) -> Self {
        if let Some(r) = self.start.as_mut() {
            r.policy = policy;
        }
        self
    }

    /// The sequence of the last event yielded (or the resume point asked
    /// for); 0 before any.
    pub fn last_sequence(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    /// How many times the stream has subscribed again after a break.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Relaxed)
    }
}

impl Stream for EventStream {
    type Item = Result<pb::Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.inner.is_none() {
            let Some(resumer) = self.start.take() else {
                return Poll::Ready(None);
            };
            self.inner = Some(Box::pin(futures::stream::unfold(
                resumer,
                |mut r| async move { r.next().await.map(|item| (item, r)) },
            )));
        }
        match self.inner.as_mut() {
            Some(s) => s.as_mut().poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("last_sequence", &self.last_sequence())
            .field("resumes", &self.resumes())
            .finish_non_exhaustive()
    }
}

struct Resumer {
    client: Inner,
    session_id: String,
    /// What the next subscription asks for.
    resume_after: Option<u64>,
    policy: ResumePolicy,
    last: Arc<AtomicU64>,
    resumes: Arc<AtomicU64>,
    streaming: Option<Streaming<pb::Event>>,
    /// Whether a subscription ever succeeded.
    subscribed: bool,
    /// Retries since the last event.
    attempts: u32,
    done: bool,
}

/// What to do after a failure.
enum After {
    Retry,
    End(Option<Result<pb::Event, Error>>),
}

impl Resumer {
    async fn next(&mut self) -> Option<Result<pb::Event, Error>> {
        loop {
            if self.done {
                return None;
            }
            let stream = match self.streaming.as_mut() {
                Some(s) => s,
                None => {
                    let request = super::for_session(pb::StreamEventsRequest {
                        session_id: self.session_id.clone(),
                        resume_after_sequence: self.resume_after,
                    });
                    match self.client.clone().stream_events(request).await {
                        Ok(response) => {
                            if self.subscribed {
                                self.resumes.fetch_add(1, Ordering::Relaxed);
                            }
                            self.subscribed = true;
                            self.streaming.insert(response.into_inner())
                        }
                        Err(status) => match self.after(status).await {
                            After::Retry => continue,
                            After::End(item) => return item,
                        },
                    }
                }
            };
            match stream.message().await {
                Ok(Some(event)) => {
                    self.resume_after = Some(event.sequence);
                    self.last.store(event.sequence, Ordering::Relaxed);
                    self.attempts = 0;
                    return Some(Ok(event));
                }
                // The server ends the stream cleanly once the session has
                // closed and every event was delivered.
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(status) => {
                    self.streaming = None;
                    match self.after(status).await {
                        After::Retry => continue,
                        After::End(item) => return item,
                    }
                }
            }
        }
    }

    async fn after(&mut self, status: Status) -> After {
        let code = status.code();
        // The session went away while we were reconnecting: that is how a
        // closed session's stream ends, not a failure.
        if self.subscribed && matches!(code, Code::NotFound | Code::FailedPrecondition) {
            self.done = true;
            return After::End(None);
        }
        let transient = if self.subscribed {
            matches!(
                code,
                // connection dropped, server restarting, or the stream
                // ended by the server (stream age limit)
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                // the server has not yet noticed the old stream is gone
                | Code::AlreadyExists
            )
        } else {
            code == Code::Unavailable
        };
        if transient && self.attempts < self.policy.max_retries {
            self.attempts += 1;
            let wait = self.policy.backoff(self.attempts);
            tracing::debug!(
                target: "gatehouse::client",
                session_id = %self.session_id,
                code = %super::error::code_name(code),
                attempt = self.attempts,
                wait_ms = wait.as_millis() as u64,
                resume_after = ?self.resume_after,
                "event stream broke; resuming"
            );
            tokio::time::sleep(wait).await;
            return After::Retry;
        }
        self.done = true;
        After::End(Some(Err(Error::Status(status))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = ResumePolicy {
            max_retries: 20,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let first = p.backoff(1);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(125));
        let third = p.backoff(3);
        assert!(third >= Duration::from_millis(400) && third <= Duration::from_millis(500));
        for attempt in 5..40 {
            assert!(p.backoff(attempt) <= Duration::from_secs(1));
        }
    }
}
