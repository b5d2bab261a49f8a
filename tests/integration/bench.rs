//! `gatehouse bench` against the real gateway: every session mode runs to
//! its count and accounts for its sessions, a session that disappears
//! mid-run is replaced and counted, and a run whose opens all fail ends
//! with its errors instead of waiting forever.

use gatehouse::proto::v1 as pb;
use serde_json::Value;

use crate::fixtures::*;

/// Runs `gatehouse [--json] bench ARGS` against `gw`; returns its stdout.
async fn run_bench(gw: &Gatehouse, json: bool, args: &[&str]) -> Vec<u8> {
    let run = tokio::process::Command::new(BIN)
        .arg("--addr")
        .arg(gw.url())
        .args(json.then_some("--json"))
        .arg("bench")
        .args(args)
        .env_remove("GATEHOUSE_KEY")
        .kill_on_drop(true)
        .output();
    let out = bounded("gatehouse bench", run)
        .await
        .expect("running gatehouse bench");
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `gatehouse --json bench ARGS` against `gw` and returns the report.
async fn bench(gw: &Gatehouse, args: &[&str]) -> Value {
    let out = run_bench(gw, true, args).await;
    serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "bench --json printed something else ({e}): {}",
            String::from_utf8_lossy(&out)
        )
    })
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// No session of the run is left READY in the gateway.
async fn nothing_left_open(gw: &Gatehouse) {
    let mut c = gw.client().await;
    let open: Vec<_> = list(&mut c)
        .await
        .into_iter()
        .filter(|s| state(s) == pb::SessionState::Ready)
        .collect();
    assert!(open.is_empty(), "left open: {open:?}");
}

#[tokio::test]
async fn every_mode_runs_to_its_count_and_accounts_for_its_sessions() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    // (mode, extra flags, fewest and most sessions the run may create:
    // in churn mode each user closes its last, partly used session at the
    // end, so 40 commands over 4 users make 8 to 11 sessions.)
    let modes: [(&str, &[&str], (u64, u64)); 4] = [
        ("reuse", &[], (1, 4)),
        ("per-request", &[], (40, 40)),
        ("pool", &["--pool-size", "3"], (3, 3)),
        ("churn", &["--churn-after", "5"], (8, 11)),
    ];
    for (mode, extra, sessions) in modes {
        let mut args = vec!["--mode", mode, "-c", "4", "--count", "40"];
        args.extend_from_slice(extra);
        let report = bench(&gw, &args).await;
        assert_eq!(report["mode"], mode.replace('-', ""), "{report}");
        assert_eq!(report["errors"], serde_json::json!({}), "{mode}: {report}");
        let invoke = &report["operations"]["invoke"];
        assert_eq!(n(&invoke["count"]), 40, "{mode}: {report}");
        for key in ["p50_us", "p90_us", "p99_us", "max_us", "per_sec"] {
            assert!(
                invoke[key].as_f64().is_some_and(|v| v > 0.0),
                "{mode}: invoke {key} in {report}"
            );
        }
        let created = n(&report["sessions"]["created"]);
        let closed = n(&report["sessions"]["closed"]);
        assert_eq!(created, closed, "{mode}: every session closed: {report}");
        assert!(
            (sessions.0..=sessions.1).contains(&created),
            "{mode}: {created} sessions: {report}"
        );
        if mode != "reuse" {
            assert_eq!(
                n(&report["operations"]["open"]["count"]),
                created,
                "{mode}: {report}"
            );
        }
        assert_eq!(n(&report["sessions"]["reconnects"]), 0, "{mode}: {report}");
        nothing_left_open(&gw).await;
    }
}

#[tokio::test]
async fn a_session_that_ends_mid_run_is_replaced_and_counted() {
    // Every session ends 300 ms after it opens, while the run goes on.
    // (Toml::new() sweeps every 50 ms.)
    let config =
        Toml::new().backend_with("echo", "builtin:echo", &[], &["max_lifetime = \"300ms\""]);
    let gw = Gatehouse::start(config.render()).await;
    let report = bench(&gw, &["--mode", "reuse", "--duration", "2s"]).await;
    let reconnects = n(&report["sessions"]["reconnects"]);
    assert!(reconnects >= 2, "{report}");
    assert!(
        n(&report["sessions"]["created"]) > reconnects,
        "a new session after each loss: {report}"
    );
    // Each loss is one failed invoke, counted under its status code.
    let errors: u64 = report["errors"]
        .as_object()
        .map(|e| e.values().map(n).sum())
        .unwrap_or(0);
    assert!(errors >= reconnects, "{report}");
    assert!(
        report["errors"].as_object().is_some_and(|e| e
            .keys()
            .all(|k| k == "FailedPrecondition" || k == "NotFound")),
        "{report}"
    );
    assert!(n(&report["operations"]["invoke"]["count"]) > 0, "{report}");
}

#[tokio::test]
async fn a_pool_that_cannot_open_ends_with_its_errors() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let report = bench(
        &gw,
        &[
            "--mode",
            "pool",
            "--backend",
            "no-such-backend",
            "--count",
            "10",
        ],
    )
    .await;
    assert_eq!(
        report["errors"]["NotFound"], 4,
        "one per pool slot: {report}"
    );
    assert_eq!(n(&report["sessions"]["created"]), 0, "{report}");
    // (It used to wait on the empty pool forever; `bench` bounds it.)
}

#[tokio::test]
async fn the_text_report_names_every_figure() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let out = run_bench(
        &gw,
        false,
        &["--mode", "churn", "--count", "12", "--churn-after", "4"],
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    for needle in [
        "Churn mode",
        "invoke",
        "open",
        "close",
        "p50",
        "p99",
        "created 3, closed 3",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    nothing_left_open(&gw).await;
}

#[tokio::test]
async fn compare_runs_both_modes_and_reports_their_throughput_ratio() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let report = bench(
        &gw,
        &[
            "--mode",
            "per-request",
            "--compare",
            "reuse",
            "-c",
            "2",
            "--count",
            "30",
        ],
    )
    .await;
    assert_eq!(report["baseline"]["mode"], "reuse", "{report}");
    assert_eq!(report["run"]["mode"], "perrequest", "{report}");
    // Each run is its own: 30 commands each, the per-request run opening a
    // session for every one.
    assert_eq!(
        n(&report["baseline"]["operations"]["invoke"]["count"]),
        30,
        "{report}"
    );
    assert_eq!(
        n(&report["run"]["operations"]["open"]["count"]),
        30,
        "{report}"
    );
    let rate = |run: &str, op: &str| {
        report[run]["operations"][op]["per_sec"]
            .as_f64()
            .unwrap_or_else(|| panic!("{run} {op} per_sec in {report}"))
    };
    let expected = rate("run", "open") / rate("baseline", "invoke");
    let ratio = report["ratio"].as_f64().expect("a ratio");
    assert!(
        ratio > 0.0 && (ratio - expected).abs() < 0.01 * expected,
        "ratio {ratio}, expected {expected}: {report}"
    );
    let summary = report["summary"].as_str().expect("a summary");
    assert!(
        summary.starts_with("per-request: ") && summary.contains("x reuse ("),
        "{summary}"
    );
    let text = String::from_utf8(
        run_bench(
            &gw,
            false,
            &["--mode", "call", "--compare", "reuse", "--count", "10"],
        )
        .await,
    )
    .expect("utf-8");
    assert!(
        text.lines()
            .any(|l| l.starts_with("call: ") && l.contains("calls/s = ")),
        "{text}"
    );
    nothing_left_open(&gw).await;
}
