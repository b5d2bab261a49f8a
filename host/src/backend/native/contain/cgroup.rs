//! A cgroup (v1) per worker, under one parent cgroup per gateway.
//!
//! The gateway creates `gatehouse-<pid>-<random>` under its own cgroup in
//! the `pids` hierarchy (required) and in `freezer` and `memory` (used when
//! mounted), and one `w-<n>` child per worker in each. The worker joins
//! its children before `exec` (it writes `0` to descriptors of their
//! `cgroup.procs` opened by the gateway), so everything it starts is in
//! them too, `setsid` or not. Only cgroups the gateway created are ever
//! written to or removed.
//!
//! - Ending a worker freezes its `freezer` child (no fork can race the
//!   kill), SIGKILLs every member of its `pids` child, and thaws it.
//! - `pids.max` is `max_processes`; a fork past it fails in the worker
//!   and counts in `pids.events` (`max N`), which faults the session.
//! - `memory.limit_in_bytes` is `memory_limit`; an OOM kill in the worker's
//!   cgroup counts in `memory.oom_control` (`oom_kill N`).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Breach;

/// The hierarchies the gateway's parent cgroup lives in.
#[derive(Debug)]
pub(in crate::backend::native) struct Parent {
    pids: PathBuf,
    freezer: Option<PathBuf>,
    memory: Option<PathBuf>,
    next: AtomicU64,
}

/// One worker's cgroups.
#[derive(Debug)]
pub(in crate::backend::native) struct Cell {
    pids: PathBuf,
    freezer: Option<PathBuf>,
    memory: Option<PathBuf>,
    /// `cgroup.procs` of each, for the child to join (closed after spawn).
    join: Vec<OwnedFd>,
}

/// Where controller `name` of cgroup v1 is mounted, joined with this
/// process's own cgroup in it.
fn own_dir(name: &str) -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (mount_point, root) = mounts.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        if r.next()? != "cgroup" {
            return None;
        }
        let opts = r.nth(1)?;
        if !opts.split(',').any(|o| o == name) {
            return None;
        }
        let l: Vec<&str> = left.split_whitespace().collect();
        Some((PathBuf::from(l.get(4)?), l.get(3)?.to_string()))
    })?;
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|line| {
        let mut f = line.splitn(3, ':');
        let _id = f.next()?;
        let controllers = f.next()?;
        controllers
            .split(',')
            .any(|c| c == name)
            .then(|| f.next().map(str::to_string))?
    })?;
    let rel = path.strip_prefix(root.as_str()).unwrap_or(&path);
    Some(mount_point.join(rel.trim_start_matches('/')))
}

impl Parent {
    /// Creates this gateway's parent cgroups. Fails when the `pids`
    /// controller is not mounted or its cgroup cannot be created.
    pub fn create() -> io::Result<Self> {
        let not_mounted = || io::Error::new(io::ErrorKind::NotFound, "no cgroup v1 pids hierarchy");
        let name = format!(
            "gatehouse-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let pids = own_dir("pids").ok_or_else(not_mounted)?.join(&name);
        fs::create_dir(&pids)?;
        let optional = |controller: &str| {
            let dir = own_dir(controller)?.join(&name);
            fs::create_dir(&dir).ok().map(|()| dir)
        };
        let parent = Self {
            freezer: optional("freezer"),
            memory: optional("memory"),
            pids,
            next: AtomicU64::new(0),
        };
        // A cell made and removed: the whole path works before it is used.
        parent.cell(Some(8), None)?.release();
        Ok(parent)
    }

    /// The parent directories, for the state directory.
    pub fn dirs(&self) -> Vec<PathBuf> {
        hierarchies(&self.pids, &self.freezer, &self.memory)
    }

    /// Which controllers are in use, for the start-up log.
    pub fn describe(&self) -> String {
        let mut c = vec!["pids"];
        if self.freezer.is_some() {
            c.push("freezer");
        }
        if self.memory.is_some() {
            c.push("memory");
        }
        format!("cgroup v1 ({}) under {}", c.join(", "), self.pids.display())
    }

    /// A new worker's cgroups with its limits set.
    pub fn cell(&self, max_processes: Option<u32>, memory: Option<usize>) -> io::Result<Cell> {
        let name = format!("w-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let pids = self.pids.join(&name);
        fs::create_dir(&pids)?;
        let mut cell = Cell {
            pids,
            freezer: None,
            memory: None,
            join: Vec::new(),
        };
        if let Some(max) = max_processes {
            fs::write(cell.pids.join("pids.max"), max.to_string())?;
        }
        if let Some(dir) = &self.freezer {
            let d = dir.join(&name);
            fs::create_dir(&d)?;
            cell.freezer = Some(d);
        }
        if let Some(dir) = &self.memory {
            let d = dir.join(&name);
            fs::create_dir(&d)?;
            if let Some(limit) = memory {
                fs::write(d.join("memory.limit_in_bytes"), limit.to_string())?;
            }
            cell.memory = Some(d);
        }
        for dir in cell.dirs() {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?;
            cell.join.push(OwnedFd::from(f));
        }
        Ok(cell)
    }

    /// Kills whatever is left in this gateway's cgroups and removes them
    /// (at shutdown, after the workers were ended).
    pub fn remove(&self) -> usize {
        self.dirs().iter().map(|d| remove_tree(d)).sum()
    }
}

impl Drop for Parent {
    /// Removes the parent cgroups if they are empty (a runtime dropped in
    /// a test); never kills: a live worker keeps them.
    fn drop(&mut self) {
        for dir in self.dirs() {
            if let Ok(d) = fs::read_dir(&dir) {
                for e in d.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = fs::remove_dir(e.path());
                    }
                }
            }
            let _ = fs::remove_dir(&dir);
        }
    }
}

impl Cell {
    fn dirs(&self) -> Vec<PathBuf> {
        hierarchies(&self.pids, &self.freezer, &self.memory)
    }

    /// Descriptors the child writes `0` to before `exec`.
    pub fn join_fds(&self) -> Vec<RawFd> {
        self.join.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Closes the join descriptors (after the spawn).
    pub fn spawned(&mut self) {
        self.join.clear();
    }

    /// SIGKILLs every process in the cell, frozen first so none forks
    /// meanwhile. Returns how many were signalled.
    pub fn kill(&self) -> usize {
        let frozen = self.freezer.as_ref().is_some_and(|f| freeze(f, true));
        let killed = kill_members(&self.pids);
        if let Some(f) = &self.freezer
            && frozen
        {
            freeze(f, false);
        }
        killed
    }

    /// Processes in the cell now (`pids.current`).
    pub fn processes(&self) -> Option<u64> {
        read_counter(&self.pids.join("pids.current"), None)
    }

    /// A limit the cell ran into, if any.
    pub fn breach(&self) -> Option<Breach> {
        if let Some(m) = &self.memory
            && read_counter(&m.join("memory.oom_control"), Some("oom_kill")).unwrap_or(0) > 0
        {
            return Some(Breach::MemoryLimit);
        }
        if read_counter(&self.pids.join("pids.events"), Some("max")).unwrap_or(0) > 0 {
            return Some(Breach::ProcessLimit);
        }
        None
    }

    /// Lowers the memory limit (a tenant's, lower than the backend's).
    pub fn lower_memory(&self, limit: usize) -> io::Result<()> {
        match &self.memory {
            Some(m) => fs::write(m.join("memory.limit_in_bytes"), limit.to_string()),
            None => Ok(()),
        }
    }

    /// Kills what is left and removes the cell's cgroups, waiting briefly
    /// for the killed processes to exit.
    pub fn release(&self) {
        for dir in self.dirs() {
            remove_tree(&dir);
        }
    }
}

/// One cgroup's directories in each hierarchy it is in: `pids` always,
/// `freezer` and `memory` when mounted.
fn hierarchies(pids: &Path, freezer: &Option<PathBuf>, memory: &Option<PathBuf>) -> Vec<PathBuf> {
    std::iter::once(pids.to_path_buf())
        .chain(freezer.iter().cloned())
        .chain(memory.iter().cloned())
        .collect()
}

/// Freezes or thaws a freezer cgroup; true once frozen (or thawed).
fn freeze(dir: &Path, frozen: bool) -> bool {
    let want = if frozen { "FROZEN" } else { "THAWED" };
    if fs::write(dir.join("freezer.state"), want).is_err() {
        return false;
    }
    let until = Instant::now() + Duration::from_millis(100);
    while Instant::now() < until {
        if fs::read_to_string(dir.join("freezer.state")).is_ok_and(|s| s.trim() == want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// SIGKILLs every member of a cgroup; returns how many.
fn kill_members(dir: &Path) -> usize {
    let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) else {
        return 0;
    };
    let mut n = 0;
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if pid > 1 {
            // SAFETY: kill has no memory-safety preconditions; the pid is a
            // member of a cgroup this gateway created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            n += 1;
        }
    }
    n
}

/// A number in a cgroup file: the whole file, or the value of `key N`.
fn read_counter(path: &Path, key: Option<&str>) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    match key {
        None => text.trim().parse().ok(),
        Some(k) => text.lines().find_map(|l| {
            let (name, value) = l.split_once(' ')?;
            (name == k).then(|| value.trim().parse().ok())?
        }),
    }
}

/// Kills every process in `dir` and its child cgroups and removes them
/// all, retrying for up to a second while killed processes exit. Returns
/// how many processes it signalled.
pub(super) fn remove_tree(dir: &Path) -> usize {
    let mut killed = 0;
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        let children: Vec<PathBuf> = fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        for child in &children {
            killed += kill_members(child);
            let _ = fs::remove_dir(child);
        }
        killed += kill_members(dir);
        if fs::remove_dir(dir).is_ok() || !dir.exists() || Instant::now() >= until {
            return killed;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Ends a previous gateway's parent cgroup found in the state directory:
/// only a directory named `gatehouse-*` inside a cgroup mount is touched.
/// Returns how many processes it killed.
pub(crate) fn sweep(dir: &Path) -> usize {
    let ours = dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("gatehouse-"))
        && dir.starts_with("/sys/fs/cgroup")
        && !dir
            .components()
            .any(|c| c == std::path::Component::ParentDir);
    if !ours || !dir.is_dir() {
        return 0;
    }
    // Frozen first where it is a freezer cgroup, so nothing forks away.
    let frozen = dir.join("freezer.state").exists() && freeze(dir, true);
    let killed = kill_members_tree(dir);
    if frozen {
        freeze(dir, false);
    }
    remove_tree(dir);
    killed
}

fn kill_members_tree(dir: &Path) -> usize {
    let mut n = kill_members(dir);
    if let Ok(d) = fs::read_dir(dir) {
        for e in d.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n += kill_members(&e.path());
            }
        }
    }
    n
}
