//! Tenants' request and open rates: token buckets on the registry's clock.

use std::sync::Arc;
use std::time::Duration;

use super::fixtures::*;
use crate::config::{TenantRates, TenantSpec};
use crate::metrics::RateLabel;
use crate::rate::Rate;
use crate::registry::{Caller, GatewayError, RateKind, Tenant};

fn rated(name: &str, rates: TenantRates) -> Caller {
    let tenant = Tenant::from_spec(&TenantSpec {
        name: name.into(),
        max_sessions: None,
        backends: None,
        limits: Default::default(),
        keys: Vec::new(),
        certs: Vec::new(),
        max_memory: None,
        rates,
        cpu: Default::default(),
    });
    Caller::new(tenant, None, false)
}

fn rate(per_sec: f64, burst: u32) -> Option<Rate> {
    Some(Rate::new(per_sec, Some(burst)).unwrap())
}

fn limited(f: &Fixture, tenant: &str, kind: &str) -> u64 {
    f.metrics
        .rate_limited
        .get_or_create(&RateLabel {
            tenant: tenant.into(),
            kind: kind.into(),
        })
        .get()
}

#[tokio::test]
async fn a_tenant_over_its_request_rate_is_refused_until_a_token_is_due() {
    let f = fixture();
    let a = rated(
        "a",
        TenantRates {
            requests: rate(10.0, 2),
            opens: None,
        },
    );
    let b = rated("b", TenantRates::default());
    f.registry.admit(&a).unwrap();
    f.registry.admit(&a).unwrap();
    match f.registry.admit(&a) {
        Err(GatewayError::RateLimited {
            tenant,
            kind: RateKind::Requests,
            per_sec,
            retry_after,
        }) => {
            assert_eq!((tenant.as_str(), per_sec), ("a", 10.0));
            assert!(
                retry_after.abs_diff(Duration::from_millis(100)) < Duration::from_micros(1),
                "{retry_after:?}"
            );
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // Another tenant, and the local one, have rates of their own (or none).
    for _ in 0..100 {
        f.registry.admit(&b).unwrap();
        f.registry.admit(&me()).unwrap();
    }
    f.clock.advance(Duration::from_millis(100));
    f.registry.admit(&a).unwrap();
    assert!(f.registry.admit(&a).is_err());
    assert_eq!(limited(&f, "a", "requests"), 2);
    assert_eq!(limited(&f, "b", "requests"), 0);
    let message = f.registry.admit(&a).unwrap_err().to_string();
    assert!(
        message.contains("max_requests_per_sec") && message.contains("retry in 100ms"),
        "{message}"
    );
}

#[tokio::test]
async fn keys_of_one_tenant_share_its_rate() {
    let f = fixture();
    let a = rated(
        "a",
        TenantRates {
            requests: rate(1.0, 1),
            opens: None,
        },
    );
    let other_key = Caller::new(Arc::clone(&a.tenant), Some("k2".into()), false);
    f.registry.admit(&a).unwrap();
    assert!(f.registry.admit(&other_key).is_err());
}

#[tokio::test]
async fn opens_over_the_open_rate_are_refused_without_taking_a_slot() {
    let f = fixture();
    let a = rated(
        "a",
        TenantRates {
            requests: None,
            opens: rate(0.5, 1),
        },
    );
    let s = f.registry.open(&a, open_req()).await.unwrap();
    match f.registry.open(&a, open_req()).await {
        Err(GatewayError::RateLimited {
            kind: RateKind::Opens,
            retry_after,
            ..
        }) => assert_eq!(retry_after, Duration::from_secs(2)),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(a.tenant.open_sessions(), 1);
    assert_eq!(f.registry.open_count(), 1);
    assert_eq!(open_gauge(&f), 1);
    assert_eq!(limited(&f, "a", "opens"), 1);
    // Other calls are not opens.
    f.registry.admit(&a).unwrap();
    f.registry.renew(&a, &s.id).unwrap();
    f.clock.advance(Duration::from_secs(2));
    f.registry.open(&a, open_req()).await.unwrap();
    assert_eq!(a.tenant.open_sessions(), 2);
}

#[tokio::test]
async fn an_open_of_an_unknown_backend_takes_no_open_token() {
    let f = fixture();
    let a = rated(
        "a",
        TenantRates {
            requests: None,
            opens: rate(1.0, 1),
        },
    );
    let mut bad = open_req();
    bad.backend = "nope".into();
    assert!(matches!(
        f.registry.open(&a, bad).await,
        Err(GatewayError::BackendNotFound(_))
    ));
    f.registry.open(&a, open_req()).await.unwrap();
}
