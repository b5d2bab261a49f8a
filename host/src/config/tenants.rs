//! `[[tenants]]`: who may call the gateway, with which keys, and within which
//! limits.
//!
//! ```toml
//! [[tenants]]
//! name = "acme"
//! max_sessions = 10                 # this tenant's quota; omitted = only the gateway's cap
//! backends = ["echo", "kv"]         # backends it may open; omitted = all
//! [tenants.sessions]                # limit overrides, each clamped to the backend's own
//! memory_limit = "16MiB"
//! command_timeout = "5s"
//! [[tenants.keys]]
//! name = "ci"                       # optional label for logs
//! hash = "sha256:..."               # from `gatehouse keys new`; the key itself is never stored
//! scopes = ["sessions:open", "sessions:use", "sessions:read", "backends:read"]
//! ```
//!
//! Limit overrides only ever lower a limit: a session's effective value is
//! the smaller of the tenant's and the backend's, so one tenant entry can span
//! backends with different limits. `event_overflow` is not a limit and cannot
//! be overridden per tenant. Unknown scopes, duplicate tenant names, duplicate
//! key hashes and unknown backends are errors naming the key.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use super::{BackendSpec, ConfigError, PolicyFile, SessionPolicy, invalid, nonzero};
use crate::keys::{KeyHash, Scope, Scopes};

/// One tenant, resolved.
#[derive(Debug, Clone)]
pub struct TenantSpec {
    /// The tenant's name, shown in `SessionInfo.tenant`.
    pub name: String,
    /// Live sessions the tenant may hold; `None` leaves only the gateway's cap.
    pub max_sessions: Option<usize>,
    /// Backends the tenant may open; `None` allows every backend.
    pub backends: Option<BTreeSet<String>>,
    /// Lowered session limits.
    pub limits: LimitOverrides,
    /// The tenant's API keys.
    pub keys: Vec<KeySpec>,
}

/// One API key of a tenant.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// A label for logs; defaults to a prefix of the hash.
    pub name: Option<String>,
    /// `sha256` of the key.
    pub hash: KeyHash,
    /// What the key may do.
    pub scopes: Scopes,
}

impl KeySpec {
    /// How logs name this key.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.hash.short())
    }
}

/// Per-tenant session limits (`[tenants.sessions]`). Each set value lowers
/// the backend's; none can raise it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    /// Default command timeout.
    pub command_timeout: Option<Duration>,
    /// Largest command timeout a client may ask for.
    pub max_command_timeout: Option<Duration>,
    /// Default lease.
    pub lease: Option<Duration>,
    /// Largest lease a client may ask for.
    pub max_lease: Option<Duration>,
    /// Idle timeout.
    pub idle_timeout: Option<Duration>,
    /// Maximum lifetime.
    pub max_lifetime: Option<Duration>,
    /// Graceful close time.
    pub close_timeout: Option<Duration>,
    /// Linear memory per wasm session.
    pub memory_limit: Option<usize>,
    /// Largest reply payload.
    pub max_reply_bytes: Option<usize>,
    /// Largest event payload.
    pub max_event_bytes: Option<usize>,
    /// Undelivered events kept.
    pub event_queue: Option<usize>,
    /// Delivered events kept for resume.
    pub replay_buffer: Option<usize>,
    /// Event streams per session.
    pub max_event_subscribers: Option<usize>,
    /// Scheduled ticks per session.
    pub max_pending_ticks: Option<usize>,
    /// Guest log lines per second.
    pub log_lines_per_sec: Option<u32>,
    /// Guest log burst.
    pub log_burst: Option<u32>,
}

fn lower<T: Ord + Copy>(backend: T, tenant: Option<T>) -> T {
    tenant.map_or(backend, |t| t.min(backend))
}

/// For limits where `None` means unlimited.
fn lower_opt(backend: Option<Duration>, tenant: Option<Duration>) -> Option<Duration> {
    match (backend, tenant) {
        (Some(b), Some(t)) => Some(b.min(t)),
        (b, t) => b.or(t),
    }
}

impl LimitOverrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The backend's policy with these overrides applied: every limit is the
    /// smaller of the two, and defaults stay within their maximums.
    /// Settings that are not limits (and any added later) are the backend's.
    pub fn apply(&self, backend: &SessionPolicy) -> SessionPolicy {
        let mut p = backend.clone();
        p.command_timeout = lower(p.command_timeout, self.command_timeout);
        p.max_command_timeout = lower(p.max_command_timeout, self.max_command_timeout);
        p.lease = lower(p.lease, self.lease);
        p.max_lease = lower(p.max_lease, self.max_lease);
        p.idle_timeout = lower_opt(p.idle_timeout, self.idle_timeout);
        p.max_lifetime = lower_opt(p.max_lifetime, self.max_lifetime);
        p.close_timeout = lower(p.close_timeout, self.close_timeout);
        p.memory_limit = lower(p.memory_limit, self.memory_limit);
        p.max_reply_bytes = lower(p.max_reply_bytes, self.max_reply_bytes);
        p.max_event_bytes = lower(p.max_event_bytes, self.max_event_bytes);
        p.event_queue = lower(p.event_queue, self.event_queue);
        p.replay_buffer = lower(p.replay_buffer, self.replay_buffer);
        p.max_event_subscribers = lower(p.max_event_subscribers, self.max_event_subscribers);
        p.max_pending_ticks = lower(p.max_pending_ticks, self.max_pending_ticks);
        p.log_lines_per_sec = lower(p.log_lines_per_sec, self.log_lines_per_sec);
        p.log_burst = lower(p.log_burst, self.log_burst);
        p.command_timeout = p.command_timeout.min(p.max_command_timeout);
        p.lease = p.lease.min(p.max_lease);
        p
    }
}

// ---- the file format -------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantFile {
    name: String,
    max_sessions: Option<usize>,
    backends: Option<Vec<String>>,
    #[serde(default)]
    sessions: PolicyFile,
    #[serde(default)]
    keys: Vec<KeyFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    name: Option<String>,
    hash: String,
    scopes: Vec<String>,
}

/// Whether `name` is a valid tenant or key name: 1-64 letters, digits, `-`,
/// `_` or `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Resolves every `[[tenants]]` entry against the resolved backends.
pub(super) fn resolve(
    files: Vec<TenantFile>,
    backends: &[BackendSpec],
) -> Result<Vec<TenantSpec>, ConfigError> {
    let backend_names: HashSet<&str> = backends.iter().map(|b| b.name.as_str()).collect();
    let mut names = HashSet::new();
    let mut hashes: HashMap<KeyHash, String> = HashMap::new();
    let mut out = Vec::with_capacity(files.len());
    for (i, t) in files.into_iter().enumerate() {
        let key = format!("tenants[{i}]");
        if !valid_name(&t.name) {
            return Err(invalid(
                format!("{key}.name"),
                "must be 1-64 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        if !names.insert(t.name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("duplicate tenant name {:?}", t.name),
            ));
        }
        if t.max_sessions == Some(0) {
            return Err(invalid(format!("{key}.max_sessions"), "must be at least 1"));
        }
        let allowed = match t.backends {
            None => None,
            Some(list) => {
                let mut set = BTreeSet::new();
                for (j, b) in list.into_iter().enumerate() {
                    if !backend_names.contains(b.as_str()) {
                        let mut known: Vec<&str> = backend_names.iter().copied().collect();
                        known.sort_unstable();
                        return Err(invalid(
                            format!("{key}.backends[{j}]"),
                            format!("no backend named {b:?} (have: {})", known.join(", ")),
                        ));
                    }
                    set.insert(b);
                }
                Some(set)
            }
        };
        let limits = limits(&t.sessions, &format!("{key}.sessions"))?;
        let mut keys = Vec::with_capacity(t.keys.len());
        let mut key_names = HashSet::new();
        for (j, k) in t.keys.into_iter().enumerate() {
            let kkey = format!("{key}.keys[{j}]");
            let hash =
                KeyHash::parse(k.hash.trim()).map_err(|m| invalid(format!("{kkey}.hash"), m))?;
            if let Some(first) = hashes.insert(hash, kkey.clone()) {
                return Err(invalid(
                    format!("{kkey}.hash"),
                    format!("duplicate key: the same hash is already at {first}"),
                ));
            }
            if k.scopes.is_empty() {
                return Err(invalid(
                    format!("{kkey}.scopes"),
                    "must name at least one scope",
                ));
            }
            let scopes = k
                .scopes
                .iter()
                .enumerate()
                .map(|(n, s)| {
                    Scope::parse(s).map_err(|m| invalid(format!("{kkey}.scopes[{n}]"), m))
                })
                .collect::<Result<Scopes, _>>()?;
            if let Some(name) = &k.name
                && !valid_name(name)
            {
                return Err(invalid(
                    format!("{kkey}.name"),
                    "must be 1-64 characters of letters, digits, '-', '_' or '.'",
                ));
            }
            if let Some(name) = &k.name
                && !key_names.insert(name.clone())
            {
                return Err(invalid(
                    format!("{kkey}.name"),
                    format!("duplicate key name {name:?} in this tenant"),
                ));
            }
            keys.push(KeySpec {
                name: k.name,
                hash,
                scopes,
            });
        }
        out.push(TenantSpec {
            name: t.name,
            max_sessions: t.max_sessions,
            backends: allowed,
            limits,
            keys,
        });
    }
    Ok(out)
}

/// Validates `[tenants.sessions]`: each value on its own (the backend's
/// values are not known here; they are combined at open).
fn limits(f: &PolicyFile, key: &str) -> Result<LimitOverrides, ConfigError> {
    let k = |name: &str| format!("{key}.{name}");
    // Destructured in full, so a key added to `[sessions]` cannot be
    // silently ignored here: it fails to compile until it is either a limit
    // or refused.
    let PolicyFile {
        command_timeout,
        max_command_timeout,
        lease,
        max_lease,
        idle_timeout,
        max_lifetime,
        close_timeout,
        memory_limit,
        max_reply_bytes,
        max_event_bytes,
        event_queue,
        replay_buffer,
        event_overflow,
        max_event_subscribers,
        max_pending_ticks,
        log_lines_per_sec,
        log_burst,
    } = f;
    if event_overflow.is_some() {
        return Err(invalid(
            k("event_overflow"),
            "is a backend setting, not a limit a tenant can lower",
        ));
    }
    let l = LimitOverrides {
        command_timeout: command_timeout.map(|v| v.0),
        max_command_timeout: max_command_timeout.map(|v| v.0),
        lease: lease.map(|v| v.0),
        max_lease: max_lease.map(|v| v.0),
        // "off" is no limit, which never lowers anything.
        idle_timeout: idle_timeout.and_then(|v| v.0),
        max_lifetime: max_lifetime.and_then(|v| v.0),
        close_timeout: close_timeout.map(|v| v.0),
        memory_limit: memory_limit.map(|v| v.0),
        max_reply_bytes: max_reply_bytes.map(|v| v.0),
        max_event_bytes: max_event_bytes.map(|v| v.0),
        event_queue: *event_queue,
        replay_buffer: *replay_buffer,
        max_event_subscribers: *max_event_subscribers,
        max_pending_ticks: *max_pending_ticks,
        log_lines_per_sec: *log_lines_per_sec,
        log_burst: *log_burst,
    };
    for (name, value) in [
        ("command_timeout", l.command_timeout),
        ("max_command_timeout", l.max_command_timeout),
        ("lease", l.lease),
        ("max_lease", l.max_lease),
        ("idle_timeout", l.idle_timeout),
        ("max_lifetime", l.max_lifetime),
    ] {
        if let Some(d) = value {
            nonzero(d, &k(name))?;
        }
    }
    if let (Some(t), Some(max)) = (l.command_timeout, l.max_command_timeout)
        && t > max
    {
        return Err(invalid(
            k("command_timeout"),
            "is larger than max_command_timeout",
        ));
    }
    if let (Some(t), Some(max)) = (l.lease, l.max_lease)
        && t > max
    {
        return Err(invalid(k("lease"), "is larger than max_lease"));
    }
    if l.memory_limit.is_some_and(|m| m < (1 << 20)) {
        return Err(invalid(k("memory_limit"), "must be at least 1MiB"));
    }
    if l.event_queue == Some(0) {
        return Err(invalid(k("event_queue"), "must be at least 1"));
    }
    if l.max_event_subscribers == Some(0) {
        return Err(invalid(k("max_event_subscribers"), "must be at least 1"));
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("."))
    }

    fn hash(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn tenants_keys_and_limits_are_resolved() {
        let c = parse(&format!(
            r#"
[[tenants]]
name = "acme"
max_sessions = 3
backends = ["echo"]
[tenants.sessions]
memory_limit = "16MiB"
idle_timeout = "off"
[[tenants.keys]]
name = "ci"
hash = "{}"
scopes = ["sessions:open", "sessions:use"]

[[tenants]]
name = "ops"
[[tenants.keys]]
hash = "{}"
scopes = ["admin"]
"#,
            hash(1),
            hash(2)
        ))
        .unwrap();
        assert!(c.has_keys());
        let acme = &c.tenants[0];
        assert_eq!(acme.max_sessions, Some(3));
        assert_eq!(
            acme.backends.as_ref().unwrap().iter().collect::<Vec<_>>(),
            ["echo"]
        );
        assert_eq!(acme.limits.memory_limit, Some(16 << 20));
        assert_eq!(acme.limits.idle_timeout, None);
        assert_eq!(acme.keys[0].label(), "ci");
        assert!(acme.keys[0].scopes.allows(Scope::SessionsUse));
        assert!(!acme.keys[0].scopes.allows(Scope::SessionsRead));
        let ops = &c.tenants[1];
        assert_eq!(ops.max_sessions, None);
        assert!(ops.backends.is_none());
        assert!(ops.keys[0].scopes.is_admin());
        assert_eq!(ops.keys[0].label(), "sha256:020202020202");
    }

    #[test]
    fn no_tenants_or_no_keys_is_local_mode() {
        assert!(!parse("").unwrap().has_keys());
        assert!(
            !parse("[[tenants]]\nname = \"default\"\nmax_sessions = 2\n")
                .unwrap()
                .has_keys()
        );
    }

    #[test]
    fn unknown_scope_is_named() {
        let e = err(&format!(
            "[[tenants]]\nname = \"a\"\n[[tenants.keys]]\nhash = \"{}\"\nscopes = [\"sessions:open\", \"sessions:write\"]\n",
            hash(1)
        ));
        assert!(e.starts_with("tenants[0].keys[0].scopes[1]"), "{e}");
        assert!(e.contains("sessions:write"), "{e}");
        let e = err(&format!(
            "[[tenants]]\nname = \"a\"\n[[tenants.keys]]\nhash = \"{}\"\nscopes = []\n",
            hash(1)
        ));
        assert!(e.starts_with("tenants[0].keys[0].scopes"), "{e}");
    }

    #[test]
    fn duplicate_tenant_name_is_named() {
        let e = err(
            "[[tenants]]\nname = \"a\"\n[[tenants]]\nname = \"b\"\n[[tenants]]\nname = \"a\"\n",
        );
        assert!(e.starts_with("tenants[2].name"), "{e}");
        assert!(e.contains("duplicate"), "{e}");
        let e = err("[[tenants]]\nname = \"a b\"\n");
        assert!(e.starts_with("tenants[0].name"), "{e}");
    }

    #[test]
    fn unknown_backend_is_named() {
        let e = err("[[tenants]]\nname = \"a\"\nbackends = [\"echo\", \"nope\"]\n");
        assert!(e.starts_with("tenants[0].backends[1]"), "{e}");
        assert!(e.contains("nope") && e.contains("echo"), "{e}");
        // The built-in backends are the ones a config without [[backends]] has;
        // with [[backends]] only those count.
        let e = err(
            "[[backends]]\nname = \"mine\"\nmodule = \"builtin:echo\"\n[[tenants]]\nname = \"a\"\nbackends = [\"echo\"]\n",
        );
        assert!(e.starts_with("tenants[0].backends[0]"), "{e}");
    }

    #[test]
    fn duplicate_key_hash_is_named() {
        let e = err(&format!(
            "[[tenants]]\nname = \"a\"\n[[tenants.keys]]\nhash = \"{h}\"\nscopes = [\"admin\"]\n[[tenants]]\nname = \"b\"\n[[tenants.keys]]\nhash = \"{h}\"\nscopes = [\"sessions:read\"]\n",
            h = hash(7)
        ));
        assert!(e.starts_with("tenants[1].keys[0].hash"), "{e}");
        assert!(e.contains("tenants[0].keys[0]"), "{e}");
    }

    #[test]
    fn bad_hashes_and_limits_are_named() {
        let e = err(
            "[[tenants]]\nname = \"a\"\n[[tenants.keys]]\nhash = \"ghk_plaintext\"\nscopes = [\"admin\"]\n",
        );
        assert!(e.starts_with("tenants[0].keys[0].hash"), "{e}");
        let e = err(&format!(
            "[[tenants]]\nname = \"a\"\n[[tenants.keys]]\nname = \"k\"\nhash = \"{}\"\nscopes = [\"admin\"]\n[[tenants.keys]]\nname = \"k\"\nhash = \"{}\"\nscopes = [\"admin\"]\n",
            hash(1),
            hash(2)
        ));
        assert!(e.starts_with("tenants[0].keys[1].name"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\nmax_sessions = 0\n");
        assert!(e.starts_with("tenants[0].max_sessions"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\n[tenants.sessions]\nevent_overflow = \"fault\"\n");
        assert!(e.starts_with("tenants[0].sessions.event_overflow"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\n[tenants.sessions]\nlease = \"0s\"\n");
        assert!(e.starts_with("tenants[0].sessions.lease"), "{e}");
        let e = err(
            "[[tenants]]\nname = \"a\"\n[tenants.sessions]\ncommand_timeout = \"2s\"\nmax_command_timeout = \"1s\"\n",
        );
        assert!(e.starts_with("tenants[0].sessions.command_timeout"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\n[tenants.sessions]\nmemory_limit = \"1KiB\"\n");
        assert!(e.starts_with("tenants[0].sessions.memory_limit"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\n[tenants.sessions]\nmemory = 1\n");
        assert!(e.contains("memory"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\nquota = 1\n");
        assert!(e.contains("quota"), "{e}");
    }

    #[test]
    fn overrides_only_lower_the_backends_limits() {
        let backend = SessionPolicy {
            command_timeout: Duration::from_secs(2),
            max_command_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(60),
            idle_timeout: None,
            max_lifetime: Some(Duration::from_secs(100)),
            memory_limit: 8 << 20,
            ..SessionPolicy::default()
        };
        let o = LimitOverrides {
            // Above the backend's: clamped to it.
            command_timeout: Some(Duration::from_secs(5)),
            memory_limit: Some(64 << 20),
            max_lifetime: Some(Duration::from_secs(500)),
            // Below the backend's: taken.
            idle_timeout: Some(Duration::from_secs(30)),
            max_lease: Some(Duration::from_secs(20)),
            event_queue: Some(8),
            ..LimitOverrides::default()
        };
        let p = o.apply(&backend);
        assert_eq!(p.command_timeout, Duration::from_secs(2));
        assert_eq!(p.memory_limit, 8 << 20);
        assert_eq!(p.max_lifetime, Some(Duration::from_secs(100)));
        assert_eq!(p.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(p.max_lease, Duration::from_secs(20));
        assert_eq!(
            p.lease,
            Duration::from_secs(20),
            "the default lease follows its max"
        );
        assert_eq!(p.event_queue, 8);
        assert_eq!(p.event_overflow, backend.event_overflow);
        assert_eq!(LimitOverrides::default().apply(&backend), backend);
        assert!(LimitOverrides::default().is_empty());
    }
}
