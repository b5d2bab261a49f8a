//! The fallback: the gateway as child subreaper. A worker's descendant
//! that leaves its process group (`setsid`) is re-parented to the gateway
//! when its parent exits; those whose environment still carries the
//! worker's nonce are killed with the worker, and the gateway reaps every
//! adopted child that is not a worker.

use std::collections::HashSet;
use std::fs;
use std::sync::Mutex;

/// Pids of live workers (registered on the spawner thread right after the
/// clone): the orphan reaper leaves them to their own waiters.
static WORKERS: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

/// Registers a worker pid the reaper must not reap.
pub(crate) fn register_worker(pid: u32) {
    WORKERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_default()
        .insert(pid);
}

/// Forgets a reaped worker.
pub(crate) fn forget_worker(pid: u32) {
    if let Some(set) = WORKERS.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        set.remove(&pid);
    }
}

/// Makes the gateway the child subreaper of its descendants.
pub(super) fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r < 0 {
        tracing::warn!(
            "PR_SET_CHILD_SUBREAPER: {}; a worker's escaped descendants are not contained",
            std::io::Error::last_os_error()
        );
    }
}

/// A worker's marker: `GATEHOUSE_NONCE=<nonce>` in its descendants'
/// environment.
#[derive(Debug)]
pub(in crate::backend::native) struct Cell {
    marker: Vec<u8>,
}

impl Cell {
    pub(super) fn new(nonce: String) -> Self {
        Self {
            marker: format!("{}={nonce}", crate::backend::native::env::NONCE).into_bytes(),
        }
    }

    /// Kills the gateway's adopted children that carry this marker.
    pub(super) fn kill(&self) {
        let workers = WORKERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for pid in children() {
            if workers.as_ref().is_some_and(|w| w.contains(&pid)) {
                continue;
            }
            let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            if environ
                .split(|b| *b == 0)
                .any(|kv| kv == self.marker.as_slice())
                && let Ok(raw) = i32::try_from(pid)
            {
                // SAFETY: kill has no memory-safety preconditions; the pid
                // is our own child, not reaped, so not reused.
                unsafe { libc::kill(raw, libc::SIGKILL) };
            }
        }
    }
}

/// The gateway's children, from `/proc/self/task/*/children`.
fn children() -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(t.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    out
}

/// Reaps every exited child that is not a worker.
pub(super) fn reap_orphans() {
    // Held throughout: a worker cloned meanwhile is registered first.
    let workers = WORKERS.lock().unwrap_or_else(|e| e.into_inner());
    for pid in children() {
        if workers.as_ref().is_some_and(|w| w.contains(&pid)) {
            continue;
        }
        if let Ok(raw) = i32::try_from(pid) {
            let mut status = 0;
            // SAFETY: our own child; WNOHANG never blocks.
            unsafe { libc::waitpid(raw, &mut status, libc::WNOHANG) };
        }
    }
}
