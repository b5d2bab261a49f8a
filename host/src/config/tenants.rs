//! `[[tenants]]`: who may call the gateway, with which keys, and within which
//! limits.
//!
//! ```toml
//! [[tenants]]
//! name = "acme"
//! max_sessions = 10                 # this tenant's quota; omitted = only the gateway's cap
//! max_memory = "1GiB"               # memory its sessions may make the gateway hold;
//!                                   # omitted = only server.memory_budget
//! backends = ["echo", "kv"]         # backends it may open; omitted = all
//! max_requests_per_sec = 100        # every RPC of the tenant; omitted = unlimited
//! requests_burst = 200              # calls at once before the rate applies; default: a second's worth
//! max_opens_per_sec = 5             # OpenSession calls; omitted = unlimited
//! opens_burst = 10                  # default: a second's worth
//! cpu_weight = 1                    # share of the wasm runtime's threads when they are
//!                                   # contended, against other tenants' weights; default 1
//! max_concurrent_commands = 4       # wasm commands and ticks on the runtime's threads at
//!                                   # once; omitted = as many as there are threads
//! max_cpu_per_sec = 500             # guest CPU-milliseconds a second; omitted = unlimited
//! cpu_burst = 2000                  # CPU-ms spent at once before the rate applies;
//!                                   # default: a second's worth
//! [tenants.sessions]                # limit overrides, each clamped to the backend's own
//! memory_limit = "16MiB"
//! command_timeout = "5s"
//! [[tenants.keys]]
//! name = "ci"                       # optional label for logs
//! hash = "sha256:..."               # from `gatehouse keys new`; the key itself is never stored
//! scopes = ["sessions:open", "sessions:use", "sessions:read", "backends:read"]
//! [[tenants.certs]]                 # a client certificate (mTLS, needs server.tls.client_ca)
//! name = "ci-runner"                # optional label for logs
//! subject = "CN=ci, O=Acme"         # or dns = "..." or uri = "spiffe://..." (see `certs`)
//! scopes = ["sessions:open", "sessions:use"]
//! ```
//!
//! Rates are token buckets: a tenant may make `*_burst` calls at once, then
//! one more every `1 / max_*_per_sec` seconds; over the rate a call is
//! `RESOURCE_EXHAUSTED` with `RetryInfo` saying when the next one is due.
//! The keys of one tenant share its buckets.
//!
//! Limit overrides only ever lower a limit: a session's effective value is
//! the smaller of the tenant's and the backend's, so one tenant entry can span
//! backends with different limits. `event_overflow` is not a limit and cannot
//! be overridden per tenant. Unknown scopes, duplicate tenant names, duplicate
//! key hashes and unknown backends are errors naming the key. So is one
//! certificate identity named by two entries: an identity belongs to one
//! tenant, with one set of scopes.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Deserialize;

use super::certs::{CertIdentity, DistinguishedName};
use super::tenant_cpu::CpuKeys;
pub use super::tenant_cpu::{CpuBudgetSpec, MAX_CPU_MS, MAX_CPU_WEIGHT, TenantCpuSpec};
use super::{BackendSpec, ConfigError, SessionPatch, check_name, invalid};
pub use super::{LimitOverrides, valid_name};
use crate::keys::{KeyHash, Scope, Scopes};
use crate::rate::{MAX_BURST, Rate};

/// One tenant, resolved.
#[derive(Debug, Clone)]
pub struct TenantSpec {
    /// The tenant's name, shown in `SessionInfo.tenant`.
    pub name: String,
    /// Live sessions the tenant may hold; `None` leaves only the gateway's cap.
    pub max_sessions: Option<usize>,
    /// Bytes the tenant's sessions may make the gateway hold together;
    /// `None` leaves only `server.memory_budget`.
    pub max_memory: Option<usize>,
    /// Backends the tenant may open; `None` allows every backend.
    pub backends: Option<BTreeSet<String>>,
    /// Lowered session limits (`[tenants.sessions]`), laid over a
    /// backend's policy at open by [`SessionPatch::apply`].
    pub limits: LimitOverrides,
    /// The tenant's API keys.
    pub keys: Vec<KeySpec>,
    /// The client certificate identities that authenticate as this tenant.
    pub certs: Vec<CertSpec>,
    /// The tenant's request and open rates.
    pub rates: TenantRates,
    /// The tenant's share of the CPU and its CPU budget.
    pub cpu: TenantCpuSpec,
}

impl TenantSpec {
    /// A tenant without quota, limits or credentials, allowed every
    /// backend: local mode's `default` when the config has no entry for it.
    pub fn unrestricted(name: &str) -> Self {
        Self {
            name: name.to_string(),
            max_sessions: None,
            max_memory: None,
            backends: None,
            limits: LimitOverrides::default(),
            keys: Vec::new(),
            certs: Vec::new(),
            rates: TenantRates::default(),
            cpu: TenantCpuSpec::default(),
        }
    }
}

/// One client certificate identity of a tenant (`[[tenants.certs]]`).
#[derive(Debug, Clone)]
pub struct CertSpec {
    /// A label for logs; defaults to the identity.
    pub name: Option<String>,
    /// What the certificate must carry.
    pub identity: CertIdentity,
    /// What a connection with that certificate may do.
    pub scopes: Scopes,
}

impl CertSpec {
    /// How logs and `SessionInfo` name this certificate.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("cert:{name}"),
            None => format!("cert:{}", self.identity),
        }
    }
}

/// A tenant's rate limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TenantRates {
    /// Every RPC of the tenant (`max_requests_per_sec`, `requests_burst`).
    pub requests: Option<Rate>,
    /// `OpenSession` calls (`max_opens_per_sec`, `opens_burst`).
    pub opens: Option<Rate>,
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

// ---- the file format -------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantFile {
    name: String,
    max_sessions: Option<usize>,
    #[serde(default, deserialize_with = "super::units::size")]
    max_memory: Option<usize>,
    backends: Option<Vec<String>>,
    #[serde(default)]
    sessions: SessionPatch,
    #[serde(default)]
    keys: Vec<KeyFile>,
    #[serde(default)]
    certs: Vec<CertFile>,
    max_requests_per_sec: Option<f64>,
    requests_burst: Option<u32>,
    max_opens_per_sec: Option<f64>,
    opens_burst: Option<u32>,
    cpu_weight: Option<u32>,
    max_concurrent_commands: Option<usize>,
    max_cpu_per_sec: Option<f64>,
    cpu_burst: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertFile {
    name: Option<String>,
    subject: Option<String>,
    dns: Option<String>,
    uri: Option<String>,
    scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    name: Option<String>,
    hash: String,
    scopes: Vec<String>,
}

/// Resolves every `[[tenants]]` entry against the resolved backends.
pub(super) fn resolve(
    files: Vec<TenantFile>,
    backends: &[BackendSpec],
) -> Result<Vec<TenantSpec>, ConfigError> {
    let backend_names: HashSet<&str> = backends.iter().map(|b| b.name.as_str()).collect();
    let mut names = HashSet::new();
    let mut hashes: HashMap<KeyHash, String> = HashMap::new();
    let mut identities: HashMap<CertIdentity, String> = HashMap::new();
    let mut out = Vec::with_capacity(files.len());
    for (i, t) in files.into_iter().enumerate() {
        let key = format!("tenants[{i}]");
        check_name(&t.name, &format!("{key}.name"))?;
        if !names.insert(t.name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("duplicate tenant name {:?}", t.name),
            ));
        }
        if t.max_sessions == Some(0) {
            return Err(invalid(format!("{key}.max_sessions"), "must be at least 1"));
        }
        if t.max_memory.is_some_and(|m| m < super::MIN_MEMORY_LIMIT) {
            return Err(invalid(
                format!("{key}.max_memory"),
                "must be at least 1MiB",
            ));
        }
        let cpu = CpuKeys {
            cpu_weight: t.cpu_weight,
            max_concurrent_commands: t.max_concurrent_commands,
            max_cpu_per_sec: t.max_cpu_per_sec,
            cpu_burst: t.cpu_burst,
        }
        .resolve(&key)?;
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
        let limits = t.sessions.tenant_limits(&format!("{key}.sessions"))?;
        let rates = TenantRates {
            requests: rate(
                t.max_requests_per_sec,
                t.requests_burst,
                &key,
                "max_requests_per_sec",
                "requests_burst",
            )?,
            opens: rate(
                t.max_opens_per_sec,
                t.opens_burst,
                &key,
                "max_opens_per_sec",
                "opens_burst",
            )?,
        };
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
            let scopes = parse_scopes(&k.scopes, &kkey)?;
            if let Some(name) = &k.name {
                check_name(name, &format!("{kkey}.name"))?;
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
        let mut certs = Vec::with_capacity(t.certs.len());
        for (j, c) in t.certs.into_iter().enumerate() {
            let ckey = format!("{key}.certs[{j}]");
            let identity = match (c.subject, c.dns, c.uri) {
                (Some(subject), None, None) => CertIdentity::Subject(
                    DistinguishedName::parse(&subject)
                        .map_err(|m| invalid(format!("{ckey}.subject"), m))?,
                ),
                (None, Some(dns), None) if !dns.trim().is_empty() => CertIdentity::dns(dns.trim()),
                (None, None, Some(uri)) if !uri.trim().is_empty() => {
                    CertIdentity::Uri(uri.trim().to_string())
                }
                (None, None, None) => {
                    return Err(invalid(ckey, "needs one of subject, dns or uri"));
                }
                (None, Some(_), None) => return Err(invalid(format!("{ckey}.dns"), "is empty")),
                (None, None, Some(_)) => return Err(invalid(format!("{ckey}.uri"), "is empty")),
                _ => {
                    return Err(invalid(
                        ckey,
                        "names more than one of subject, dns and uri; use one entry for each",
                    ));
                }
            };
            if let Some(first) = identities.insert(identity.clone(), ckey.clone()) {
                return Err(invalid(
                    ckey,
                    format!("duplicate certificate identity: {identity} is already at {first}"),
                ));
            }
            if let Some(name) = &c.name {
                check_name(name, &format!("{ckey}.name"))?;
            }
            certs.push(CertSpec {
                name: c.name,
                identity,
                scopes: parse_scopes(&c.scopes, &ckey)?,
            });
        }
        out.push(TenantSpec {
            name: t.name,
            max_sessions: t.max_sessions,
            max_memory: t.max_memory,
            backends: allowed,
            limits,
            keys,
            certs,
            rates,
            cpu,
        });
    }
    Ok(out)
}

/// The `scopes` of a key or certificate entry at `at`.
fn parse_scopes(list: &[String], at: &str) -> Result<Scopes, ConfigError> {
    if list.is_empty() {
        return Err(invalid(
            format!("{at}.scopes"),
            "must name at least one scope",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(n, s)| Scope::parse(s).map_err(|m| invalid(format!("{at}.scopes[{n}]"), m)))
        .collect()
}

/// One of a tenant's rates: `{key}.{rate_key}` with its optional burst.
fn rate(
    per_sec: Option<f64>,
    burst: Option<u32>,
    key: &str,
    rate_key: &str,
    burst_key: &str,
) -> Result<Option<Rate>, ConfigError> {
    match (per_sec, burst) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(invalid(
            format!("{key}.{burst_key}"),
            format!("needs {rate_key}: a burst is of a rate"),
        )),
        (Some(r), burst) => {
            if let Some(b) = burst
                && !(1..=MAX_BURST).contains(&b)
            {
                return Err(invalid(
                    format!("{key}.{burst_key}"),
                    format!("must be 1..={MAX_BURST}"),
                ));
            }
            Rate::new(r, burst)
                .map(Some)
                .map_err(|m| invalid(format!("{key}.{rate_key}"), m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::parse;

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
    fn rates_and_bursts_are_resolved() {
        let c = parse(
            "[[tenants]]\nname = \"a\"\nmax_requests_per_sec = 2.5\nmax_opens_per_sec = 1\nopens_burst = 4\n[[tenants]]\nname = \"b\"\n",
        )
        .unwrap();
        let a = c.tenants[0].rates;
        let requests = a.requests.unwrap();
        assert_eq!((requests.per_sec(), requests.burst()), (2.5, 3));
        let opens = a.opens.unwrap();
        assert_eq!((opens.per_sec(), opens.burst()), (1.0, 4));
        assert_eq!(c.tenants[1].rates, TenantRates::default());
    }

    #[test]
    fn bad_rates_are_named() {
        let e = err("[[tenants]]\nname = \"a\"\nmax_requests_per_sec = 0\n");
        assert!(e.starts_with("tenants[0].max_requests_per_sec"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\nmax_opens_per_sec = -1.5\n");
        assert!(e.starts_with("tenants[0].max_opens_per_sec"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\nmax_opens_per_sec = 1\nopens_burst = 0\n");
        assert!(e.starts_with("tenants[0].opens_burst"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\nrequests_burst = 5\n");
        assert!(e.starts_with("tenants[0].requests_burst"), "{e}");
        assert!(e.contains("max_requests_per_sec"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\nmax_requests_per_sec = \"fast\"\n");
        assert!(e.contains("max_requests_per_sec"), "{e}");
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

    const MTLS: &str = "[server.tls]\ncert = \"s.pem\"\nkey = \"s.key\"\nclient_ca = \"ca.pem\"\n";

    #[test]
    fn certificate_identities_are_resolved() {
        let c = parse(&format!(
            "{MTLS}[[tenants]]\nname = \"a\"\n[[tenants.certs]]\nname = \"ci\"\nsubject = \"O=Acme, cn=ci\"\nscopes = [\"sessions:open\"]\n[[tenants.certs]]\nuri = \"spiffe://acme/w\"\nscopes = [\"admin\"]\n[[tenants.certs]]\ndns = \"Batch.Acme.Example\"\nscopes = [\"sessions:read\"]\n"
        ))
        .unwrap();
        assert!(c.has_keys(), "certificates are credentials: not local mode");
        let certs = &c.tenants[0].certs;
        assert_eq!(certs[0].label(), "cert:ci");
        assert_eq!(
            certs[0].identity,
            CertIdentity::Subject(DistinguishedName::parse("CN=ci, O=Acme").unwrap())
        );
        assert!(certs[1].scopes.is_admin());
        assert_eq!(certs[1].label(), "cert:uri spiffe://acme/w");
        assert_eq!(
            certs[2].identity,
            CertIdentity::Dns("batch.acme.example".into())
        );
    }

    #[test]
    fn bad_certificate_entries_are_named() {
        let entry =
            |body: &str| format!("{MTLS}[[tenants]]\nname = \"a\"\n[[tenants.certs]]\n{body}\n");
        let e = err(&entry("scopes = [\"admin\"]"));
        assert!(e.starts_with("tenants[0].certs[0]: needs one of"), "{e}");
        let e = err(&entry(
            "subject = \"CN=x\"\nuri = \"spiffe://x\"\nscopes = [\"admin\"]",
        ));
        assert!(e.contains("more than one"), "{e}");
        let e = err(&entry("subject = \"CN\"\nscopes = [\"admin\"]"));
        assert!(e.starts_with("tenants[0].certs[0].subject"), "{e}");
        let e = err(&entry("dns = \"\"\nscopes = [\"admin\"]"));
        assert!(e.starts_with("tenants[0].certs[0].dns"), "{e}");
        let e = err(&entry("uri = \"spiffe://x\"\nscopes = []"));
        assert!(e.starts_with("tenants[0].certs[0].scopes"), "{e}");
        let e = err(&entry("uri = \"spiffe://x\"\nscopes = [\"root\"]"));
        assert!(e.starts_with("tenants[0].certs[0].scopes[0]"), "{e}");
        // One identity, one tenant.
        let e = err(&format!(
            "{MTLS}[[tenants]]\nname = \"a\"\n[[tenants.certs]]\nsubject = \"CN=x, O=y\"\nscopes = [\"admin\"]\n[[tenants]]\nname = \"b\"\n[[tenants.certs]]\nsubject = \"O=y, CN=x\"\nscopes = [\"admin\"]\n"
        ));
        assert!(e.starts_with("tenants[1].certs[0]: duplicate"), "{e}");
        assert!(e.contains("tenants[0].certs[0]"), "{e}");
        // Without client_ca no certificate is ever asked for.
        let e = err(
            "[[tenants]]\nname = \"a\"\n[[tenants.certs]]\nuri = \"spiffe://x\"\nscopes = [\"admin\"]\n",
        );
        assert!(
            e.starts_with("tenants[0].certs: needs server.tls.client_ca"),
            "{e}"
        );
    }
}
