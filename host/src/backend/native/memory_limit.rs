//! `memory_limit` for native workers: resource limits set in the child
//! before `exec`, lowered later for a session whose tenant has a smaller
//! limit, and how a worker that ran out of its limit is recognised.
//!
//! - `RLIMIT_DATA` is `memory_limit`: the worker's heap and private
//!   writable mappings (what `malloc`, `mmap` of anonymous memory and
//!   thread stacks take) may not grow past it. Code, shared libraries and
//!   reserved but inaccessible address space (glibc's per-thread arenas)
//!   do not count, so a program that needs little memory is not refused
//!   for mapping a lot.
//! - `RLIMIT_AS` is `memory_limit` plus [`ADDRESS_SPACE_SLACK`]: a backstop
//!   on all address space, with room for the code and reservations above.
//!
//! An allocation past either fails in the worker, which then usually dies
//! (Rust aborts, Python raises `MemoryError`, C++ throws `bad_alloc`). The
//! kernel does not say why a process died, so the gateway recognises the
//! messages those runtimes print on the way out ([`is_allocation_failure`]);
//! a worker that dies silently is reported as `worker-exited` with its
//! status.

/// Address space allowed beyond `memory_limit`: code, shared libraries,
/// guard pages and reservations a runtime maps but does not use.
pub(super) const ADDRESS_SPACE_SLACK: u64 = 1 << 30;

/// The limits of one worker, in the form `setrlimit` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rlimits {
    /// `RLIMIT_DATA`.
    pub data: libc::rlim_t,
    /// `RLIMIT_AS`.
    pub address_space: libc::rlim_t,
}

impl Rlimits {
    /// The limits for `memory_limit` bytes.
    pub fn for_limit(memory_limit: usize) -> Self {
        let data = u64::try_from(memory_limit).unwrap_or(u64::MAX);
        Self {
            data,
            address_space: data.saturating_add(ADDRESS_SPACE_SLACK),
        }
    }

    /// Sets them on the calling process. For the child between clone and
    /// exec: two raw system calls, no allocation. Returns the errno of a
    /// failure.
    ///
    /// # Safety
    ///
    /// Async-signal-safe; may be called in a vfork-like child.
    pub unsafe fn apply_here(&self) -> Result<(), libc::c_int> {
        for (resource, value) in [
            (libc::RLIMIT_DATA, self.data),
            (libc::RLIMIT_AS, self.address_space),
        ] {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: setrlimit only reads `limit`.
            if unsafe { libc::setrlimit(resource, &limit) } < 0 {
                // SAFETY: the calling thread's errno location is valid.
                return Err(unsafe { *libc::__errno_location() });
            }
        }
        Ok(())
    }

    /// Lowers the limits of running process `pid` (a warm worker taken for
    /// a session with a smaller `memory_limit`). Limits can only be
    /// lowered this way, which is all a session ever needs.
    pub fn lower(&self, pid: u32) -> std::io::Result<()> {
        let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("a bad pid"))?;
        for (resource, value) in [
            (libc::RLIMIT_DATA, self.data),
            (libc::RLIMIT_AS, self.address_space),
        ] {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: prlimit reads `limit` and writes nothing (old is null).
            if unsafe { libc::prlimit(pid, resource, &limit, std::ptr::null_mut()) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Whether a line of a worker's output says an allocation failed: Rust's
/// `memory allocation of N bytes failed`, Python's `MemoryError`, C++'s
/// `std::bad_alloc`, Go's and others' `out of memory`.
pub(super) fn is_allocation_failure(line: &str) -> bool {
    (line.contains("memory allocation of") && line.contains("failed"))
        || line.contains("MemoryError")
        || line.contains("bad_alloc")
        || line.to_ascii_lowercase().contains("out of memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtimes_messages_are_recognised() {
        for line in [
            "memory allocation of 1048576 bytes failed",
            "MemoryError",
            "Traceback: ... MemoryError: cannot allocate",
            "terminate called after throwing an instance of 'std::bad_alloc'",
            "fatal error: runtime: out of memory",
        ] {
            assert!(is_allocation_failure(line), "{line}");
        }
        for line in ["allocated 4 MiB", "memory usage is fine", "failed to open"] {
            assert!(!is_allocation_failure(line), "{line}");
        }
    }

    #[test]
    fn limits_apply_to_a_child_and_can_be_lowered() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let limits = Rlimits::for_limit(256 << 20);
        limits.lower(child.id()).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("Max data size"))
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(line.contains(&(256u64 << 20).to_string()), "{line}");
    }
}
