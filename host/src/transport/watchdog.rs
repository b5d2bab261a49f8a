//! A connection's deadlines: `server.first_request_timeout` from accept
//! (after the TLS handshake too: the handshake has its own timeout) until
//! a request starts, and `server.idle_timeout` from the end of its last
//! request while none is open. Both are absolute: bytes that never make a
//! request (half a request line, a preface and nothing after it, pings)
//! do not push them back.
//!
//! The watchdog runs inside the connection's reads: HTTP servers keep a
//! read pending on every connection they hold, so a timer polled there
//! fires while the server waits, and the read failing with `TimedOut`
//! makes the server drop the connection, which gives back its place under
//! `server.max_connections`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

use super::activity::Activity;

/// The deadlines of one port, with the counters of the connections they
/// close.
#[derive(Debug, Clone)]
pub struct Deadlines {
    /// `server.first_request_timeout`.
    pub first_request: Duration,
    /// `server.idle_timeout`; `None` keeps idle connections open.
    pub idle: Option<Duration>,
    /// Connections closed before their first request.
    pub first_request_closed: Counter,
    /// Connections closed idle.
    pub idle_closed: Counter,
}

/// One connection's deadlines; see the module docs.
#[derive(Debug)]
pub(super) struct Watchdog {
    deadlines: Deadlines,
    accepted: Instant,
    sleep: Pin<Box<Sleep>>,
    fired: bool,
}

impl Watchdog {
    pub(super) fn new(deadlines: Deadlines) -> Self {
        let accepted = Instant::now();
        Self {
            sleep: Box::pin(tokio::time::sleep_until(accepted + deadlines.first_request)),
            deadlines,
            accepted,
            fired: false,
        }
    }

    /// When the connection must have done something, as it stands now;
    /// `None` while a request is open (or idle connections may stay).
    fn deadline(&self, activity: &Activity) -> Option<(Instant, &Counter)> {
        if activity.open_requests() > 0 {
            return None;
        }
        if !activity.has_served() {
            return Some((
                self.accepted + self.deadlines.first_request,
                &self.deadlines.first_request_closed,
            ));
        }
        let idle = self.deadlines.idle?;
        Some((activity.idle_since() + idle, &self.deadlines.idle_closed))
    }

    /// Whether the connection is past its deadline. Registers `cx` to be
    /// woken at the deadline, or when the last open request ends.
    pub(super) fn expired(&mut self, activity: &Arc<Activity>, cx: &mut Context<'_>) -> bool {
        if self.fired {
            return true;
        }
        activity.register(cx.waker());
        let Some((deadline, counter)) = self.deadline(activity) else {
            return false;
        };
        let counter = counter.clone();
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        counter.inc();
        self.fired = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::task::Poll;

    use super::*;

    fn deadlines(idle: Option<Duration>) -> Deadlines {
        Deadlines {
            first_request: Duration::from_secs(10),
            idle,
            first_request_closed: Counter::default(),
            idle_closed: Counter::default(),
        }
    }

    async fn expired(w: &mut Watchdog, a: &Arc<Activity>) -> bool {
        poll_fn(|cx| Poll::Ready(w.expired(a, cx))).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_ends_at_the_first_request_deadline() {
        let d = deadlines(None);
        let closed = d.first_request_closed.clone();
        let mut w = Watchdog::new(d);
        let a = Arc::new(Activity::new(false));
        assert!(!expired(&mut w, &a).await);
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(!expired(&mut w, &a).await);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(expired(&mut w, &a).await);
        assert_eq!(closed.get(), 1);
        assert!(expired(&mut w, &a).await, "stays closed");
        assert_eq!(closed.get(), 1, "counted once");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_request_holds_the_connection_and_idleness_counts_from_its_end() {
        let d = deadlines(Some(Duration::from_secs(60)));
        let idle = d.idle_closed.clone();
        let mut w = Watchdog::new(d);
        let a = Arc::new(Activity::new(false));
        let request = a.begin();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(!expired(&mut w, &a).await, "a long stream is not idle");
        drop(request);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!expired(&mut w, &a).await);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(expired(&mut w, &a).await);
        assert_eq!(idle.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_timeout_a_served_connection_stays() {
        let mut w = Watchdog::new(deadlines(None));
        let a = Arc::new(Activity::new(false));
        drop(a.begin());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!expired(&mut w, &a).await);
    }
}
