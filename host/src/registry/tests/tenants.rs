//! Tenants: isolation, admins, owning keys, quotas and per-tenant limits.

use std::sync::Arc;
use std::time::Duration;

use super::fixtures::*;
use crate::backend::{Fault, FaultCode, StartError};
use crate::registry::{Caller, GatewayError, OpenRequest, SessionState, Tenant};
#[tokio::test]
async fn other_tenants_sessions_are_not_found() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let other = Caller::new(Tenant::unrestricted("other"), None, false);
    assert!(matches!(
        f.registry.get(&other, &s.id),
        Err(GatewayError::SessionNotFound(_))
    ));
    assert!(matches!(
        f.registry.close(&other, &s.id).await,
        Err(GatewayError::SessionNotFound(_))
    ));
    assert!(f.registry.list(&other).is_empty());
    for result in [
        f.registry.renew(&other, &s.id).map(|_| ()),
        f.registry.subscribe(&other, &s.id, None).await.map(|_| ()),
        f.registry
            .invoke(&other, &s.id, cmd(), None)
            .await
            .map(|_| ()),
    ] {
        assert!(matches!(result, Err(GatewayError::SessionNotFound(_))));
    }
    let admin = Caller::new(Tenant::unrestricted("ops"), None, true);
    assert_eq!(f.registry.list(&admin).len(), 1);
    assert_eq!(s.state(), SessionState::Ready);
}

#[tokio::test]
async fn admin_sees_and_closes_every_session_but_does_not_drive_them() {
    let f = fixture();
    let owner = Caller::new(tenant("b", None, None), Some("kb".into()), false);
    let s = f.registry.open(&owner, open_req()).await.unwrap();
    let admin = Caller::new(tenant("ops", None, None), Some("root".into()), true);
    assert_eq!(f.registry.list(&admin).len(), 1);
    f.registry.get(&admin, &s.id).unwrap();
    assert!(matches!(
        f.registry.invoke(&admin, &s.id, cmd(), None).await,
        Err(GatewayError::SessionNotFound(_))
    ));
    assert!(matches!(
        f.registry.renew(&admin, &s.id),
        Err(GatewayError::SessionNotFound(_))
    ));
    let closed = f.registry.close(&admin, &s.id).await.unwrap();
    assert_eq!(closed.final_state, SessionState::Closed);
    assert!(!closed.already_closed);
    assert_eq!(owner.tenant.open_sessions(), 0);
    assert_eq!(tenant_gauge(&f, "b"), 0);
}

#[tokio::test]
async fn only_the_owning_key_renews_the_lease_by_reading() {
    let f = fixture();
    let t = tenant("a", None, None);
    let opener = Caller::new(Arc::clone(&t), Some("k1".into()), false);
    let reader = Caller::new(Arc::clone(&t), Some("k2".into()), false);
    let s = f.registry.open(&opener, open_req()).await.unwrap();
    assert!(s.is_owned_by(&opener) && !s.is_owned_by(&reader));
    let before = s.snapshot().lease_expires;
    f.clock.advance(Duration::from_secs(10));
    f.registry.get(&reader, &s.id).unwrap();
    assert_eq!(s.snapshot().lease_expires, before, "a read by another key");
    f.registry.get(&opener, &s.id).unwrap();
    assert!(s.snapshot().lease_expires > before);
}

#[tokio::test]
async fn tenant_quota_is_enforced_with_the_cap_and_never_leaks() {
    let f = fixture_with(3, policy(), Script::default());
    let a = Caller::new(tenant("a", Some(2), None), None, false);
    let b = Caller::new(tenant("b", None, None), None, false);
    let a1 = f.registry.open(&a, open_req()).await.unwrap();
    let _a2 = f.registry.open(&a, open_req()).await.unwrap();
    // The quota is reached while the cap is not.
    match f.registry.open(&a, open_req()).await {
        Err(GatewayError::TenantQuotaReached {
            tenant, quota: 2, ..
        }) => assert_eq!(tenant, "a"),
        other => panic!("expected the quota, got {:?}", other.map(|s| s.id.clone())),
    }
    assert_eq!(
        f.registry.open_count(),
        2,
        "the refusal took no gateway slot"
    );
    let _b1 = f.registry.open(&b, open_req()).await.unwrap();
    // Now the cap is reached while b has no quota at all.
    assert!(matches!(
        f.registry.open(&b, open_req()).await,
        Err(GatewayError::SessionCapReached { cap: 3, .. })
    ));
    assert_eq!(
        b.tenant.open_sessions(),
        1,
        "the refusal gave b's slot back"
    );
    // Closing gives both back: a may open again, and only once.
    f.registry.close(&a, &a1.id).await.unwrap();
    assert_eq!(a.tenant.open_sessions(), 1);
    let a3 = f.registry.open(&a, open_req()).await.unwrap();
    assert!(matches!(
        f.registry.open(&a, open_req()).await,
        Err(GatewayError::TenantQuotaReached { quota: 2, .. })
    ));
    assert_eq!((tenant_gauge(&f, "a"), tenant_gauge(&f, "b")), (2, 1));
    // A fault gives both back too.
    f.script
        .reporters
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .report(Fault::crashed(FaultCode::WorkerFault, "x"));
    for _ in 0..100 {
        if a3.state() == SessionState::Faulted {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(a3.state(), SessionState::Faulted);
    assert_eq!(a.tenant.open_sessions(), 1);
    assert_eq!(f.registry.open_count(), 2);
    assert_eq!(tenant_gauge(&f, "a"), 1);
}

#[tokio::test]
async fn a_failed_open_gives_back_the_tenant_slot_too() {
    let script = Script::default();
    *script.fail_start.lock().unwrap() = Some(StartError::Refused("no".into()));
    let f = fixture_with(4, policy(), script);
    let a = Caller::new(tenant("a", Some(1), None), None, false);
    assert!(matches!(
        f.registry.open(&a, open_req()).await,
        Err(GatewayError::StartFailed(StartError::Refused(_)))
    ));
    assert_eq!(a.tenant.open_sessions(), 0);
    assert_eq!(f.registry.open_count(), 0);
    assert_eq!((tenant_gauge(&f, "a"), open_gauge(&f)), (0, 0));
    // The single quota slot is free again.
    f.registry.open(&a, open_req()).await.unwrap();
}

#[tokio::test]
async fn backends_outside_the_tenants_list_are_refused_and_hidden() {
    let f = fixture();
    let a = Caller::new(tenant("a", None, Some(&["other"])), None, false);
    assert!(matches!(
        f.registry.open(&a, open_req()).await,
        Err(GatewayError::BackendNotAllowed(b)) if b == "fake"
    ));
    assert_eq!(f.registry.backends_for(&a).len(), 0);
    assert_eq!(a.tenant.open_sessions(), 0);
    assert_eq!(f.registry.open_count(), 0);
    // An unknown backend is still NOT_FOUND, whatever the list says.
    assert!(matches!(
        f.registry
            .open(
                &a,
                OpenRequest {
                    backend: "nope".into(),
                    ..OpenRequest::default()
                }
            )
            .await,
        Err(GatewayError::BackendNotFound(_))
    ));
    let all = Caller::new(tenant("b", None, Some(&["fake"])), None, false);
    assert_eq!(f.registry.backends_for(&all).len(), 1);
}

#[tokio::test]
async fn tenant_limits_lower_the_backends() {
    let f = fixture();
    let t = Tenant::from_spec(&crate::config::TenantSpec {
        name: "a".into(),
        max_sessions: None,
        max_memory: None,
        backends: None,
        limits: crate::config::LimitOverrides {
            lease: Some(Duration::from_secs(5)),
            command_timeout: Some(Duration::from_secs(3600)),
            ..Default::default()
        },
        keys: Vec::new(),
        certs: Vec::new(),
        rates: Default::default(),
        cpu: Default::default(),
    });
    let a = Caller::new(t, None, false);
    let s = f.registry.open(&a, open_req()).await.unwrap();
    assert_eq!(s.times.lease, Duration::from_secs(5));
    assert_eq!(
        s.times.command_timeout,
        policy().command_timeout,
        "an override above the backend's is clamped"
    );
    // The tenant lowered the default lease, not its maximum: a client may
    // still ask for up to the backend's maximum.
    let s = f
        .registry
        .open(
            &a,
            OpenRequest {
                lease: Some(Duration::from_secs(7200)),
                ..open_req()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.times.lease, policy().max_lease);
}
