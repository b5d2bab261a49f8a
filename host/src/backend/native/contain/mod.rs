//! Containment of native workers: everything a worker starts ends with it.
//!
//! Chosen once at start-up (`gatehouse serve` logs which), best first:
//!
//! - `cgroup`: a cgroup per worker (cgroup.rs). Ending the worker kills
//!   every process in its cgroup, `setsid` or double fork or not;
//!   `max_processes` is its `pids.max` and `memory_limit` its
//!   `memory.limit_in_bytes`. A previous run's cgroups, recorded in the
//!   state directory, are ended at the next start.
//! - `subreaper`: the gateway is the child subreaper (subreaper.rs), so a
//!   descendant that leaves its worker's process group becomes the
//!   gateway's child; those carrying the worker's nonce in their
//!   environment are killed when the worker ends, and all are reaped.
//!
//! Both add to the worker's own process group, which is killed too.

pub(super) mod cgroup;
pub(super) mod subreaper;

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;

pub(crate) use cgroup::sweep as sweep_cgroup;

/// A limit a worker's cell ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    /// A fork failed at `max_processes`.
    ProcessLimit,
    /// The kernel's OOM killer ran in the worker's cgroup.
    MemoryLimit,
}

/// The mechanism in force for this gateway.
#[derive(Debug)]
pub enum Containment {
    /// A cgroup per worker.
    Cgroup(cgroup::Parent),
    /// The gateway as child subreaper.
    Subreaper,
}

impl Containment {
    /// Probes what the kernel allows, best first.
    /// `GATEHOUSE_NATIVE_CONTAINMENT=subreaper` skips the cgroup, so the
    /// fallback can be tested on a machine that has cgroups.
    pub fn probe() -> Self {
        let cgroup =
            if std::env::var_os("GATEHOUSE_NATIVE_CONTAINMENT").is_some_and(|v| v == "subreaper") {
                Err(io::Error::other("GATEHOUSE_NATIVE_CONTAINMENT=subreaper"))
            } else {
                cgroup::Parent::create()
            };
        match cgroup {
            Ok(parent) => Self::Cgroup(parent),
            Err(e) => {
                tracing::debug!("no cgroup per worker: {e}");
                subreaper::become_subreaper();
                Self::Subreaper
            }
        }
    }

    /// The mechanism's name: `cgroup` or `subreaper`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cgroup(_) => "cgroup",
            Self::Subreaper => "subreaper",
        }
    }

    /// What is in force, for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            Self::Cgroup(p) => p.describe(),
            Self::Subreaper => {
                "the gateway as child subreaper (no cgroup could be created; max_processes is not enforced)".into()
            }
        }
    }

    /// Cgroup directories to record in the state directory.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self {
            Self::Cgroup(p) => p.dirs(),
            Self::Subreaper => Vec::new(),
        }
    }

    /// A cell for a new worker; `marker` is the worker's nonce.
    pub fn cell(&self, limits: Limits, marker: String) -> io::Result<Cell> {
        match self {
            Self::Cgroup(p) => Ok(Cell::Cgroup(
                p.cell(limits.max_processes, limits.memory_limit)?,
            )),
            Self::Subreaper => Ok(Cell::Subreaper(subreaper::Cell::new(marker))),
        }
    }

    /// Ends whatever is left in this gateway's cells (at shutdown).
    pub fn remove(&self) {
        if let Self::Cgroup(p) = self {
            p.remove();
        }
    }
}

/// A worker's limits, set on its cell.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// `max_processes`.
    pub max_processes: Option<u32>,
    /// `memory_limit` in bytes.
    pub memory_limit: Option<usize>,
}

/// One worker's containment.
#[derive(Debug)]
pub enum Cell {
    /// Its cgroups.
    Cgroup(cgroup::Cell),
    /// Its nonce, to recognise its escaped descendants.
    Subreaper(subreaper::Cell),
}

impl Cell {
    /// Descriptors the child writes `0` to before `exec` (cgroup.procs).
    pub fn join_fds(&self) -> Vec<RawFd> {
        match self {
            Self::Cgroup(c) => c.join_fds(),
            Self::Subreaper(_) => Vec::new(),
        }
    }

    /// After the spawn: the join descriptors are closed.
    pub fn spawned(&mut self) {
        if let Self::Cgroup(c) = self {
            c.spawned();
        }
    }

    /// Kills every process of the worker's cell.
    pub fn kill(&self) {
        match self {
            Self::Cgroup(c) => {
                c.kill();
            }
            Self::Subreaper(c) => c.kill(),
        }
    }

    /// How many processes the cell holds, where that is counted.
    pub fn processes(&self) -> Option<u64> {
        match self {
            Self::Cgroup(c) => c.processes(),
            Self::Subreaper(_) => None,
        }
    }

    /// Whether the cell can run into a limit at all, so there is
    /// something to watch (a cgroup; the subreaper enforces none).
    pub fn has_limits(&self) -> bool {
        matches!(self, Self::Cgroup(_))
    }

    /// A limit the cell ran into.
    pub fn breach(&self) -> Option<Breach> {
        match self {
            Self::Cgroup(c) => c.breach(),
            Self::Subreaper(_) => None,
        }
    }

    /// Lowers the cell's memory limit (a tenant's smaller one).
    pub fn lower_memory(&self, limit: usize) -> io::Result<()> {
        match self {
            Self::Cgroup(c) => c.lower_memory(limit),
            Self::Subreaper(_) => Ok(()),
        }
    }

    /// Kills what is left and removes the cell (after the worker's reap;
    /// blocks up to a second).
    pub fn release(&self) {
        match self {
            Self::Cgroup(c) => c.release(),
            Self::Subreaper(c) => {
                c.kill();
                subreaper::reap_orphans();
            }
        }
    }
}
