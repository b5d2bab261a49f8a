//! systemd's readiness protocol (`sd_notify`), for `Type=notify` units
//! (deploy/systemd/gatehouse.service):
//!
//! - `READY=1` once the backends are loaded and both ports listen, and
//!   again after each reload;
//! - `RELOADING=1` (with `MONOTONIC_USEC`) when a reload starts;
//! - `STOPPING=1` when shutdown begins, before sessions drain;
//! - `STATUS=...` lines for `systemctl status`;
//! - `WATCHDOG=1` every half of `WATCHDOG_USEC`, from the async runtime, so
//!   a wedged runtime stops answering and systemd restarts the service.
//!
//! Each message is one datagram to the unix socket `NOTIFY_SOCKET` names
//! (a path, or `@name` in the abstract namespace). Without the variable
//! every call does nothing. Sending is best effort: a lost notification
//! must never stop the gateway, so failures are only logged.
//!
//! Every hook lives here so the callers stay one line each.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where notifications go; `None` when not run by a service manager.
struct Notifier {
    target: Option<SocketAddr>,
    /// Set once `STOPPING=1` went out: no later `READY=1` may undo it (a
    /// reload finishing during shutdown).
    stopping: AtomicBool,
}

fn notifier() -> &'static Notifier {
    static NOTIFIER: OnceLock<Notifier> = OnceLock::new();
    NOTIFIER.get_or_init(|| Notifier {
        target: std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let name = name.to_str()?.to_owned();
            match socket_addr(&name) {
                Ok(addr) => Some(addr),
                Err(e) => {
                    tracing::warn!("NOTIFY_SOCKET={name:?} is unusable, systemd will not hear from gatehouse: {e}");
                    None
                }
            }
        }),
        stopping: AtomicBool::new(false),
    })
}

/// The address `NOTIFY_SOCKET` names: `@name` is abstract, else a path.
fn socket_addr(name: &str) -> std::io::Result<SocketAddr> {
    match name.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        }
        None if name.starts_with('/') => SocketAddr::from_pathname(name),
        None => Err(std::io::Error::other(
            "neither an absolute path nor an @abstract name",
        )),
    }
}

/// Sends `message` (newline-separated `KEY=VALUE` lines) as one datagram.
fn send(message: &str) {
    let Some(target) = &notifier().target else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to_addr(message.as_bytes(), target));
    if let Err(e) = sent {
        tracing::warn!(message, "sd_notify failed: {e}");
    }
}

/// The backends are loaded and the ports listen (or a reload is over).
pub fn ready() {
    if !notifier().stopping.load(Ordering::SeqCst) {
        send("READY=1\nSTATUS=serving");
    }
}

/// A reload begins; [`ready`] ends it, whatever its outcome.
pub fn reloading() {
    if !notifier().stopping.load(Ordering::SeqCst) {
        send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the config",
            monotonic_usec()
        ));
    }
}

/// Shutdown begins: sessions drain, then the process exits.
pub fn stopping() {
    notifier().stopping.store(true, Ordering::SeqCst);
    send("STOPPING=1\nSTATUS=stopping: draining sessions");
}

/// A free-form line for `systemctl status` (e.g. a `gatehouse drain`).
pub fn status(text: &str) {
    // One line: a newline would start another assignment.
    send(&format!("STATUS={}", text.replace('\n', " ")));
}

/// `CLOCK_MONOTONIC` in microseconds, which systemd wants with
/// `RELOADING=1` to order it against the `ExecReload` it ran.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, if it is set
/// for this process (`WATCHDOG_PID`, when present, must be ours).
fn watchdog_interval() -> Option<Duration> {
    notifier().target.as_ref()?;
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Answers systemd's watchdog while it is alive; the task ends when this
/// is dropped.
pub struct Watchdog(Option<tokio::task::JoinHandle<()>>);

impl Watchdog {
    /// Starts answering `WatchdogSec`, if systemd asked; otherwise does
    /// nothing.
    pub fn start() -> Self {
        Self(watchdog_interval().map(|every| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    send("WATCHDOG=1");
                }
            })
        }))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_are_paths_or_abstract() {
        let path = socket_addr("/run/systemd/notify").unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        use std::os::linux::net::SocketAddrExt;
        let abs = socket_addr("@gatehouse/notify").unwrap();
        assert_eq!(abs.as_abstract_name(), Some(&b"gatehouse/notify"[..]));
        assert!(socket_addr("relative.sock").is_err());
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a);
    }
}
