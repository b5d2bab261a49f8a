//! Leases, idle timeouts, lifetimes and retention, with and without an
//! attached event stream.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::fixtures::*;
use crate::config::SessionPolicy;
use crate::registry::{CloseReason, GatewayError, SessionState};
#[tokio::test]
async fn the_lease_expires_without_activity() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    f.clock.advance(Duration::from_secs(59));
    assert_eq!(f.registry.sweep().await, 0);
    assert_eq!(s.state(), SessionState::Ready);
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(f.registry.sweep().await, 1);
    assert_eq!(s.state(), SessionState::Closed);
    assert_eq!(s.snapshot().close_reason, Some(CloseReason::LeaseExpired));
    // A client back from a pause learns why its session is gone.
    let err = f.registry.renew(&me(), &s.id).unwrap_err();
    assert_eq!(
        err.to_string(),
        "session is CLOSED (closed: lease-expired), not READY"
    );
    assert_eq!(f.registry.open_count(), 0);
    assert_eq!(
        f.script.closed.load(Ordering::SeqCst),
        1,
        "closed gracefully"
    );
}

#[tokio::test]
async fn every_call_renews_the_lease() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    for _ in 0..5 {
        f.clock.advance(Duration::from_secs(40));
        f.registry.invoke(&me(), &s.id, cmd(), None).await.unwrap();
        f.registry.sweep().await;
    }
    f.clock.advance(Duration::from_secs(40));
    f.registry.renew(&me(), &s.id).unwrap();
    f.clock.advance(Duration::from_secs(40));
    f.registry.get(&me(), &s.id).unwrap();
    f.clock.advance(Duration::from_secs(40));
    f.registry.sweep().await;
    assert_eq!(
        s.state(),
        SessionState::Ready,
        "renewed after 280s of a 60s lease"
    );
    f.clock.advance(Duration::from_secs(21));
    f.registry.sweep().await;
    assert_eq!(s.state(), SessionState::Closed);
}

#[tokio::test]
async fn an_attached_stream_keeps_the_lease_alive() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let sub = f.registry.subscribe(&me(), &s.id, None).await.unwrap();
    for _ in 0..10 {
        f.clock.advance(Duration::from_secs(30));
        f.registry.sweep().await;
    }
    assert_eq!(s.state(), SessionState::Ready, "5 minutes on a 60s lease");
    drop(sub);
    f.clock.advance(Duration::from_secs(61));
    f.registry.sweep().await;
    assert_eq!(s.state(), SessionState::Closed);
    assert_eq!(s.snapshot().close_reason, Some(CloseReason::LeaseExpired));
}

#[tokio::test]
async fn idle_timeout_ignores_an_attached_stream() {
    let f = fixture_with(
        4,
        SessionPolicy {
            idle_timeout: Some(Duration::from_secs(10)),
            ..policy()
        },
        Script::default(),
    );
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let _sub = f.registry.subscribe(&me(), &s.id, None).await.unwrap();
    f.clock.advance(Duration::from_secs(9));
    f.registry.sweep().await;
    assert_eq!(s.state(), SessionState::Ready);
    f.clock.advance(Duration::from_secs(1));
    f.registry.sweep().await;
    assert_eq!(s.snapshot().close_reason, Some(CloseReason::IdleTimeout));
}

#[tokio::test]
async fn max_lifetime_closes_a_busy_session() {
    let f = fixture_with(
        4,
        SessionPolicy {
            max_lifetime: Some(Duration::from_secs(30)),
            ..policy()
        },
        Script::default(),
    );
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    for _ in 0..2 {
        f.clock.advance(Duration::from_secs(10));
        f.registry.invoke(&me(), &s.id, cmd(), None).await.unwrap();
        f.registry.sweep().await;
    }
    assert_eq!(s.state(), SessionState::Ready);
    f.clock.advance(Duration::from_secs(10));
    f.registry.sweep().await;
    assert_eq!(s.snapshot().close_reason, Some(CloseReason::MaxLifetime));
}

#[tokio::test]
async fn ended_sessions_are_forgotten_after_retention() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    f.registry.close(&me(), &s.id).await.unwrap();
    f.clock.advance(Duration::from_secs(29));
    f.registry.sweep().await;
    assert_eq!(
        f.registry.get(&me(), &s.id).unwrap().state(),
        SessionState::Closed
    );
    f.clock.advance(Duration::from_secs(1));
    f.registry.sweep().await;
    assert!(matches!(
        f.registry.get(&me(), &s.id),
        Err(GatewayError::SessionNotFound(_))
    ));
}

#[tokio::test]
async fn a_detached_stream_restarts_the_lease_even_without_sweeps() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let sub = f.registry.subscribe(&me(), &s.id, None).await.unwrap();
    // The sweeper was starved while the stream was attached...
    f.clock.advance(Duration::from_secs(59));
    drop(sub);
    // ...yet the lease runs from the moment the stream went away.
    f.clock.advance(Duration::from_secs(59));
    f.registry.sweep().await;
    assert_eq!(s.state(), SessionState::Ready);
    f.clock.advance(Duration::from_secs(1));
    f.registry.sweep().await;
    assert_eq!(s.state(), SessionState::Closed);
}
