//! CPU between tenants through the real binary: every session's guest CPU
//! metered (`SessionInfo.cpu_time`, `gatehouse_guest_cpu_seconds_total`)
//! and matching the gateway's own CPU from `/proc`; a tenant over
//! `max_cpu_per_sec` slowed, never faulted, and refused with `RetryInfo`
//! only when the refill would come after its deadline; `cpu_weight` 3:1
//! giving about 3:1 of contended CPU.
//!
//! The CPU-bound command is chaos's `work N`: pure wasm arithmetic, so all
//! of its CPU is wasm time (its `busy` spends most of its time in clock
//! reads, which are host calls and not metered).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gatehouse::client::BearerKey;
use gatehouse::keys;
use gatehouse::proto::v1 as pb;
use gatehouse::proto::v1::gateway_client::GatewayClient;
use tonic::Code;
use tonic_types::StatusExt;

use crate::fixtures::*;

/// A tenant entry with one key; returns the entry and the key.
fn tenant(name: &str, settings: &str) -> (String, String) {
    let (secret, hash) = keys::generate().unwrap();
    let entry = format!(
        "[[tenants]]\nname = \"{name}\"\n{settings}\n[[tenants.keys]]\nhash = \"{hash}\"\nscopes = [\"sessions:open\", \"sessions:use\", \"sessions:read\", \"backends:read\"]\n"
    );
    (entry, secret)
}

async fn keyed(gw: &Gatehouse, secret: &str) -> Client {
    GatewayClient::with_interceptor(gw.channel().await, BearerKey::new(Some(secret)).unwrap())
}

fn chaos_config(tenants: &[&str]) -> String {
    let toml = Toml::new().backend("chaos", "builtin:chaos");
    format!("{}{}", toml.render(), tenants.concat())
}

fn seconds(d: &Option<prost_types::Duration>) -> f64 {
    let d = d.as_ref().expect("SessionInfo.cpu_time is set");
    d.seconds as f64 + f64::from(d.nanos) / 1e9
}

#[tokio::test]
async fn metering_matches_the_gateways_own_cpu_on_a_cpu_bound_run() {
    let gw = Gatehouse::start(Toml::new().backend("chaos", "builtin:chaos").render()).await;
    let mut c = gw.client().await;
    let sessions = [open(&mut c, "chaos").await, open(&mut c, "chaos").await];
    // Settle the open's own work before the window.
    for s in &sessions {
        invoke_ok(&mut c, &s.session_id, "echo", "").await;
    }
    let proc_before = process_cpu(gw.pid());
    let metered_before = gw
        .metric("gatehouse_guest_cpu_seconds_total", &[("backend", "chaos")])
        .await;
    let began = Instant::now();
    // Both sessions compute at once, a few times each: about 2 CPU-seconds.
    let mut runs = Vec::new();
    for s in &sessions {
        let mut c = gw.client().await;
        let id = s.session_id.clone();
        runs.push(tokio::spawn(async move {
            for _ in 0..6 {
                invoke_ok(&mut c, &id, "work", "120").await;
            }
        }));
    }
    for r in runs {
        r.await.unwrap();
    }
    let used = process_cpu(gw.pid()) - proc_before;
    let metered = gw
        .metric("gatehouse_guest_cpu_seconds_total", &[("backend", "chaos")])
        .await
        - metered_before;
    let proc = used.as_secs_f64();
    eprintln!(
        "metered {metered:.3}s, gateway CPU {proc:.3}s in {:.2}s",
        began.elapsed().as_secs_f64()
    );
    assert!(proc > 0.5, "too little CPU to compare: {proc:.3}s");
    assert!(
        (metered - proc).abs() <= 0.1 * proc,
        "metered {metered:.3}s, the gateway used {proc:.3}s"
    );
    // The sessions say the same as the metric.
    let mut per_session = 0.0;
    for s in &sessions {
        per_session += seconds(&get(&mut c, &s.session_id).await.cpu_time);
    }
    assert!(
        per_session >= metered * 0.99,
        "sessions {per_session:.3}s, metric {metered:.3}s"
    );
    // And the sessions table shows it.
    let out = std::process::Command::new(BIN)
        .arg("sessions")
        .env("GATEHOUSE_ADDR", gw.grpc.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().next().unwrap().contains("CPU"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&sessions[0].session_id))
        .unwrap_or_else(|| panic!("{table}"));
    // Most of a CPU-second each, as `854.4ms` or `1.02s`.
    let shown = row
        .split_whitespace()
        .find_map(|w| match w.strip_suffix("ms") {
            Some(ms) => ms.parse::<f64>().ok().map(|ms| ms / 1e3),
            None => w.strip_suffix('s')?.parse::<f64>().ok(),
        })
        .unwrap_or_else(|| panic!("no CPU time in {row}"));
    assert!(shown > 0.1, "{row}");
}

#[tokio::test]
async fn a_tenant_over_max_cpu_per_sec_is_slowed_not_faulted() {
    // 100 CPU-ms a second, 50 at once; each command about 15-30 CPU-ms.
    let (slow, slow_key) = tenant("slow", "max_cpu_per_sec = 100\ncpu_burst = 50");
    let (calm, calm_key) = tenant("calm", "");
    let gw = Gatehouse::start(chaos_config(&[&slow, &calm])).await;
    let mut s = keyed(&gw, &slow_key).await;
    let mut b = keyed(&gw, &calm_key).await;
    let session = open(&mut s, "chaos").await.session_id;
    let bystander = open(&mut b, "chaos").await.session_id;

    let began = Instant::now();
    for _ in 0..12 {
        invoke_ok(&mut s, &session, "work", "15").await;
        // The other tenant is not held back by this one's budget.
        invoke_ok(&mut b, &bystander, "echo", "hi").await;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let info = get(&mut s, &session).await;
    assert_eq!(state(&info), pb::SessionState::Ready, "{info:?}");
    let used = seconds(&info.cpu_time);
    // Work starts only while the budget is above zero: what ran is at
    // most the burst, the refill over the run and the last command.
    let last = used / 12.0 * 2.0;
    let allowed = 0.05 + 0.1 * elapsed + last;
    eprintln!("used {used:.3}s of CPU in {elapsed:.2}s (allowed {allowed:.3}s)");
    assert!(used > 0.1, "the commands used only {used:.3}s of CPU");
    assert!(
        used <= allowed,
        "{used:.3}s of CPU in {elapsed:.2}s is over 100 CPU-ms/s (allowed {allowed:.3}s)"
    );
    let waited = gw
        .metric("gatehouse_cpu_wait_seconds_total", &[("tenant", "slow")])
        .await;
    assert!(waited > 0.0, "the tenant never waited for its budget");
    assert_eq!(
        gw.metric("gatehouse_cpu_wait_seconds_total", &[("tenant", "calm")])
            .await,
        0.0
    );
    assert_eq!(
        gw.metric("gatehouse_faults_total", &[("backend", "chaos")])
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_refill_later_than_the_deadline_is_resource_exhausted_with_retry_info() {
    // 1 CPU-ms a second: a 15 CPU-ms command leaves seconds of debt.
    let (tight, key) = tenant("tight", "max_cpu_per_sec = 1\ncpu_burst = 1");
    let gw = Gatehouse::start(chaos_config(&[&tight])).await;
    let mut c = keyed(&gw, &key).await;
    let session = open_with(
        &mut c,
        pb::OpenSessionRequest {
            command_timeout: Some(pb_duration(Duration::from_secs(2))),
            ..open_request("chaos")
        },
    )
    .await
    .session_id;
    invoke_ok(&mut c, &session, "work", "15").await;
    let status = try_invoke(&mut c, &session, "echo", "x")
        .await
        .expect_err("over the budget with a refill seconds away");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_cpu_per_sec"),
        "{}",
        status.message()
    );
    let retry = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or_else(|| panic!("no RetryInfo delay on {status:?}"));
    assert!(retry > Duration::from_secs(2), "{retry:?}");
    // Refused, not faulted: the session is still there to use.
    let info = get(&mut c, &session).await;
    assert_eq!(state(&info), pb::SessionState::Ready, "{info:?}");
    assert_eq!(
        gw.metric("gatehouse_cpu_throttled_total", &[("tenant", "tight")])
            .await,
        1.0
    );
}

#[tokio::test]
async fn weights_three_to_one_share_contended_cpu_about_three_to_one() {
    let (heavy, heavy_key) = tenant("heavy", "cpu_weight = 3");
    let (light, light_key) = tenant("light", "cpu_weight = 1");
    let gw = Gatehouse::start(chaos_config(&[&heavy, &light])).await;
    // More busy sessions per tenant than the gateway has threads, so the
    // two tenants contend for every turn.
    let per_tenant = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for key in [&heavy_key, &light_key] {
        for _ in 0..per_tenant {
            let mut c = keyed(&gw, key).await;
            let id = open(&mut c, "chaos").await.session_id;
            let stop = Arc::clone(&stop);
            loops.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    invoke_ok(&mut c, &id, "work", "20").await;
                }
            }));
        }
    }
    let cpu = |text: &str, t: &str| {
        metric_sum(text, "gatehouse_guest_cpu_seconds_total", &[("tenant", t)])
    };
    // Let every loop get going, then measure a window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = gw.metrics().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = gw.metrics().await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let h = cpu(&after, "heavy") - cpu(&before, "heavy");
    let l = cpu(&after, "light") - cpu(&before, "light");
    let ratio = h / l;
    eprintln!("heavy {h:.3}s, light {l:.3}s of CPU: {ratio:.2} to 1");
    assert!(l > 0.05, "the light tenant got no CPU at all ({l:.3}s)");
    assert!(
        (2.0..=4.5).contains(&ratio),
        "weights 3:1 gave {ratio:.2}:1 (heavy {h:.3}s, light {l:.3}s)"
    );
}

#[tokio::test]
async fn a_native_workers_cpu_is_metered_from_its_process() {
    let gw = Gatehouse::start(format!(
        "[server]\n\n[[backends]]\nname = \"sim\"\nkind = \"native\"\ncommand = [{BIN:?}, \"worker\", \"sim-device\"]\n"
    ))
    .await;
    let mut c = gw.client().await;
    let opened = open(&mut c, "sim").await;
    let session = opened.session_id;
    let began = Instant::now();
    assert_eq!(invoke_ok(&mut c, &session, "spin", "300").await, "spun 300");
    let wall = began.elapsed().as_secs_f64();
    let info = get(&mut c, &session).await;
    let used = seconds(&info.cpu_time);
    let worker = process_cpu(info.worker_pid).as_secs_f64();
    eprintln!("native: metered {used:.3}s in {wall:.3}s; the worker's CPU {worker:.3}s");
    // What the worker used since the session's open: its spin, not its
    // start-up; never more than the wall time (one thread), to /proc's
    // 10 ms ticks.
    assert!(used >= 0.03, "metered only {used:.3}s");
    assert!(used <= wall + 0.02, "metered {used:.3}s in {wall:.3}s");
    assert!(used <= worker + 0.011, "metered {used:.3}s of {worker:.3}s");
    assert!(
        used >= worker - 0.1,
        "metered {used:.3}s of the worker's {worker:.3}s"
    );
    let metric = gw
        .metric(
            "gatehouse_guest_cpu_seconds_total",
            &[("backend", "sim"), ("tenant", "default")],
        )
        .await;
    assert!(
        (metric - used).abs() < 1e-6,
        "metric {metric}, session {used}"
    );
}
