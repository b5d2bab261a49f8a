//! Budgets and admission (issue: no tenant can take the machine down).
//! `server.memory_budget` caps what all sessions together make the gateway
//! hold, `[[tenants]] max_memory` what one tenant's do, and a native
//! worker's `memory_limit` what its process may allocate. Every test keeps
//! a bystander session that must keep answering while others hit a limit.

use gatehouse::proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::fixtures::*;

const FAKE_WORKER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/integration/fixtures/fake_worker.py"
);

const MIB: f64 = (1 << 20) as f64;

/// `echo` and a `chaos` with `chaos` session lines, under `budget`.
fn wasm(budget: &str, chaos: &[&str]) -> Toml {
    Toml::new()
        .server(&format!("memory_budget = \"{budget}\""))
        .backend("echo", "builtin:echo")
        .backend_with("chaos", "builtin:chaos", &[], chaos)
}

async fn faulted(c: &mut Client, id: &str) -> pb::SessionInfo {
    let info = get(c, id).await;
    assert_eq!(state(&info), pb::SessionState::Faulted, "{info:?}");
    info
}

async fn reserved(gw: &Gatehouse, kind: &str) -> f64 {
    gw.metric("gatehouse_memory_reserved_bytes", &[("kind", kind)])
        .await
}

#[tokio::test]
async fn sessions_growing_past_the_budget_fault_and_rss_stays_under_it() {
    let gw = Gatehouse::start(wasm("96MiB", &["memory_limit = \"64MiB\""]).render()).await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    assert_eq!(
        gw.metric("gatehouse_memory_budget_bytes", &[]).await,
        96.0 * MIB
    );
    let baseline = reserved(&gw, "wasm-memory").await;
    assert!(baseline > 0.0, "the bystander's memory is reserved");
    let rss_before = rss_kib(gw.pid());

    let (mut grown, mut ids) = (0, Vec::new());
    for _ in 0..6 {
        let s = open(&mut c, "chaos").await;
        match try_invoke(&mut c, &s.session_id, "grow", b"40").await {
            Ok(_) => grown += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::Aborted, "{status:?}");
                let info = faulted(&mut c, &s.session_id).await;
                assert_eq!(info.final_fault, "memory-budget", "{info:?}");
                assert!(
                    info.final_fault_detail.contains("memory budget"),
                    "{info:?}"
                );
            }
        }
        ids.push(s.session_id);
        bystander.check(&mut c).await;
    }
    // 96MiB hold the bystander and two sessions of 40MiB, not a third.
    assert_eq!(grown, 2, "sessions that grew 40MiB under a 96MiB budget");
    let rss = rss_kib(gw.pid());
    assert!(
        rss < rss_before + (96 + 16) * 1024,
        "RSS went from {rss_before} KiB to {rss} KiB under a 96MiB budget"
    );
    assert!(
        gw.metric("gatehouse_memory_budget_reserved_bytes", &[])
            .await
            <= 96.0 * MIB
    );
    assert!(
        gw.metric(
            "gatehouse_memory_refusals_total",
            &[("kind", "wasm-memory")]
        )
        .await
            >= 4.0
    );
    for id in &ids {
        close(&mut c, id).await;
    }
    bystander.check(&mut c).await;
    // Every instance gave its memory back.
    gw.wait_metric(
        "gatehouse_memory_reserved_bytes",
        &[("kind", "wasm-memory")],
        baseline,
    )
    .await;
}

#[tokio::test]
async fn an_open_that_does_not_fit_is_resource_exhausted_with_retry_info() {
    // A session flooding events nobody reads keeps the budget full: its
    // drop-oldest policy drops the oldest to make room for the newest.
    let gw =
        Gatehouse::start(wasm("24MiB", &["event_queue = 1000000", "replay_buffer = 0"]).render())
            .await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let flood = open(&mut c, "chaos").await;
    invoke_ok(&mut c, &flood.session_id, "flood", b"200000").await;
    let info = get(&mut c, &flood.session_id).await;
    assert_eq!(state(&info), pb::SessionState::Ready, "{info:?}");
    assert!(
        info.events_dropped > 0,
        "the overflow policy applied: {info:?}"
    );
    assert!(reserved(&gw, "events").await > 20.0 * MIB);

    let refused = expect_code(
        try_open(&mut c, open_request("chaos")).await,
        Code::ResourceExhausted,
    );
    assert!(refused.message().contains("memory budget"), "{refused:?}");
    assert!(
        refused.get_details_retry_info().is_some(),
        "RetryInfo in {refused:?}"
    );
    bystander.check(&mut c).await;

    // Closing the flood gives its events back: the next open fits.
    close(&mut c, &flood.session_id).await;
    gw.wait_metric(
        "gatehouse_memory_reserved_bytes",
        &[("kind", "events")],
        0.0,
    )
    .await;
    let s = open(&mut c, "chaos").await;
    invoke_ok(&mut c, &s.session_id, "echo", b"hi").await;
    bystander.check(&mut c).await;
}

#[tokio::test]
async fn a_tenants_max_memory_stops_its_sessions_before_the_gateways_budget() {
    // In local mode the anonymous caller is tenant `default`.
    let config = format!(
        "{}\n[[tenants]]\nname = \"default\"\nmax_memory = \"32MiB\"\n",
        wasm("1GiB", &["memory_limit = \"64MiB\""]).render()
    );
    let gw = Gatehouse::start(config).await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let s = open(&mut c, "chaos").await;
    invoke_ok(&mut c, &s.session_id, "grow", b"16").await;
    assert!(
        gw.metric(
            "gatehouse_tenant_memory_reserved_bytes",
            &[("tenant", "default")]
        )
        .await
            > 16.0 * MIB
    );
    expect_code(
        try_invoke(&mut c, &s.session_id, "grow", b"20").await,
        Code::Aborted,
    );
    let info = faulted(&mut c, &s.session_id).await;
    assert_eq!(info.final_fault, "memory-budget");
    assert!(
        info.final_fault_detail.contains("max_memory"),
        "the detail names the tenant's limit: {info:?}"
    );
    bystander.check(&mut c).await;
}

/// A native backend running the fake worker in `hog` mode with `lines`
/// in its `[backends.sessions]`.
fn hog(name: &str, pids: &std::path::Path, lines: &[&str]) -> String {
    let mut b = format!(
        "[[backends]]\nname = \"{name}\"\nkind = \"native\"\ncommand = [\"python3\", {FAKE_WORKER:?}, \"hog\", {pids:?}]\n"
    );
    if !lines.is_empty() {
        b.push_str("[backends.sessions]\n");
        for l in lines {
            b.push_str(l);
            b.push('\n');
        }
    }
    b.push_str("[backends.native]\nstartup_timeout = \"10s\"\n\n");
    b
}

#[tokio::test]
async fn large_events_nobody_reads_stay_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n{}{}",
        wasm("64MiB", &[]).render(),
        hog("hog", dir.path(), &[]),
        hog("hog-strict", dir.path(), &["event_overflow = \"fault\""]),
    );
    let gw = Gatehouse::start(config).await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let rss_before = rss_kib(gw.pid());
    let mut ids = Vec::new();
    for _ in 0..8 {
        let s = open(&mut c, "hog").await;
        // 1,024 events of 60KiB: 60MiB each, 480MiB in all without a budget.
        invoke_ok(&mut c, &s.session_id, "emit", b"1024 61440").await;
        ids.push(s.session_id);
        bystander.check(&mut c).await;
    }
    let rss = rss_kib(gw.pid());
    assert!(
        rss < rss_before + (64 + 48) * 1024,
        "RSS went from {rss_before} KiB to {rss} KiB under a 64MiB budget"
    );
    assert!(reserved(&gw, "events").await <= 64.0 * MIB);
    let mut dropped = 0;
    for id in &ids {
        let info = get(&mut c, id).await;
        assert_eq!(state(&info), pb::SessionState::Ready, "{info:?}");
        dropped += info.events_dropped;
    }
    assert!(dropped > 1000, "drop-oldest dropped {dropped} events");

    // Under the fault policy an event that does not fit ends the session.
    let strict = open(&mut c, "hog-strict").await;
    expect_code(
        try_invoke(&mut c, &strict.session_id, "emit", b"64 61440").await,
        Code::Aborted,
    );
    let info = faulted(&mut c, &strict.session_id).await;
    assert_eq!(info.final_fault, "memory-budget", "{info:?}");
    bystander.check(&mut c).await;

    for id in &ids {
        close(&mut c, id).await;
    }
    gw.wait_metric(
        "gatehouse_memory_reserved_bytes",
        &[("kind", "events")],
        0.0,
    )
    .await;
}

#[tokio::test]
async fn a_native_worker_allocating_past_its_limit_dies_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n{}",
        wasm("1GiB", &[]).render(),
        hog("hog", dir.path(), &["memory_limit = \"64MiB\""]),
    );
    let gw = Gatehouse::start(config).await;
    let mut c = gw.client().await;
    let mut bystander = Bystander::open(&mut c).await;
    let other = open(&mut c, "hog").await;
    let s = open(&mut c, "hog").await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.worker_pid)).unwrap();
    let data = limits
        .lines()
        .find(|l| l.starts_with("Max data size"))
        .unwrap_or_default();
    assert!(data.contains(&(64u64 << 20).to_string()), "{data}");
    // Within its limit it works.
    assert_eq!(invoke_ok(&mut c, &s.session_id, "alloc", b"8").await, "8");
    let st = expect_code(
        try_invoke(&mut c, &s.session_id, "alloc", b"200").await,
        Code::Aborted,
    );
    let info = faulted(&mut c, &s.session_id).await;
    assert_eq!(info.final_fault, "memory-limit", "{st:?} {info:?}");
    eventually("the worker to be gone", PATIENCE, || async {
        (!alive(s.worker_pid)).then_some(())
    })
    .await;
    assert_eq!(
        invoke_ok(&mut c, &other.session_id, "ping", b"").await,
        "pong"
    );
    bystander.check(&mut c).await;
}

/// The `Max data size` line of a process's limits.
fn data_limit(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max data size"))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_tenants_lower_memory_limit_reaches_a_warm_worker() {
    let dir = tempfile::tempdir().unwrap();
    let backend = hog("hog", dir.path(), &["memory_limit = \"64MiB\""])
        .replace("[backends.native]\n", "[backends.native]\nwarm_pool = 1\n");
    let config = format!(
        "{}\n{backend}[[tenants]]\nname = \"default\"\n[tenants.sessions]\nmemory_limit = \"32MiB\"\n",
        wasm("1GiB", &[]).render(),
    );
    let gw = Gatehouse::start(config).await;
    let mut c = gw.client().await;
    // Give the pool its worker, started with the backend's 64MiB.
    eventually("a warm worker", PATIENCE, || async {
        (!children(gw.pid()).is_empty()).then_some(())
    })
    .await;
    let s = open(&mut c, "hog").await;
    let limit = data_limit(s.worker_pid);
    assert!(limit.contains(&(32u64 << 20).to_string()), "{limit}");
    expect_code(
        try_invoke(&mut c, &s.session_id, "alloc", b"48").await,
        Code::Aborted,
    );
    assert_eq!(
        faulted(&mut c, &s.session_id).await.final_fault,
        "memory-limit"
    );
}

#[test]
fn config_check_warns_when_the_maxima_exceed_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let check = |toml: Toml| {
        let file = dir.path().join("g.toml");
        std::fs::write(&file, toml.render()).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["config", "check"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "a warning is not an error: {stderr}");
        stderr
    };
    // 1,024 sessions of 64MiB and full event queues do not fit 64MiB.
    let stderr = check(wasm("64MiB", &[]));
    assert!(
        stderr.contains("warning: server.memory_budget") && stderr.contains("1024 sessions"),
        "{stderr}"
    );
    // Four small sessions do.
    let stderr = check(
        Toml::new()
            .server("memory_budget = \"64MiB\"")
            .server("max_sessions = 4")
            .sessions("memory_limit = \"1MiB\"")
            .sessions("event_queue = 1")
            .sessions("replay_buffer = 0")
            .backend("echo", "builtin:echo"),
    );
    assert!(!stderr.contains("warning"), "{stderr}");
}
