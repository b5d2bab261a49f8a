//! A tenant as the registry sees it: a name, a quota, the backends it may
//! open, its limit overrides and its request and open rates. Nothing here
//! knows about keys or gRPC; the API layer resolves a caller to a tenant
//! and hands the registry a [`Caller`].

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::slots::Slots;
use crate::config::{LimitOverrides, SessionPolicy, TenantCpuSpec, TenantSpec};
use crate::rate::{Rate, TokenBucket};

/// The tenant of local development mode.
pub const DEFAULT_TENANT: &str = "default";

/// One tenant.
#[derive(Debug)]
pub struct Tenant {
    name: String,
    quota: Arc<Slots>,
    max_sessions: Option<usize>,
    max_memory: Option<usize>,
    backends: Option<BTreeSet<String>>,
    limits: LimitOverrides,
    requests: Option<TokenBucket>,
    opens: Option<TokenBucket>,
    cpu: TenantCpuSpec,
}

/// Which of a tenant's rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    /// Every RPC (`max_requests_per_sec`).
    Requests,
    /// `OpenSession` (`max_opens_per_sec`).
    Opens,
}

impl RateKind {
    /// The metric label: `requests` or `opens`.
    pub fn as_str(self) -> &'static str {
        match self {
            RateKind::Requests => "requests",
            RateKind::Opens => "opens",
        }
    }

    /// The config key of the rate.
    pub fn key(self) -> &'static str {
        match self {
            RateKind::Requests => "max_requests_per_sec",
            RateKind::Opens => "max_opens_per_sec",
        }
    }
}

impl fmt::Display for RateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RateKind::Requests => "requests",
            RateKind::Opens => "session opens",
        })
    }
}

impl Tenant {
    /// A tenant from its config.
    pub fn from_spec(spec: &TenantSpec) -> Arc<Self> {
        let quota = spec.max_sessions.map_or_else(Slots::unlimited, Slots::new);
        Arc::new(Self::build(spec, quota))
    }

    fn build(spec: &TenantSpec, quota: Arc<Slots>) -> Self {
        Self {
            name: spec.name.clone(),
            quota,
            max_sessions: spec.max_sessions,
            max_memory: spec.max_memory,
            backends: spec.backends.clone(),
            limits: spec.limits.clone(),
            requests: spec.rates.requests.map(TokenBucket::new),
            opens: spec.rates.opens.map(TokenBucket::new),
            cpu: spec.cpu,
        }
    }

    /// The tenant `spec` describes after a reload, carrying on from
    /// `previous` (the same name): its sessions keep their slots of its
    /// quota, which takes the new `max_sessions` for new opens.
    pub fn reloaded(previous: &Tenant, spec: &TenantSpec) -> Arc<Self> {
        previous
            .quota
            .set_cap(spec.max_sessions.unwrap_or(usize::MAX));
        Arc::new(Self::build(spec, Arc::clone(&previous.quota)))
    }

    /// A tenant with no quota, every backend and the backends' own limits.
    pub fn unrestricted(name: impl Into<String>) -> Arc<Self> {
        Self::from_spec(&TenantSpec::unrestricted(&name.into()))
    }

    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the tenant may open sessions on `backend`.
    pub fn may_open(&self, backend: &str) -> bool {
        self.backends.as_ref().is_none_or(|b| b.contains(backend))
    }

    /// The policy this tenant's sessions on a backend run under.
    pub fn policy(&self, backend: &SessionPolicy) -> SessionPolicy {
        self.limits.apply(backend)
    }

    /// The tenant's quota, if it has one.
    pub fn max_sessions(&self) -> Option<usize> {
        self.max_sessions
    }

    /// Bytes the tenant's sessions may make the gateway hold together
    /// (`max_memory`), if it has a limit of its own.
    pub fn max_memory(&self) -> Option<usize> {
        self.max_memory
    }

    /// The tenant's CPU weight, concurrency cap and budget.
    pub fn cpu(&self) -> &TenantCpuSpec {
        &self.cpu
    }

    /// Sessions holding one of this tenant's slots.
    pub fn open_sessions(&self) -> usize {
        self.quota.used()
    }

    pub(super) fn quota(&self) -> &Arc<Slots> {
        &self.quota
    }

    /// Takes a token of one of the tenant's rates; over it, the rate and
    /// how long until the next token is due. Unlimited without one.
    pub(super) fn take_token(&self, kind: RateKind, now: Instant) -> Result<(), (Rate, Duration)> {
        let bucket = match kind {
            RateKind::Requests => &self.requests,
            RateKind::Opens => &self.opens,
        };
        match bucket {
            None => Ok(()),
            Some(b) => b.take(now).map_err(|wait| (b.rate(), wait)),
        }
    }
}

/// Who is calling: resolved by the API layer from credentials.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller's tenant.
    pub tenant: Arc<Tenant>,
    /// A label of the API key used, for ownership and logs; `None` when
    /// anonymous.
    pub key: Option<Arc<str>>,
    /// Whether the caller may see and close every tenant's sessions.
    pub admin: bool,
}

impl Caller {
    /// A caller of `tenant` with the key labelled `key`.
    pub fn new(tenant: Arc<Tenant>, key: Option<Arc<str>>, admin: bool) -> Self {
        Self { tenant, key, admin }
    }

    /// The anonymous caller of local development mode, with a tenant of its
    /// own (no quota). The server shares one tenant between all anonymous
    /// calls instead; this is for tests and embedding.
    pub fn local() -> Self {
        Self::new(Tenant::unrestricted(DEFAULT_TENANT), None, false)
    }

    /// The caller's tenant name.
    pub fn tenant_name(&self) -> &str {
        self.tenant.name()
    }
}
