//! Recoverable sessions through the real binary: a session that faults
//! under `[backends.restart] policy = "on-fault"` comes back with the same
//! id, its state (from its last snapshot) and a continuing event sequence;
//! the restart budget; a plugin without state restarting fresh;
//! `RestartSession` by hand, from a snapshot or fresh, on READY and
//! FAULTED sessions; a refused restore; and the same for a native worker.

use gatehouse::proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::fixtures::*;

/// `[backends.restart]` lines for a quick, generous policy.
const ON_FAULT: &str = "[backends.restart]\npolicy = \"on-fault\"\nmax_restarts = 3\nperiod = \"1h\"\nbackoff = \"10ms\"";

/// A config serving `chaos` (stateful) and `echo` (stateless) with
/// `restart` lines on both.
fn config(restart: &str) -> String {
    format!(
        "[server]\nsweep_interval = \"50ms\"\n\
         [[backends]]\nname = \"chaos\"\nmodule = \"builtin:chaos\"\n{restart}\n\
         [[backends]]\nname = \"echo\"\nmodule = \"builtin:echo\"\n{restart}\n\
         [[backends]]\nname = \"kv\"\nmodule = \"builtin:kv\"\n{restart}\n[backends.sessions]\nmemory_limit = \"2MiB\"\n"
    )
}

async fn restart(
    c: &mut Client,
    id: &str,
    from_snapshot: Option<bool>,
) -> Result<pb::SessionInfo, tonic::Status> {
    bounded(
        "RestartSession",
        c.restart_session(pb::RestartSessionRequest {
            session_id: id.to_string(),
            from_snapshot,
        }),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Waits until the session is READY again after `restarts` restarts.
async fn ready_after(c: &mut Client, id: &str, restarts: u32) -> pb::SessionInfo {
    eventually("the session to be READY again", PATIENCE, || {
        let mut c = c.clone();
        async move {
            let info = get(&mut c, id).await;
            (state(&info) == pb::SessionState::Ready && info.restarts == restarts).then_some(info)
        }
    })
    .await
}

#[tokio::test]
async fn a_faulted_session_comes_back_with_its_id_state_and_event_sequence() {
    let gw = Gatehouse::start(config(ON_FAULT)).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    let id = s.session_id.clone();
    let mut events = subscribe(&mut c, &id, None).await.expect("subscribe");
    invoke_ok(&mut c, &id, "put", "colour blue").await;
    invoke_ok(&mut c, &id, "put", "size 9").await;
    invoke_ok(&mut c, &id, "flood", "2").await;
    for n in 1..=2 {
        assert_eq!(next_event(&mut events).await.sequence, n);
    }

    // The command that faults returns its error and is not replayed.
    expect_code(try_invoke(&mut c, &id, "trap", "").await, Code::Aborted);
    let info = ready_after(&mut c, &id, 1).await;
    assert_eq!(info.session_id, id);
    assert_eq!(info.last_fault, "trap: unreachable", "{info:?}");
    assert!(info.final_fault.is_empty(), "{info:?}");
    assert!(info.snapshot_bytes > 0, "{info:?}");
    assert_eq!(invoke_ok(&mut c, &id, "get", "colour").await, "blue");
    assert_eq!(invoke_ok(&mut c, &id, "get", "size").await, "9");

    // Subscribers hear about it, in sequence, on the same stream.
    let restarted = next_event(&mut events).await;
    assert_eq!(restarted.sequence, 3);
    assert_eq!(restarted.name, "gatehouse.restarted");
    let payload: serde_json::Value = serde_json::from_slice(&restarted.payload).unwrap();
    assert_eq!(payload["restarts"], 1);
    assert_eq!(payload["from_snapshot"], true);
    assert_eq!(payload["fault"], "trap: unreachable");
    invoke_ok(&mut c, &id, "flood", "1").await;
    assert_eq!(next_event(&mut events).await.sequence, 4);

    // One session, one slot, all along.
    assert_eq!(gw.metric("gatehouse_open_sessions", &[]).await, 1.0);
    let text = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_session_restarts_total",
            &[("reason", "restored")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_faults_total",
            &[("code", "trap: unreachable")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_kv_session_past_its_memory_limit_comes_back_with_its_keys() {
    let gw = Gatehouse::start(config(ON_FAULT)).await;
    let mut c = gw.client().await;
    let id = open(&mut c, "kv").await.session_id;
    for k in ["a", "b", "c"] {
        invoke_ok(
            &mut c,
            &id,
            "put",
            format!(r#"{{"key":"{k}","value":"{k}{k}"}}"#),
        )
        .await;
    }
    let huge = format!(r#"{{"key":"big","value":"{}"}}"#, "x".repeat(1_500_000));
    expect_code(try_invoke(&mut c, &id, "put", huge).await, Code::Aborted);
    let info = ready_after(&mut c, &id, 1).await;
    assert_eq!(info.last_fault, "memory-limit", "{info:?}");
    assert_eq!(invoke_ok(&mut c, &id, "list", "").await, r#"["a","b","c"]"#);
    assert_eq!(
        invoke_ok(&mut c, &id, "get", r#"{"key":"b"}"#).await,
        r#""bb""#
    );
}

#[tokio::test]
async fn past_the_restart_budget_the_session_is_faulted_for_good() {
    let gw = Gatehouse::start(config(
        "[backends.restart]\npolicy = \"on-fault\"\nmax_restarts = 2\nperiod = \"1h\"\nbackoff = \"10ms\"",
    ))
    .await;
    let mut c = gw.client().await;
    let id = open(&mut c, "chaos").await.session_id;
    // Two stack overflows spend the budget; a trap finds it spent.
    for n in 1..=2 {
        expect_code(try_invoke(&mut c, &id, "recurse", "").await, Code::Aborted);
        let info = ready_after(&mut c, &id, n).await;
        assert_eq!(info.last_fault, "stack-overflow", "{info:?}");
    }
    expect_code(try_invoke(&mut c, &id, "trap", "").await, Code::Aborted);
    let info = get(&mut c, &id).await;
    assert_eq!(state(&info), pb::SessionState::Faulted);
    assert_eq!(info.final_fault, "restart-limit", "{info:?}");
    assert!(
        info.final_fault_detail.contains("trap: unreachable"),
        "{info:?}"
    );
    // The fault that found the budget spent is kept as the cause, not the
    // one behind the last restart.
    assert_eq!(info.last_fault, "trap: unreachable", "{info:?}");
    assert_eq!(info.restarts, 2);
    gw.wait_metric("gatehouse_open_sessions", &[], 0.0).await;
}

#[tokio::test]
async fn a_plugin_without_state_restarts_fresh_with_the_same_id() {
    let gw = Gatehouse::start(config("")).await;
    let mut c = gw.client().await;
    let id = open(&mut c, "echo").await.session_id;
    for _ in 0..3 {
        invoke_ok(&mut c, &id, "count", "").await;
    }
    let info = restart(&mut c, &id, None).await.expect("RestartSession");
    assert_eq!(info.session_id, id);
    assert_eq!(info.restarts, 1);
    assert_eq!(info.snapshot_bytes, 0);
    assert_eq!(state(&info), pb::SessionState::Ready);
    assert_eq!(invoke_ok(&mut c, &id, "count", "").await, "1");
}

#[tokio::test]
async fn restart_by_hand_from_the_snapshot_or_fresh() {
    let gw = Gatehouse::start(config("")).await;
    let mut c = gw.client().await;
    let id = open(&mut c, "chaos").await.session_id;
    let mut events = subscribe(&mut c, &id, None).await.expect("subscribe");
    invoke_ok(&mut c, &id, "put", "k v").await;
    let info = restart(&mut c, &id, Some(true)).await.expect("restart");
    assert_eq!(info.restarts, 1);
    assert_eq!(invoke_ok(&mut c, &id, "get", "k").await, "v");
    // The old instance's close ran before the new one took over.
    assert_eq!(next_event(&mut events).await.name, "closed");
    let restarted = next_event(&mut events).await;
    assert_eq!(restarted.name, "gatehouse.restarted");
    let payload: serde_json::Value = serde_json::from_slice(&restarted.payload).unwrap();
    assert_eq!(payload["fault"], "", "by hand: no fault");

    restart(&mut c, &id, Some(false)).await.expect("restart");
    let r = try_invoke(&mut c, &id, "get", "k").await.expect("get");
    assert!(r.error.is_some(), "a fresh instance has no key: {r:?}");
}

#[tokio::test]
async fn a_faulted_session_restarts_by_hand_and_takes_a_slot_again() {
    // No automatic restarts, so snapshots are asked for explicitly.
    let gw = Gatehouse::start(config("[backends.snapshot]\nevery = \"command\"")).await;
    let mut c = gw.client().await;
    let id = open(&mut c, "chaos").await.session_id;
    invoke_ok(&mut c, &id, "put", "k v").await;
    expect_code(try_invoke(&mut c, &id, "trap", "").await, Code::Aborted);
    assert_eq!(state(&get(&mut c, &id).await), pb::SessionState::Faulted);
    // The slot is given back just after the state is set.
    gw.wait_metric("gatehouse_open_sessions", &[], 0.0).await;

    let info = restart(&mut c, &id, None).await.expect("RestartSession");
    assert_eq!(state(&info), pb::SessionState::Ready);
    assert!(info.final_fault.is_empty(), "{info:?}");
    assert_eq!(info.last_fault, "trap: unreachable");
    assert_eq!(invoke_ok(&mut c, &id, "get", "k").await, "v");
    assert_eq!(gw.metric("gatehouse_open_sessions", &[]).await, 1.0);

    // A closed session is gone for good.
    close(&mut c, &id).await;
    expect_code(restart(&mut c, &id, None).await, Code::FailedPrecondition);
}

#[tokio::test]
async fn a_refused_restore_faults_the_session_with_restore_failed() {
    let gw = Gatehouse::start(config(ON_FAULT)).await;
    let mut c = gw.client().await;
    let mut request = open_request("chaos");
    request.config.insert("fail_restore".into(), "yes".into());
    let id = open_with(&mut c, request).await.session_id;
    invoke_ok(&mut c, &id, "put", "k v").await;
    expect_code(try_invoke(&mut c, &id, "trap", "").await, Code::Aborted);
    let info = eventually("the restart to give up", PATIENCE, || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let info = get(&mut c, &id).await;
            (state(&info) == pb::SessionState::Faulted).then_some(info)
        }
    })
    .await;
    assert_eq!(info.final_fault, "restore-failed", "{info:?}");
    assert!(info.final_fault_detail.contains("fail_restore"), "{info:?}");
    // The trap that started the restart is kept beside the failed recovery.
    assert_eq!(info.last_fault, "trap: unreachable", "{info:?}");
    assert!(!info.last_fault_detail.is_empty(), "{info:?}");
    // A fresh start by hand still works.
    restart(&mut c, &id, Some(false))
        .await
        .expect("fresh restart");
    assert_eq!(invoke_ok(&mut c, &id, "echo", "hi").await, "hi");
}

#[tokio::test]
async fn calls_while_a_session_restarts_are_unavailable_with_a_retry_delay() {
    // A backoff no test outlasts: the session stays RESTARTING throughout.
    let gw = Gatehouse::start(config(
        "[backends.restart]\npolicy = \"on-fault\"\nmax_restarts = 3\nperiod = \"1h\"\nbackoff = \"1h\"",
    ))
    .await;
    let mut c = gw.client().await;
    let id = open(&mut c, "chaos").await.session_id;
    expect_code(try_invoke(&mut c, &id, "trap", "").await, Code::Aborted);
    eventually("the session to be RESTARTING", PATIENCE, || {
        let mut c = c.clone();
        let id = id.clone();
        async move { (state(&get(&mut c, &id).await) == pb::SessionState::Restarting).then_some(()) }
    })
    .await;
    let unavailable = |what: &str, status: tonic::Status| {
        assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
        assert!(
            status.message().contains("RESTARTING"),
            "{what}: {status:?}"
        );
        let delay = status
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .unwrap_or_else(|| panic!("{what}: no retry delay: {status:?}"));
        assert!(!delay.is_zero(), "{what}: {status:?}");
    };
    unavailable(
        "Invoke",
        try_invoke(&mut c, &id, "echo", "x").await.unwrap_err(),
    );
    unavailable(
        "InvokeBatch",
        c.invoke_batch(pb::InvokeBatchRequest {
            session_id: id.clone(),
            commands: vec![cmd("echo", b"x")],
        })
        .await
        .unwrap_err(),
    );
    // Still restarting, and it closes like any session.
    assert_eq!(state(&get(&mut c, &id).await), pb::SessionState::Restarting);
    close(&mut c, &id).await;
    assert_eq!(state(&get(&mut c, &id).await), pb::SessionState::Closed);
}

#[tokio::test]
async fn a_snapshot_over_max_bytes_is_refused_counted_and_the_previous_one_kept() {
    let gw = Gatehouse::start(config(
        "[backends.snapshot]\nevery = \"command\"\nmax_bytes = 64",
    ))
    .await;
    let mut c = gw.client().await;
    let id = open(&mut c, "chaos").await.session_id;
    invoke_ok(&mut c, &id, "put", "k v").await;
    // Snapshots are taken behind the reply: wait for this one, `k v\n`.
    let snapshot_bytes = |want: u64| {
        let c = c.clone();
        let id = id.clone();
        eventually("the snapshot", PATIENCE, move || {
            let (mut c, id) = (c.clone(), id.clone());
            async move { (get(&mut c, &id).await.snapshot_bytes == want).then_some(()) }
        })
    };
    snapshot_bytes(4).await;
    let refused = [("backend", "chaos"), ("reason", "too-large")];
    assert_eq!(
        gw.metric("gatehouse_snapshots_refused_total", &refused)
            .await,
        0.0
    );
    // 100 bytes of state: its snapshot is over the cap, refused and
    // counted, and the previous one stays.
    let big = format!("big {}", "x".repeat(100));
    invoke_ok(&mut c, &id, "put", &big).await;
    gw.wait_metric("gatehouse_snapshots_refused_total", &refused, 1.0)
        .await;
    assert_eq!(get(&mut c, &id).await.snapshot_bytes, 4);
    // A restart from the snapshot gets the state it holds, without `big`.
    restart(&mut c, &id, None).await.expect("RestartSession");
    assert_eq!(invoke_ok(&mut c, &id, "get", "k").await, "v");
    let missing = try_invoke(&mut c, &id, "get", "big").await.unwrap();
    assert!(missing.error.is_some(), "`big` came back: {missing:?}");
}

#[tokio::test]
async fn a_native_worker_that_crashes_comes_back_with_its_tags() {
    let native = "[backends.native]\nheartbeat_interval = \"100ms\"\nheartbeat_grace = \"600ms\"";
    let gw = Gatehouse::start(format!(
        "[server]\nsweep_interval = \"50ms\"\n\
         [[backends]]\nname = \"sim\"\nkind = \"native\"\ncommand = [{BIN:?}, \"worker\", \"sim-device\"]\n{native}\n{ON_FAULT}\n"
    ))
    .await;
    let mut c = gw.client().await;
    let s = open(&mut c, "sim").await;
    let id = s.session_id.clone();
    invoke_ok(&mut c, &id, "write", "line.speed 42").await;
    expect_code(try_invoke(&mut c, &id, "crash", "").await, Code::Aborted);
    let info = ready_after(&mut c, &id, 1).await;
    assert_ne!(info.worker_pid, s.worker_pid, "a new process");
    assert_eq!(info.last_fault, "worker-exited", "{info:?}");
    assert_eq!(invoke_ok(&mut c, &id, "read", "line.speed").await, "42");

    // By hand, fresh: the tag is gone.
    restart(&mut c, &id, Some(false)).await.expect("restart");
    let r = try_invoke(&mut c, &id, "read", "line.speed")
        .await
        .expect("read");
    assert!(r.error.is_some(), "{r:?}");
}
