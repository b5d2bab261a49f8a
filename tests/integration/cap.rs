//! The session cap, rollback of failed opens, and the gauges and counters
//! that must return to their baseline.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gatehouse::proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::fixtures::*;

fn capped(max: usize) -> Toml {
    Toml::standard().server(&format!("max_sessions = {max}"))
}

fn fail_open_request() -> pb::OpenSessionRequest {
    let mut r = open_request("chaos");
    r.config = HashMap::from([("fail_open".to_string(), "yes".to_string())]);
    r
}

#[tokio::test]
async fn cap_is_refused_at_once_with_retry_info_and_freed_by_close() {
    let gw = Gatehouse::start(capped(2).render()).await;
    let mut c = gw.client().await;
    let a = open(&mut c, "echo").await;
    let _b = open(&mut c, "kv").await;
    assert_eq!(gw.metric("gatehouse_open_sessions", &[]).await, 2.0);

    let began = Instant::now();
    let mut request = tonic::Request::new(open_request("echo"));
    // Were the open queued instead of refused, it would run into this.
    request.set_timeout(Duration::from_secs(8));
    let st = expect_code(c.open_session(request).await, Code::ResourceExhausted);
    let took = began.elapsed();
    assert!(took < Duration::from_secs(3), "the refusal took {took:?}");
    let retry = st
        .get_details_retry_info()
        .unwrap_or_else(|| panic!("no RetryInfo detail in {st:?}"));
    let delay = retry.retry_delay.expect("RetryInfo.retry_delay");
    assert!(delay > Duration::ZERO, "{delay:?}");

    // Any backend counts against the same cap.
    expect_code(
        c.open_session(open_request("chaos")).await,
        Code::ResourceExhausted,
    );
    assert_eq!(list(&mut c).await.len(), 2, "refused opens are not listed");

    close(&mut c, &a.session_id).await;
    let d = open(&mut c, "echo").await;
    assert_eq!(state(&d), pb::SessionState::Ready);
    expect_code(
        c.open_session(open_request("echo")).await,
        Code::ResourceExhausted,
    );
    assert_eq!(gw.metric("gatehouse_open_sessions", &[]).await, 2.0);
}

#[tokio::test]
async fn failed_open_is_failed_precondition_and_leaks_nothing() {
    let gw = Gatehouse::start(capped(2).render()).await;
    let mut c = gw.client().await;
    for _ in 0..3 {
        let st = expect_code(
            c.open_session(fail_open_request()).await,
            Code::FailedPrecondition,
        );
        assert!(st.message().contains("fail_open"), "{st:?}");
    }
    assert!(
        list(&mut c).await.is_empty(),
        "failed opens are deregistered"
    );
    assert_eq!(gw.metric("gatehouse_open_sessions", &[]).await, 0.0);
    assert_eq!(
        gw.metric("gatehouse_faults_total", &[("backend", "chaos")])
            .await,
        3.0
    );
    assert_eq!(gw.metric("gatehouse_sessions_opened_total", &[]).await, 0.0);
    // Every slot is still free.
    let a = open(&mut c, "chaos").await;
    let b = open(&mut c, "chaos").await;
    assert_eq!(invoke_ok(&mut c, &a.session_id, "echo", b"ok").await, "ok");
    assert_eq!(invoke_ok(&mut c, &b.session_id, "echo", b"ok").await, "ok");
    expect_code(
        c.open_session(open_request("echo")).await,
        Code::ResourceExhausted,
    );
    // At the cap, a failing open is refused for the cap, not the plugin.
    expect_code(
        c.open_session(fail_open_request()).await,
        Code::ResourceExhausted,
    );
}

#[tokio::test]
async fn faulted_sessions_do_not_hold_slots() {
    let gw = Gatehouse::start(capped(2).render()).await;
    let mut c = gw.client().await;
    let a = open(&mut c, "chaos").await;
    let b = open(&mut c, "chaos").await;
    expect_code(
        try_invoke(&mut c, &a.session_id, "trap", b"").await,
        Code::Aborted,
    );
    expect_code(
        try_invoke(&mut c, &b.session_id, "spin", b"").await,
        Code::DeadlineExceeded,
    );
    // Both are FAULTED and still visible, but hold no slot.
    for id in [&a.session_id, &b.session_id] {
        assert_eq!(state(&get(&mut c, id).await), pb::SessionState::Faulted);
    }
    assert_eq!(gw.metric("gatehouse_open_sessions", &[]).await, 0.0);
    let x = open(&mut c, "echo").await;
    let _y = open(&mut c, "kv").await;
    expect_code(
        c.open_session(open_request("echo")).await,
        Code::ResourceExhausted,
    );
    // Closing a faulted session frees nothing more (it held nothing).
    close(&mut c, &a.session_id).await;
    expect_code(
        c.open_session(open_request("echo")).await,
        Code::ResourceExhausted,
    );
    close(&mut c, &x.session_id).await;
    open(&mut c, "echo").await;
}

#[tokio::test]
async fn gauges_return_to_baseline_and_counters_move() {
    let gw = Gatehouse::start(capped(8).render()).await;
    let mut c = gw.client().await;
    let text = gw.metrics().await;
    assert_eq!(metric_sum(&text, "gatehouse_open_sessions", &[]), 0.0);

    let e1 = open(&mut c, "echo").await;
    let e2 = open(&mut c, "echo").await;
    let k = open(&mut c, "kv").await;
    let x = open(&mut c, "chaos").await;
    let y = open(&mut c, "chaos").await;
    let text = gw.metrics().await;
    assert_eq!(metric_sum(&text, "gatehouse_open_sessions", &[]), 5.0);
    assert_eq!(
        metric_sum(&text, "gatehouse_open_sessions", &[("backend", "echo")]),
        2.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_sessions_opened_total",
            &[("backend", "echo")]
        ),
        2.0
    );
    assert_eq!(
        metric_sum(&text, "gatehouse_sessions_opened_total", &[]),
        5.0
    );

    invoke_ok(&mut c, &e1.session_id, "emit", b"3").await;
    expect_code(
        try_invoke(&mut c, &x.session_id, "trap", b"").await,
        Code::Aborted,
    );
    expect_code(
        try_invoke(&mut c, &y.session_id, "spin", b"").await,
        Code::DeadlineExceeded,
    );
    expect_code(
        c.open_session(fail_open_request()).await,
        Code::FailedPrecondition,
    );
    for s in [&e1, &e2, &k] {
        close(&mut c, &s.session_id).await;
    }
    // Closing the faulted one is not another client close in the counters.
    close(&mut c, &x.session_id).await;

    let text = gw.metrics().await;
    assert_eq!(
        metric_sum(&text, "gatehouse_open_sessions", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_sessions_closed_total",
            &[("reason", "client-close")]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_sessions_closed_total",
            &[("reason", "fault")]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "gatehouse_faults_total", &[("code", "deadline")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_faults_total",
            &[("code", "trap: unreachable")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "gatehouse_faults_total", &[("code", "open-refused")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "gatehouse_faults_total", &[]),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "gatehouse_sessions_opened_total", &[]),
        5.0,
        "a failed open is not counted as opened"
    );
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_events_emitted_total",
            &[("backend", "echo")]
        ),
        3.0,
        "{text}"
    );
    assert!(
        metric_sum(
            &text,
            "gatehouse_invoke_seconds_count",
            &[("backend", "echo")]
        ) >= 1.0,
        "{text}"
    );
}

#[tokio::test]
async fn a_freed_slot_can_be_reused_at_once() {
    let gw = Gatehouse::start(capped(1).render()).await;
    let mut c = gw.client().await;
    for round in 0..100 {
        let s = open(&mut c, "chaos").await;
        expect_code(
            try_invoke(&mut c, &s.session_id, "trap", b"").await,
            Code::Aborted,
        );
        let r = c.open_session(open_request("echo")).await;
        let t = r
            .unwrap_or_else(|st| panic!("round {round}: open right after a fault: {st:?}"))
            .into_inner()
            .session
            .unwrap();
        close(&mut c, &t.session_id).await;
        let r = c.open_session(open_request("kv")).await;
        let k = r
            .unwrap_or_else(|st| panic!("round {round}: open right after a close: {st:?}"))
            .into_inner()
            .session
            .unwrap();
        close(&mut c, &k.session_id).await;
    }
}
