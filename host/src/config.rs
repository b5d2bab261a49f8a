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
//! epoch_tick = "10ms"               # wasm interruption granularity
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
//!
//! [sessions]                        # defaults for every backend
//! command_timeout = "30s"
//! max_command_timeout = "5m"        # cap on a client's requested timeout
//! lease = "60s"
//! max_lease = "1h"                  # cap on a client's requested lease
//! idle_timeout = "off"              # close after this long without a call
//! max_lifetime = "off"              # close this long after open
//! close_timeout = "5s"              # graceful close before the worker is killed
//! memory_limit = "64MiB"            # linear memory per wasm session
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
//! [[tenants]]                       # API keys, quotas, allowed backends: see `tenants`
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
//! ```
//!
//! A native worker gets a clean environment: `PATH`, `HOME`, `LANG`, `LC_*`,
//! `TZ`, `RUST_LOG` and `RUST_BACKTRACE` from the gateway's, the backend's
//! `grants.env`, and the `GATEHOUSE_*` protocol variables. `memory_limit`
//! applies to wasm sessions only.
//!
//! Unknown keys and bad values are errors that name the key.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::builtin;

pub mod tenants;

pub use self::tenants::{KeySpec, LimitOverrides, TenantSpec};

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

/// The fully resolved configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server-wide settings.
    pub server: ServerSettings,
    /// Every backend, with its session policy resolved.
    pub backends: Vec<BackendSpec>,
    /// Every tenant (`[[tenants]]`); see [`tenants`].
    pub tenants: Vec<TenantSpec>,
}

/// Server-wide settings (`[server]`).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus listen address; `None` disables the metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Live sessions allowed in the whole gateway.
    pub max_sessions: usize,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// Most commands in one `InvokeBatch`.
    pub max_batch_commands: usize,
    /// How often the sweeper checks leases and timeouts.
    pub sweep_interval: Duration,
    /// How long shutdown waits for sessions to close before killing workers.
    pub shutdown_timeout: Duration,
    /// How long closed and faulted sessions stay visible.
    pub closed_session_retention: Duration,
    /// The wasm epoch tick: the granularity of command deadlines.
    pub epoch_tick: Duration,
    /// HTTP/2 streams a connection may open at once.
    pub max_concurrent_streams: u32,
    /// Requests in flight per connection; more are shed with `UNAVAILABLE`.
    pub max_connection_concurrency: usize,
    /// Interval of HTTP/2 keepalive pings.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// HTTP/2 streams reset by the client but not yet accepted, at most.
    pub max_pending_resets: usize,
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Event streams end with `UNAVAILABLE` this long after they start, so
    /// long streams move between gateways behind a load balancer; clients
    /// resume with `resume_after_sequence`. `None` keeps them open.
    pub max_event_stream_age: Option<Duration>,
    /// Where live native worker pids are recorded, so that a gateway
    /// killed outright has its leftovers removed at the next start.
    pub state_dir: PathBuf,
}

/// `$XDG_CACHE_HOME/gatehouse`, else `$HOME/.cache/gatehouse`.
fn default_cache_dir() -> Option<PathBuf> {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from("XDG_CACHE_HOME")
        .or_else(|| from("HOME").map(|h| h.join(".cache")))
        .map(|d| d.join("gatehouse"))
}

/// `$XDG_RUNTIME_DIR/gatehouse`, else `/tmp/gatehouse-<uid>`.
pub fn default_state_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("gatehouse"),
        _ => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            std::env::temp_dir().join(format!("gatehouse-{uid}"))
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            max_sessions: 1024,
            max_message_bytes: 4 << 20,
            max_batch_commands: 1000,
            sweep_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(10),
            closed_session_retention: Duration::from_secs(60),
            epoch_tick: Duration::from_millis(10),
            max_concurrent_streams: 1024,
            max_connection_concurrency: 256,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_pending_resets: 64,
            cache_dir: default_cache_dir(),
            max_event_stream_age: None,
            state_dir: default_state_dir(),
        }
    }
}

/// What a session may do and how long it may live (`[sessions]`, and
/// `[backends.sessions]` per backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Command timeout when the client asks for none.
    pub command_timeout: Duration,
    /// Largest command timeout a client may ask for.
    pub max_command_timeout: Duration,
    /// Lease when the client asks for none.
    pub lease: Duration,
    /// Largest lease a client may ask for.
    pub max_lease: Duration,
    /// Close after this long without a client call.
    pub idle_timeout: Option<Duration>,
    /// Close this long after open, whatever happens.
    pub max_lifetime: Option<Duration>,
    /// Time for a graceful close before the worker is killed.
    pub close_timeout: Duration,
    /// Linear memory a wasm session may grow to, in bytes.
    pub memory_limit: usize,
    /// Largest reply payload a command may return.
    pub max_reply_bytes: usize,
    /// Largest event payload a worker may emit.
    pub max_event_bytes: usize,
    /// Undelivered events kept per session.
    pub event_queue: usize,
    /// Delivered events kept for resuming a stream.
    pub replay_buffer: usize,
    /// What happens when the event queue is full.
    pub event_overflow: OverflowPolicy,
    /// Event streams attached to one session at a time.
    pub max_event_subscribers: usize,
    /// Ticks a plugin may have scheduled at once.
    pub max_pending_ticks: usize,
    /// Guest log lines (stdout, stderr, `host.log`) a session may write per
    /// second, after a burst of `log_burst`; the rest are dropped and counted.
    pub log_lines_per_sec: u32,
    /// Guest log lines a session may write at once.
    pub log_burst: u32,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(30),
            max_command_timeout: Duration::from_secs(300),
            lease: Duration::from_secs(60),
            max_lease: Duration::from_secs(3600),
            idle_timeout: None,
            max_lifetime: None,
            close_timeout: Duration::from_secs(5),
            memory_limit: 64 << 20,
            max_reply_bytes: 1 << 20,
            max_event_bytes: 64 << 10,
            event_queue: 1024,
            replay_buffer: 256,
            event_overflow: OverflowPolicy::DropOldest,
            max_event_subscribers: 1,
            max_pending_ticks: 64,
            log_lines_per_sec: 50,
            log_burst: 200,
        }
    }
}

/// What to do when a session's event queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    /// Drop the oldest undelivered event and count it.
    DropOldest,
    /// Fault the session.
    Fault,
}

/// How a backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// A WebAssembly component.
    Wasm,
    /// An out-of-process worker.
    Native,
}

/// Where a wasm backend's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    /// One of the components built into the binary.
    Builtin(String),
    /// A component file.
    File(PathBuf),
}

/// What runs a backend's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runner {
    /// A wasm component.
    Wasm(ModuleSource),
    /// A native worker program.
    Native(NativeSpec),
}

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
        }
    }
}

/// One backend, resolved.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    /// The name clients open sessions on.
    pub name: String,
    /// How it runs.
    pub kind: BackendKind,
    /// The component or the worker program.
    pub runner: Runner,
    /// Shown by `ListBackends`.
    pub description: String,
    /// Shown by `ListBackends`.
    pub version: String,
    /// Handed to every session's `open`, under the request's config.
    pub config: BTreeMap<String, String>,
    /// What the sandbox opens for the plugin (native: `env` only).
    pub grants: Grants,
    /// Session limits and timeouts.
    pub policy: SessionPolicy,
}

/// What a wasm plugin's sandbox opens. The default opens nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Environment variables the plugin sees.
    pub env: BTreeMap<String, String>,
    /// Host directories the plugin may use.
    pub preopens: Vec<Preopen>,
    /// TCP destinations the plugin may connect to.
    pub network: Vec<NetRule>,
}

/// One preopened directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it.
    pub guest: String,
    /// Whether the plugin may write.
    pub writable: bool,
}

/// One allowed TCP destination: `IP:PORT`, either part may be `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetRule {
    /// The address, or any.
    pub ip: Option<std::net::IpAddr>,
    /// The port, or any.
    pub port: Option<u16>,
}

impl NetRule {
    /// Parses `127.0.0.1:8080`, `[::1]:443`, `*:80`, `10.0.0.1:*`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not IP:PORT (either may be *)");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = match host {
            "*" => None,
            h => Some(h.parse().map_err(|_| bad())?),
        };
        let port = match port {
            "*" => None,
            p => Some(p.parse().map_err(|_| bad())?),
        };
        Ok(Self { ip, port })
    }

    /// Whether `addr` matches.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        self.ip.is_none_or(|ip| ip == addr.ip()) && self.port.is_none_or(|p| p == addr.port())
    }
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
            backends: builtin_backends(&SessionPolicy::default()),
            tenants: Vec::new(),
        }
    }

    /// Whether any API key is configured. Without one the gateway runs in
    /// local development mode: anonymous calls, loopback only.
    pub fn has_keys(&self) -> bool {
        self.tenants.iter().any(|t| !t.keys.is_empty())
    }
}

fn builtin_backends(policy: &SessionPolicy) -> Vec<BackendSpec> {
    let describe = |name: &str| match name {
        "echo" => "Example: echo, a per-session counter, events and timer ticks",
        "kv" => "Example: a per-session key/value store",
        _ => "Example backend",
    };
    let mut backends: Vec<BackendSpec> = builtin::DEFAULT_BACKENDS
        .iter()
        .map(|name| BackendSpec {
            name: (*name).to_string(),
            kind: BackendKind::Wasm,
            runner: Runner::Wasm(ModuleSource::Builtin((*name).to_string())),
            description: describe(name).to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            config: BTreeMap::new(),
            grants: Grants::default(),
            policy: policy.clone(),
        })
        .collect();
    // The native example runs from this very binary (`gatehouse worker
    // sim-device`), so it needs no build step of its own.
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "gatehouse".into());
    backends.push(BackendSpec {
        name: builtin::SIM_DEVICE.to_string(),
        kind: BackendKind::Native,
        runner: Runner::Native(NativeSpec::new(vec![
            exe,
            "worker".into(),
            builtin::SIM_DEVICE.into(),
        ])),
        description: "Example native worker: a simulated industrial tag server".into(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        config: BTreeMap::new(),
        grants: Grants::default(),
        policy: policy.clone(),
    });
    backends
}

// ---- the file format -------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    server: ServerFile,
    #[serde(default)]
    sessions: PolicyFile,
    #[serde(default)]
    backends: Vec<BackendFile>,
    #[serde(default)]
    tenants: Vec<tenants::TenantFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    listen: Option<String>,
    metrics_listen: Option<String>,
    max_sessions: Option<usize>,
    max_message_bytes: Option<ByteSize>,
    max_batch_commands: Option<usize>,
    sweep_interval: Option<Dur>,
    shutdown_timeout: Option<Dur>,
    closed_session_retention: Option<Dur>,
    epoch_tick: Option<Dur>,
    max_concurrent_streams: Option<u32>,
    max_connection_concurrency: Option<usize>,
    keepalive_interval: Option<Dur>,
    keepalive_timeout: Option<Dur>,
    max_pending_resets: Option<usize>,
    plugins_dir: Option<PathBuf>,
    cache_dir: Option<String>,
    max_event_stream_age: Option<OptDur>,
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    command_timeout: Option<Dur>,
    max_command_timeout: Option<Dur>,
    lease: Option<Dur>,
    max_lease: Option<Dur>,
    idle_timeout: Option<OptDur>,
    max_lifetime: Option<OptDur>,
    close_timeout: Option<Dur>,
    memory_limit: Option<ByteSize>,
    max_reply_bytes: Option<ByteSize>,
    max_event_bytes: Option<ByteSize>,
    event_queue: Option<usize>,
    replay_buffer: Option<usize>,
    event_overflow: Option<OverflowPolicy>,
    max_event_subscribers: Option<usize>,
    max_pending_ticks: Option<usize>,
    log_lines_per_sec: Option<u32>,
    log_burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendFile {
    name: String,
    #[serde(default = "default_kind")]
    kind: BackendKind,
    module: Option<String>,
    command: Option<Vec<String>>,
    description: Option<String>,
    version: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    sessions: PolicyFile,
    #[serde(default)]
    grants: GrantsFile,
    native: Option<NativeFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeFile {
    startup_timeout: Option<Dur>,
    heartbeat_interval: Option<Dur>,
    heartbeat_grace: Option<Dur>,
    warm_pool: Option<usize>,
    max_frame_bytes: Option<ByteSize>,
}

impl NativeFile {
    fn resolve(self, key: &str, command: Vec<String>) -> Result<NativeSpec, ConfigError> {
        let d = NativeSpec::new(command);
        let n = NativeSpec {
            startup_timeout: self.startup_timeout.map_or(d.startup_timeout, |v| v.0),
            heartbeat_interval: self
                .heartbeat_interval
                .map_or(d.heartbeat_interval, |v| v.0),
            heartbeat_grace: self.heartbeat_grace.map_or(d.heartbeat_grace, |v| v.0),
            warm_pool: self.warm_pool.unwrap_or(d.warm_pool),
            max_frame_bytes: self.max_frame_bytes.map_or(d.max_frame_bytes, |v| v.0),
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
        if !(1 << 10..=1 << 30).contains(&n.max_frame_bytes) {
            return Err(invalid(k("max_frame_bytes"), "must be 1KiB..=1GiB"));
        }
        Ok(n)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantsFile {
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    preopens: Vec<PreopenFile>,
    #[serde(default)]
    network: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreopenFile {
    host: PathBuf,
    guest: String,
    #[serde(default)]
    mode: PreopenMode,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PreopenMode {
    #[default]
    Ro,
    Rw,
}

impl GrantsFile {
    fn resolve(self, key: &str, base: &Path) -> Result<Grants, ConfigError> {
        let mut preopens = Vec::with_capacity(self.preopens.len());
        for (i, p) in self.preopens.into_iter().enumerate() {
            let host = base.join(&p.host);
            if !host.is_dir() {
                return Err(invalid(
                    format!("{key}.preopens[{i}].host"),
                    format!("{} is not a directory", host.display()),
                ));
            }
            if p.guest.is_empty() {
                return Err(invalid(
                    format!("{key}.preopens[{i}].guest"),
                    "must not be empty",
                ));
            }
            preopens.push(Preopen {
                host,
                guest: p.guest,
                writable: p.mode == PreopenMode::Rw,
            });
        }
        let network = self
            .network
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                NetRule::parse(rule).map_err(|m| invalid(format!("{key}.network[{i}]"), m))
            })
            .collect::<Result<_, _>>()?;
        Ok(Grants {
            env: self.env,
            preopens,
            network,
        })
    }
}

fn default_kind() -> BackendKind {
    BackendKind::Wasm
}

impl ConfigFile {
    fn resolve(self, base: &Path) -> Result<Config, ConfigError> {
        let plugins_dir = self.server.plugins_dir.clone();
        let server = self.server.resolve(base)?;
        let defaults = self.sessions.apply(SessionPolicy::default(), "sessions")?;
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
            for spec in plugins_in(&base.join(dir), &defaults)? {
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
            backends = builtin_backends(&defaults);
        }
        let tenants = tenants::resolve(self.tenants, &backends)?;
        Ok(Config {
            server,
            backends,
            tenants,
        })
    }
}

impl ServerFile {
    fn resolve(self, base: &Path) -> Result<ServerSettings, ConfigError> {
        let d = ServerSettings::default();
        let listen = match self.listen {
            Some(s) => parse_addr(&s).map_err(|m| invalid("server.listen", m))?,
            None => d.listen,
        };
        let metrics_listen = match self.metrics_listen.as_deref() {
            Some("off") => None,
            Some(s) => Some(parse_addr(s).map_err(|m| invalid("server.metrics_listen", m))?),
            None => d.metrics_listen,
        };
        let s = ServerSettings {
            listen,
            metrics_listen,
            max_sessions: self.max_sessions.unwrap_or(d.max_sessions),
            max_message_bytes: self.max_message_bytes.map_or(d.max_message_bytes, |b| b.0),
            max_batch_commands: self.max_batch_commands.unwrap_or(d.max_batch_commands),
            sweep_interval: self.sweep_interval.map_or(d.sweep_interval, |v| v.0),
            shutdown_timeout: self.shutdown_timeout.map_or(d.shutdown_timeout, |v| v.0),
            closed_session_retention: self
                .closed_session_retention
                .map_or(d.closed_session_retention, |v| v.0),
            epoch_tick: self.epoch_tick.map_or(d.epoch_tick, |v| v.0),
            max_concurrent_streams: self
                .max_concurrent_streams
                .unwrap_or(d.max_concurrent_streams),
            max_connection_concurrency: self
                .max_connection_concurrency
                .unwrap_or(d.max_connection_concurrency),
            keepalive_interval: self
                .keepalive_interval
                .map_or(d.keepalive_interval, |v| v.0),
            keepalive_timeout: self.keepalive_timeout.map_or(d.keepalive_timeout, |v| v.0),
            max_pending_resets: self.max_pending_resets.unwrap_or(d.max_pending_resets),
            cache_dir: match self.cache_dir.as_deref() {
                Some("off") => None,
                Some(dir) => Some(base.join(dir)),
                None => d.cache_dir,
            },
            max_event_stream_age: self
                .max_event_stream_age
                .map_or(d.max_event_stream_age, |v| v.0),
            state_dir: self.state_dir.unwrap_or(d.state_dir),
        };
        if !s.state_dir.is_absolute() {
            return Err(invalid("server.state_dir", "must be an absolute path"));
        }
        if s.max_sessions == 0 || s.max_sessions > 1_000_000 {
            return Err(invalid("server.max_sessions", "must be 1..=1000000"));
        }
        if s.max_message_bytes < 1024 {
            return Err(invalid("server.max_message_bytes", "must be at least 1KiB"));
        }
        if s.max_batch_commands == 0 {
            return Err(invalid("server.max_batch_commands", "must be at least 1"));
        }
        nonzero(s.sweep_interval, "server.sweep_interval")?;
        nonzero(s.epoch_tick, "server.epoch_tick")?;
        nonzero(s.keepalive_interval, "server.keepalive_interval")?;
        nonzero(s.keepalive_timeout, "server.keepalive_timeout")?;
        if let Some(age) = s.max_event_stream_age {
            nonzero(age, "server.max_event_stream_age")?;
        }
        if s.max_concurrent_streams == 0 {
            return Err(invalid(
                "server.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if s.max_connection_concurrency == 0 {
            return Err(invalid(
                "server.max_connection_concurrency",
                "must be at least 1",
            ));
        }
        Ok(s)
    }
}

impl PolicyFile {
    fn apply(&self, base: SessionPolicy, key: &str) -> Result<SessionPolicy, ConfigError> {
        let p = SessionPolicy {
            command_timeout: self.command_timeout.map_or(base.command_timeout, |v| v.0),
            max_command_timeout: self
                .max_command_timeout
                .map_or(base.max_command_timeout, |v| v.0),
            lease: self.lease.map_or(base.lease, |v| v.0),
            max_lease: self.max_lease.map_or(base.max_lease, |v| v.0),
            idle_timeout: self.idle_timeout.map_or(base.idle_timeout, |v| v.0),
            max_lifetime: self.max_lifetime.map_or(base.max_lifetime, |v| v.0),
            close_timeout: self.close_timeout.map_or(base.close_timeout, |v| v.0),
            memory_limit: self.memory_limit.map_or(base.memory_limit, |v| v.0),
            max_reply_bytes: self.max_reply_bytes.map_or(base.max_reply_bytes, |v| v.0),
            max_event_bytes: self.max_event_bytes.map_or(base.max_event_bytes, |v| v.0),
            event_queue: self.event_queue.unwrap_or(base.event_queue),
            replay_buffer: self.replay_buffer.unwrap_or(base.replay_buffer),
            event_overflow: self.event_overflow.unwrap_or(base.event_overflow),
            max_event_subscribers: self
                .max_event_subscribers
                .unwrap_or(base.max_event_subscribers),
            max_pending_ticks: self.max_pending_ticks.unwrap_or(base.max_pending_ticks),
            log_lines_per_sec: self.log_lines_per_sec.unwrap_or(base.log_lines_per_sec),
            log_burst: self.log_burst.unwrap_or(base.log_burst),
        };
        let k = |name: &str| format!("{key}.{name}");
        nonzero(p.command_timeout, &k("command_timeout"))?;
        nonzero(p.lease, &k("lease"))?;
        if p.command_timeout > p.max_command_timeout {
            return Err(invalid(
                k("command_timeout"),
                "is larger than max_command_timeout",
            ));
        }
        if p.lease > p.max_lease {
            return Err(invalid(k("lease"), "is larger than max_lease"));
        }
        if p.memory_limit < (1 << 20) {
            return Err(invalid(k("memory_limit"), "must be at least 1MiB"));
        }
        if p.event_queue == 0 {
            return Err(invalid(k("event_queue"), "must be at least 1"));
        }
        if p.max_event_subscribers == 0 {
            return Err(invalid(k("max_event_subscribers"), "must be at least 1"));
        }
        Ok(p)
    }
}

impl BackendFile {
    fn resolve(
        self,
        key: &str,
        base: &Path,
        defaults: &SessionPolicy,
    ) -> Result<BackendSpec, ConfigError> {
        if !valid_backend_name(&self.name) {
            return Err(invalid(
                format!("{key}.name"),
                "must be 1-64 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        let runner = match self.kind {
            BackendKind::Wasm => {
                if self.command.is_some() {
                    return Err(invalid(
                        format!("{key}.command"),
                        "is only for kind = \"native\"; a wasm backend names its module",
                    ));
                }
                if self.native.is_some() {
                    return Err(invalid(
                        format!("{key}.native"),
                        "is only for kind = \"native\"",
                    ));
                }
                Runner::Wasm(resolve_module(self.module, key, base)?)
            }
            BackendKind::Native => {
                if self.module.is_some() {
                    return Err(invalid(
                        format!("{key}.module"),
                        "is only for kind = \"wasm\"; a native backend names its command",
                    ));
                }
                if !self.grants.preopens.is_empty() || !self.grants.network.is_empty() {
                    let what = if self.grants.preopens.is_empty() {
                        "network"
                    } else {
                        "preopens"
                    };
                    return Err(invalid(
                        format!("{key}.grants.{what}"),
                        "native workers are not sandboxed; only grants.env applies to them",
                    ));
                }
                let command = resolve_command(self.command, key, base)?;
                Runner::Native(
                    self.native
                        .unwrap_or_default()
                        .resolve(&format!("{key}.native"), command)?,
                )
            }
        };
        let policy = self
            .sessions
            .apply(defaults.clone(), &format!("{key}.sessions"))?;
        let grants = self.grants.resolve(&format!("{key}.grants"), base)?;
        Ok(BackendSpec {
            description: self.description.unwrap_or_default(),
            version: self.version.unwrap_or_else(|| "0.0.0".into()),
            name: self.name,
            kind: self.kind,
            runner,
            config: self.config,
            grants,
            policy,
        })
    }
}

/// One backend per `*.wasm` in `dir`, named by its file stem.
fn plugins_in(dir: &Path, defaults: &SessionPolicy) -> Result<Vec<BackendSpec>, ConfigError> {
    let key = "server.plugins_dir";
    let entries = std::fs::read_dir(dir)
        .map_err(|e| invalid(key, format!("reading {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|n| valid_backend_name(n))
                .ok_or_else(|| {
                    invalid(
                        key,
                        format!("{} does not make a valid backend name", path.display()),
                    )
                })?
                .to_string();
            Ok(BackendSpec {
                description: format!("{} (plugins_dir)", path.display()),
                version: "0.0.0".into(),
                kind: BackendKind::Wasm,
                runner: Runner::Wasm(ModuleSource::File(path)),
                config: BTreeMap::new(),
                grants: Grants::default(),
                policy: defaults.clone(),
                name,
            })
        })
        .collect()
}

fn valid_backend_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn resolve_module(
    module: Option<String>,
    key: &str,
    base: &Path,
) -> Result<ModuleSource, ConfigError> {
    let Some(m) = module else {
        return Err(invalid(format!("{key}.module"), "is required"));
    };
    match m.strip_prefix(builtin::BUILTIN_PREFIX) {
        Some(name) => {
            if builtin::component(name).is_none() {
                let known: Vec<&str> = builtin::BUILTIN_COMPONENTS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect();
                return Err(invalid(
                    format!("{key}.module"),
                    format!(
                        "no built-in component {name:?} (have: {})",
                        known.join(", ")
                    ),
                ));
            }
            Ok(ModuleSource::Builtin(name.to_string()))
        }
        None => {
            let path = base.join(&m);
            if !path.is_file() {
                return Err(invalid(
                    format!("{key}.module"),
                    format!("{} is not a file", path.display()),
                ));
            }
            Ok(ModuleSource::File(path))
        }
    }
}

/// A native command line: a program (a bare name is looked up in `PATH` at
/// spawn; a path with a `/` is resolved against the config's directory and
/// must be a file) and its arguments.
fn resolve_command(
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

fn nonzero(d: Duration, key: &str) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(invalid(key, "must be greater than zero"))
    } else {
        Ok(())
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:50051"))
}

// ---- value types -------------------------------------------------------------

/// A duration written as `250ms`, `30s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

/// A duration that may also be `"off"`.
#[derive(Debug, Clone, Copy)]
struct OptDur(Option<Duration>);

/// A size written as bytes (`4096`) or with a unit (`64KiB`, `4MiB`, `1GiB`).
#[derive(Debug, Clone, Copy)]
struct ByteSize(usize);

/// Parses `250ms`, `30s`, `5m`, `1h` (also `1.5s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} needs a unit: ms, s, m or h"))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4MiB"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?}: use B, KiB, MiB or GiB"
            ));
        }
    };
    value
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for OptDur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "off" {
            return Ok(OptDur(None));
        }
        parse_duration(&s)
            .map(|v| OptDur(Some(v)))
            .map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like 4096 or \"4MiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                usize::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("size must not be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                usize::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("size is too large"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("."))
    }

    #[test]
    fn empty_file_gets_defaults_and_builtin_backends() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:50051");
        let names: Vec<&str> = c.backends.iter().map(|b| b.name.as_str()).collect();
        assert!(names.contains(&"echo") && names.contains(&"kv"));
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

    #[test]
    fn backend_policy_overrides_global_defaults() {
        let c = parse(
            "[sessions]\nlease = \"5s\"\nidle_timeout = \"1m\"\n[[backends]]\nname = \"a\"\nmodule = \"builtin:echo\"\n[backends.sessions]\ncommand_timeout = \"200ms\"\nmemory_limit = \"8MiB\"\nidle_timeout = \"off\"\n",
        )
        .unwrap();
        let p = &c.backends[0].policy;
        assert_eq!(p.lease, Duration::from_secs(5));
        assert_eq!(p.command_timeout, Duration::from_millis(200));
        assert_eq!(p.memory_limit, 8 << 20);
        assert_eq!(p.idle_timeout, None);
    }

    #[test]
    fn grants_are_parsed_and_checked() {
        let dir = std::env::temp_dir();
        let c = parse(&format!(
            "[[backends]]\nname = \"a\"\nmodule = \"builtin:echo\"\n[backends.grants]\nenv = {{ A = \"1\" }}\nnetwork = [\"127.0.0.1:80\", \"*:443\", \"[::1]:*\"]\n[[backends.grants.preopens]]\nhost = {:?}\nguest = \"/tmp\"\nmode = \"rw\"\n",
            dir.display().to_string()
        ))
        .unwrap();
        let g = &c.backends[0].grants;
        assert_eq!(g.env.get("A").map(String::as_str), Some("1"));
        assert!(g.preopens[0].writable);
        assert!(g.network[0].allows("127.0.0.1:80".parse().unwrap()));
        assert!(!g.network[0].allows("127.0.0.1:81".parse().unwrap()));
        assert!(g.network[1].allows("10.1.2.3:443".parse().unwrap()));
        assert!(g.network[2].allows("[::1]:9".parse().unwrap()));
        let e = parse("[[backends]]\nname = \"a\"\nmodule = \"builtin:echo\"\n[backends.grants]\nnetwork = [\"example.com:80\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("backends[0].grants.network[0]"), "{e}");
        let e = parse("[[backends]]\nname = \"a\"\nmodule = \"builtin:echo\"\n[[backends.grants.preopens]]\nhost = \"/no/such/dir\"\nguest = \"/d\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("backends[0].grants.preopens[0].host"), "{e}");
    }

    #[test]
    fn plugins_dir_adds_a_backend_per_component() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alpha.wasm"), b"x").unwrap();
        std::fs::write(dir.path().join("beta.wasm"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let c = Config::parse(
            &format!(
                "[server]\nplugins_dir = {:?}\n",
                dir.path().display().to_string()
            ),
            Path::new("."),
        )
        .unwrap();
        let names: Vec<&str> = c.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["alpha", "beta"]);
        let e = Config::parse(
            &format!(
                "[server]\nplugins_dir = {:?}\n[[backends]]\nname = \"alpha\"\nmodule = \"builtin:echo\"\n",
                dir.path().display().to_string()
            ),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("server.plugins_dir"), "{e}");
    }

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

    #[test]
    fn the_builtin_config_serves_sim_device_from_this_binary() {
        let c = Config::builtin();
        let sim = c.backends.iter().find(|b| b.name == "sim-device").unwrap();
        let Runner::Native(n) = &sim.runner else {
            panic!("sim-device is native")
        };
        assert_eq!(&n.command[1..], ["worker", "sim-device"]);
        assert!(c.server.state_dir.is_absolute());
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("12").unwrap(), 12);
        assert!(parse_size("1TiB").is_err());
    }
}
