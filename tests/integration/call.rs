//! One-shot `Call`s: one command on a fresh instance that is dropped
//! afterwards, with no session left behind.

use std::process::Command;
use std::time::Duration;

use gatehouse::proto::v1 as pb;
use tonic::Code;

use crate::fixtures::*;

fn call_request(backend: &str, command: &str, payload: &str) -> pb::CallRequest {
    pb::CallRequest {
        backend: backend.into(),
        config: Default::default(),
        command: Some(cmd(command, payload)),
        command_timeout: None,
    }
}

async fn call_ok(c: &mut Client, backend: &str, command: &str, payload: &str) -> String {
    let r = c
        .call(call_request(backend, command, payload))
        .await
        .unwrap_or_else(|s| panic!("{backend} {command}: {s:?}"))
        .into_inner();
    assert!(r.error.is_none(), "{r:?}");
    String::from_utf8(r.payload).expect("UTF-8 reply")
}

/// Every slot gauge back at zero and nothing listed.
async fn assert_nothing_left(gw: &Gatehouse, c: &mut Client) {
    assert!(list(c).await.is_empty(), "a call leaves no session record");
    let text = gw.metrics().await;
    assert_eq!(metric_sum(&text, "gatehouse_open_sessions", &[]), 0.0);
    assert_eq!(
        metric_sum(&text, "gatehouse_tenant_open_sessions", &[]),
        0.0
    );
    assert_eq!(
        metric_sum(&text, "gatehouse_sessions_opened_total", &[]),
        0.0
    );
}

/// A chaos backend with room for slow commands.
fn slow_chaos() -> Toml {
    Toml::new().backend("echo", "builtin:echo").backend_with(
        "chaos",
        "builtin:chaos",
        &[],
        &["command_timeout = \"10s\""],
    )
}

#[tokio::test]
async fn a_call_answers_on_a_fresh_instance_and_leaves_nothing() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    assert_eq!(call_ok(&mut c, "echo", "echo", "hello").await, "hello");
    // Each call has an instance of its own: the counter starts over.
    for _ in 0..3 {
        assert_eq!(call_ok(&mut c, "echo", "count", "").await, "1");
    }
    // A session's counter is not touched by the calls around it.
    let s = open(&mut c, "echo").await;
    assert_eq!(invoke_ok(&mut c, &s.session_id, "count", b"").await, "1");
    assert_eq!(call_ok(&mut c, "echo", "count", "").await, "1");
    assert_eq!(invoke_ok(&mut c, &s.session_id, "count", b"").await, "2");
    close(&mut c, &s.session_id).await;
    assert_eq!(
        list(&mut c).await.len(),
        1,
        "only the session is listed (closed)"
    );
    let text = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_calls_total",
            &[("backend", "echo"), ("outcome", "ok")]
        ),
        5.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_call_seconds_count",
            &[("backend", "echo")]
        ),
        5.0
    );
    assert_eq!(metric_sum(&text, "gatehouse_open_sessions", &[]), 0.0);
    assert_eq!(
        metric_sum(&text, "gatehouse_sessions_opened_total", &[]),
        1.0
    );
}

#[tokio::test]
async fn command_errors_traps_and_deadlines() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    // The plugin's command error arrives with status OK.
    let r = c
        .call(call_request("echo", "no-such-command", ""))
        .await
        .expect("a command error is OK")
        .into_inner();
    let e = r.error.expect("a command error");
    assert_eq!(e.kind(), pb::command_error::Kind::UnknownCommand, "{e:?}");
    // A trap is ABORTED; the command timeout is DEADLINE_EXCEEDED.
    expect_code(
        c.call(call_request("chaos", "trap", "")).await,
        Code::Aborted,
    );
    expect_code(
        c.call(call_request("chaos", "spin", "")).await,
        Code::DeadlineExceeded,
    );
    // Unknown backends and a missing command are refused before anything
    // starts.
    expect_code(
        c.call(call_request("nope", "echo", "")).await,
        Code::NotFound,
    );
    let mut missing = call_request("echo", "echo", "");
    missing.command = None;
    expect_code(c.call(missing).await, Code::InvalidArgument);
    // A failing open is the open's refusal.
    let mut fail = call_request("chaos", "echo", "");
    fail.config.insert("fail_open".into(), "yes".into());
    expect_code(c.call(fail).await, Code::FailedPrecondition);

    let text = gw.metrics().await;
    let outcome = |o: &str| {
        metric_sum(
            &text,
            "gatehouse_calls_total",
            &[("backend", "chaos"), ("outcome", o)],
        )
    };
    assert_eq!(outcome("faulted"), 2.0);
    assert_eq!(outcome("start-failed"), 1.0);
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_calls_total",
            &[("backend", "echo"), ("outcome", "command-error")]
        ),
        1.0
    );
    assert_nothing_left(&gw, &mut c).await;
    // Every slot is free again.
    assert_eq!(call_ok(&mut c, "chaos", "echo", "after").await, "after");
}

#[tokio::test]
async fn the_client_deadline_bounds_the_whole_call() {
    let gw = Gatehouse::start(slow_chaos().render()).await;
    let mut wire = gw.wire_client();
    let mut request = tonic::Request::new(call_request("chaos", "spin", ""));
    request.set_timeout(Duration::from_millis(400));
    let began = std::time::Instant::now();
    let st = expect_code(wire.call(request).await, Code::DeadlineExceeded);
    assert!(st.message().contains("deadline"), "{st:?}");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    let mut c = gw.client().await;
    eventually(
        "the spinning call's slot to be released",
        Duration::from_secs(10),
        || async {
            let text = gw.metrics().await;
            (metric_sum(&text, "gatehouse_open_sessions", &[]) == 0.0).then_some(())
        },
    )
    .await;
    assert_nothing_left(&gw, &mut c).await;
}

#[tokio::test]
async fn events_of_a_call_are_counted_and_dropped() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    assert_eq!(call_ok(&mut c, "chaos", "flood", "5").await, "5");
    let text = gw.metrics().await;
    // Five from `flood`, one from `close` (chaos emits `closed`).
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_call_events_dropped_total",
            &[("backend", "chaos")]
        ),
        6.0
    );
    assert_eq!(
        metric_sum(&text, "gatehouse_events_emitted_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn calls_in_flight_hold_slots_of_the_cap() {
    let gw = Gatehouse::start(slow_chaos().server("max_sessions = 1").render()).await;
    let mut c = gw.client().await;
    let mut busy = gw.client().await;
    let running =
        tokio::spawn(async move { busy.call(call_request("chaos", "busy", "1500")).await });
    gw.wait_metric("gatehouse_open_sessions", &[], 1.0).await;
    let st = expect_code(
        c.call(call_request("echo", "echo", "")).await,
        Code::ResourceExhausted,
    );
    assert!(st.message().contains("cap"), "{st:?}");
    expect_code(
        c.open_session(open_request("echo")).await,
        Code::ResourceExhausted,
    );
    let done = running.await.expect("the task").expect("the busy call");
    assert_eq!(done.into_inner().payload, b"1500");
    assert_nothing_left(&gw, &mut c).await;
    assert_eq!(call_ok(&mut c, "echo", "echo", "free").await, "free");
    assert_eq!(
        metric_sum(
            &gw.metrics().await,
            "gatehouse_calls_total",
            &[("backend", "echo"), ("outcome", "refused")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_call_its_client_abandons_stops_its_worker_and_frees_its_slot() {
    // The command would run for a minute; only a killed worker lets go of
    // its memory within the harness's patience.
    let config = Toml::new()
        .backend("echo", "builtin:echo")
        .backend_with(
            "chaos",
            "builtin:chaos",
            &[],
            &["command_timeout = \"90s\""],
        )
        .server("max_sessions = 1");
    let gw = Gatehouse::start(config.render()).await;
    let mut busy = gw.client().await;
    let running =
        tokio::spawn(async move { busy.call(call_request("chaos", "busy", "60000")).await });
    gw.wait_metric("gatehouse_open_sessions", &[], 1.0).await;
    assert!(
        gw.metric("gatehouse_memory_budget_reserved_bytes", &[])
            .await
            > 0.0,
        "a running instance holds memory"
    );
    // Dropping the client's future resets the stream: the handler's future
    // is dropped mid-command.
    running.abort();
    let _ = running.await;
    gw.wait_metric("gatehouse_open_sessions", &[], 0.0).await;
    gw.wait_metric(
        "gatehouse_calls_total",
        &[("backend", "chaos"), ("outcome", "cancelled")],
        1.0,
    )
    .await;
    gw.wait_metric("gatehouse_memory_budget_reserved_bytes", &[], 0.0)
        .await;
    let mut c = gw.client().await;
    // Long before the command would have ended, the slot is free.
    assert_eq!(call_ok(&mut c, "echo", "echo", "next").await, "next");
    assert_nothing_left(&gw, &mut c).await;
}

#[tokio::test]
async fn a_call_counts_against_its_tenants_quota_and_needs_both_scopes() {
    let (full, secret_full) = key(&["sessions:open", "sessions:use", "sessions:read"]);
    let (open_only, secret_open) = key(&["sessions:open"]);
    let config = format!(
        "{}[[tenants]]\nname = \"a\"\nmax_sessions = 1\n{full}{open_only}",
        slow_chaos().server("max_sessions = 10").render()
    );
    let gw = Gatehouse::builder(config)
        .api_key(secret_full.clone())
        .start()
        .await;
    let mut c = gw.client().await;
    let mut busy = gw.client().await;
    let running =
        tokio::spawn(async move { busy.call(call_request("chaos", "busy", "1500")).await });
    gw.wait_metric("gatehouse_tenant_open_sessions", &[("tenant", "a")], 1.0)
        .await;
    let st = expect_code(
        c.call(call_request("echo", "echo", "")).await,
        Code::ResourceExhausted,
    );
    assert!(st.message().contains("quota"), "{st:?}");
    expect_code(
        c.open_session(open_request("echo")).await,
        Code::ResourceExhausted,
    );
    running.await.expect("the task").expect("the busy call");
    assert_nothing_left(&gw, &mut c).await;

    // `sessions:open` alone does not allow a call.
    let limited = gatehouse::client::Gateway::connect(gw.url())
        .with_key(secret_open)
        .await
        .expect("connecting");
    let e = limited
        .call("echo", "echo", "x")
        .await
        .expect_err("needs sessions:use");
    assert!(e.to_string().contains("sessions:use"), "{e}");
    // The Rust client's call.
    let reply = gw.connect().await.call("echo", "echo", "hi").await.unwrap();
    assert_eq!(reply.payload, b"hi");
}

fn key(scopes: &[&str]) -> (String, String) {
    let (secret, hash) = gatehouse::keys::generate().unwrap();
    let scopes: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
    (
        format!(
            "[[tenants.keys]]\nhash = \"{hash}\"\nscopes = [{}]\n",
            scopes.join(", ")
        ),
        secret,
    )
}

#[tokio::test]
async fn the_cli_calls_and_exits_3_on_a_command_error() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let addr = gw.dial_addr().to_string();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--addr", &addr])
            .output()
            .unwrap()
    };
    let out = run(&["call", "echo", "echo", "hello"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
    let out = run(&["call", "echo", "count"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    let out = run(&["call", "echo", "no-such-command"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = run(&["call", "nope", "echo"]);
    assert!(!out.status.success(), "{out:?}");
    let mut c = gw.client().await;
    assert_nothing_left(&gw, &mut c).await;
}

#[tokio::test]
async fn native_calls_use_the_warm_pool() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = format!(
        "[server]\nstate_dir = {state:?}\n\n\
         [[backends]]\nname = \"sim-warm\"\nkind = \"native\"\ncommand = [{BIN:?}, \"worker\", \"sim-device\"]\n\
         [backends.native]\nstartup_timeout = \"5s\"\nwarm_pool = 2\n"
    );
    let gw = Gatehouse::start(config).await;
    let gw_pid = gw.pid();
    eventually(
        "the warm pool fills",
        Duration::from_secs(20),
        holds(|| recorded_workers(&state, gw_pid).len() >= 2),
    )
    .await;
    let pooled = recorded_workers(&state, gw_pid);
    let mut c = gw.client().await;
    let info = call_ok(&mut c, "sim-warm", "info", "").await;
    let pid: u32 = info
        .rsplit("pid=")
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {info:?}"));
    assert!(pooled.contains(&pid), "{pid} is not one of {pooled:?}");
    assert_nothing_left(&gw, &mut c).await;
}
