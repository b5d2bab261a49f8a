//! Opening: READY, the cap, rollback of failed and abandoned opens, and
//! the values a request may ask for.

use std::time::Duration;

use super::fixtures::*;
use crate::backend::{Fault, FaultCode, StartError};
use crate::config::SessionPolicy;
use crate::metrics::CodeLabel;
use crate::registry::{GatewayError, OpenRequest, SessionState};
#[tokio::test]
async fn open_reaches_ready_and_holds_a_slot() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    assert_eq!(s.state(), SessionState::Ready);
    assert_eq!(s.tenant, "default");
    assert_eq!(s.id.len(), 32, "128 bits as hex");
    assert_eq!(f.registry.open_count(), 1);
    assert_eq!(open_gauge(&f), 1);
}

#[tokio::test]
async fn session_ids_are_unique() {
    let f = fixture();
    let a = f.registry.open(&me(), open_req()).await.unwrap();
    let b = f.registry.open(&me(), open_req()).await.unwrap();
    assert_ne!(a.id, b.id);
}

#[tokio::test]
async fn the_cap_refuses_at_once_and_slots_come_back() {
    let f = fixture_with(2, policy(), Script::default());
    let a = f.registry.open(&me(), open_req()).await.unwrap();
    let _b = f.registry.open(&me(), open_req()).await.unwrap();
    match f.registry.open(&me(), open_req()).await {
        Err(GatewayError::SessionCapReached { cap: 2, .. }) => {}
        other => panic!("expected the cap, got {:?}", other.map(|s| s.id.clone())),
    }
    f.registry.close(&me(), &a.id).await.unwrap();
    f.registry.open(&me(), open_req()).await.unwrap();
}

#[tokio::test]
async fn an_open_abandoned_mid_start_rolls_back_everything() {
    let script = Script::default();
    *script.hang_on_start.lock().unwrap() = true;
    let f = fixture_with(1, policy(), script);
    let caller = me();
    {
        let open = f.registry.open(&caller, open_req());
        tokio::pin!(open);
        assert!(futures::poll!(open.as_mut()).is_pending(), "start hangs");
        assert_eq!(
            f.registry.open_count(),
            1,
            "the slot is held while starting"
        );
        assert_eq!(f.registry.list(&me()).len(), 1, "registered while starting");
    } // The caller goes away: the open's future is dropped mid-start.
    assert_rolled_back(&f, "open-abandoned").await;
}

/// Every step of an open undone: slot and gauge, registration, one fault
/// counted under `code`, and the (single) slot usable again.
async fn assert_rolled_back(f: &Fixture, code: &str) {
    assert_eq!(f.registry.open_count(), 0);
    assert_eq!(open_gauge(f), 0);
    assert!(f.registry.list(&me()).is_empty(), "deregistered");
    let faults = f
        .metrics
        .faults
        .get_or_create(&CodeLabel {
            backend: "fake".into(),
            code: code.into(),
        })
        .get();
    assert_eq!(faults, 1);
    f.registry.open(&me(), open_req()).await.unwrap();
}

#[tokio::test]
async fn a_failed_start_rolls_back_everything() {
    let script = Script::default();
    *script.fail_start.lock().unwrap() = Some(StartError::Failed(Fault::crashed(
        FaultCode::WorkerFault,
        "x",
    )));
    let f = fixture_with(1, policy(), script);
    let err = f.registry.open(&me(), open_req()).await.unwrap_err();
    assert!(matches!(
        err,
        GatewayError::StartFailed(StartError::Failed(_))
    ));
    assert_rolled_back(&f, "worker-fault").await;
}

#[tokio::test]
async fn unknown_backend_and_bad_values() {
    let f = fixture();
    let err = f
        .registry
        .open(
            &me(),
            OpenRequest {
                backend: "nope".into(),
                ..OpenRequest::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GatewayError::BackendNotFound(_)));
    let err = f
        .registry
        .open(
            &me(),
            OpenRequest {
                lease: Some(Duration::ZERO),
                ..open_req()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GatewayError::InvalidArgument(_)));
    assert_eq!(f.registry.open_count(), 0);
}

#[tokio::test]
async fn requested_values_are_capped_by_the_backend() {
    let f = fixture();
    let s = f
        .registry
        .open(
            &me(),
            OpenRequest {
                lease: Some(Duration::from_secs(1_000_000)),
                command_timeout: Some(Duration::from_secs(2)),
                ..open_req()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.times.lease, SessionPolicy::default().max_lease);
    assert_eq!(s.times.command_timeout, Duration::from_secs(2));
}
