//! What a connection is doing: how many requests it has open, whether it
//! has served one yet and since when it has been idle. The connection's
//! watchdog (`watchdog.rs`) reads it to close connections that never send
//! a request or sit idle; the requests layer (`requests.rs`) writes it from
//! inside the HTTP servers, which are the only ones that know where a
//! request starts and ends.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Waker;

use futures::task::AtomicWaker;
use tokio::time::Instant;

/// One connection's requests, shared by its watchdog and the requests on
/// it (through [`Peer`]).
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    served: AtomicBool,
    idle_since: Mutex<Instant>,
    waker: AtomicWaker,
    reserved: bool,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Activity {
    /// A new connection's; `reserved` if it was admitted on the health
    /// reserve.
    pub fn new(reserved: bool) -> Self {
        Self {
            open: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            waker: AtomicWaker::new(),
            reserved,
        }
    }

    /// Whether the connection was admitted on the health reserve.
    pub fn is_reserved(&self) -> bool {
        self.reserved
    }

    /// Requests open now.
    pub fn open_requests(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Whether a request ever started on the connection.
    pub fn has_served(&self) -> bool {
        self.served.load(Ordering::Acquire)
    }

    /// When the last request ended (or the connection was accepted).
    pub fn idle_since(&self) -> Instant {
        *self
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes the watchdog when the connection turns idle.
    pub(super) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// A request starts; it is open until the guard drops.
    pub(super) fn begin(self: &std::sync::Arc<Self>) -> RequestGuard {
        self.served.store(true, Ordering::Release);
        self.open.fetch_add(1, Ordering::AcqRel);
        RequestGuard(std::sync::Arc::clone(self))
    }
}

/// One open request on a connection.
#[derive(Debug)]
pub struct RequestGuard(std::sync::Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .0
                .idle_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
            // The watchdog re-arms its timer for the idle timeout.
            self.0.waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_connection_is_busy_until_its_last_response_ends() {
        let a = Arc::new(Activity::new(false));
        assert!(!a.has_served());
        let before = a.idle_since();
        let first = a.begin();
        let second = a.begin();
        assert_eq!(a.open_requests(), 2);
        drop(first);
        assert_eq!(a.open_requests(), 1);
        assert_eq!(a.idle_since(), before, "still busy");
        drop(second);
        assert_eq!(a.open_requests(), 0);
        assert!(a.has_served());
        assert!(a.idle_since() >= before);
    }
}
