//! Closing and faults: idempotent closes, faults in and out of band, stuck
//! workers and shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::fixtures::*;
use crate::backend::{Fault, FaultCode};
use crate::config::SessionPolicy;
use crate::registry::{CloseReason, GatewayError, SessionState};
#[tokio::test]
async fn close_is_idempotent() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let first = f.registry.close(&me(), &s.id).await.unwrap();
    assert_eq!(first.final_state, SessionState::Closed);
    assert!(!first.already_closed);
    let second = f.registry.close(&me(), &s.id).await.unwrap();
    assert!(second.already_closed);
    assert_eq!(f.script.closed.load(Ordering::SeqCst), 1);
    let err = f
        .registry
        .invoke(&me(), &s.id, cmd(), None)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        GatewayError::NotReady {
            state: SessionState::Closed,
            reason: Some(CloseReason::ClientClose)
        }
    ));
    assert_eq!(
        err.to_string(),
        "session is CLOSED (closed: client-close), not READY"
    );
}

#[tokio::test]
async fn concurrent_closes_close_once() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let caller = me();
    let results = futures::future::join_all((0..8).map(|_| f.registry.close(&caller, &s.id))).await;
    let first = results
        .iter()
        .filter(|r| !r.as_ref().unwrap().already_closed)
        .count();
    assert_eq!(first, 1);
    assert_eq!(f.script.closed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_fault_stops_the_worker_and_frees_the_slot() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    *f.script.fault_next_invoke.lock().unwrap() = Some(Fault::deadline("slow"));
    let err = f
        .registry
        .invoke(&me(), &s.id, cmd(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, GatewayError::Faulted(_)));
    assert_eq!(s.state(), SessionState::Faulted);
    assert_eq!(s.snapshot().fault.unwrap().code.as_str(), "deadline");
    assert_eq!(f.script.killed.load(Ordering::SeqCst), 1);
    assert_eq!(f.registry.open_count(), 0);
    assert_eq!(open_gauge(&f), 0);
    // Still visible, no longer usable, and closing it makes it final.
    assert!(matches!(
        f.registry.invoke(&me(), &s.id, cmd(), None).await,
        Err(GatewayError::NotReady {
            state: SessionState::Faulted,
            reason: Some(CloseReason::Fault)
        })
    ));
    let closed = f.registry.close(&me(), &s.id).await.unwrap();
    assert_eq!(closed.final_state, SessionState::Closed);
    assert!(!closed.already_closed);
    assert!(f.registry.close(&me(), &s.id).await.unwrap().already_closed);
}

#[tokio::test]
async fn out_of_band_faults_reach_the_session() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let reporter = f.script.reporters.lock().unwrap()[0].clone();
    reporter.report(Fault::crashed(
        FaultCode::Trap(crate::backend::TrapCode::Unreachable),
        "in a tick",
    ));
    for _ in 0..100 {
        if s.state() == SessionState::Faulted {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(s.state(), SessionState::Faulted);
    assert_eq!(f.registry.open_count(), 0);
}

#[tokio::test]
async fn a_late_fault_never_reopens_a_closed_session() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    f.registry.close(&me(), &s.id).await.unwrap();
    let reporter = f.script.reporters.lock().unwrap()[0].clone();
    reporter.report(Fault::crashed(FaultCode::WorkerFault, "after close"));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(s.state(), SessionState::Closed);
    assert_eq!(s.snapshot().close_reason, Some(CloseReason::ClientClose));
}

#[tokio::test(start_paused = true)]
async fn a_stuck_worker_is_killed_and_blocks_no_one() {
    let script = Script {
        hang_on_close: true,
        ..Script::default()
    };
    let f = fixture_with(
        4,
        SessionPolicy {
            close_timeout: Duration::from_millis(200),
            ..policy()
        },
        script,
    );
    let a = f.registry.open(&me(), open_req()).await.unwrap();
    let b = f.registry.open(&me(), open_req()).await.unwrap();
    f.clock.advance(Duration::from_secs(61));
    assert_eq!(f.registry.sweep().await, 2);
    assert_eq!(a.state(), SessionState::Closed);
    assert_eq!(b.state(), SessionState::Closed);
    assert_eq!(f.script.killed.load(Ordering::SeqCst), 2);
    assert_eq!(f.registry.open_count(), 0);
}

#[tokio::test]
async fn shutdown_closes_everything_and_refuses_new_sessions() {
    let f = fixture();
    let a = f.registry.open(&me(), open_req()).await.unwrap();
    let b = f.registry.open(&me(), open_req()).await.unwrap();
    f.registry.shutdown(Duration::from_secs(5)).await;
    for s in [&a, &b] {
        assert_eq!(s.state(), SessionState::Closed);
        assert_eq!(
            s.snapshot().close_reason,
            Some(CloseReason::GatewayShutdown)
        );
    }
    assert!(matches!(
        f.registry.open(&me(), open_req()).await,
        Err(GatewayError::ShuttingDown)
    ));
    assert_eq!(open_gauge(&f), 0);
}

#[tokio::test(start_paused = true)]
async fn a_drain_ends_when_the_last_session_gives_its_slot_back() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    assert!(f.registry.begin_drain());
    assert!(!f.registry.begin_drain(), "one drain at a time");
    assert!(matches!(
        f.registry.open(&me(), open_req()).await,
        Err(GatewayError::Draining)
    ));
    let registry = std::sync::Arc::clone(&f.registry);
    let began = tokio::time::Instant::now();
    let drain = tokio::spawn(async move {
        registry
            .drain(
                Duration::from_secs(60),
                Duration::from_secs(1),
                &crate::registry::KeepUntilEnd,
            )
            .await;
    });
    tokio::task::yield_now().await;
    f.registry.close(&me(), &s.id).await.unwrap();
    drain.await.unwrap();
    // Woken by the slot's drop, not by a poll (or the drain's timeout).
    assert!(
        began.elapsed() < Duration::from_millis(50),
        "{:?}",
        began.elapsed()
    );
}
