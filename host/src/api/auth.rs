//! Who is calling, and may they make this call.
//!
//! [`Authenticated`] wraps the Gateway service and both Admin services
//! (health and reflection need no credentials). For every RPC it reads
//! `authorization: Bearer <key>` and, over mutual TLS, the names of the
//! connection's client certificate ([`Peer`]); finds the tenant and scopes
//! they belong to, checks the scope the RPC needs ([`required_scope`]) and
//! hands the resolved [`Caller`] to the service in the request's
//! extensions. Failures are typed ([`AuthError`]) and become gRPC statuses
//! in `status.rs`.
//!
//! Keys come from the config file and, after them, from the key store
//! (`crate::keystore`, looked up in memory): a store key resolves to the
//! configured tenant it names, and is refused once revoked or expired
//! ([`AuthError::Revoked`], [`AuthError::Expired`]).
//!
//! A call may carry a key, a certificate the config names, or both. With
//! both they must name the same tenant, and the key's scopes apply: the key
//! is what the call chose to present.
//!
//! With no keys or certificates configured (and none ever in the key
//! store) the gateway is in local development mode: every call is the
//! anonymous tenant `default` with every scope but `admin`, and any
//! `authorization` header is ignored.
//!
//! With credentials, failed authentications are throttled per peer address
//! ([`FailureThrottle`]): an address failing too often has its calls refused
//! unchecked for a while, and its failures are logged once per interval.
//!
//! A credential is checked again while its call runs (`revocation.rs`):
//! when it is revoked, expires, or a reload removes its key or tenant, the
//! call in flight ends `UNAUTHENTICATED` and an open stream ends with that
//! status in its trailers, so a revoked key keeps nothing it opened.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::Either;
use tonic::Status;
use tonic::server::NamedService;
use tower::Service;

use super::auth_error::AuthError;
use super::revocation::{self, Credential, Revocable};
use super::status::auth_status;
use super::throttle::FailureThrottle;
use crate::config::{CertIdentity, TenantSpec};
use crate::keys::{KeyTable, Scope, Scopes};
use crate::keystore::KeyStore;
use crate::rate::{Rate, TokenBucket};
use crate::registry::{Caller, DEFAULT_TENANT, Tenant};
use crate::transport::{Peer, PeerIdentity};

/// The scope each Gateway RPC needs. `admin` implies every scope. An RPC
/// missing from this table (there is none; a test checks the proto) needs
/// `admin`, so a new RPC is closed until someone decides its scope.
pub fn required_scope(method: &str) -> Scope {
    match method {
        "ListBackends" => Scope::BackendsRead,
        "OpenSession" => Scope::SessionsOpen,
        "Invoke" | "InvokeBatch" | "StreamEvents" | "RenewLease" | "CloseSession"
        | "RestartSession" | "UpgradeSession" => Scope::SessionsUse,
        "GetSession" | "ListSessions" => Scope::SessionsRead,
        // A call opens an instance and uses it: it needs both scopes.
        "Call" => Scope::SessionsOpen,
        _ => Scope::Admin,
    }
}

/// A scope `method` needs beyond [`required_scope`]: `Call` opens and
/// uses, so it needs `sessions:use` too.
pub fn also_required_scope(method: &str) -> Option<Scope> {
    match method {
        "Call" => Some(Scope::SessionsUse),
        _ => None,
    }
}

/// What a key resolves to.
#[derive(Debug, Clone)]
struct Principal {
    tenant: Arc<Tenant>,
    key: Option<Arc<str>>,
    scopes: Scopes,
    /// A key store key's expiry (Unix seconds).
    expires: Option<i64>,
}

#[derive(Debug)]
enum Mode {
    /// Local development mode: everyone is this principal.
    Local(Principal),
    /// Keys or certificates configured: every call must present one.
    Credentials {
        keys: KeyTable<Principal>,
        certs: Vec<(CertIdentity, Principal)>,
    },
}

/// The credentials of one config, and every tenant it names.
#[derive(Debug)]
struct Table {
    mode: Mode,
    /// Every configured tenant by name (and local mode's anonymous one):
    /// what key store keys resolve to.
    tenants: HashMap<String, Arc<Tenant>>,
}

impl Table {
    /// The table for a config's tenants, each made by `tenant`. Without any
    /// key or certificate this is local development mode, where the
    /// anonymous tenant takes the quota, backends and limits of a
    /// `[[tenants]]` entry named `default` if there is one. Keys and
    /// certificates of one tenant share one quota.
    fn build(specs: &[TenantSpec], tenant: &dyn Fn(&TenantSpec) -> Arc<Tenant>) -> Self {
        let mut tenants: HashMap<String, Arc<Tenant>> = specs
            .iter()
            .map(|spec| (spec.name.clone(), tenant(spec)))
            .collect();
        if specs
            .iter()
            .all(|t| t.keys.is_empty() && t.certs.is_empty())
        {
            let anonymous = match tenants.get(DEFAULT_TENANT) {
                Some(t) => Arc::clone(t),
                None => tenant(&TenantSpec::unrestricted(DEFAULT_TENANT)),
            };
            tenants.insert(DEFAULT_TENANT.to_string(), Arc::clone(&anonymous));
            let mode = Mode::Local(Principal {
                tenant: anonymous,
                key: None,
                scopes: Scopes::all_but_admin(),
                expires: None,
            });
            return Self { mode, tenants };
        }
        let mut entries = Vec::new();
        let mut certs = Vec::new();
        for spec in specs {
            let tenant = Arc::clone(&tenants[&spec.name]);
            for key in &spec.keys {
                entries.push((
                    key.hash,
                    Principal {
                        tenant: Arc::clone(&tenant),
                        key: Some(key.label().into()),
                        scopes: key.scopes,
                        expires: None,
                    },
                ));
            }
            for cert in &spec.certs {
                certs.push((
                    cert.identity.clone(),
                    Principal {
                        tenant: Arc::clone(&tenant),
                        key: Some(cert.label().into()),
                        scopes: cert.scopes,
                        expires: None,
                    },
                ));
            }
        }
        let mode = Mode::Credentials {
            keys: KeyTable::new(entries),
            certs,
        };
        Self { mode, tenants }
    }
}

/// A key of the config file, as the admin API lists it.
#[derive(Debug, Clone)]
pub struct ConfigKey {
    /// `config:<tenant>:<n>`, n from 1 in file order within the tenant.
    pub id: String,
    /// The tenant.
    pub tenant: String,
    /// The key's name; empty for an unnamed key.
    pub name: String,
    /// Its scopes.
    pub scopes: Scopes,
}

/// Resolves the caller of each RPC from its metadata. Clones share one
/// table, which [`Authenticator::reload`] replaces whole, and one key
/// store.
#[derive(Debug, Clone)]
pub struct Authenticator {
    table: Arc<RwLock<Arc<Table>>>,
    store: Option<Arc<KeyStore>>,
    /// Bumped by every [`Authenticator::reload`].
    reloads: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Authenticator {
    fn wrap(table: Table) -> Self {
        Self {
            table: Arc::new(RwLock::new(Arc::new(table))),
            store: None,
            reloads: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Local development mode: anonymous calls as tenant `default`, with no
    /// quota and every backend.
    pub fn local() -> Self {
        Self::from_tenants(&[])
    }

    /// The authenticator for a config's tenants: see [`Table::build`].
    pub fn from_tenants(specs: &[TenantSpec]) -> Self {
        Self::wrap(Table::build(specs, &Tenant::from_spec))
    }

    /// Also accepts the keys of `store` (after the config's).
    pub fn with_store(mut self, store: Arc<KeyStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The key store, if the gateway has one.
    pub fn store(&self) -> Option<&Arc<KeyStore>> {
        self.store.as_ref()
    }

    /// Replaces every key, certificate and tenant with `specs`'s, from the
    /// next call on (a call in flight keeps what it resolved). A tenant
    /// that stays (by name) carries on: its live sessions keep their slots
    /// of its quota, which takes the new size for new opens; a removed key
    /// is refused at once.
    pub fn reload(&self, specs: &[TenantSpec]) {
        let known = self.table().tenants.clone();
        let next = Table::build(specs, &|spec| match known.get(&spec.name) {
            Some(previous) => Tenant::reloaded(previous, spec),
            None => Tenant::from_spec(spec),
        });
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        self.reloads.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes at every reload.
    pub(super) fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Resolves with the refusal `credential` would get now, once it would
    /// get one (see `revocation.rs`): checked again at each reload, each
    /// change of the key store and the key's expiry.
    fn revoked(&self, credential: Credential) -> revocation::Revoked {
        let auth = self.clone();
        revocation::revoked(
            credential,
            self.reloads(),
            self.store().map(|s| s.changes()),
            move |headers, cert, method| {
                auth.resolve(headers, cert, method)
                    .map(|(caller, _)| caller.tenant_name().to_string())
            },
        )
    }

    /// Whether this is local development mode: no keys or certificates in
    /// the config, and none ever in the key store.
    pub fn is_local(&self) -> bool {
        matches!(self.table().mode, Mode::Local(_))
            && !self.store.as_ref().is_some_and(|s| s.has_keys())
    }

    /// The configured tenant named `name`.
    pub fn tenant(&self, name: &str) -> Option<Arc<Tenant>> {
        self.table().tenants.get(name).cloned()
    }

    /// Every configured tenant, by name.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        let mut out: Vec<Arc<Tenant>> = self.table().tenants.values().cloned().collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }

    /// The config file's keys, by tenant then file order.
    pub fn config_keys(&self) -> Vec<ConfigKey> {
        let table = self.table();
        let Mode::Credentials { keys, .. } = &table.mode else {
            return Vec::new();
        };
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let mut out: Vec<ConfigKey> = keys
            .values()
            .map(|p| {
                let n = counts.entry(p.tenant.name()).or_default();
                *n += 1;
                ConfigKey {
                    id: format!("config:{}:{n}", p.tenant.name()),
                    tenant: p.tenant.name().to_string(),
                    // An unnamed key's label is its short hash, which
                    // the listing does not show (names cannot hold ':').
                    name: p
                        .key
                        .as_deref()
                        .filter(|l| !l.starts_with("sha256:"))
                        .unwrap_or_default()
                        .to_string(),
                    scopes: p.scopes,
                }
            })
            .collect();
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        out
    }

    /// The principal of a key of the store: refused when revoked, expired,
    /// or of a tenant the config no longer has.
    fn stored(&self, table: &Table, key: &str) -> Result<Option<Principal>, AuthError> {
        let Some(stored) = self.store.as_ref().and_then(|s| s.find(key)) else {
            return Ok(None);
        };
        if stored.revoked.is_some() {
            return Err(AuthError::Revoked);
        }
        if stored.is_expired(crate::keystore::now()) {
            return Err(AuthError::Expired);
        }
        let Some(tenant) = table.tenants.get(&stored.tenant) else {
            tracing::warn!(key = %stored.id, tenant = %stored.tenant, "a key store key names a tenant the config does not have; refused");
            return Err(AuthError::UnknownKey);
        };
        if let Some(store) = &self.store {
            store.note_used(&stored.id);
        }
        Ok(Some(Principal {
            tenant: Arc::clone(tenant),
            key: Some(stored.id.as_str().into()),
            scopes: stored.scopes,
            expires: stored.expires,
        }))
    }

    /// Authenticates a call to `method` (the RPC name, e.g. `OpenSession`)
    /// from its headers and the connection's client certificate, and checks
    /// the scope it needs.
    pub fn authorize(
        &self,
        headers: &http::HeaderMap,
        cert: Option<&PeerIdentity>,
        method: &str,
    ) -> Result<Caller, AuthError> {
        self.resolve(headers, cert, method)
            .map(|(caller, _)| caller)
    }

    /// [`Self::authorize`], with the expiry of the key that authorized.
    pub(super) fn resolve(
        &self,
        headers: &http::HeaderMap,
        cert: Option<&PeerIdentity>,
        method: &str,
    ) -> Result<(Caller, Option<i64>), AuthError> {
        let table = self.table();
        let no_keys = KeyTable::default();
        let (keys, certs): (&KeyTable<Principal>, &[(CertIdentity, Principal)]) = match &table.mode
        {
            Mode::Local(p) if !self.store.as_ref().is_some_and(|s| s.has_keys()) => {
                if headers.contains_key(http::header::AUTHORIZATION) {
                    note_key_ignored();
                }
                return admit(p.clone(), method);
            }
            // Local config, but the key store has keys: they are the only
            // credentials.
            Mode::Local(_) => (&no_keys, &[]),
            Mode::Credentials { keys, certs } => (keys, certs),
        };
        let by_cert = cert.and_then(|id| {
            certs
                .iter()
                .find(|(identity, _)| id.matches(identity))
                .map(|(_, p)| p.clone())
        });
        let by_key = match bearer(headers) {
            Ok(key) => match keys.find(key) {
                Some(p) => Some(p.clone()),
                None => Some(self.stored(&table, key)?.ok_or(AuthError::UnknownKey)?),
            },
            Err(AuthError::Missing) => None,
            Err(e) => return Err(e),
        };
        let principal = match (by_key, by_cert) {
            (Some(k), Some(c)) if !Arc::ptr_eq(&k.tenant, &c.tenant) => {
                return Err(AuthError::TenantMismatch);
            }
            (Some(k), _) => k,
            (None, Some(c)) => c,
            (None, None) => {
                return Err(match cert {
                    Some(id) => AuthError::UnknownCertificate {
                        subject: id.to_string(),
                    },
                    None => AuthError::Missing,
                });
            }
        };
        admit(principal, method)
    }

    /// The caller [`Authenticated`] resolved for this request.
    pub fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Status> {
        caller(request)
    }
}

/// The caller [`Authenticated`] resolved for `request`, for services
/// that hold no [`Authenticator`].
pub(super) fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    // Fail closed: a request that did not pass the layer has no caller.
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))
}

/// The caller `principal` is, if it has the scope `method` needs, and the
/// expiry of its key.
fn admit(principal: Principal, method: &str) -> Result<(Caller, Option<i64>), AuthError> {
    for scope in std::iter::once(required_scope(method)).chain(also_required_scope(method)) {
        if !principal.scopes.allows(scope) {
            return Err(AuthError::MissingScope {
                scope,
                method: method.to_string(),
                tenant: principal.tenant.name().to_string(),
                key: principal.key.as_deref().unwrap_or("-").to_string(),
            });
        }
    }
    let admin = principal.scopes.is_admin();
    Ok((
        Caller::new(principal.tenant, principal.key, admin),
        principal.expires,
    ))
}

/// Logs, once per process, that a call carried a key the gateway ignores:
/// a client configured with a key against a gateway in local mode is
/// probably talking to the wrong gateway or one whose config lost its keys.
fn note_key_ignored() {
    static NOTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !NOTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "a call carries an authorization header, but no keys or certificates are \
             configured: local development mode ignores keys (logged once)"
        );
    }
}

/// The key of `authorization: Bearer <key>`.
fn bearer(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?.trim();
    let (scheme, key) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() || key.contains(' ') {
        return Err(AuthError::Malformed);
    }
    Ok(key)
}

/// A service wrapped with authentication: see the module docs.
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: Authenticator,
    throttle: Option<Arc<FailureThrottle>>,
    /// Bounds the audit entries of refused admin calls: a key without the
    /// scope cannot fill the audit log.
    refusal_audits: Option<Arc<TokenBucket>>,
}

/// Refused admin calls audited per second (and at once) by one service.
const REFUSAL_AUDITS_PER_SEC: f64 = 1.0;
const REFUSAL_AUDITS_BURST: u32 = 10;

impl<S> Authenticated<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, auth: Authenticator) -> Self {
        // A constant rate: `new` cannot refuse it.
        let refusal_audits = Rate::new(REFUSAL_AUDITS_PER_SEC, Some(REFUSAL_AUDITS_BURST))
            .ok()
            .map(|rate| Arc::new(TokenBucket::new(rate)));
        Self {
            inner,
            auth,
            throttle: None,
            refusal_audits,
        }
    }

    /// Throttles failed authentications per peer address with `throttle`
    /// (`None`: not at all).
    pub fn with_throttle(mut self, throttle: Option<Arc<FailureThrottle>>) -> Self {
        self.throttle = throttle;
        self
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

/// Whether `service` is one of the admin services, whose refusals of a
/// known key are audited.
fn is_admin_service(service: &str) -> bool {
    service.ends_with(".Admin")
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + NamedService,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Either<
        Either<Revocable<S::Future>, S::Future>,
        std::future::Ready<Result<Self::Response, Infallible>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let refuse =
            |e: AuthError| Either::Right(std::future::ready(Ok(auth_status(e).into_http())));
        // A clone, so the request stays free to take the caller: an address
        // and an Arc.
        let peer = request.extensions().get::<Peer>().cloned();
        let remote = peer.as_ref().and_then(|p| p.remote).map(|a| a.ip());
        // Local mode has no credentials to fail.
        let local = self.auth.is_local();
        let throttle = self.throttle.as_deref().filter(|_| !local);
        if let Some(t) = throttle
            && let Err(retry_after) = t.admit(remote)
        {
            return refuse(AuthError::Throttled { retry_after });
        }
        let method = request.uri().path().rsplit('/').next().unwrap_or_default();
        let cert = peer.as_ref().and_then(|p| p.identity.clone());
        match self
            .auth
            .resolve(request.headers(), cert.as_deref(), method)
        {
            // Local mode has no credential to revoke.
            Ok((caller, _)) if local => {
                request.extensions_mut().insert(caller);
                Either::Left(Either::Right(self.inner.call(request)))
            }
            Ok((caller, expires)) => {
                let credential = Credential {
                    authorization: request.headers().get(http::header::AUTHORIZATION).cloned(),
                    cert,
                    method: method.to_string(),
                    tenant: caller.tenant_name().to_string(),
                    expires,
                };
                request.extensions_mut().insert(caller);
                let revoked = self.auth.revoked(credential);
                Either::Left(Either::Left(Revocable {
                    inner: self.inner.call(request),
                    revoked: Some(revoked),
                }))
            }
            Err(e) => {
                let admin_refusal =
                    is_admin_service(S::NAME) && matches!(e, AuthError::MissingScope { .. });
                match throttle {
                    // Logged by the throttle, once per interval per address.
                    Some(t) if e.is_unauthenticated() => t.failed(remote, method, &e),
                    _ => log_refusal(method, remote, &e),
                }
                let audit_due = self
                    .refusal_audits
                    .as_ref()
                    .is_some_and(|b| b.take(Instant::now()).is_ok());
                if admin_refusal && audit_due {
                    self.audit_refusal(method, &e);
                }
                refuse(e)
            }
        }
    }
}

/// The log line of a refused call, naming the key and tenant when known.
fn log_refusal(method: &str, remote: Option<std::net::IpAddr>, e: &AuthError) {
    match e {
        AuthError::MissingScope { tenant, key, .. } => {
            tracing::info!(method, ?remote, tenant, key, "call refused: {e}")
        }
        _ => tracing::info!(method, ?remote, "call refused: {e}"),
    }
}

impl<S> Authenticated<S> {
    /// Records an admin call refused to a known key in the audit log.
    fn audit_refusal(&self, method: &str, e: &AuthError) {
        let AuthError::MissingScope {
            tenant, key, scope, ..
        } = e
        else {
            return;
        };
        let actor = crate::keystore::Actor {
            label: key.clone(),
            tenant: tenant.clone(),
            via: "api",
        };
        let entry = crate::keystore::AuditEntry {
            action: "admin.refused",
            target: method.to_string(),
            detail: format!("needs the {scope} scope"),
        };
        match self.auth.store() {
            Some(store) => {
                let store = Arc::clone(store);
                tokio::spawn(async move {
                    if let Err(e) = store.record(actor, entry).await {
                        tracing::warn!("audit log: {e}");
                    }
                });
            }
            None => crate::keystore::log_action(&actor, &entry),
        }
    }
}

#[cfg(test)]
mod tests;
