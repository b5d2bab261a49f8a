//! Where a stateful session's latest state snapshot lives.
//!
//! The worker's task fills it (between commands, never during one) and the
//! registry reads it when the session's instance is replaced. It keeps only
//! the latest snapshot that fit, charged to the session's memory account:
//! a snapshot over `max_bytes`, or one the memory budget cannot hold, is
//! refused and the previous one stays, so a restart comes back to the newest
//! state the gateway could keep.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use crate::memory_budget::Reservation;

/// One snapshot of a session's state.
#[derive(Debug)]
pub struct StateSnapshot {
    /// The plugin's bytes.
    pub bytes: Vec<u8>,
    /// The backend version (`[[backends]] version`) that produced it: a
    /// restore is told so, to read older formats.
    pub version: String,
    /// When it was taken.
    pub taken_at: Instant,
}

/// Why a snapshot was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotRefused {
    /// Larger than `[backends.snapshot] max_bytes`.
    #[error("the snapshot is {size} bytes, over the snapshot cap of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// The gateway's or the tenant's memory budget cannot hold it.
    #[error("the snapshot of {size} bytes does not fit the memory budget")]
    OverBudget {
        /// Its size.
        size: usize,
    },
}

impl SnapshotRefused {
    /// The `reason` label of the refusal metric.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotRefused::TooLarge { .. } => "too-large",
            SnapshotRefused::OverBudget { .. } => "memory-budget",
        }
    }
}

struct Slot {
    latest: Option<Arc<StateSnapshot>>,
    memory: Reservation,
}

/// Counters of refused snapshots, by reason.
#[derive(Clone, Default)]
pub struct RefusalCounters {
    /// Over `max_bytes`.
    pub too_large: Counter,
    /// Over the memory budget.
    pub over_budget: Counter,
}

/// A session's latest snapshot.
pub struct SnapshotStore {
    slot: Mutex<Slot>,
    max_bytes: usize,
    refusals: RefusalCounters,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("bytes", &self.size())
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl SnapshotStore {
    /// An empty store that keeps snapshots of up to `max_bytes`, charged
    /// to `memory`, counting refusals in `refusals`.
    pub fn new(max_bytes: usize, memory: Reservation, refusals: RefusalCounters) -> Arc<Self> {
        Arc::new(Self {
            slot: Mutex::new(Slot {
                latest: None,
                memory,
            }),
            max_bytes,
            refusals,
        })
    }

    /// Counts and logs a snapshot that was not kept.
    pub fn refused(&self, refused: SnapshotRefused) -> SnapshotRefused {
        match refused {
            SnapshotRefused::TooLarge { .. } => self.refusals.too_large.inc(),
            SnapshotRefused::OverBudget { .. } => self.refusals.over_budget.inc(),
        };
        tracing::warn!(%refused, "state snapshot not kept; the previous one stays");
        refused
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cap.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Keeps `snapshot` as the latest, unless it is over the cap or the
    /// budget; then the previous one stays.
    pub fn put(&self, snapshot: StateSnapshot) -> Result<(), SnapshotRefused> {
        let size = snapshot.bytes.len();
        if size > self.max_bytes {
            return Err(self.refused(SnapshotRefused::TooLarge {
                size,
                limit: self.max_bytes,
            }));
        }
        let mut slot = self.slot();
        let held = slot.memory.bytes();
        if size > held {
            if slot.memory.try_grow(size - held).is_err() {
                drop(slot);
                return Err(self.refused(SnapshotRefused::OverBudget { size }));
            }
        } else {
            slot.memory.shrink(held - size);
        }
        slot.latest = Some(Arc::new(snapshot));
        Ok(())
    }

    /// The latest snapshot, if any was kept.
    pub fn latest(&self) -> Option<Arc<StateSnapshot>> {
        self.slot().latest.clone()
    }

    /// Forgets the snapshot and gives its memory back (the session ended).
    pub fn clear(&self) {
        let mut slot = self.slot();
        slot.latest = None;
        let held = slot.memory.bytes();
        slot.memory.shrink(held);
    }

    /// The latest snapshot's size in bytes; 0 without one.
    pub fn size(&self) -> usize {
        self.slot().latest.as_ref().map_or(0, |s| s.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_budget::MemoryKind;

    fn snap(n: usize) -> StateSnapshot {
        StateSnapshot {
            bytes: vec![7; n],
            version: "1.0.0".into(),
            taken_at: Instant::now(),
        }
    }

    #[test]
    fn keeps_the_latest_that_fits_and_refuses_one_over_the_cap() {
        let counters = RefusalCounters::default();
        let store = SnapshotStore::new(
            10,
            Reservation::unlimited(MemoryKind::Snapshots),
            counters.clone(),
        );
        assert!(store.latest().is_none());
        store.put(snap(4)).unwrap();
        assert_eq!(store.size(), 4);
        assert_eq!(
            store.put(snap(11)),
            Err(SnapshotRefused::TooLarge {
                size: 11,
                limit: 10
            })
        );
        assert_eq!(store.size(), 4, "the previous snapshot stays");
        assert_eq!(counters.too_large.get(), 1);
        store.put(snap(10)).unwrap();
        assert_eq!(store.size(), 10);
        store.clear();
        assert!(store.latest().is_none());
    }
}
