//! Time as the registry sees it. Leases, idle timeouts and lifetimes are
//! computed from a [`Clock`] so tests can move time by hand instead of
//! sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// A monotonic clock that can also say what wall time a reading is.
pub trait Clock: Send + Sync + 'static {
    /// The current monotonic time.
    fn now(&self) -> Instant;
    /// The wall-clock time of a monotonic reading, for the wire.
    fn wall(&self, at: Instant) -> SystemTime;
}

/// The real clock.
#[derive(Debug)]
pub struct SystemClock {
    anchor: Instant,
    anchor_wall: SystemTime,
}

impl SystemClock {
    /// Creates a clock anchored at the current time.
    pub fn new() -> Self {
        Self {
            anchor: Instant::now(),
            anchor_wall: SystemTime::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self, at: Instant) -> SystemTime {
        wall_from(self.anchor, self.anchor_wall, at)
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock {
    anchor: Instant,
    anchor_wall: SystemTime,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// Creates a clock stopped at the current time.
    pub fn new() -> Self {
        Self {
            anchor: Instant::now(),
            anchor_wall: SystemTime::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut offset = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        *offset += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.anchor + *self.offset.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wall(&self, at: Instant) -> SystemTime {
        wall_from(self.anchor, self.anchor_wall, at)
    }
}

fn wall_from(anchor: Instant, anchor_wall: SystemTime, at: Instant) -> SystemTime {
    match at.checked_duration_since(anchor) {
        Some(after) => anchor_wall + after,
        None => anchor_wall - anchor.duration_since(at),
    }
}
