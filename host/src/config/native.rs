//! A native backend's `command` and `[backends.native]`: how its workers
//! are started and watched.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, nonzero, units};

/// How a native backend's workers are started and watched
/// (`command` and `[backends.native]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeSpec {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Time from spawn to a valid hello, and separately for the worker's
    /// `open` to answer.
    pub startup_timeout: Duration,
    /// How often each side heartbeats.
    pub heartbeat_interval: Duration,
    /// Silence from the worker that faults the session.
    pub heartbeat_grace: Duration,
    /// Pre-started, handshaken workers kept ready for new sessions.
    pub warm_pool: usize,
    /// The largest frame either side may send.
    pub max_frame_bytes: usize,
    /// The most processes a worker and its descendants may be at once
    /// (enforced where the gateway has a cgroup per worker).
    pub max_processes: u32,
}

impl NativeSpec {
    /// Defaults for `command`.
    pub fn new(command: Vec<String>) -> Self {
        Self {
            command,
            startup_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_grace: Duration::from_secs(5),
            warm_pool: 0,
            max_frame_bytes: 4 << 20,
            max_processes: 64,
        }
    }
}

// ---- the file format -------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct NativeFile {
    #[serde(deserialize_with = "units::duration")]
    startup_timeout: Option<Duration>,
    #[serde(deserialize_with = "units::duration")]
    heartbeat_interval: Option<Duration>,
    #[serde(deserialize_with = "units::duration")]
    heartbeat_grace: Option<Duration>,
    warm_pool: Option<usize>,
    #[serde(deserialize_with = "units::size")]
    max_frame_bytes: Option<usize>,
    max_processes: Option<u32>,
}

impl NativeFile {
    /// `[backends.native]`, written at `key`, for a worker run as `command`.
    pub(super) fn resolve(
        self,
        key: &str,
        command: Vec<String>,
    ) -> Result<NativeSpec, ConfigError> {
        let d = NativeSpec::new(command);
        let n = NativeSpec {
            startup_timeout: self.startup_timeout.unwrap_or(d.startup_timeout),
            heartbeat_interval: self.heartbeat_interval.unwrap_or(d.heartbeat_interval),
            heartbeat_grace: self.heartbeat_grace.unwrap_or(d.heartbeat_grace),
            warm_pool: self.warm_pool.unwrap_or(d.warm_pool),
            max_frame_bytes: self.max_frame_bytes.unwrap_or(d.max_frame_bytes),
            max_processes: self.max_processes.unwrap_or(d.max_processes),
            command: d.command,
        };
        let k = |name: &str| format!("{key}.{name}");
        nonzero(n.startup_timeout, &k("startup_timeout"))?;
        if n.heartbeat_interval < Duration::from_millis(10) {
            return Err(invalid(k("heartbeat_interval"), "must be at least 10ms"));
        }
        if n.heartbeat_grace <= n.heartbeat_interval {
            return Err(invalid(
                k("heartbeat_grace"),
                "must be longer than heartbeat_interval",
            ));
        }
        if n.warm_pool > 1024 {
            return Err(invalid(k("warm_pool"), "must be 0..=1024"));
        }
        if !(1..=65536).contains(&n.max_processes) {
            return Err(invalid(k("max_processes"), "must be 1..=65536"));
        }
        if !(1 << 10..=1 << 30).contains(&n.max_frame_bytes) {
            return Err(invalid(k("max_frame_bytes"), "must be 1KiB..=1GiB"));
        }
        Ok(n)
    }
}

/// A native command line, the backend's at `key`: a program (a bare name is
/// looked up in `PATH` at spawn; a path with a `/` is resolved against the
/// config's directory `base` and must be a file) and its arguments.
pub(super) fn resolve_command(
    command: Option<Vec<String>>,
    key: &str,
    base: &Path,
) -> Result<Vec<String>, ConfigError> {
    let k = format!("{key}.command");
    let Some(mut command) = command else {
        return Err(invalid(k, "is required for kind = \"native\""));
    };
    let Some(program) = command.first_mut() else {
        return Err(invalid(k, "must name a program"));
    };
    if program.is_empty() {
        return Err(invalid(format!("{k}[0]"), "must name a program"));
    }
    if program.contains('/') {
        let path = base.join(&*program);
        if !path.is_file() {
            return Err(invalid(
                format!("{k}[0]"),
                format!("{} is not a file", path.display()),
            ));
        }
        *program = path.display().to_string();
    }
    if let Some(i) = command.iter().position(|a| a.contains('\0')) {
        return Err(invalid(format!("{k}[{i}]"), "must not contain NUL"));
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::config::tests::parse;
    use crate::config::{BackendKind, Runner};

    #[test]
    fn native_backends_are_parsed_and_checked() {
        let c = parse(
            "[server]\nstate_dir = \"/tmp/gh-test\"\n[[backends]]\nname = \"plc\"\nkind = \"native\"\ncommand = [\"sh\", \"-c\", \"exit 0\"]\n[backends.grants]\nenv = { A = \"1\" }\n[backends.native]\nheartbeat_interval = \"200ms\"\nheartbeat_grace = \"1s\"\nwarm_pool = 2\nmax_frame_bytes = \"64KiB\"\n",
        )
        .unwrap();
        assert_eq!(c.server.state_dir, PathBuf::from("/tmp/gh-test"));
        let b = &c.backends[0];
        assert_eq!(b.kind, BackendKind::Native);
        let Runner::Native(n) = &b.runner else {
            panic!("not native: {:?}", b.runner)
        };
        assert_eq!(n.command, ["sh", "-c", "exit 0"]);
        assert_eq!(n.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(n.heartbeat_grace, Duration::from_secs(1));
        assert_eq!(n.startup_timeout, Duration::from_secs(10));
        assert_eq!(n.warm_pool, 2);
        assert_eq!(n.max_frame_bytes, 64 << 10);
        assert_eq!(b.grants.env.get("A").map(String::as_str), Some("1"));

        let native = "[[backends]]\nname = \"plc\"\nkind = \"native\"\n";
        let cases = [
            (native.to_string(), "backends[0].command"),
            (format!("{native}command = []\n"), "backends[0].command"),
            (format!("{native}command = [\"\"]\n"), "backends[0].command[0]"),
            (
                format!("{native}command = [\"./no/such/worker\"]\n"),
                "backends[0].command[0]",
            ),
            (
                format!("{native}command = [\"w\"]\nmodule = \"builtin:echo\"\n"),
                "backends[0].module",
            ),
            (
                format!("{native}command = [\"w\"]\n[backends.grants]\nnetwork = [\"*:80\"]\n"),
                "backends[0].grants.network",
            ),
            (
                format!("{native}command = [\"w\"]\n[backends.native]\nheartbeat_grace = \"1s\"\nheartbeat_interval = \"1s\"\n"),
                "backends[0].native.heartbeat_grace",
            ),
            (
                format!("{native}command = [\"w\"]\n[backends.native]\nstartup_timeout = \"0s\"\n"),
                "backends[0].native.startup_timeout",
            ),
            (
                format!("{native}command = [\"w\"]\n[backends.native]\nmax_frame_bytes = 10\n"),
                "backends[0].native.max_frame_bytes",
            ),
            (
                format!("{native}command = [\"w\"]\n[backends.native]\nmax_processes = 0\n"),
                "backends[0].native.max_processes",
            ),
            (
                "[[backends]]\nname = \"a\"\nmodule = \"builtin:echo\"\ncommand = [\"w\"]\n".into(),
                "backends[0].command",
            ),
            (
                "[[backends]]\nname = \"a\"\nmodule = \"builtin:echo\"\n[backends.native]\nwarm_pool = 1\n".into(),
                "backends[0].native",
            ),
            ("[server]\nstate_dir = \"rel\"\n".into(), "server.state_dir"),
        ];
        for (text, key) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with(key), "{key}: {e}\n{text}");
        }
        let e = parse(&format!(
            "{native}command = [\"w\"]\n[backends.native]\nheartbeat = \"1s\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("heartbeat"), "{e}");
    }
}
