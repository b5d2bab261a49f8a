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
        cpu: Default::default(),
    }
}

fn scopes(list: &[Scope]) -> Scopes {
    list.iter().copied().collect()
}

#[test]
fn every_gateway_rpc_has_a_scope_that_is_not_admin() {
    let fds = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
    let methods: Vec<String> = fds
        .file
        .iter()
        .flat_map(|f| &f.service)
        .filter(|s| s.name() == "Gateway")
        .flat_map(|s| &s.method)
        .map(|m| m.name().to_string())
        .collect();
    assert_eq!(methods.len(), 12, "{methods:?}");
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
        ("Call", SessionsOpen),
    ];
    for (m, s) in table {
        assert_eq!(required_scope(m), s, "{m}");
    }
    assert_eq!(
        also_required_scope("Call"),
        Some(SessionsUse),
        "a call opens and uses"
    );
    assert_eq!(also_required_scope("OpenSession"), None);
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
            method: "OpenSession".into(),
            tenant: "a".into(),
            key: a_hash.short(),
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
            method: "OpenSession".into(),
            tenant: "a".into(),
            key: "cert:subject CN=ci, O=Acme".into(),
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

#[tokio::test]
async fn key_store_keys_resolve_to_configured_tenants_until_revoked() {
    use crate::keystore::{Actor, KeyStore, NewKey};
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(dir.path(), &crate::metrics::Metrics::new()).unwrap();
    // A config without credentials: local mode, until the store has a key.
    let auth = Authenticator::from_tenants(&[spec("acme", vec![])]).with_store(Arc::clone(&store));
    assert!(auth.is_local());
    let actor = Actor {
        label: "test".into(),
        tenant: "ops".into(),
        via: "api",
    };
    let new = |tenant: &str| NewKey {
        tenant: tenant.into(),
        name: None,
        scopes: scopes(&[Scope::SessionsRead]),
        expires_in: None,
    };
    let (secret, key) = store.create(new("acme"), actor.clone()).await.unwrap();
    assert!(!auth.is_local(), "a store key ends local mode");
    let bearer = headers(Some(&format!("Bearer {secret}")));
    let c = auth.authorize(&bearer, None, "ListSessions").unwrap();
    assert_eq!(c.tenant_name(), "acme");
    assert_eq!(c.key.as_deref(), Some(key.id.as_str()));
    assert!(matches!(
        auth.authorize(&bearer, None, "OpenSession"),
        Err(AuthError::MissingScope { .. })
    ));
    assert_eq!(
        auth.authorize(&headers(None), None, "ListSessions")
            .unwrap_err(),
        AuthError::Missing
    );
    // A key of a tenant the config does not have is refused.
    let (orphan, _) = store.create(new("gone"), actor.clone()).await.unwrap();
    assert_eq!(
        auth.authorize(
            &headers(Some(&format!("Bearer {orphan}"))),
            None,
            "ListSessions"
        )
        .unwrap_err(),
        AuthError::UnknownKey
    );
    store.revoke(&key.id, actor).await.unwrap();
    assert_eq!(
        auth.authorize(&bearer, None, "ListSessions").unwrap_err(),
        AuthError::Revoked
    );
    assert!(!auth.is_local(), "revoking keys does not reopen local mode");
}
