//! Misbehaving workers (the `chaos` backend): deadlines, traps, panics,
//! faults in timer ticks, and the FAULTED -> CLOSED rules.

use std::time::{Duration, Instant};

use gatehouse::proto::v1 as pb;
use tonic::Code;

use crate::fixtures::*;

/// Asserts the session is FAULTED with a fault code accepted by `code_ok`,
/// and that commands are refused with FAILED_PRECONDITION.
async fn assert_faulted(c: &mut Client, id: &str, code_ok: impl Fn(&str) -> bool) {
    let info = get(c, id).await;
    assert_eq!(state(&info), pb::SessionState::Faulted, "{info:?}");
    assert!(
        code_ok(&info.final_fault),
        "final_fault {:?}",
        info.final_fault
    );
    assert!(!info.final_fault_detail.is_empty(), "{info:?}");
    assert_eq!(close_reason(&info), pb::CloseReason::Fault);
    expect_code(
        try_invoke(c, id, "echo", b"x").await,
        Code::FailedPrecondition,
    );
    expect_code(
        c.renew_lease(pb::RenewLeaseRequest {
            session_id: id.into(),
        })
        .await,
        Code::FailedPrecondition,
    );
}

/// Closes a FAULTED session twice: the first close makes it CLOSED, the
/// second reports it already closed.
async fn assert_close_after_fault(c: &mut Client, id: &str) {
    let first = close(c, id).await;
    assert_eq!(
        first.final_state,
        pb::SessionState::Closed as i32,
        "{first:?}"
    );
    assert!(!first.already_closed, "{first:?}");
    let second = close(c, id).await;
    assert_eq!(
        second.final_state,
        pb::SessionState::Closed as i32,
        "{second:?}"
    );
    assert!(second.already_closed, "{second:?}");
    let info = get(c, id).await;
    assert_eq!(state(&info), pb::SessionState::Closed);
    assert!(!info.final_fault.is_empty(), "the fault stays on record");
}

#[tokio::test]
async fn spin_past_the_command_timeout_is_deadline_exceeded() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    assert_eq!(
        s.command_timeout,
        Some(pb_duration(Duration::from_millis(300)))
    );
    let began = Instant::now();
    let st = expect_code(
        try_invoke(&mut c, &s.session_id, "spin", b"").await,
        Code::DeadlineExceeded,
    );
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(5),
        "spin was stopped after {took:?} (timeout 300ms): {st:?}"
    );
    assert_faulted(&mut c, &s.session_id, |f| f == "deadline").await;
    assert_close_after_fault(&mut c, &s.session_id).await;
    assert_eq!(gw.metric("gatehouse_open_sessions", &[]).await, 0.0);
    let text = gw.metrics().await;
    assert_eq!(
        metric_sum(&text, "gatehouse_faults_total", &[("code", "deadline")]),
        1.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_workers_killed_total",
            &[("reason", "deadline")]
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn busy_within_the_timeout_is_fine() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    assert_eq!(invoke_ok(&mut c, &s.session_id, "busy", b"50").await, "50");
    assert_eq!(
        state(&get(&mut c, &s.session_id).await),
        pb::SessionState::Ready
    );
}

/// Opens a chaos session whose own command timeout (20s) is far longer than
/// the gRPC deadlines these tests use.
async fn open_patient_chaos(c: &mut Client) -> pb::SessionInfo {
    let mut request = open_request("chaos");
    request.command_timeout = Some(pb_duration(Duration::from_secs(20)));
    let s = open_with(c, request).await;
    assert_eq!(
        s.command_timeout,
        Some(pb_duration(Duration::from_secs(20)))
    );
    s
}

/// Waits for the session to fault and checks it faulted for `deadline`.
async fn assert_faults_for_deadline(gw: &Gatehouse, c: &Client, id: &str) {
    let info = eventually("the session to fault", PATIENCE, || {
        let mut c = c.clone();
        let id = id.to_string();
        async move {
            let info = peek(&mut c, &id).await.expect("listed");
            (state(&info) != pb::SessionState::Ready).then_some(info)
        }
    })
    .await;
    assert_eq!(state(&info), pb::SessionState::Faulted, "{info:?}");
    assert_eq!(info.final_fault, "deadline", "{info:?}");
    gw.wait_metric("gatehouse_open_sessions", &[], 0.0).await;
    gw.wait_metric("gatehouse_faults_total", &[("code", "deadline")], 1.0)
        .await;
}

#[tokio::test]
async fn grpc_deadline_shorter_than_the_command_timeout_is_deadline_exceeded() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open_patient_chaos(&mut c).await;
    // A client that leaves the deadline to the server.
    let mut raw = gw.wire_client();
    let mut request = tonic::Request::new(invoke_request(&s.session_id, "spin", b""));
    request.set_timeout(Duration::from_millis(500));
    let began = Instant::now();
    let result = bounded("Invoke with a gRPC deadline", raw.invoke(request)).await;
    let took = began.elapsed();
    let st = result.expect_err("a spin cannot succeed");
    assert_eq!(st.code(), Code::DeadlineExceeded, "after {took:?}: {st:?}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(4),
        "stopped after {took:?}, gRPC deadline 500ms: {st:?}"
    );
    assert_faults_for_deadline(&gw, &c, &s.session_id).await;
}

#[tokio::test]
async fn grpc_deadline_stops_the_worker_at_the_deadline() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open_patient_chaos(&mut c).await;
    // Through an ordinary tonic channel, which gives up by itself when the
    // deadline passes; what matters here is that the worker is stopped then
    // too, not after its 20s command timeout.
    let mut request = tonic::Request::new(invoke_request(&s.session_id, "spin", b""));
    request.set_timeout(Duration::from_millis(500));
    let began = Instant::now();
    let result = bounded("Invoke with a gRPC deadline", c.invoke(request)).await;
    let st = result.expect_err("a spin cannot succeed");
    assert!(
        matches!(st.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{st:?}"
    );
    assert_faults_for_deadline(&gw, &c, &s.session_id).await;
    let took = began.elapsed();
    assert!(took < Duration::from_secs(5), "faulted after {took:?}");
    // The deadline was the gRPC one (~500ms), not the 20s command timeout.
    let info = get(&mut c, &s.session_id).await;
    let detail = &info.final_fault_detail;
    let ms: u64 = detail
        .strip_suffix(" ms deadline")
        .and_then(|d| d.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no deadline in the fault detail {detail:?}"));
    assert!(ms <= 500, "{detail:?}");
}

#[tokio::test]
async fn trap_is_aborted_and_faults_the_session() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    let bystander = open(&mut c, "chaos").await;
    expect_code(
        try_invoke(&mut c, &s.session_id, "trap", b"").await,
        Code::Aborted,
    );
    assert_faulted(&mut c, &s.session_id, |f| f.starts_with("trap")).await;
    // The other session is unaffected.
    assert_eq!(
        invoke_ok(&mut c, &bystander.session_id, "echo", b"fine").await,
        "fine"
    );
    assert_close_after_fault(&mut c, &s.session_id).await;
}

#[tokio::test]
async fn panic_is_aborted_and_faults_the_session() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    expect_code(
        try_invoke(&mut c, &s.session_id, "panic", b"").await,
        Code::Aborted,
    );
    assert_faulted(&mut c, &s.session_id, |f| f.starts_with("trap")).await;
    assert_close_after_fault(&mut c, &s.session_id).await;
}

#[tokio::test]
async fn fault_inside_a_batch_fails_the_whole_call() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    let r = c
        .invoke_batch(pb::InvokeBatchRequest {
            session_id: s.session_id.clone(),
            commands: vec![cmd("echo", b"a"), cmd("trap", b""), cmd("echo", b"b")],
        })
        .await;
    expect_code(r, Code::Aborted);
    assert_faulted(&mut c, &s.session_id, |f| f.starts_with("trap")).await;
}

#[tokio::test]
async fn trap_in_a_timer_tick_faults_the_session_by_itself() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    let r = try_invoke(&mut c, &s.session_id, "tick-trap", b"50")
        .await
        .expect("tick-trap itself succeeds");
    assert!(r.error.is_none(), "{r:?}");
    let info = eventually("the session to fault in its tick", PATIENCE, || {
        let mut c = c.clone();
        let id = s.session_id.clone();
        async move {
            let info = peek(&mut c, &id).await.expect("the session stays listed");
            (state(&info) != pb::SessionState::Ready).then_some(info)
        }
    })
    .await;
    assert_eq!(state(&info), pb::SessionState::Faulted, "{info:?}");
    assert!(info.final_fault.starts_with("trap"), "{info:?}");
    assert_faulted(&mut c, &s.session_id, |f| f.starts_with("trap")).await;
    gw.wait_metric("gatehouse_open_sessions", &[], 0.0).await;
    assert_close_after_fault(&mut c, &s.session_id).await;
}

/// A chaos backend whose commands may run 30s but whose close waits only
/// 300ms before the worker is killed.
fn slow_close_config() -> Toml {
    Toml::new().backend_with(
        "chaos",
        "builtin:chaos",
        &[],
        &["command_timeout = \"30s\"", "close_timeout = \"300ms\""],
    )
}

#[tokio::test]
async fn closing_a_busy_session_stops_its_worker() {
    let gw = Gatehouse::start(slow_close_config().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    let spinning = start_spin(&c, &s).await;
    let began = Instant::now();
    let closed = close(&mut c, &s.session_id).await;
    let took = began.elapsed();
    assert!(took < Duration::from_secs(5), "close took {took:?}");
    assert_eq!(closed.final_state, pb::SessionState::Closed as i32);
    let spun = bounded("the spinning invoke to end", spinning)
        .await
        .expect("task");
    // The caller whose command was cut short learns the session is gone.
    expect_code(spun, Code::FailedPrecondition);
    assert_eq!(
        state(&get(&mut c, &s.session_id).await),
        pb::SessionState::Closed
    );
    assert_eq!(gw.metric("gatehouse_open_sessions", &[]).await, 0.0);
    // The gateway is still healthy.
    let t = open(&mut c, "chaos").await;
    assert_eq!(invoke_ok(&mut c, &t.session_id, "echo", b"ok").await, "ok");
}

#[tokio::test]
async fn a_worker_killed_at_close_timeout_is_counted() {
    let gw = Gatehouse::start(slow_close_config().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    let spinning = start_spin(&c, &s).await;
    close(&mut c, &s.session_id).await;
    let _ = bounded("the spinning invoke to end", spinning).await;
    let text = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_workers_killed_total",
            &[("reason", "close-timeout")]
        ),
        1.0,
        "{text}"
    );
}
