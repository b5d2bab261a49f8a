//! The warm pool of one native backend (`warm_pool = N`): up to N workers
//! spawned and handshaken ahead of time, heartbeating while idle, so that
//! opening a session costs no process start. A session takes one; a
//! background task starts its replacement. Idle workers that die are
//! dropped and replaced.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::launcher::Launcher;
use super::worker::IdleWorker;

/// How long the pool waits before retrying after a failed start; doubled
/// after each failure up to [`MAX_BACKOFF`].
const POOL_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between failed starts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long the pool waits after a worker is taken before starting
/// replacements (back to back, once started).
const SETTLE: Duration = Duration::from_millis(100);

/// Idle, handshaken workers.
pub struct Pool {
    idle: Mutex<VecDeque<IdleWorker>>,
    target: usize,
    wake: Notify,
    stopped: AtomicBool,
}

impl Pool {
    /// Creates the pool and starts its refill task.
    pub(super) fn start(launcher: Arc<Launcher>) -> Arc<Self> {
        let pool = Arc::new(Self {
            idle: Mutex::new(VecDeque::new()),
            target: launcher.native.warm_pool,
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        let check_every = launcher.native.heartbeat_interval;
        tokio::spawn(refill(Arc::downgrade(&pool), launcher, check_every));
        pool
    }

    fn idle(&self) -> MutexGuard<'_, VecDeque<IdleWorker>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a live idle worker, if there is one. Call [`Pool::replenish`]
    /// once the session is open.
    pub(super) fn take(&self) -> Option<IdleWorker> {
        let mut idle = self.idle();
        let mut taken = None;
        while let Some(w) = idle.pop_front() {
            if w.is_alive() {
                taken = Some(w);
                break;
            }
            // Dropping a dead one kills whatever is left of it.
        }
        drop(idle);
        taken
    }

    /// Starts a replacement for a taken worker. Called after the taking
    /// session's open rather than at the take, so that the fork and exec of
    /// the replacement do not compete with that open for the CPU (and the
    /// gateway's memory map lock, which `fork` holds).
    pub(super) fn replenish(&self) {
        self.wake.notify_one();
    }

    /// Stops refilling and kills the idle workers.
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.idle().clear();
        self.wake.notify_one();
    }
}

/// Keeps the pool at its target until the pool is dropped or stopped.
async fn refill(pool: Weak<Pool>, launcher: Arc<Launcher>, check_every: Duration) {
    let mut backoff = POOL_BACKOFF;
    let mut settled = true;
    loop {
        let Some(p) = pool.upgrade() else { return };
        if p.stopped.load(Ordering::Acquire) {
            return;
        }
        let missing = {
            let mut idle = p.idle();
            idle.retain(IdleWorker::is_alive);
            p.target.saturating_sub(idle.len())
        };
        if missing == 0 {
            // Wait for a take, and look for dead idle workers now and then.
            let _ = tokio::time::timeout(check_every, p.wake.notified()).await;
            settled = false;
            continue;
        }
        drop(p);
        if !settled {
            // Let the opens that emptied the pool finish first: a fork and
            // exec on a small machine otherwise competes with them for the
            // CPU, and costs a warm open most of what the pool saves.
            tokio::time::sleep(SETTLE).await;
            settled = true;
            continue;
        }
        match launcher.launch(None, None).await {
            Ok(worker) => {
                backoff = POOL_BACKOFF;
                let Some(p) = pool.upgrade() else { return };
                if p.stopped.load(Ordering::Acquire) {
                    return;
                }
                p.idle().push_back(worker);
            }
            Err(e) => {
                tracing::warn!(backend = %launcher.backend, "warm pool: starting a worker failed: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
