//! The state directory: live native worker pids, recorded so that the next
//! gateway can remove what a gateway killed outright (SIGKILL, OOM killer,
//! power cut of a container) left behind.
//!
//! Layout, under `server.state_dir`:
//!
//! ```text
//! gw-<pid>/gateway        "<pid> <start time>" of the gateway
//! gw-<pid>/worker-<pid>   "<pid> <start time>" of one live worker
//! gw-<pid>/cgroups        the gateway's parent cgroups, one path a line
//! ```
//!
//! The start time is field 22 of `/proc/<pid>/stat` (clock ticks since
//! boot): a pid that was reused by another process has another start time,
//! so a leftover record never kills an unrelated process. At start-up every
//! `gw-*` directory whose gateway is no longer alive is cleaned: each worker
//! still alive with the recorded start time has its process group killed,
//! the recorded cgroups are ended (every process in them killed, `setsid`
//! or not) and removed, and the directory is removed. Directories of gateways that are alive
//! (another gateway sharing the state directory) are left alone.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// This gateway's directory inside the state directory.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Creates `root` (mode 0700) if needed, checks that it belongs to this
    /// user, kills the leftovers of dead gateways, and creates this
    /// gateway's own directory. Returns how many leftover workers it killed.
    pub fn open(root: &Path) -> io::Result<(Self, usize)> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)?;
        let meta = fs::symlink_metadata(root)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != uid {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not a directory owned by uid {uid}; refusing to use it as the state directory",
                    root.display()
                ),
            ));
        }
        let me = std::process::id();
        let mut killed = 0;
        for entry in fs::read_dir(root)?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("gw-"))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let alive = read_record(&path.join("gateway"))
                .is_some_and(|(p, start)| p == pid && p != me && start_time(p) == Some(start));
            if alive {
                continue;
            }
            killed += kill_recorded(&path);
            killed += sweep_cgroups(&path);
            if let Err(e) = fs::remove_dir_all(&path) {
                tracing::warn!("removing {}: {e}", path.display());
            }
        }
        // Built under a temporary name and renamed into place, so another
        // gateway scanning the directory never sees a `gw-*` without its
        // `gateway` record (and takes it for a dead one).
        let dir = root.join(format!("gw-{me}"));
        let staging = root.join(format!(".staging-{me}"));
        let _ = fs::remove_dir_all(&staging);
        fs::DirBuilder::new().mode(0o700).create(&staging)?;
        let start = start_time(me).unwrap_or(0);
        fs::write(staging.join("gateway"), format!("{me} {start}\n"))?;
        fs::rename(&staging, &dir)?;
        Ok((Self { dir }, killed))
    }

    /// Records a live worker. Called right after the fork.
    pub fn record(&self, pid: u32) {
        let Some(start) = start_time(pid) else {
            return;
        };
        let path = self.dir.join(format!("worker-{pid}"));
        if let Err(e) = fs::write(&path, format!("{pid} {start}\n")) {
            tracing::warn!("recording worker {pid} in {}: {e}", path.display());
        }
    }

    /// Records this gateway's parent cgroups, which the next gateway ends
    /// and removes if this one dies without doing so.
    pub fn record_cgroups(&self, dirs: &[PathBuf]) {
        if dirs.is_empty() {
            return;
        }
        let text: String = dirs.iter().map(|d| format!("{}\n", d.display())).collect();
        let path = self.dir.join("cgroups");
        if let Err(e) = fs::write(&path, text) {
            tracing::warn!("recording the workers' cgroups in {}: {e}", path.display());
        }
    }

    /// Forgets a worker once it has been reaped.
    pub fn forget(&self, pid: u32) {
        let _ = fs::remove_file(self.dir.join(format!("worker-{pid}")));
    }

    /// Removes this gateway's directory (on a clean exit).
    pub fn remove(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Kills every recorded worker of a dead gateway that is still the same
/// process; returns how many.
fn kill_recorded(dir: &Path) -> usize {
    let mut killed = 0;
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let is_worker = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("worker-"));
        if !is_worker {
            continue;
        }
        let Some((pid, start)) = read_record(&entry.path()) else {
            continue;
        };
        if pid <= 1 || start_time(pid) != Some(start) {
            continue;
        }
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        tracing::warn!(
            pid,
            "killing a leftover native worker of a previous gateway run"
        );
        // SAFETY: kill has no memory-safety preconditions. The worker led
        // its own process group (pgid = pid), so its children go too.
        unsafe {
            libc::kill(-raw, libc::SIGKILL);
            libc::kill(raw, libc::SIGKILL);
        }
        killed += 1;
    }
    killed
}

/// Ends and removes the cgroups a dead gateway recorded (its workers'
/// descendants, `setsid` or not); returns how many processes were killed.
fn sweep_cgroups(dir: &Path) -> usize {
    let Ok(text) = fs::read_to_string(dir.join("cgroups")) else {
        return 0;
    };
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let killed = super::contain::sweep_cgroup(Path::new(l));
            if killed > 0 {
                tracing::warn!(
                    cgroup = l,
                    killed,
                    "killed leftover processes of a previous gateway run's workers"
                );
            }
            killed
        })
        .sum()
}

fn read_record(path: &Path) -> Option<(u32, u64)> {
    let text = fs::read_to_string(path).ok()?;
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    let start = words.next()?.parse().ok()?;
    Some((pid, start))
}

/// The start time of a live (not zombie) process, from `/proc/<pid>/stat`.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the
    // fields after it start at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); start time is field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::*;

    fn gone(pid: u32) -> bool {
        start_time(pid).is_none()
    }

    #[test]
    fn leftovers_of_a_dead_gateway_are_killed_and_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        // A "previous run": a dead gateway (a pid that cannot be alive with
        // that start time) that left a worker behind.
        let mut leftover = Command::new("sleep").arg("300").spawn().unwrap();
        let dead = root.path().join("gw-999999");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join("gateway"), "999999 1\n").unwrap();
        fs::write(
            dead.join(format!("worker-{}", leftover.id())),
            format!("{} {}\n", leftover.id(), start_time(leftover.id()).unwrap()),
        )
        .unwrap();
        // A record whose pid was reused: another start time, left alone.
        let mut bystander = Command::new("sleep").arg("300").spawn().unwrap();
        fs::write(
            dead.join(format!("worker-{}", bystander.id())),
            format!("{} 1\n", bystander.id()),
        )
        .unwrap();
        // A live gateway sharing the directory (this test process).
        let me = std::process::id();
        let live = root.path().join("gw-1");
        fs::create_dir(&live).unwrap();
        fs::write(
            live.join("gateway"),
            format!("1 {}\n", start_time(1).unwrap_or(0)),
        )
        .unwrap();

        let (state, killed) = StateDir::open(root.path()).unwrap();
        assert_eq!(killed, 1);
        let _ = leftover.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone(leftover.id()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gone(leftover.id()));
        assert!(!gone(bystander.id()), "a reused pid must not be killed");
        assert!(!dead.exists());
        assert!(live.exists(), "a live gateway's directory stays");
        assert!(root.path().join(format!("gw-{me}/gateway")).exists());

        state.record(bystander.id());
        let record = root
            .path()
            .join(format!("gw-{me}/worker-{}", bystander.id()));
        assert!(record.exists());
        state.forget(bystander.id());
        assert!(!record.exists());
        state.remove();
        let _ = bystander.kill();
        let _ = bystander.wait();
    }
}
