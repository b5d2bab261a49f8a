//! `[server]`: the gateway's own settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::tls::{TlsFile, TlsFiles};
use super::{ConfigError, invalid, nonzero, units};
use crate::rate::{MAX_BURST, Rate};

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
    /// Failed authentications a peer address may make
    /// (`max_auth_failures_per_sec`, `auth_failures_burst`); past them its
    /// calls are refused unchecked. `None` turns the throttle off.
    pub auth_failures: Option<Rate>,
    /// TLS on the gRPC port (`[server.tls]`); `None` serves plaintext.
    pub tls: Option<TlsFiles>,
    /// TLS on the HTTP port: `[server.http_tls]`, else `[server.tls]`.
    pub http_tls: Option<TlsFiles>,
    /// Serve API keys in plaintext on an address that is not loopback: for
    /// a TLS-terminating proxy in front of the gateway.
    pub allow_plaintext: bool,
    /// Open connections per port (gRPC and HTTP each); beyond it a new
    /// connection is closed as soon as it is accepted (or, while the
    /// health reserve has room, kept for health checks only).
    pub max_connections: usize,
    /// Open connections per port from one client address (an IPv6 client
    /// by its /64); `None` (`"off"`) for no cap. Default: a quarter of
    /// `max_connections`, at most 256, at least 1.
    pub max_connections_per_address: Option<usize>,
    /// Connections per port beyond `max_connections` that serve only
    /// health checks, so a full port still answers its probes.
    pub health_connections: usize,
    /// How long a new connection (after its TLS handshake) may go without
    /// starting a request before it is closed.
    pub first_request_timeout: Duration,
    /// How long a connection with no open request stays; `None` (`"off"`)
    /// keeps it.
    pub idle_timeout: Option<Duration>,
    /// Host names the HTTP port answers to besides IP addresses and
    /// `localhost` (`*.example.com` for any name under one); others get
    /// 421, against DNS rebinding.
    pub http_hosts: Vec<String>,
    /// Bytes every session together may make the gateway hold: wasm
    /// memories and tables, undelivered events and replay buffers.
    pub memory_budget: usize,
    /// Where the key store lives (`gatehouse.db`); `None` (`"off"`) keeps
    /// keys in the config file only.
    pub data_dir: Option<PathBuf>,
    /// Serve the web console at `/console` on the HTTP port.
    pub console: bool,
    /// wasm guests running at once (`guest_threads`): their turns of the
    /// runtime's threads. `None` (`"auto"`): one per runtime thread.
    pub guest_threads: Option<usize>,
}

/// `server.max_connections_per_address` when none is configured: a quarter
/// of the port's connections, at most 256 (a client needs a handful; a
/// proxy in front, whose clients all share its address, sets `"off"`).
pub fn default_max_connections_per_address(max_connections: usize) -> usize {
    (max_connections / 4).clamp(1, 256)
}

/// Largest `server.guest_threads`.
pub const MAX_GUEST_THREADS: usize = 1024;

/// `server.memory_budget` when the machine's memory cannot be read.
pub const FALLBACK_MEMORY_BUDGET: usize = 4 << 30;

/// `server.memory_budget = "auto"`, the default: half of the machine's
/// physical memory, read at start.
pub fn default_memory_budget() -> usize {
    crate::memory_budget::physical_memory().map_or(FALLBACK_MEMORY_BUDGET, |b| b / 2)
}

/// `server.max_auth_failures_per_sec` when none is configured.
pub const DEFAULT_AUTH_FAILURES_PER_SEC: f64 = 1.0;

/// `server.auth_failures_burst` when none is configured.
pub const DEFAULT_AUTH_FAILURES_BURST: u32 = 10;

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

/// `$XDG_DATA_HOME/gatehouse`, else `$HOME/.local/share/gatehouse`: kept
/// across reboots, unlike the state directory.
pub fn default_data_dir() -> Option<PathBuf> {
    let from = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|v| v.is_absolute())
    };
    from("XDG_DATA_HOME")
        .or_else(|| from("HOME").map(|h| h.join(".local").join("share")))
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
            tls: None,
            http_tls: None,
            allow_plaintext: false,
            max_connections: 4096,
            max_connections_per_address: Some(default_max_connections_per_address(4096)),
            health_connections: 8,
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            http_hosts: Vec::new(),
            memory_budget: default_memory_budget(),
            data_dir: default_data_dir(),
            console: true,
            guest_threads: None,
            auth_failures: Rate::new(
                DEFAULT_AUTH_FAILURES_PER_SEC,
                Some(DEFAULT_AUTH_FAILURES_BURST),
            )
            .ok(),
        }
    }
}

// ---- the file format -------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ServerFile {
    listen: Option<String>,
    metrics_listen: Option<String>,
    max_sessions: Option<usize>,
    #[serde(deserialize_with = "units::size")]
    max_message_bytes: Option<usize>,
    max_batch_commands: Option<usize>,
    #[serde(deserialize_with = "units::duration")]
    sweep_interval: Option<Duration>,
    #[serde(deserialize_with = "units::duration")]
    shutdown_timeout: Option<Duration>,
    #[serde(deserialize_with = "units::duration")]
    closed_session_retention: Option<Duration>,
    #[serde(deserialize_with = "units::duration")]
    epoch_tick: Option<Duration>,
    max_concurrent_streams: Option<u32>,
    max_connection_concurrency: Option<usize>,
    #[serde(deserialize_with = "units::duration")]
    keepalive_interval: Option<Duration>,
    #[serde(deserialize_with = "units::duration")]
    keepalive_timeout: Option<Duration>,
    max_pending_resets: Option<usize>,
    /// Read by [`super::backends::plugins_in`], not part of the settings.
    pub(super) plugins_dir: Option<PathBuf>,
    cache_dir: Option<String>,
    #[serde(deserialize_with = "units::duration_or_off")]
    max_event_stream_age: Option<Option<Duration>>,
    state_dir: Option<PathBuf>,
    tls: Option<TlsFile>,
    http_tls: Option<TlsFile>,
    allow_plaintext: Option<bool>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<NumberOrOff>,
    health_connections: Option<usize>,
    #[serde(deserialize_with = "units::duration")]
    first_request_timeout: Option<Duration>,
    #[serde(deserialize_with = "units::duration_or_off")]
    idle_timeout: Option<Option<Duration>>,
    http_hosts: Option<Vec<String>>,
    #[serde(deserialize_with = "units::size_or_auto")]
    memory_budget: Option<Option<usize>>,
    max_auth_failures_per_sec: Option<NumberOrOff>,
    auth_failures_burst: Option<u32>,
    data_dir: Option<String>,
    console: Option<bool>,
    guest_threads: Option<CountOrAuto>,
}

/// A count, or the word `"auto"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CountOrAuto {
    Count(i64),
    Word(String),
}

/// A number, or the word `"off"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NumberOrOff {
    Number(f64),
    Word(String),
}

impl ServerFile {
    /// `[server]`; a relative `cache_dir` is resolved against `base`.
    pub(super) fn resolve(self, base: &Path) -> Result<ServerSettings, ConfigError> {
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
        let tls = self
            .tls
            .map(|t| t.resolve(base, "server.tls"))
            .transpose()?;
        let http_tls = match self.http_tls {
            Some(t) => Some(t.resolve(base, "server.http_tls")?),
            None => tls.clone(),
        };
        let max_connections = self.max_connections.unwrap_or(d.max_connections);
        let s = ServerSettings {
            listen,
            metrics_listen,
            max_sessions: self.max_sessions.unwrap_or(d.max_sessions),
            max_message_bytes: self.max_message_bytes.unwrap_or(d.max_message_bytes),
            max_batch_commands: self.max_batch_commands.unwrap_or(d.max_batch_commands),
            sweep_interval: self.sweep_interval.unwrap_or(d.sweep_interval),
            shutdown_timeout: self.shutdown_timeout.unwrap_or(d.shutdown_timeout),
            closed_session_retention: self
                .closed_session_retention
                .unwrap_or(d.closed_session_retention),
            epoch_tick: self.epoch_tick.unwrap_or(d.epoch_tick),
            max_concurrent_streams: self
                .max_concurrent_streams
                .unwrap_or(d.max_concurrent_streams),
            max_connection_concurrency: self
                .max_connection_concurrency
                .unwrap_or(d.max_connection_concurrency),
            keepalive_interval: self.keepalive_interval.unwrap_or(d.keepalive_interval),
            keepalive_timeout: self.keepalive_timeout.unwrap_or(d.keepalive_timeout),
            max_pending_resets: self.max_pending_resets.unwrap_or(d.max_pending_resets),
            cache_dir: match self.cache_dir.as_deref() {
                Some("off") => None,
                Some(dir) => Some(base.join(dir)),
                None => d.cache_dir,
            },
            max_event_stream_age: self.max_event_stream_age.unwrap_or(d.max_event_stream_age),
            state_dir: self.state_dir.unwrap_or(d.state_dir),
            tls,
            http_tls,
            allow_plaintext: self.allow_plaintext.unwrap_or(d.allow_plaintext),
            max_connections,
            max_connections_per_address: per_address(
                self.max_connections_per_address,
                max_connections,
            )?,
            health_connections: self.health_connections.unwrap_or(d.health_connections),
            first_request_timeout: self
                .first_request_timeout
                .unwrap_or(d.first_request_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(d.idle_timeout),
            http_hosts: http_hosts(self.http_hosts.unwrap_or_default())?,
            memory_budget: self.memory_budget.flatten().unwrap_or(d.memory_budget),
            auth_failures: auth_failures(self.max_auth_failures_per_sec, self.auth_failures_burst)?,
            data_dir: match self.data_dir.as_deref() {
                Some("off") => None,
                Some("") => {
                    return Err(invalid(
                        "server.data_dir",
                        "is empty: give a directory or \"off\"",
                    ));
                }
                Some(dir) => Some(base.join(dir)),
                None => d.data_dir,
            },
            console: self.console.unwrap_or(d.console),
            guest_threads: match self.guest_threads {
                None => d.guest_threads,
                Some(CountOrAuto::Word(w)) if w == "auto" => None,
                Some(CountOrAuto::Count(n)) if (1..=MAX_GUEST_THREADS as i64).contains(&n) => {
                    Some(n as usize)
                }
                Some(_) => {
                    return Err(invalid(
                        "server.guest_threads",
                        format!("must be \"auto\" or 1..={MAX_GUEST_THREADS}"),
                    ));
                }
            },
        };
        if s.memory_budget < super::MIN_MEMORY_LIMIT {
            return Err(invalid("server.memory_budget", "must be at least 1MiB"));
        }
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
        if s.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if s.health_connections > 1024 {
            return Err(invalid("server.health_connections", "must be 0..=1024"));
        }
        nonzero(s.first_request_timeout, "server.first_request_timeout")?;
        if let Some(idle) = s.idle_timeout {
            nonzero(idle, "server.idle_timeout")?;
        }
        if s.http_tls.is_some() && s.metrics_listen.is_none() {
            return Err(invalid(
                "server.http_tls",
                "is set but the HTTP port is off (server.metrics_listen = \"off\")",
            ));
        }
        Ok(s)
    }
}

/// `server.max_auth_failures_per_sec` and `server.auth_failures_burst`.
fn auth_failures(
    per_sec: Option<NumberOrOff>,
    burst: Option<u32>,
) -> Result<Option<Rate>, ConfigError> {
    const RATE: &str = "server.max_auth_failures_per_sec";
    const BURST: &str = "server.auth_failures_burst";
    if let Some(b) = burst
        && !(1..=MAX_BURST).contains(&b)
    {
        return Err(invalid(BURST, format!("must be 1..={MAX_BURST}")));
    }
    let per_sec = match per_sec {
        None => DEFAULT_AUTH_FAILURES_PER_SEC,
        Some(NumberOrOff::Number(n)) => n,
        Some(NumberOrOff::Word(w)) if w == "off" => {
            if burst.is_some() {
                return Err(invalid(
                    BURST,
                    format!("has no effect with {RATE} = \"off\""),
                ));
            }
            return Ok(None);
        }
        Some(NumberOrOff::Word(w)) => {
            return Err(invalid(
                RATE,
                format!("{w:?} is neither a number nor \"off\""),
            ));
        }
    };
    let burst = burst.unwrap_or(DEFAULT_AUTH_FAILURES_BURST);
    Rate::new(per_sec, Some(burst))
        .map(Some)
        .map_err(|m| invalid(RATE, m))
}

/// `server.http_hosts`: DNS names (lower-cased), each optionally `*.`
/// followed by one.
fn http_hosts(names: Vec<String>) -> Result<Vec<String>, ConfigError> {
    names
        .into_iter()
        .map(|n| {
            let name = n.trim().to_ascii_lowercase();
            let bare = name.strip_prefix("*.").unwrap_or(&name);
            let ok = !bare.is_empty()
                && bare.len() <= 253
                && bare.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if ok {
                Ok(name)
            } else {
                Err(invalid(
                    "server.http_hosts",
                    format!("{n:?} is not a host name (like gateway.example.com or *.example.com)"),
                ))
            }
        })
        .collect()
}

/// `server.max_connections_per_address`: a count up to `max_connections`,
/// or `"off"`.
fn per_address(
    value: Option<NumberOrOff>,
    max_connections: usize,
) -> Result<Option<usize>, ConfigError> {
    const KEY: &str = "server.max_connections_per_address";
    match value {
        None => Ok(Some(default_max_connections_per_address(max_connections))),
        Some(NumberOrOff::Word(w)) if w == "off" => Ok(None),
        Some(NumberOrOff::Number(n))
            if n.fract() == 0.0 && n >= 1.0 && n <= max_connections as f64 =>
        {
            Ok(Some(n as usize))
        }
        Some(NumberOrOff::Number(n)) => Err(invalid(
            KEY,
            format!(
                "{n} must be a whole number from 1 to server.max_connections ({max_connections}), or \"off\""
            ),
        )),
        Some(NumberOrOff::Word(w)) => Err(invalid(
            KEY,
            format!("{w:?} is neither a number nor \"off\""),
        )),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:50051"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;
    use crate::config::tests::parse;

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    /// `text` as a file in /etc/gatehouse.
    fn parse_at(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/gatehouse")).map_err(|e| e.to_string())
    }

    #[test]
    fn tls_files_resolve_against_the_config_and_the_http_port_shares_them() {
        let c = parse_at("[server.tls]\ncert = \"tls/s.pem\"\nkey = \"/abs/s.key\"\n").unwrap();
        let tls = c.server.tls.clone().unwrap();
        assert_eq!(tls.cert, Path::new("/etc/gatehouse/tls/s.pem"));
        assert_eq!(tls.key, Path::new("/abs/s.key"));
        assert_eq!(tls.client_ca, None);
        assert_eq!(c.server.http_tls, Some(tls));
        let c = parse_at(
            "[server.tls]\ncert = \"a.pem\"\nkey = \"a.key\"\nclient_ca = \"ca.pem\"\n[server.http_tls]\ncert = \"h.pem\"\nkey = \"h.key\"\n",
        )
        .unwrap();
        let http = c.server.http_tls.unwrap();
        assert_eq!(http.cert, Path::new("/etc/gatehouse/h.pem"));
        assert_eq!(http.client_ca, None);
        assert!(!c.server.allow_plaintext);
        assert_eq!(c.server.max_connections, 4096);
    }

    #[test]
    fn bad_tls_and_connection_settings_are_named() {
        let e = parse_at("[server.tls]\ncert = \"a.pem\"\n").unwrap_err();
        assert!(e.starts_with("server.tls.key"), "{e}");
        let e = parse_at("[server.http_tls]\nkey = \"a.key\"\n").unwrap_err();
        assert!(e.starts_with("server.http_tls.cert"), "{e}");
        let e = parse_at("[server.tls]\ncert = \"a\"\nkey = \"b\"\nca = \"c\"\n").unwrap_err();
        assert!(e.contains("ca"), "{e}");
        let e = parse_at("[server]\nmax_connections = 0\n").unwrap_err();
        assert!(e.starts_with("server.max_connections"), "{e}");
        let e = parse_at(
            "[server]\nmetrics_listen = \"off\"\n[server.http_tls]\ncert = \"a\"\nkey = \"b\"\n",
        )
        .unwrap_err();
        assert!(e.starts_with("server.http_tls"), "{e}");
    }

    #[test]
    fn connection_budgets_have_defaults_and_named_errors() {
        let c = parse("").unwrap().server;
        assert_eq!(c.max_connections_per_address, Some(256));
        assert_eq!(c.health_connections, 8);
        assert_eq!(c.first_request_timeout, std::time::Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Some(std::time::Duration::from_secs(300)));
        let c = parse("[server]\nmax_connections = 20\n").unwrap().server;
        assert_eq!(c.max_connections_per_address, Some(5));
        let c = parse(
            "[server]\nmax_connections_per_address = \"off\"\nidle_timeout = \"off\"\nfirst_request_timeout = \"2s\"\nhealth_connections = 0\n",
        )
        .unwrap()
        .server;
        assert_eq!(c.max_connections_per_address, None);
        assert_eq!(c.idle_timeout, None);
        assert_eq!(c.health_connections, 0);
        for bad in [
            "max_connections = 10\nmax_connections_per_address = 11",
            "max_connections_per_address = 0",
            "max_connections_per_address = 1.5",
            "max_connections_per_address = \"some\"",
        ] {
            let e = err(&format!("[server]\n{bad}\n"));
            assert!(e.starts_with("server.max_connections_per_address"), "{e}");
        }
        let e = err("[server]\nfirst_request_timeout = \"0s\"\n");
        assert!(e.starts_with("server.first_request_timeout"), "{e}");
        let e = err("[server]\nidle_timeout = \"0s\"\n");
        assert!(e.starts_with("server.idle_timeout"), "{e}");
        let c = parse("[server]\nhttp_hosts = [\"GW.example.com\", \"*.internal\"]\n").unwrap();
        assert_eq!(c.server.http_hosts, ["gw.example.com", "*.internal"]);
        let e = err("[server]\nhttp_hosts = [\"evil host\"]\n");
        assert!(e.starts_with("server.http_hosts"), "{e}");
        let e = err("[server]\nhealth_connections = 5000\n");
        assert!(e.starts_with("server.health_connections"), "{e}");
    }

    #[test]
    fn the_auth_failure_throttle_is_on_by_default_and_can_be_turned_off() {
        let rate = parse("").unwrap().server.auth_failures.unwrap();
        assert_eq!((rate.per_sec(), rate.burst()), (1.0, 10));
        let rate = parse("[server]\nmax_auth_failures_per_sec = 0.5\nauth_failures_burst = 3\n")
            .unwrap()
            .server
            .auth_failures
            .unwrap();
        assert_eq!((rate.per_sec(), rate.burst()), (0.5, 3));
        let off = parse("[server]\nmax_auth_failures_per_sec = \"off\"\n").unwrap();
        assert!(off.server.auth_failures.is_none());
    }

    #[test]
    fn the_data_dir_resolves_against_the_config_and_can_be_off() {
        let c = parse_at("[server]\ndata_dir = \"keys\"\nconsole = false\n").unwrap();
        assert_eq!(
            c.server.data_dir.as_deref(),
            Some(Path::new("/etc/gatehouse/keys"))
        );
        assert!(!c.server.console);
        let c = parse_at("[server]\ndata_dir = \"off\"\n").unwrap();
        assert_eq!(c.server.data_dir, None);
        assert!(c.server.console, "on by default");
        let e = parse_at("[server]\ndata_dir = \"\"\n").unwrap_err();
        assert!(e.starts_with("server.data_dir"), "{e}");
    }

    #[test]
    fn bad_auth_failure_settings_are_named() {
        let e = err("[server]\nmax_auth_failures_per_sec = 0\n");
        assert!(e.starts_with("server.max_auth_failures_per_sec"), "{e}");
        let e = err("[server]\nmax_auth_failures_per_sec = \"never\"\n");
        assert!(e.starts_with("server.max_auth_failures_per_sec"), "{e}");
        let e = err("[server]\nauth_failures_burst = 0\n");
        assert!(e.starts_with("server.auth_failures_burst"), "{e}");
        let e = err("[server]\nmax_auth_failures_per_sec = \"off\"\nauth_failures_burst = 5\n");
        assert!(e.starts_with("server.auth_failures_burst"), "{e}");
    }
}
