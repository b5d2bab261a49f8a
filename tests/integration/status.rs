//! Gateway-level failures and the gRPC status codes they map to.

use gatehouse::proto::v1 as pb;
use tonic::Code;

use crate::fixtures::*;

/// A well-formed id nobody was given.
const UNKNOWN_ID: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn unknown_session_is_not_found_for_every_rpc() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    // A real session exists, so "not found" is not "nothing exists".
    let real = open(&mut c, "echo").await;
    for id in [UNKNOWN_ID, "", real.session_id.to_uppercase().as_str()] {
        expect_code(try_invoke(&mut c, id, "echo", b"x").await, Code::NotFound);
        expect_code(
            c.invoke_batch(pb::InvokeBatchRequest {
                session_id: id.into(),
                commands: vec![cmd("echo", b"x")],
            })
            .await,
            Code::NotFound,
        );
        expect_code(subscribe(&mut c, id, None).await, Code::NotFound);
        expect_code(
            c.renew_lease(pb::RenewLeaseRequest {
                session_id: id.into(),
            })
            .await,
            Code::NotFound,
        );
        expect_code(
            c.get_session(pb::GetSessionRequest {
                session_id: id.into(),
            })
            .await,
            Code::NotFound,
        );
        expect_code(
            c.restart_session(pb::RestartSessionRequest {
                session_id: id.into(),
                from_snapshot: None,
            })
            .await,
            Code::NotFound,
        );
        expect_code(
            c.upgrade_session(pb::UpgradeSessionRequest {
                session_id: id.into(),
                version: String::new(),
            })
            .await,
            Code::NotFound,
        );
        expect_code(
            c.close_session(pb::CloseSessionRequest {
                session_id: id.into(),
            })
            .await,
            Code::NotFound,
        );
    }
    assert_eq!(
        state(&get(&mut c, &real.session_id).await),
        pb::SessionState::Ready
    );
}

#[tokio::test]
async fn unknown_backend_is_not_found() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    for name in ["nope", "", "ECHO"] {
        let r = c.open_session(open_request(name)).await;
        expect_code(r, Code::NotFound);
    }
    assert!(list(&mut c).await.is_empty());
    assert_eq!(gw.metric("gatehouse_open_sessions", &[]).await, 0.0);
}

#[tokio::test]
async fn calls_on_a_closed_session_are_failed_precondition() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    close(&mut c, &s.session_id).await;
    let id = s.session_id.as_str();
    let status = expect_code(
        try_invoke(&mut c, id, "echo", b"x").await,
        Code::FailedPrecondition,
    );
    // The message says why the session is gone, not only that it is.
    assert_eq!(
        status.message(),
        "session is CLOSED (closed: client-close), not READY"
    );
    expect_code(
        c.invoke_batch(pb::InvokeBatchRequest {
            session_id: id.into(),
            commands: vec![cmd("echo", b"x")],
        })
        .await,
        Code::FailedPrecondition,
    );
    expect_code(
        c.renew_lease(pb::RenewLeaseRequest {
            session_id: id.into(),
        })
        .await,
        Code::FailedPrecondition,
    );
    expect_code(subscribe(&mut c, id, None).await, Code::FailedPrecondition);
    // Still visible, still CLOSED.
    assert_eq!(state(&get(&mut c, id).await), pb::SessionState::Closed);
}

#[tokio::test]
async fn second_event_subscriber_is_already_exists() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    let id = s.session_id.as_str();
    let mut first = subscribe(&mut c, id, None).await.expect("first subscriber");
    // From another connection too.
    let mut other = gw.client().await;
    expect_code(subscribe(&mut other, id, None).await, Code::AlreadyExists);
    expect_code(subscribe(&mut c, id, Some(0)).await, Code::AlreadyExists);
    // The first stream still works.
    invoke_ok(&mut c, id, "emit", b"1").await;
    assert_eq!(next_event(&mut first).await.sequence, 1);
    // Once it is dropped, a new subscriber is accepted.
    drop(first);
    let mut second = resubscribe(&mut other, id, None).await;
    invoke_ok(&mut c, id, "emit", b"1").await;
    assert_eq!(next_event(&mut second).await.sequence, 2);
}

#[tokio::test]
async fn batch_over_the_limit_is_invalid_argument() {
    let config = Toml::standard().server("max_batch_commands = 3");
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    let batch = |n: usize| pb::InvokeBatchRequest {
        session_id: s.session_id.clone(),
        commands: (0..n).map(|_| cmd("count", b"")).collect(),
    };
    let st = expect_code(c.invoke_batch(batch(4)).await, Code::InvalidArgument);
    assert!(st.message().contains('3'), "{st:?}");
    // Nothing of the refused batch ran.
    let r = c
        .invoke_batch(batch(3))
        .await
        .expect("a batch at the limit")
        .into_inner();
    let replies: Vec<Vec<u8>> = r.results.into_iter().map(|r| r.payload).collect();
    assert_eq!(replies, [b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);
    // Unknown session with an oversized batch: either check may come first,
    // but it must fail.
    assert!(
        c.invoke_batch(pb::InvokeBatchRequest {
            session_id: UNKNOWN_ID.into(),
            commands: (0..4).map(|_| cmd("count", b"")).collect(),
        })
        .await
        .is_err()
    );
}

#[tokio::test]
async fn zero_or_negative_durations_in_open_are_invalid_argument() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let zero = prost_types::Duration {
        seconds: 0,
        nanos: 0,
    };
    let negative = prost_types::Duration {
        seconds: -5,
        nanos: 0,
    };
    for (lease, timeout) in [
        (Some(zero), None),
        (None, Some(zero)),
        (Some(negative), None),
        (None, Some(negative)),
    ] {
        let mut request = open_request("echo");
        request.lease = lease;
        request.command_timeout = timeout;
        expect_code(c.open_session(request).await, Code::InvalidArgument);
    }
    assert!(list(&mut c).await.is_empty());
    assert_eq!(gw.metric("gatehouse_open_sessions", &[]).await, 0.0);
    // The gateway is unharmed.
    open(&mut c, "echo").await;
}

#[tokio::test]
async fn request_over_max_message_bytes_is_rejected() {
    let config = Toml::standard().server("max_message_bytes = \"16KiB\"");
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    // Under the limit: fine.
    let small = vec![b'a'; 8 << 10];
    assert_eq!(
        invoke_ok(&mut c, &s.session_id, "echo", &small).await.len(),
        small.len()
    );
    // Over it: tonic's decode limit refuses the request before the gateway
    // sees it, and the gateway reports the standard RESOURCE_EXHAUSTED (tonic
    // itself would say OUT_OF_RANGE).
    let big = vec![b'a'; 32 << 10];
    let st = expect_code(
        try_invoke(&mut c, &s.session_id, "echo", &big).await,
        Code::ResourceExhausted,
    );
    assert!(st.message().contains("too large"), "{st:?}");
    // The session and the connection are unharmed.
    assert_eq!(
        state(&get(&mut c, &s.session_id).await),
        pb::SessionState::Ready
    );
    assert_eq!(invoke_ok(&mut c, &s.session_id, "count", b"").await, "1");
}

#[tokio::test]
async fn reply_over_max_message_bytes_is_resource_exhausted() {
    let config = Toml::standard().server("max_message_bytes = \"16KiB\"");
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    let st = expect_code(
        try_invoke(&mut c, &s.session_id, "big-reply", b"32768").await,
        Code::ResourceExhausted,
    );
    assert!(st.message().contains("16384"), "{st:?}");
}

#[tokio::test]
async fn reply_over_max_message_bytes_is_refused_and_the_session_survives() {
    let config = Toml::standard().server("max_message_bytes = \"16KiB\"");
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    let r = try_invoke(&mut c, &s.session_id, "big-reply", b"32768").await;
    let st = r.expect_err("a 32KiB reply passed a 16KiB limit");
    assert!(
        matches!(st.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{st:?}"
    );
    assert_eq!(
        state(&get(&mut c, &s.session_id).await),
        pb::SessionState::Ready
    );
    assert_eq!(
        invoke_ok(&mut c, &s.session_id, "big-reply", b"8192")
            .await
            .len(),
        8192
    );
}

#[tokio::test]
async fn reply_over_max_reply_bytes_is_resource_exhausted() {
    let config = Toml::new().backend_with(
        "chaos",
        "builtin:chaos",
        &[],
        &["max_reply_bytes = \"4KiB\""],
    );
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    assert_eq!(
        invoke_ok(&mut c, &s.session_id, "big-reply", b"4096")
            .await
            .len(),
        4096
    );
    expect_code(
        try_invoke(&mut c, &s.session_id, "big-reply", b"4097").await,
        Code::ResourceExhausted,
    );
    // Not a fault: the session is still usable.
    assert_eq!(
        state(&get(&mut c, &s.session_id).await),
        pb::SessionState::Ready
    );
    assert_eq!(invoke_ok(&mut c, &s.session_id, "echo", b"hi").await, "hi");
}

#[tokio::test]
async fn resume_past_the_end_is_refused() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    invoke_ok(&mut c, &s.session_id, "emit", b"2").await;
    let st = subscribe(&mut c, &s.session_id, Some(10)).await;
    expect_code(st, Code::OutOfRange);
    // A failed subscribe does not hold the subscriber slot.
    let mut events = subscribe(&mut c, &s.session_id, Some(2))
        .await
        .expect("resume at the end");
    invoke_ok(&mut c, &s.session_id, "emit", b"1").await;
    assert_eq!(next_event(&mut events).await.sequence, 3);
    drop(events);
}
