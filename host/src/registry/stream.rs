//! Event streams: attaching one to a session, and the lease it keeps alive.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::events::{Delivery, SubscribeError, Subscription};
use crate::registry::tenant::Caller;
use crate::registry::{GatewayError, Registry, Session, SessionState};

/// How long a new event stream waits for a cancelled one to detach before
/// ALREADY_EXISTS.
const SUBSCRIBE_GRACE: Duration = Duration::from_millis(250);

/// An attached event stream. While it exists the sweeper keeps the session's
/// lease alive; when it is dropped the lease restarts from that moment, so a
/// slow sweep can never expire a session that was being watched.
pub struct EventStream {
    subscription: Subscription,
    session: Arc<Session>,
    clock: Arc<dyn Clock>,
}

impl EventStream {
    /// The next event; `None` once the session has ended and the stream is
    /// drained.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.subscription.next().await
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if self.session.state() == SessionState::Ready {
            self.session.keep_alive(self.clock.now());
        }
    }
}

impl Registry {
    /// Attaches an event stream to a READY session. At the subscriber limit
    /// it waits briefly for a just-cancelled stream to detach.
    pub async fn subscribe(
        &self,
        caller: &Caller,
        id: &str,
        resume_after: Option<u64>,
    ) -> Result<EventStream, GatewayError> {
        let session = self.owned(caller, id)?;
        let state = session.state();
        if state != SessionState::Ready {
            return Err(session.not_ready(state));
        }
        session.touch(self.clock.now());
        let subscription = session
            .events
            .subscribe_within(resume_after, SUBSCRIBE_GRACE)
            .await
            .map_err(|e| match e {
                SubscribeError::TooManySubscribers(_) => {
                    GatewayError::SubscriberExists(e.to_string())
                }
                SubscribeError::ResumePastEnd { .. } => GatewayError::OutOfRange(e.to_string()),
            })?;
        Ok(EventStream {
            subscription,
            session,
            clock: Arc::clone(&self.clock),
        })
    }
}
