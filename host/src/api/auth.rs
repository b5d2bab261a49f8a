//! Who is calling, and may they make this call.
//!
//! [`Authenticated`] wraps the Gateway service (and only it: health and
//! reflection need no credentials). For every RPC it reads
//! `authorization: Bearer <key>` and, over mutual TLS, the names of the
//! connection's client certificate ([`Peer`]); finds the tenant and scopes
//! they belong to, checks the scope the RPC needs ([`required_scope`]) and
//! hands the resolved [`Caller`] to the service in the request's
//! extensions. Failures are typed ([`AuthError`]) and become gRPC statuses
//! in `status.rs`.
//!
//! A call may carry a key, a certificate the config names, or both. With
//! both they must name the same tenant, and the key's scopes apply: the key
//! is what the call chose to present.
//!
//! With no keys or certificates configured the gateway is in local
//! development mode: every call is the anonymous tenant `default` with
//! every scope but `admin`, and any `authorization` header is ignored.
//!
//! With credentials, failed authentications are throttled per peer address
//! ([`FailureThrottle`]): an address failing too often has its calls refused
//! unchecked for a while, and its failures are logged once per interval.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::Either;
use tonic::Status;
use tonic::server::NamedService;
use tower::Service;

use super::status::auth_status;
use super::throttle::FailureThrottle;
use crate::config::{CertIdentity, TenantSpec};
use crate::keys::{KeyTable, Scope, Scopes};
use crate::registry::{Caller, DEFAULT_TENANT, Tenant};
use crate::transport::{Peer, PeerIdentity};

/// Why a call was refused before it reached the service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` header.
    #[error("missing API key: send the metadata `authorization: Bearer <key>`")]
    Missing,
    /// An `authorization` header that is not `Bearer <key>`.
    #[error("malformed authorization metadata: expected `Bearer <key>`")]
    Malformed,
    /// A well-formed key that matches no configured key.
    #[error("unknown API key")]
    UnknownKey,
    /// A client certificate (signed by the client CA) that no
    /// `[[tenants.certs]]` entry names, and no key.
    #[error(
        "the client certificate {subject} names no tenant; send an API key or add it to [[tenants.certs]]"
    )]
    UnknownCertificate {
        /// The certificate's subject.
        subject: String,
    },
    /// A key and a certificate of different tenants.
    #[error("the API key and the client certificate belong to different tenants")]
    TenantMismatch,
    /// The peer address failed to authenticate too often; its key was not
    /// looked at.
    #[error(
        "too many failed authentications from this address: calls are refused unchecked for {}ms",
        .retry_after.as_millis().max(1)
    )]
    Throttled {
        /// When the address may try again.
        retry_after: Duration,
    },
    /// A valid key without the scope the RPC needs.
    #[error("{method} needs the {scope} scope, which this key does not have")]
    MissingScope {
        /// The scope the RPC needs.
        scope: Scope,
        /// The RPC, e.g. `OpenSession`.
        method: String,
    },
}

impl AuthError {
    /// Whether this is a credential that did not authenticate (rather than
    /// a valid one without the scope): what the throttle counts.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::Missing
                | AuthError::Malformed
                | AuthError::UnknownKey
                | AuthError::UnknownCertificate { .. }
                | AuthError::TenantMismatch
        )
    }
}

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
        _ => Scope::Admin,
    }
}

/// What a key resolves to.
#[derive(Debug, Clone)]
struct Principal {
    tenant: Arc<Tenant>,
    key: Option<Arc<str>>,
    scopes: Scopes,
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

impl Mode {
    /// The mode for a config's tenants, each made by `tenant`. Without any
    /// key or certificate this is local development mode, where the
    /// anonymous tenant takes the quota, backends and limits of a
    /// `[[tenants]]` entry named `default` if there is one. Keys and
    /// certificates of one tenant share one quota.
    fn build(specs: &[TenantSpec], tenant: &dyn Fn(&TenantSpec) -> Arc<Tenant>) -> Self {
        if specs
            .iter()
            .all(|t| t.keys.is_empty() && t.certs.is_empty())
        {
            let tenant = match specs.iter().find(|t| t.name == DEFAULT_TENANT) {
                Some(spec) => tenant(spec),
                None => tenant(&TenantSpec::unrestricted(DEFAULT_TENANT)),
            };
            return Mode::Local(Principal {
                tenant,
                key: None,
                scopes: Scopes::all_but_admin(),
            });
        }
        let mut entries = Vec::new();
        let mut certs = Vec::new();
        for spec in specs {
            let tenant = tenant(spec);
            for key in &spec.keys {
                entries.push((
                    key.hash,
                    Principal {
                        tenant: Arc::clone(&tenant),
                        key: Some(key.label().into()),
                        scopes: key.scopes,
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
                    },
                ));
            }
        }
        Mode::Credentials {
            keys: KeyTable::new(entries),
            certs,
        }
    }

    /// Every tenant a credential resolves to, by name.
    fn tenants(&self) -> HashMap<String, Arc<Tenant>> {
        let principals: Vec<&Principal> = match self {
            Mode::Local(p) => vec![p],
            Mode::Credentials { keys, certs } => {
                keys.values().chain(certs.iter().map(|(_, p)| p)).collect()
            }
        };
        principals
            .into_iter()
            .map(|p| (p.tenant.name().to_string(), Arc::clone(&p.tenant)))
            .collect()
    }
}

/// Resolves the caller of each RPC from its metadata. Clones share one
/// table, which [`Authenticator::reload`] replaces whole.
#[derive(Debug, Clone)]
pub struct Authenticator {
    mode: Arc<RwLock<Arc<Mode>>>,
}

impl Authenticator {
    fn wrap(mode: Mode) -> Self {
        Self {
            mode: Arc::new(RwLock::new(Arc::new(mode))),
        }
    }

    fn mode(&self) -> Arc<Mode> {
        Arc::clone(&self.mode.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Local development mode: anonymous calls as tenant `default`, with no
    /// quota and every backend.
    pub fn local() -> Self {
        Self::from_tenants(&[])
    }

    /// The authenticator for a config's tenants: see [`Mode::build`].
    pub fn from_tenants(specs: &[TenantSpec]) -> Self {
        Self::wrap(Mode::build(specs, &Tenant::from_spec))
    }

    /// Replaces every key, certificate and tenant with `specs`'s, from the
    /// next call on (a call in flight keeps what it resolved). A tenant
    /// that stays (by name) carries on: its live sessions keep their slots
    /// of its quota, which takes the new size for new opens; a removed key
    /// is refused at once.
    pub fn reload(&self, specs: &[TenantSpec]) {
        let known = self.mode().tenants();
        let next = Mode::build(specs, &|spec| match known.get(&spec.name) {
            Some(previous) => Tenant::reloaded(previous, spec),
            None => Tenant::from_spec(spec),
        });
        *self.mode.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
    }

    /// Whether this is local development mode (no keys or certificates).
    pub fn is_local(&self) -> bool {
        matches!(*self.mode(), Mode::Local(_))
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
        let mode = self.mode();
        let principal = match &*mode {
            Mode::Local(p) => {
                if headers.contains_key(http::header::AUTHORIZATION) {
                    note_key_ignored();
                }
                p
            }
            Mode::Credentials { keys, certs } => {
                let by_cert = cert.and_then(|id| {
                    certs
                        .iter()
                        .find(|(identity, _)| id.matches(identity))
                        .map(|(_, p)| p)
                });
                let by_key = match bearer(headers) {
                    Ok(key) => Some(keys.find(key).ok_or(AuthError::UnknownKey)?),
                    Err(AuthError::Missing) => None,
                    Err(e) => return Err(e),
                };
                match (by_key, by_cert) {
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
                }
            }
        };
        let scope = required_scope(method);
        if !principal.scopes.allows(scope) {
            return Err(AuthError::MissingScope {
                scope,
                method: method.to_string(),
            });
        }
        Ok(Caller::new(
            Arc::clone(&principal.tenant),
            principal.key.clone(),
            principal.scopes.is_admin(),
        ))
    }

    /// The caller [`Authenticated`] resolved for this request.
    pub fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Status> {
        // Fail closed: a request that did not pass the layer has no caller.
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))
    }
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
}

impl<S> Authenticated<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, auth: Authenticator) -> Self {
        Self {
            inner,
            auth,
            throttle: None,
        }
    }

    /// Throttles failed authentications per peer address.
    pub fn with_throttle(mut self, throttle: Arc<FailureThrottle>) -> Self {
        self.throttle = Some(throttle);
        self
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = Either<S::Future, std::future::Ready<Result<Self::Response, Infallible>>>;

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
        let throttle = self.throttle.as_deref().filter(|_| !self.auth.is_local());
        if let Some(t) = throttle
            && let Err(retry_after) = t.admit(remote)
        {
            return refuse(AuthError::Throttled { retry_after });
        }
        let method = request.uri().path().rsplit('/').next().unwrap_or_default();
        let cert = peer.as_ref().and_then(|p| p.identity.as_deref());
        match self.auth.authorize(request.headers(), cert, method) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Either::Left(self.inner.call(request))
            }
            Err(e) => {
                match throttle {
                    // Logged by the throttle, once per interval per address.
                    Some(t) if e.is_unauthenticated() => t.failed(remote, method, &e),
                    _ => tracing::info!(method, ?remote, "call refused: {e}"),
                }
                refuse(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;
    use prost::Message;

    use super::*;
    use crate::config::{KeySpec, LimitOverrides};
    use crate::keys::{KeyHash, generate};
    use crate::transport::PeerIdentity;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = auth {
            h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    fn spec(name: &str, keys: Vec<(KeyHash, Scopes)>) -> TenantSpec {
        TenantSpec {
            name: name.into(),
            max_sessions: None,
            max_memory: None,
            backends: None,
            limits: LimitOverrides::default(),
            keys: keys
                .into_iter()
                .map(|(hash, scopes)| KeySpec {
                    name: None,
                    hash,
                    scopes,
                })
                .collect(),
            certs: Vec::new(),
            rates: Default::default(),
        }
    }

    fn scopes(list: &[Scope]) -> Scopes {
        list.iter().copied().collect()
    }

    #[test]
    fn every_gateway_rpc_has_a_scope_that_is_not_admin() {
        let fds =
            prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let methods: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| &f.service)
            .filter(|s| s.name() == "Gateway")
            .flat_map(|s| &s.method)
            .map(|m| m.name().to_string())
            .collect();
        assert_eq!(methods.len(), 11, "{methods:?}");
        for m in &methods {
            assert_ne!(required_scope(m), Scope::Admin, "{m} has no scope");
        }
        assert_eq!(required_scope("SomethingNew"), Scope::Admin);
    }

    #[test]
    fn scope_table() {
        use Scope::*;
        let table = [
            ("ListBackends", BackendsRead),
            ("OpenSession", SessionsOpen),
            ("Invoke", SessionsUse),
            ("InvokeBatch", SessionsUse),
            ("StreamEvents", SessionsUse),
            ("RenewLease", SessionsUse),
            ("CloseSession", SessionsUse),
            ("RestartSession", SessionsUse),
            ("UpgradeSession", SessionsUse),
            ("GetSession", SessionsRead),
            ("ListSessions", SessionsRead),
        ];
        for (m, s) in table {
            assert_eq!(required_scope(m), s, "{m}");
        }
    }

    #[test]
    fn keys_resolve_to_their_tenant_and_scopes() {
        let (a_key, a_hash) = generate().unwrap();
        let (b_key, b_hash) = generate().unwrap();
        let (admin_key, admin_hash) = generate().unwrap();
        let auth = Authenticator::from_tenants(&[
            spec("a", vec![(a_hash, scopes(&[Scope::SessionsRead]))]),
            spec(
                "b",
                vec![
                    (b_hash, scopes(&[Scope::SessionsOpen])),
                    (admin_hash, scopes(&[Scope::Admin])),
                ],
            ),
        ]);
        assert!(!auth.is_local());
        let bearer = |k: &str| headers(Some(&format!("Bearer {k}")));

        let a = auth
            .authorize(&bearer(&a_key), None, "ListSessions")
            .unwrap();
        assert_eq!(a.tenant_name(), "a");
        assert!(!a.admin);
        assert_eq!(a.key.as_deref(), Some(a_hash.short().as_str()));
        assert_eq!(
            auth.authorize(&bearer(&a_key), None, "OpenSession")
                .unwrap_err(),
            AuthError::MissingScope {
                scope: Scope::SessionsOpen,
                method: "OpenSession".into()
            }
        );
        let b = auth
            .authorize(&bearer(&b_key), None, "OpenSession")
            .unwrap();
        assert_eq!(b.tenant_name(), "b");
        let admin = auth.authorize(&bearer(&admin_key), None, "Invoke").unwrap();
        assert!(admin.admin);
        assert!(
            Arc::ptr_eq(&b.tenant, &admin.tenant),
            "keys of one tenant share its quota"
        );
        // The scheme is case-insensitive.
        auth.authorize(
            &headers(Some(&format!("bearer {b_key}"))),
            None,
            "OpenSession",
        )
        .unwrap();
    }

    #[test]
    fn missing_malformed_and_unknown_keys_are_refused() {
        let (_, hash) = generate().unwrap();
        let auth = Authenticator::from_tenants(&[spec("a", vec![(hash, scopes(&[Scope::Admin]))])]);
        let check = |h: Option<&str>| {
            auth.authorize(&headers(h), None, "ListBackends")
                .unwrap_err()
        };
        assert_eq!(check(None), AuthError::Missing);
        assert_eq!(check(Some("Basic dXNlcjpwYXNz")), AuthError::Malformed);
        assert_eq!(check(Some("Bearer")), AuthError::Malformed);
        assert_eq!(check(Some("Bearer ")), AuthError::Malformed);
        assert_eq!(check(Some("Bearer a b")), AuthError::Malformed);
        assert_eq!(check(Some("Bearer ghk_00")), AuthError::UnknownKey);
        let (other, _) = generate().unwrap();
        assert_eq!(
            check(Some(&format!("Bearer {other}"))),
            AuthError::UnknownKey
        );
    }

    #[test]
    fn local_mode_is_anonymous_default_without_admin() {
        for auth in [
            Authenticator::local(),
            Authenticator::from_tenants(&[]),
            Authenticator::from_tenants(&[spec("default", vec![])]),
        ] {
            assert!(auth.is_local());
            let c = auth.authorize(&headers(None), None, "OpenSession").unwrap();
            assert_eq!(c.tenant_name(), DEFAULT_TENANT);
            assert!(!c.admin && c.key.is_none());
            // A stray header is ignored.
            auth.authorize(&headers(Some("Bearer whatever")), None, "Invoke")
                .unwrap();
        }
        let auth = Authenticator::from_tenants(&[TenantSpec {
            max_sessions: Some(3),
            ..spec("default", vec![])
        }]);
        let c = auth.authorize(&headers(None), None, "OpenSession").unwrap();
        assert_eq!(c.tenant.max_sessions(), Some(3));
    }

    #[test]
    fn certificates_resolve_to_their_tenant_and_must_agree_with_a_key() {
        use crate::config::{CertIdentity, CertSpec, DistinguishedName};
        let (b_key, b_hash) = generate().unwrap();
        let cert = |identity, scopes| CertSpec {
            name: None,
            identity,
            scopes,
        };
        let a = TenantSpec {
            certs: vec![cert(
                CertIdentity::Subject(DistinguishedName::parse("CN=ci, O=Acme").unwrap()),
                scopes(&[Scope::SessionsRead]),
            )],
            ..spec("a", vec![])
        };
        let b = TenantSpec {
            certs: vec![cert(
                CertIdentity::Uri("spiffe://acme/b".into()),
                scopes(&[Scope::SessionsOpen]),
            )],
            ..spec("b", vec![(b_hash, scopes(&[Scope::BackendsRead]))])
        };
        let auth = Authenticator::from_tenants(&[a, b]);
        assert!(!auth.is_local(), "certificates alone are credentials");
        let peer = |subject: &str, uri: Option<&str>| PeerIdentity {
            subject: Some(DistinguishedName::parse(subject).unwrap()),
            dns: Vec::new(),
            uris: uri.into_iter().map(String::from).collect(),
        };
        let ci = peer("O=Acme, CN=ci", None);
        let b_peer = peer("CN=runner", Some("spiffe://acme/b"));
        let stranger = peer("CN=stranger", None);
        let none = headers(None);
        let b_bearer = headers(Some(&format!("Bearer {b_key}")));

        let c = auth.authorize(&none, Some(&ci), "ListSessions").unwrap();
        assert_eq!(c.tenant_name(), "a");
        assert_eq!(c.key.as_deref(), Some("cert:subject CN=ci, O=Acme"));
        assert_eq!(
            auth.authorize(&none, Some(&ci), "OpenSession").unwrap_err(),
            AuthError::MissingScope {
                scope: Scope::SessionsOpen,
                method: "OpenSession".into()
            }
        );
        let c = auth.authorize(&none, Some(&b_peer), "OpenSession").unwrap();
        assert_eq!(c.tenant_name(), "b");
        // With a key of the same tenant the key's scopes apply.
        assert!(matches!(
            auth.authorize(&b_bearer, Some(&b_peer), "OpenSession"),
            Err(AuthError::MissingScope { .. })
        ));
        auth.authorize(&b_bearer, Some(&b_peer), "ListBackends")
            .unwrap();
        // A key of another tenant than the certificate's.
        assert_eq!(
            auth.authorize(&b_bearer, Some(&ci), "ListBackends")
                .unwrap_err(),
            AuthError::TenantMismatch
        );
        // A certificate nobody named: refused alone, the key decides with one.
        assert_eq!(
            auth.authorize(&none, Some(&stranger), "ListBackends")
                .unwrap_err(),
            AuthError::UnknownCertificate {
                subject: "CN=stranger".into()
            }
        );
        let c = auth
            .authorize(&b_bearer, Some(&stranger), "ListBackends")
            .unwrap();
        assert_eq!(c.tenant_name(), "b");
        // A bad key is refused even with a good certificate.
        assert_eq!(
            auth.authorize(&headers(Some("Bearer ghk_nope")), Some(&ci), "ListSessions")
                .unwrap_err(),
            AuthError::UnknownKey
        );
        assert_eq!(
            auth.authorize(&none, None, "ListSessions").unwrap_err(),
            AuthError::Missing
        );
    }
}
