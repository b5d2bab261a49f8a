//! Leases, renewal, stream keep-alive, idle timeout and maximum lifetime.
//!
//! These use short real leases with a 50ms sweep; the registry's own tests
//! move a hand clock over the same rules. Here the margins are generous for
//! a loaded machine: a lease (or idle timeout) that must survive is 2s and
//! is renewed about every 100ms for longer than that, so only a stall of
//! nearly 2s could fail them; what must end is waited for (polled with
//! ListSessions, which unlike GetSession does not renew the lease) and only
//! bounded from below. Each renewal is checked to move the lease on.

use std::time::{Duration, Instant};

use gatehouse::proto::v1 as pb;
use tonic::Code;

use crate::fixtures::*;

/// The lease of a session left alone to expire.
const LEASE: Duration = Duration::from_millis(300);

/// The lease (and idle timeout) of a session that something keeps alive.
const KEPT_LEASE: Duration = Duration::from_secs(2);

/// How long "kept alive" is watched: longer than a kept lease.
const WATCH: Duration = Duration::from_millis(2500);

fn with_lease(backend: &str, lease: Duration) -> pb::OpenSessionRequest {
    let mut r = open_request(backend);
    r.lease = Some(pb_duration(lease));
    r
}

/// Polls ListSessions until the session has left READY; returns it.
async fn wait_until_ended(c: &Client, id: &str) -> pb::SessionInfo {
    eventually("the session to end", PATIENCE, || {
        let mut c = c.clone();
        let id = id.to_string();
        async move {
            let info = peek(&mut c, &id).await.expect("the session stays listed");
            // CLOSING is on the way to the end, not the end: the plugin's
            // close may still be running.
            let ended = !matches!(
                state(&info),
                pb::SessionState::Ready | pb::SessionState::Closing
            );
            ended.then_some(info)
        }
    })
    .await
}

/// Asserts the session is READY now without renewing it.
async fn assert_ready(c: &mut Client, id: &str, when: &str) {
    let info = peek(c, id).await.expect("listed");
    assert_eq!(
        state(&info),
        pb::SessionState::Ready,
        "{when}: session ended early: {info:?}"
    );
}

/// Sleeps `step` repeatedly until `total` has passed since `from`, running
/// `each` in between.
async fn for_a_while<F, Fut>(total: Duration, step: Duration, mut each: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let from = Instant::now();
    while from.elapsed() < total {
        tokio::time::sleep(step).await;
        each().await;
    }
}

#[tokio::test]
async fn an_unrenewed_lease_expires() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let opened = Instant::now();
    let s = open_with(&mut c, with_lease("echo", LEASE)).await;
    let keep = open(&mut c, "echo").await; // default 60s lease
    let info = wait_until_ended(&c, &s.session_id).await;
    let took = opened.elapsed();
    assert!(
        took >= LEASE - Duration::from_millis(20),
        "expired after {took:?}"
    );
    assert_eq!(state(&info), pb::SessionState::Closed, "{info:?}");
    assert_eq!(
        close_reason(&info),
        pb::CloseReason::LeaseExpired,
        "{info:?}"
    );
    expect_code(
        try_invoke(&mut c, &s.session_id, "echo", b"x").await,
        Code::FailedPrecondition,
    );
    let again = close(&mut c, &s.session_id).await;
    assert!(again.already_closed);
    gw.wait_metric(
        "gatehouse_sessions_closed_total",
        &[("reason", "lease-expired")],
        1.0,
    )
    .await;
    gw.wait_metric("gatehouse_open_sessions", &[("backend", "echo")], 1.0)
        .await;
    assert_eq!(
        state(&get(&mut c, &keep.session_id).await),
        pb::SessionState::Ready
    );
}

#[tokio::test]
async fn renew_lease_keeps_a_session_alive() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open_with(&mut c, with_lease("echo", KEPT_LEASE)).await;
    let id = s.session_id.clone();
    let last = std::sync::Arc::new(std::sync::Mutex::new(s.lease_expires_at));
    for_a_while(WATCH, Duration::from_millis(100), || {
        let mut c = c.clone();
        let id = id.clone();
        let last = std::sync::Arc::clone(&last);
        async move {
            let info = c
                .renew_lease(pb::RenewLeaseRequest { session_id: id })
                .await
                .expect("RenewLease while the lease is live")
                .into_inner();
            assert_eq!(state(&info), pb::SessionState::Ready, "{info:?}");
            // Each renewal moves the lease on: a full lease from the call.
            let expires = system_time(&info.lease_expires_at);
            let mut last = last.lock().unwrap();
            assert!(expires > system_time(&last), "{info:?}");
            let lease = expires
                .duration_since(system_time(&info.last_activity_at))
                .unwrap();
            assert!(
                lease.abs_diff(KEPT_LEASE) < Duration::from_millis(1),
                "{info:?}"
            );
            *last = info.lease_expires_at;
        }
    })
    .await;
    assert_ready(&mut c, &id, "after more than a lease of renewals").await;
    // Left alone, it now expires.
    let info = wait_until_ended(&c, &id).await;
    assert_eq!(close_reason(&info), pb::CloseReason::LeaseExpired);
}

#[tokio::test]
async fn invoking_keeps_a_session_alive() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open_with(&mut c, with_lease("echo", KEPT_LEASE)).await;
    let id = s.session_id.clone();
    let mut n = 0u32;
    let from = Instant::now();
    while from.elapsed() < WATCH {
        tokio::time::sleep(Duration::from_millis(100)).await;
        n += 1;
        assert_eq!(invoke_ok(&mut c, &id, "count", b"").await, n.to_string());
    }
    assert_ready(&mut c, &id, "after more than a lease of invokes").await;
    let info = wait_until_ended(&c, &id).await;
    assert_eq!(close_reason(&info), pb::CloseReason::LeaseExpired);
}

#[tokio::test]
async fn an_attached_stream_keeps_the_lease_alive() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open_with(&mut c, with_lease("echo", KEPT_LEASE)).await;
    let id = s.session_id.clone();
    let mut events = subscribe(&mut c, &id, None).await.expect("StreamEvents");
    // No calls on the session for longer than its lease; only looks that
    // do not renew.
    for_a_while(WATCH, Duration::from_millis(100), || {
        let mut c = c.clone();
        let id = id.clone();
        async move { assert_ready(&mut c, &id, "with a stream attached").await }
    })
    .await;
    // The stream is live.
    let mut other = gw.client().await;
    invoke_ok(&mut other, &id, "emit", b"1").await;
    assert_eq!(next_event(&mut events).await.sequence, 1);

    drop(events);
    let dropped = Instant::now();
    let info = wait_until_ended(&c, &id).await;
    assert!(dropped.elapsed() >= Duration::from_millis(200));
    assert_eq!(state(&info), pb::SessionState::Closed);
    assert_eq!(close_reason(&info), pb::CloseReason::LeaseExpired);
}

#[tokio::test]
async fn idle_timeout_closes_even_with_an_attached_stream() {
    let config =
        Toml::new().backend_with("echo", "builtin:echo", &[], &["idle_timeout = \"700ms\""]);
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let s = open_with(&mut c, with_lease("echo", LEASE)).await;
    let opened = Instant::now();
    let mut events = subscribe(&mut c, &s.session_id, None)
        .await
        .expect("StreamEvents");
    let info = wait_until_ended(&c, &s.session_id).await;
    let took = opened.elapsed();
    assert_eq!(state(&info), pb::SessionState::Closed, "{info:?}");
    assert_eq!(
        close_reason(&info),
        pb::CloseReason::IdleTimeout,
        "{info:?}"
    );
    // Past the lease (the stream kept it) and about at the idle timeout.
    assert!(took >= Duration::from_millis(600), "closed after {took:?}");
    // The stream ends with the session.
    assert!(stream_end(&mut events).await.is_ok());
    gw.wait_metric(
        "gatehouse_sessions_closed_total",
        &[("reason", "idle-timeout")],
        1.0,
    )
    .await;
    gw.wait_metric("gatehouse_open_sessions", &[], 0.0).await;
}

#[tokio::test]
async fn idle_timeout_is_reset_by_calls() {
    let config = Toml::new().backend_with("echo", "builtin:echo", &[], &["idle_timeout = \"2s\""]);
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    let id = s.session_id.clone();
    for_a_while(WATCH, Duration::from_millis(100), || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            invoke_ok(&mut c, &id, "echo", b"x").await;
        }
    })
    .await;
    assert_ready(&mut c, &id, "with calls every 100ms").await;
    let info = wait_until_ended(&c, &id).await;
    assert_eq!(close_reason(&info), pb::CloseReason::IdleTimeout);
}

#[tokio::test]
async fn max_lifetime_closes_even_while_the_client_is_busy() {
    let config =
        Toml::new().backend_with("echo", "builtin:echo", &[], &["max_lifetime = \"800ms\""]);
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let opened = Instant::now();
    let s = open(&mut c, "echo").await;
    let id = s.session_id.clone();
    let status = eventually(
        "the session to reach its maximum lifetime",
        PATIENCE,
        || {
            let mut c = c.clone();
            let id = id.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                match try_invoke(&mut c, &id, "count", b"").await {
                    Ok(r) => {
                        assert!(r.error.is_none());
                        None
                    }
                    Err(st) => Some(st),
                }
            }
        },
    )
    .await;
    let took = opened.elapsed();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(took >= Duration::from_millis(750), "closed after {took:?}");
    let info = get(&mut c, &id).await;
    assert_eq!(state(&info), pb::SessionState::Closed, "{info:?}");
    assert_eq!(
        close_reason(&info),
        pb::CloseReason::MaxLifetime,
        "{info:?}"
    );
}
