//! Hostile plugins and clients are contained (issue: sandbox). Every test
//! keeps a bystander `echo` session and checks it still counts correctly
//! while the `chaos` session misbehaves.

use std::time::{Duration, Instant};

use gatehouse::proto::v1 as pb;
use tonic::Code;

use crate::fixtures::*;

/// (resident KiB, open descriptors, CPU clock ticks) of a process.
fn proc_stats(pid: u32) -> (u64, usize, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let cpu = fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    (rss, fds, cpu)
}

fn chaos(sessions: &[&str]) -> Toml {
    Toml::new().backend("echo", "builtin:echo").backend_with(
        "chaos",
        "builtin:chaos",
        &[],
        sessions,
    )
}

async fn final_fault(c: &mut Client, id: &str) -> String {
    let info = get(c, id).await;
    assert_eq!(state(&info), pb::SessionState::Faulted, "{info:?}");
    info.final_fault
}

#[tokio::test]
async fn spin_hits_the_deadline_and_the_cpu_goes_idle() {
    let gw = Gatehouse::start(chaos(&["command_timeout = \"200ms\""]).render()).await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let s = open(&mut c, "chaos").await;

    let began = Instant::now();
    expect_code(
        try_invoke(&mut c, &s.session_id, "spin", b"").await,
        Code::DeadlineExceeded,
    );
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(
        took < Duration::from_millis(1500),
        "200ms plus one tick, got {took:?}"
    );
    assert_eq!(final_fault(&mut c, &s.session_id).await, "deadline");
    bystander.check(&mut c).await;

    // Nothing keeps spinning: the gateway uses (almost) no CPU afterwards.
    let (_, _, before) = proc_stats(gw.pid());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, _, after) = proc_stats(gw.pid());
    assert!(
        after - before < 20,
        "{} clock ticks in 500ms while idle",
        after - before
    );
}

#[tokio::test]
async fn a_legitimately_slow_command_is_not_killed() {
    let gw = Gatehouse::start(chaos(&["command_timeout = \"1s\""]).render()).await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let s = open(&mut c, "chaos").await;
    let spinner = open(&mut c, "chaos").await;
    let spin = start_spin(&c, &spinner).await;
    // While another session burns a core until its deadline, both a slow
    // command and the bystander make progress.
    assert_eq!(invoke_ok(&mut c, &s.session_id, "busy", b"50").await, "50");
    bystander.check(&mut c).await;
    expect_code(spin.await.expect("spin task"), Code::DeadlineExceeded);
    assert_eq!(
        state(&get(&mut c, &s.session_id).await),
        pb::SessionState::Ready
    );
}

#[tokio::test]
async fn growing_past_the_memory_limit_faults_and_frees_the_memory() {
    let gw = Gatehouse::start(chaos(&["memory_limit = \"32MiB\""]).render()).await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let (rss_before, _, _) = proc_stats(gw.pid());
    for _ in 0..5 {
        let s = open(&mut c, "chaos").await;
        expect_code(
            try_invoke(&mut c, &s.session_id, "grow", b"200").await,
            Code::Aborted,
        );
        assert_eq!(final_fault(&mut c, &s.session_id).await, "memory-limit");
        close(&mut c, &s.session_id).await;
    }
    bystander.check(&mut c).await;
    let (rss_after, _, _) = proc_stats(gw.pid());
    // Five sessions each touched ~32MiB; none of it may stay behind.
    assert!(
        rss_after < rss_before + 48 * 1024,
        "RSS went from {rss_before} KiB to {rss_after} KiB"
    );
}

#[tokio::test]
async fn unbounded_recursion_is_a_stack_overflow() {
    let gw = Gatehouse::start(chaos(&[]).render()).await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let s = open(&mut c, "chaos").await;
    expect_code(
        try_invoke(&mut c, &s.session_id, "recurse", b"").await,
        Code::Aborted,
    );
    assert_eq!(final_fault(&mut c, &s.session_id).await, "stack-overflow");
    bystander.check(&mut c).await;
}

#[tokio::test]
async fn traps_and_panics_abort_only_their_session() {
    let gw = Gatehouse::start(chaos(&[]).render()).await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    for command in ["trap", "panic"] {
        let s = open(&mut c, "chaos").await;
        let status = expect_code(
            try_invoke(&mut c, &s.session_id, command, b"").await,
            Code::Aborted,
        );
        assert!(status.message().contains("trap"), "{status:?}");
        assert_eq!(
            final_fault(&mut c, &s.session_id).await,
            "trap: unreachable"
        );
        bystander.check(&mut c).await;
    }
}

#[tokio::test]
async fn a_flood_keeps_a_gap_free_tail_under_drop_oldest() {
    let gw = Gatehouse::start(
        chaos(&[
            "event_queue = 1000",
            "replay_buffer = 100",
            "event_overflow = \"drop-oldest\"",
        ])
        .render(),
    )
    .await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let (rss_before, _, _) = proc_stats(gw.pid());
    let s = open(&mut c, "chaos").await;
    assert_eq!(
        invoke_ok(&mut c, &s.session_id, "flood", b"1000000").await,
        "1000000"
    );
    bystander.check(&mut c).await;
    let (rss_after, _, _) = proc_stats(gw.pid());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "a million events grew RSS from {rss_before} KiB to {rss_after} KiB"
    );

    let info = get(&mut c, &s.session_id).await;
    assert_eq!(info.events_emitted, 1_000_000);
    assert_eq!(info.events_dropped, 999_000);
    let mut stream = subscribe(&mut c, &s.session_id, None)
        .await
        .expect("subscribe");
    let first = next_event(&mut stream).await;
    assert_eq!(first.sequence, 999_001);
    assert_eq!(first.dropped_before, 999_000);
    let mut last = first.sequence;
    while last < 1_000_000 {
        let e = next_event(&mut stream).await;
        assert_eq!(e.sequence, last + 1, "the tail has a gap");
        assert_eq!(e.dropped_before, 0);
        last = e.sequence;
    }
    assert_eq!(
        gw.metric("gatehouse_events_dropped_total", &[("backend", "chaos")])
            .await,
        999_000.0
    );
}

#[tokio::test]
async fn a_flood_faults_the_session_under_the_fault_policy() {
    let gw =
        Gatehouse::start(chaos(&["event_queue = 1000", "event_overflow = \"fault\""]).render())
            .await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let s = open(&mut c, "chaos").await;
    expect_code(
        try_invoke(&mut c, &s.session_id, "flood", b"1000000").await,
        Code::Aborted,
    );
    assert_eq!(final_fault(&mut c, &s.session_id).await, "event-overflow");
    bystander.check(&mut c).await;
}

#[tokio::test]
async fn an_oversized_reply_is_refused_and_the_session_survives() {
    let gw = Gatehouse::start(
        chaos(&["max_reply_bytes = \"64KiB\"", "memory_limit = \"128MiB\""]).render(),
    )
    .await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let s = open(&mut c, "chaos").await;
    let status = expect_code(
        try_invoke(&mut c, &s.session_id, "big-reply", b"50000000").await,
        Code::ResourceExhausted,
    );
    assert!(status.message().contains("50000000"), "{status:?}");
    assert_eq!(
        invoke_ok(&mut c, &s.session_id, "echo", b"still here").await,
        "still here"
    );
    bystander.check(&mut c).await;
}

#[tokio::test]
async fn nothing_is_granted_by_default() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let gw = Gatehouse::start(chaos(&[]).render()).await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let s = open(&mut c, "chaos").await;
    let r = try_invoke(&mut c, &s.session_id, "read-file", b"/etc/passwd")
        .await
        .unwrap();
    assert!(r.error.is_some() && r.payload.is_empty(), "{r:?}");
    assert_eq!(invoke_ok(&mut c, &s.session_id, "env", b"").await, "");
    let r = try_invoke(
        &mut c,
        &s.session_id,
        "connect",
        format!("127.0.0.1:{port}"),
    )
    .await
    .unwrap();
    assert!(r.error.is_some(), "{r:?}");
    bystander.check(&mut c).await;
}

#[tokio::test]
async fn grants_open_exactly_what_they_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "granted").unwrap();
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed_port = allowed.local_addr().unwrap().port();
    let other_port = other.local_addr().unwrap().port();
    let config = Toml::new()
        .backend("echo", "builtin:echo")
        .backend_with(
            "chaos",
            "builtin:chaos",
            &[
                "[backends.grants]",
                "env = { GREETING = \"hi\" }",
                &format!("network = [\"127.0.0.1:{allowed_port}\"]"),
                "[[backends.grants.preopens]]",
                &format!("host = {:?}", dir.path().display().to_string()),
                "guest = \"/data\"",
                "mode = \"ro\"",
            ],
            &[],
        )
        .render();
    let gw = Gatehouse::start(config).await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let s = open(&mut c, "chaos").await;
    let id = &s.session_id;
    assert_eq!(
        invoke_ok(&mut c, id, "read-file", b"/data/hello.txt").await,
        "granted"
    );
    let r = try_invoke(&mut c, id, "read-file", b"/etc/passwd")
        .await
        .unwrap();
    assert!(r.error.is_some(), "outside the preopen: {r:?}");
    assert_eq!(invoke_ok(&mut c, id, "env", b"").await, "GREETING=hi");
    assert_eq!(
        invoke_ok(&mut c, id, "connect", format!("127.0.0.1:{allowed_port}")).await,
        "connected"
    );
    let r = try_invoke(&mut c, id, "connect", format!("127.0.0.1:{other_port}"))
        .await
        .unwrap();
    assert!(r.error.is_some(), "a port that was not granted: {r:?}");
    bystander.check(&mut c).await;
}

#[tokio::test]
async fn log_spam_is_rate_limited() {
    let gw = Gatehouse::start(
        chaos(&[
            "command_timeout = \"60s\"",
            "log_burst = 100",
            "log_lines_per_sec = 10",
        ])
        .render(),
    )
    .await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let s = open(&mut c, "chaos").await;
    let began = Instant::now();
    // A million lines take a few seconds; more than PATIENCE on a loaded
    // machine, so this call gets its own bound.
    let reply = tokio::time::timeout(
        Duration::from_secs(120),
        c.invoke(invoke_request(&s.session_id, "log-spam", b"1000000")),
    )
    .await
    .expect("log-spam finished")
    .expect("log-spam succeeded")
    .into_inner();
    assert_eq!(reply.payload, b"1000000");
    let secs = began.elapsed().as_secs_f64();
    bystander.check(&mut c).await;
    // "log line N" is the guest's; the gateway's own notes about dropped
    // lines say "log lines".
    let logged = gw
        .stderr()
        .lines()
        .filter(|l| l.contains("log line "))
        .count() as f64;
    assert!(
        logged <= 100.0 + 10.0 * (secs + 1.0),
        "{logged} of a million lines reached the log in {secs:.1}s"
    );
    assert!(
        logged >= 100.0,
        "the burst should get through, got {logged}"
    );
}

#[tokio::test]
async fn a_thousand_faulted_sessions_leave_nothing_behind() {
    let gw = Gatehouse::start(chaos(&[]).server("max_sessions = 16").render()).await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let cycle = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            let s = open(&mut c, "chaos").await;
            expect_code(
                try_invoke(&mut c, &s.session_id, "trap", b"").await,
                Code::Aborted,
            );
            close(&mut c, &s.session_id).await;
        }
    };
    for _ in 0..100 {
        cycle(&mut c).await;
    }
    let (rss_warm, fds_warm, _) = proc_stats(gw.pid());
    for _ in 0..900 {
        cycle(&mut c).await;
    }
    bystander.check(&mut c).await;
    gw.wait_metric("gatehouse_open_sessions", &[("backend", "chaos")], 0.0)
        .await;
    let (rss, fds, _) = proc_stats(gw.pid());
    assert!(
        fds <= fds_warm + 4,
        "descriptors grew from {fds_warm} to {fds}"
    );
    assert!(
        rss < rss_warm + 32 * 1024,
        "RSS grew from {rss_warm} KiB to {rss} KiB over 900 faulted sessions"
    );
    assert_eq!(
        gw.metric(
            "gatehouse_faults_total",
            &[("backend", "chaos"), ("code", "trap: unreachable")]
        )
        .await,
        1000.0
    );
}
