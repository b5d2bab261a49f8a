//! The recovery section: what a state snapshot costs a stateful session,
//! and how long a faulted session takes to be READY again, wasm and
//! native, each next to its baseline in the same run.

use std::time::{Duration, Instant};

use gatehouse::backend::Command;
use gatehouse::config::{Config, ModuleSource, RestartOn, Runner, SnapshotEvery};
use gatehouse::registry::{Caller, OpenRequest, Registry, SessionState};

use super::{Samples, registry_with};

fn command(name: &str, payload: impl Into<Vec<u8>>) -> Command {
    Command {
        name: name.into(),
        payload: payload.into(),
    }
}

fn open(backend: &str) -> OpenRequest {
    OpenRequest {
        backend: backend.into(),
        ..OpenRequest::default()
    }
}

/// Every backend restarts on a fault at once, without a budget; `chaos`
/// (stateful, faults on `trap`) is served too; snapshots as `every` says.
fn config(config: &mut Config, every: SnapshotEvery) {
    let mut chaos = config
        .backends
        .iter()
        .find(|b| b.name == "kv")
        .cloned()
        .expect("kv");
    chaos.name = "chaos".into();
    chaos.runner = Runner::Wasm(ModuleSource::Builtin("chaos".into()));
    config.backends.push(chaos);
    for spec in &mut config.backends {
        spec.recovery.snapshot.every = every;
        spec.recovery.restart.on = RestartOn::OnFault;
        spec.recovery.restart.max_restarts = u32::MAX;
        spec.recovery.restart.backoff = Duration::ZERO;
        if let Runner::Native(native) = &mut spec.runner {
            native.command[0] = env!("CARGO_BIN_EXE_gatehouse").into();
        }
    }
}

/// Per-command cost of a snapshot after every command, on a kv session of
/// `keys` keys: the same `get`s with `every = "command"` and `"off"`.
async fn snapshot_cost(keys: usize, rounds: usize) {
    let me = Caller::local();
    let mut per_command = Vec::new();
    for every in [SnapshotEvery::Command, SnapshotEvery::Off] {
        let reg = registry_with(8, |c| config(c, every));
        let s = reg.open(&me, open("kv")).await.expect("open kv");
        let puts = (0..keys)
            .map(|i| {
                command(
                    "put",
                    format!(r#"{{"key":"key-{i:05}","value":"value {i}"}}"#),
                )
            })
            .collect();
        reg.invoke(&me, &s.id, puts, None).await.expect("puts");
        let get = || vec![command("get", r#"{"key":"key-00001"}"#)];
        for _ in 0..rounds / 10 {
            reg.invoke(&me, &s.id, get(), None).await.expect("get");
        }
        let began = Instant::now();
        for _ in 0..rounds {
            reg.invoke(&me, &s.id, get(), None).await.expect("get");
        }
        // The last snapshot queued behind the last get runs before this.
        reg.invoke(&me, &s.id, get(), None).await.expect("get");
        per_command.push(began.elapsed().as_secs_f64() * 1e6 / rounds as f64);
        let size = reg
            .get(&me, &s.id)
            .map(|s| s.snapshot().snapshot_bytes)
            .unwrap_or(0);
        if every == SnapshotEvery::Command {
            println!(
                "\n### Recovery: snapshots and restarts ({rounds} rounds)\n\n\
                 A kv session of {keys} keys; its snapshot is {:.1} KiB.\n",
                size as f64 / 1024.0
            );
        }
        reg.shutdown(Duration::from_secs(10)).await;
    }
    println!("| figure | ours | baseline | ratio |\n|---|---|---|---|");
    println!(
        "| a get with a snapshot after every command vs `every = \"off\"` | {:.1} us | {:.1} us | {:.2}x |",
        per_command[0],
        per_command[1],
        per_command[0] / per_command[1]
    );
    println!(
        "| so one snapshot of {keys} keys costs | {:.1} us | | |",
        per_command[0] - per_command[1]
    );
}

/// Fault to READY: the failing invoke's answer until the session is READY
/// again, against a fresh open of the same backend.
async fn restart_time(backend: &str, fault: &str, rounds: usize) -> (Samples, Samples) {
    let me = Caller::local();
    let reg: std::sync::Arc<Registry> = registry_with(8, |c| config(c, SnapshotEvery::Command));
    let s = reg.open(&me, open(backend)).await.expect("open");
    let state = if backend == "chaos" {
        command("put", "k v")
    } else {
        command("write", "line.speed 42")
    };
    reg.invoke(&me, &s.id, vec![state], None)
        .await
        .expect("state");
    let (mut restarts, mut opens) = (Samples::new(), Samples::new());
    for round in 0..rounds + rounds / 10 {
        let _ = reg.invoke(&me, &s.id, vec![command(fault, "")], None).await;
        let faulted = Instant::now();
        while s.state() != SessionState::Ready {
            tokio::task::yield_now().await;
            assert!(
                faulted.elapsed() < Duration::from_secs(10),
                "no restart: {:?}",
                s.snapshot().last_fault
            );
        }
        let restarted = faulted.elapsed();
        let t = Instant::now();
        let fresh = reg.open(&me, open(backend)).await.expect("open");
        let opened = t.elapsed();
        reg.close(&me, &fresh.id).await.expect("close");
        if round >= rounds / 10 {
            restarts.push(restarted);
            opens.push(opened);
        }
    }
    reg.shutdown(Duration::from_secs(10)).await;
    (restarts, opens)
}

/// The section.
pub async fn section(quick: bool) {
    snapshot_cost(1_000, if quick { 200 } else { 2_000 }).await;
    let rounds = if quick { 30 } else { 200 };
    for (name, backend, fault) in [
        ("wasm (chaos, trap)", "chaos", "trap"),
        (
            "native (sim-device, crash)",
            gatehouse::builtin::SIM_DEVICE,
            "crash",
        ),
    ] {
        let (mut r, mut o) = restart_time(backend, fault, rounds).await;
        println!(
            "| restart of {name}, fault to READY, p50 / p99 | {:.1} / {:.1} us | open {:.1} / {:.1} us | {:.2}x |",
            r.pct(0.5),
            r.pct(0.99),
            o.pct(0.5),
            o.pct(0.99),
            r.pct(0.5) / o.pct(0.5)
        );
    }
}
