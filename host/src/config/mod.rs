//! Configuration: one TOML file, every value with a documented default.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:50051"        # gRPC address
//! metrics_listen = "127.0.0.1:9464" # Prometheus /metrics; "off" disables it
//! max_sessions = 1024               # live sessions in the whole gateway
//! max_message_bytes = "4MiB"        # largest gRPC request or response
//! max_batch_commands = 1000         # commands in one InvokeBatch
//! sweep_interval = "1s"             # how often leases and timeouts are checked
//! shutdown_timeout = "10s"          # drain time before workers are killed
//! closed_session_retention = "60s"  # how long closed/faulted sessions stay visible
//! epoch_tick = "10ms"               # wasm interruption granularity: a guest's CPU slice
//! guest_threads = "auto"            # wasm guests running at once; "auto": one per runtime
//!                                   # thread (a core); fewer keeps threads free for I/O
//! max_concurrent_streams = 1024     # HTTP/2 streams per connection
//! max_connection_concurrency = 256  # requests in flight per connection; more are shed
//! keepalive_interval = "30s"        # HTTP/2 pings to idle clients
//! keepalive_timeout = "10s"         # drop a client that does not answer a ping
//! max_pending_resets = 64           # HTTP/2 rapid-reset protection
//! plugins_dir = "plugins.d"         # every *.wasm in it is a backend named by its file stem
//! cache_dir = "~/.cache/gatehouse"  # compiled components ($XDG_CACHE_HOME/gatehouse); "off" disables
//! max_event_stream_age = "off"      # end event streams with UNAVAILABLE after this; clients resume
//! state_dir = "$XDG_RUNTIME_DIR/gatehouse" # live native worker pids; without
//!                                   # XDG_RUNTIME_DIR, "/tmp/gatehouse-<uid>"
//! max_connections = 4096            # open connections per port; more are closed at accept
//! max_connections_per_address = 256 # per client address (IPv6: its /64); default a quarter
//!                                   # of max_connections, at most 256; "off" behind a proxy
//! health_connections = 8            # beyond the cap, for health checks only
//! first_request_timeout = "10s"     # a connection must start a request by then
//! idle_timeout = "5m"               # close a connection with no open request; "off"
//! http_hosts = []                   # Host names the HTTP port answers besides IP
//!                                   # addresses and localhost ("*.example.com" allowed)
//! allow_plaintext = false           # with keys, serve a non-loopback address without TLS
//! [server.tls]                      # TLS on the gRPC port (and the HTTP port); see `tls`
//! cert = "tls/server.pem"           # certificate chain, leaf first (PEM)
//! key = "tls/server.key"            # its private key (PEM)
//! client_ca = "tls/clients-ca.pem"  # optional: require client certificates from this CA
//! # [server.http_tls]               # the HTTP port's own files, instead of [server.tls]
//! memory_budget = "auto"            # what all sessions together may make the gateway
//!                                   # hold; "auto" = half the physical memory
//! max_auth_failures_per_sec = 1     # failed authentications per peer address, after a
//! auth_failures_burst = 10          # burst of this many; past them calls are refused
//!                                   # UNAUTHENTICATED unchecked; "off" disables the throttle
//! data_dir = "$XDG_DATA_HOME/gatehouse" # the key store (gatehouse.db: keys made at runtime,
//!                                   # the audit log); without XDG_DATA_HOME,
//!                                   # "~/.local/share/gatehouse"; "off": config keys only
//! console = true                    # the web console at /console on the HTTP port (loopback
//!                                   # or TLS only; see docs/console.md)
//!
//! [sessions]                        # defaults for every backend
//! command_timeout = "30s"
//! max_command_timeout = "5m"        # cap on a client's requested timeout
//! lease = "60s"
//! max_lease = "1h"                  # cap on a client's requested lease
//! idle_timeout = "off"              # close after this long without a call
//! max_lifetime = "off"              # close this long after open
//! close_timeout = "5s"              # graceful close before the worker is killed
//! memory_limit = "64MiB"            # linear memory per wasm session; a native
//!                                   # worker's data rlimit (see docs/native-workers.md)
//! max_reply_bytes = "1MiB"
//! max_event_bytes = "64KiB"
//! event_queue = 1024                # undelivered events kept per session
//! replay_buffer = 256               # delivered events kept for resume
//! event_overflow = "drop-oldest"    # or "fault"
//! max_event_subscribers = 1
//! max_pending_ticks = 64
//! log_lines_per_sec = 50            # guest log lines per session, after a burst of
//! log_burst = 200
//!
//! [[backends]]
//! name = "echo"
//! kind = "wasm"                     # the default
//! module = "builtin:echo"           # or a path to a .wasm component
//! description = "..."
//! version = "0.1.0"
//! config = { greeting = "hello" }   # handed to every session's open
//! retire_after = "off"              # after a reload replaces this version: how long
//!                                   # its sessions go on ("off": until they end)
//! # [backends.rollout]              # a new version starts as a canary:
//! # percent = 10                    # this share of new opens (1-99)
//! # max_faults = 3                  # more faults of its sessions than this within
//! # window = "1m"                   # this window roll it back by itself
//! # upgrade_sessions = false        # move live sessions to the new version when it
//! #                                 # becomes current (stateful plugins; one at a time)
//! # [backends.snapshot]             # plugins exporting gatehouse:backend/state only
//! # every = "command"               # or a duration ("5s", checked each sweep), or "off"
//! # max_bytes = "1MiB"              # a larger snapshot is refused; the last one stays
//! # [backends.restart]
//! # policy = "never"                # or "on-fault": a fault restarts the session, same id
//! # max_restarts = 3                # restarts allowed within period; one more is
//! # period = "1m"                   # FAULTED for good (restart-limit)
//! # backoff = "100ms"               # the first restart's wait, doubling after
//! [backends.sessions]               # overrides of [sessions] for this backend
//! command_timeout = "1s"
//! [backends.grants]                 # what the sandbox opens; nothing by default
//! env = { MODE = "demo" }           # environment variables the plugin sees
//! network = ["127.0.0.1:8080"]      # TCP connects allowed: "IP:PORT", "*" for either
//! [[backends.grants.preopens]]      # directories the plugin may use
//! host = "/srv/data"
//! guest = "/data"
//! mode = "ro"                       # or "rw"
//!
//! [[tenants]]                       # API keys, quotas, rates, allowed backends: see `tenants`
//! name = "acme"
//! [[backends]]
//! name = "plc"
//! kind = "native"                   # one worker process per session
//! command = ["/opt/plc/worker", "--flag"] # required for native, forbidden for wasm;
//!                                   # a relative path is resolved against the config file
//! [backends.grants]
//! env = { VENDOR_SDK = "/opt/sdk" } # native: added to the worker's environment
//!                                   # (preopens and network are wasm-only)
//! [backends.native]                 # only for kind = "native"
//! startup_timeout = "10s"           # spawn to hello; and the worker's open
//! heartbeat_interval = "1s"         # both ways
//! heartbeat_grace = "5s"            # silence that faults the session; > interval
//! warm_pool = 0                     # pre-started, handshaken workers kept ready
//! max_frame_bytes = "4MiB"          # largest protocol frame either way
//!
//! [cluster]                         # several gateways behind a proxy: see `cluster`
//! node_id = "n1"                    # session ids become "n1.<32 hex>"
//! redis = "redis://127.0.0.1:6379"  # shared cap and quotas; needs node_id
//! node_lease = "10s"                # a dead node's slots are free again after this
//! max_sessions = "off"              # live sessions in the whole cluster
//! drain_timeout = "5m"              # `gatehouse drain`: how long sessions may go on
//! ```
//!
//! A native worker gets a clean environment: `PATH`, `HOME`, `LANG`, `LC_*`,
//! `TZ`, `RUST_LOG` and `RUST_BACKTRACE` from the gateway's, the backend's
//! `grants.env`, and the `GATEHOUSE_*` protocol variables. `memory_limit`
//! caps a wasm session's linear memory and a native worker's data segment
//! (docs/native-workers.md says what is enforced where).
//!
//! Unknown keys and bad values are errors that name the key. Durations are
//! at most 100 years ([`MAX_DURATION`]).
//!
//! Session settings are resolved in layers, each the same patch of optional
//! keys ([`SessionPatch`]): the defaults, then `[sessions]`, then the
//! backend's `[backends.sessions]`, then at open the tenant's
//! `[tenants.sessions]`, which can only lower a limit (see `policy.rs`).
//!
//! The module, by job: this file has the model's root, the entry points and
//! the order of resolution; `server.rs` is `[server]`, `backends.rs`
//! `[[backends]]` and `plugins_dir`, `cluster.rs` `[cluster]` (several
//! gateways behind a proxy), `native.rs` and `grants.rs` their
//! `[backends.native]` and `[backends.grants]`, `policy.rs` the session
//! policy and its patch, `tenants.rs` `[[tenants]]`, `builtins.rs` the
//! backends of a config without any, and `units.rs` durations and sizes.
//! Each file holds its part of the model, its part of the file format and
//! the checks that turn one into the other.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod backends;
mod builtins;
pub mod certs;
mod cluster;
mod grants;
mod native;
mod policy;
mod recovery;
mod server;
mod tenant_cpu;
pub mod tenants;
mod tls;
mod units;
mod warnings;

pub use self::backends::{BackendKind, BackendSpec, ModuleSource, Rollout, Runner};
pub use self::certs::{CertIdentity, DistinguishedName};
pub use self::cluster::{
    ClusterSettings, DEFAULT_DRAIN_TIMEOUT, DEFAULT_NODE_LEASE, valid_node_id,
};
pub use self::grants::{Grants, NetRule, Preopen};
pub use self::native::NativeSpec;
pub use self::policy::{
    DEFAULT_LOG_BURST, DEFAULT_LOG_LINES_PER_SEC, DEFAULT_MEMORY_LIMIT, LimitOverrides,
    MIN_MEMORY_LIMIT, OverflowPolicy, SessionPatch, SessionPolicy,
};
pub use self::recovery::{
    DEFAULT_SNAPSHOT_BYTES, Recovery, RestartOn, RestartPolicy, SnapshotEvery, SnapshotPolicy,
};
pub use self::server::{ServerSettings, default_state_dir};
pub use self::tenants::{CertSpec, CpuBudgetSpec, KeySpec, TenantCpuSpec, TenantRates, TenantSpec};
pub use self::tls::TlsFiles;

pub use self::units::{MAX_DURATION, parse_duration};
pub use self::warnings::session_maximum;

/// A backend's `version` when the config gives none.
pub const DEFAULT_BACKEND_VERSION: &str = "0.0.0";

/// A configuration problem, naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the
    /// wrong type.
    #[error("{0}")]
    Parse(String),
    /// A key has a value that is not allowed.
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted path of the key, e.g. `backends[1].sessions.lease`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

fn nonzero(d: Duration, key: &str) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(invalid(key, "must be greater than zero"))
    } else {
        Ok(())
    }
}

/// Whether `name` is a valid backend, tenant or key name: 1-64 letters,
/// digits, `-`, `_` or `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// [`valid_name`], as an error naming `key`.
fn check_name(name: &str, key: &str) -> Result<(), ConfigError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(invalid(
            key,
            "must be 1-64 characters of letters, digits, '-', '_' or '.'",
        ))
    }
}

/// The fully resolved configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server-wide settings.
    pub server: ServerSettings,
    /// Every backend, with its session policy resolved.
    pub backends: Vec<BackendSpec>,
    /// Every tenant (`[[tenants]]`); see [`tenants`].
    pub tenants: Vec<TenantSpec>,
    /// `[cluster]`: node id, shared state, drain (docs/cluster.md).
    pub cluster: ClusterSettings,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
    }

    /// Parses and validates config text; relative module paths are resolved
    /// against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        file.resolve(base)
    }

    /// The configuration used when no file is given: defaults everywhere and
    /// the built-in example backends.
    pub fn builtin() -> Self {
        Self {
            server: ServerSettings::default(),
            backends: builtins::builtin_backends(&SessionPolicy::default()),
            tenants: Vec::new(),
            cluster: ClusterSettings::default(),
        }
    }

    /// Whether any API key or client certificate identity is configured.
    /// Without one the gateway runs in local development mode: anonymous
    /// calls, loopback only.
    pub fn has_keys(&self) -> bool {
        self.tenants
            .iter()
            .any(|t| !t.keys.is_empty() || !t.certs.is_empty())
    }
}

// ---- the file format -------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigFile {
    server: server::ServerFile,
    sessions: SessionPatch,
    backends: Vec<backends::BackendFile>,
    tenants: Vec<tenants::TenantFile>,
    cluster: cluster::ClusterFile,
}

impl ConfigFile {
    /// The order of resolution: `[server]`; `[sessions]` over the defaults;
    /// each backend's `[backends.sessions]` over that; `plugins_dir`; the
    /// built-in backends if there are none; and the tenants, which may name
    /// only backends defined by then.
    fn resolve(self, base: &Path) -> Result<Config, ConfigError> {
        let plugins_dir = self.server.plugins_dir.clone();
        let server = self.server.resolve(base)?;
        let cluster = self.cluster.resolve()?;
        let defaults = self.sessions.over(&SessionPolicy::default(), "sessions")?;
        let mut backends = Vec::with_capacity(self.backends.len());
        let mut names = HashSet::new();
        for (i, b) in self.backends.into_iter().enumerate() {
            let key = format!("backends[{i}]");
            let spec = b.resolve(&key, base, &defaults)?;
            if !names.insert(spec.name.clone()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("duplicate backend name {:?}", spec.name),
                ));
            }
            backends.push(spec);
        }
        if let Some(dir) = plugins_dir {
            for spec in backends::plugins_in(&base.join(dir), &defaults)? {
                if !names.insert(spec.name.clone()) {
                    return Err(invalid(
                        "server.plugins_dir",
                        format!("{:?} is also defined in [[backends]]", spec.name),
                    ));
                }
                backends.push(spec);
            }
        }
        if backends.is_empty() {
            backends = builtins::builtin_backends(&defaults);
        }
        let tenants = tenants::resolve(self.tenants, &backends)?;
        // A certificate identity can only match if clients are asked for a
        // certificate, which only `client_ca` does.
        let client_ca = server.tls.as_ref().and_then(|t| t.client_ca.as_ref());
        if client_ca.is_none()
            && let Some(i) = tenants.iter().position(|t| !t.certs.is_empty())
        {
            return Err(invalid(
                format!("tenants[{i}].certs"),
                "needs server.tls.client_ca: without it no client sends a certificate",
            ));
        }
        Ok(Config {
            server,
            backends,
            tenants,
            cluster,
        })
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` as a config file in the current directory.
    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("."))
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("[server]\nlisten_addr = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_addr"), "{e}");
        let e = parse("[[backends]]\nname = \"a\"\nmodule = \"builtin:echo\"\nmemory = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory"), "{e}");
    }

    #[test]
    fn guest_threads_is_auto_or_a_count() {
        assert_eq!(parse("").unwrap().server.guest_threads, None);
        let c = parse("[server]\nguest_threads = \"auto\"\n").unwrap();
        assert_eq!(c.server.guest_threads, None);
        let c = parse("[server]\nguest_threads = 3\n").unwrap();
        assert_eq!(c.server.guest_threads, Some(3));
        for bad in ["0", "-1", "\"all\"", "5000"] {
            let e = parse(&format!("[server]\nguest_threads = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("server.guest_threads"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse("[sessions]\nlease = \"ten\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lease"), "{e}");
        let e = parse("[server]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("server.listen"), "{e}");
        let e = parse(
            "[[backends]]\nname = \"a\"\nmodule = \"builtin:echo\"\n[backends.sessions]\ncommand_timeout = \"10m\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("backends[0].sessions.command_timeout"), "{e}");
        let e = parse("[[backends]]\nname = \"a\"\nmodule = \"builtin:nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("backends[0].module"), "{e}");
    }

    #[test]
    fn duplicate_backends_are_rejected() {
        let e = parse(
            "[[backends]]\nname = \"a\"\nmodule = \"builtin:echo\"\n[[backends]]\nname = \"a\"\nmodule = \"builtin:kv\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("backends[1].name"), "{e}");
    }

    /// The reference at the top of this file, as TOML.
    fn reference() -> toml::Table {
        let doc: Vec<&str> = include_str!("mod.rs")
            .lines()
            .map_while(|l| l.strip_prefix("//!"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .skip_while(|l| *l != "```toml")
            .skip(1)
            .take_while(|l| *l != "```")
            .collect();
        doc.join("\n").parse().expect("the reference is TOML")
    }

    #[test]
    fn the_reference_states_every_session_default_and_the_others_it_can() {
        let doc = reference();
        // [sessions] sets every key, each to its default: laid over a policy
        // that differs from the defaults everywhere, it gives the defaults.
        let sessions: SessionPatch = doc["sessions"].clone().try_into().unwrap();
        let elsewhere = SessionPolicy {
            command_timeout: Duration::from_secs(1),
            max_command_timeout: Duration::from_secs(2),
            lease: Duration::from_secs(1),
            max_lease: Duration::from_secs(2),
            idle_timeout: Some(Duration::from_secs(1)),
            max_lifetime: Some(Duration::from_secs(1)),
            close_timeout: Duration::from_secs(1),
            memory_limit: 2 << 20,
            max_reply_bytes: 1,
            max_event_bytes: 1,
            event_queue: 1,
            replay_buffer: 1,
            event_overflow: OverflowPolicy::Fault,
            max_event_subscribers: 2,
            max_pending_ticks: 1,
            log_lines_per_sec: 1,
            log_burst: 1,
        };
        assert_eq!(
            sessions.over(&elsewhere, "sessions").unwrap(),
            SessionPolicy::default()
        );
        // [backends.native] states the native defaults.
        let native: native::NativeFile = doc["backends"][1]["native"].clone().try_into().unwrap();
        assert_eq!(
            native.resolve("native", Vec::new()).unwrap(),
            NativeSpec::new(Vec::new())
        );
        // [server] states the defaults, but for the keys that are examples
        // or depend on the environment.
        let mut server = doc["server"].as_table().unwrap().clone();
        for example in ["plugins_dir", "cache_dir", "state_dir", "tls"] {
            assert!(server.remove(example).is_some(), "{example}");
        }
        let server: server::ServerFile = toml::Value::Table(server).try_into().unwrap();
        assert_eq!(
            format!("{:?}", server.resolve(Path::new(".")).unwrap()),
            format!("{:?}", ServerSettings::default())
        );
    }
}
