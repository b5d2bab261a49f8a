//! Containment of native workers through the real binary: a worker's
//! `setsid` descendants end with it on a failed open, a close, a deadline
//! kill, SIGTERM of the gateway and SIGKILL of the gateway (then a
//! restart), and a fork bomb past `max_processes` faults only its session.
//!
//! With GATEHOUSE_REQUIRE_CGROUP_CONTAINMENT set (as `.ci/run` does), a
//! gateway that fell back to a weaker mechanism fails the tests.

use std::path::Path;
use std::time::Duration;

use gatehouse::proto::v1 as pb;
use tonic::Code;

use crate::fixtures::*;

const FAKE_WORKER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/integration/fixtures/fake_worker.py"
);

/// Workers are processes, started and reaped under the whole suite's load.
const WORKER_PATIENCE: Duration = Duration::from_secs(20);

/// A sleep duration unique to this test and run, which names its sleepers.
fn tag(base: u32) -> String {
    format!("{base}.{}", std::process::id())
}

/// Live `sleep TAG` processes.
fn sleepers(tag: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmd == format!("sleep\0{tag}\0").as_bytes() && alive(*pid)
        })
        .count()
}

/// A config with the failing command and the spawner worker.
fn config(state: &Path, pids: &Path, tag: &str, max_processes: u32) -> String {
    let native = format!(
        "[backends.native]\nheartbeat_interval = \"100ms\"\nheartbeat_grace = \"2s\"\nstartup_timeout = \"5s\"\nmax_processes = {max_processes}\n"
    );
    let escape = format!("setsid sleep {tag} & sleep 0.2; exit 1");
    format!(
        "[server]\nstate_dir = {state:?}\nsweep_interval = \"100ms\"\nshutdown_timeout = \"2s\"\n\n\
         [[backends]]\nname = \"fails\"\nkind = \"native\"\ncommand = [\"/bin/sh\", \"-c\", {escape:?}]\n{native}\n\
         [[backends]]\nname = \"spawner\"\nkind = \"native\"\ncommand = [\"python3\", {FAKE_WORKER:?}, \"spawner\", {pids:?}, {tag:?}]\n{native}\n"
    )
}

struct Setup {
    dir: tempfile::TempDir,
    tag: String,
    gw: Gatehouse,
}

impl Setup {
    fn start(&self, extra_env: &[(&str, &str)], max_processes: u32) -> Start {
        let pids = self.dir.path().join("pids");
        let mut b = Gatehouse::builder(config(
            &self.dir.path().join("state"),
            &pids,
            &self.tag,
            max_processes,
        ))
        .env("RUST_LOG", "info,gatehouse=debug");
        for (k, v) in extra_env {
            b = b.env(k, v);
        }
        b
    }
}

async fn setup_with(base: u32, extra_env: &[(&str, &str)], max_processes: u32) -> Setup {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::create_dir(dir.path().join("pids")).expect("the pid dir");
    let tag = tag(base);
    let pids = dir.path().join("pids");
    let mut b = Gatehouse::builder(config(
        &dir.path().join("state"),
        &pids,
        &tag,
        max_processes,
    ))
    .env("RUST_LOG", "info,gatehouse=debug");
    for (k, v) in extra_env {
        b = b.env(k, v);
    }
    let gw = b.start().await;
    let wanted = if extra_env
        .iter()
        .any(|(k, _)| *k == "GATEHOUSE_NATIVE_CONTAINMENT")
    {
        "subreaper"
    } else {
        "cgroup"
    };
    let log = gw.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("native workers are contained by"))
        .unwrap_or_else(|| panic!("serve logs its containment:\n{log}"))
        .to_string();
    if std::env::var_os("GATEHOUSE_REQUIRE_CGROUP_CONTAINMENT").is_some() || wanted == "subreaper" {
        assert!(
            line.contains(&format!("containment=\"{wanted}\"")),
            "wanted {wanted}: {line}"
        );
    }
    Setup { dir, tag, gw }
}

async fn setup(base: u32) -> Setup {
    setup_with(base, &[], 64).await
}

/// Opens a spawner session and waits for its escaped sleeper.
async fn open_spawner(s: &Setup, c: &mut Client, timeout: Option<Duration>) -> pb::SessionInfo {
    let mut request = open_request("spawner");
    request.command_timeout = timeout.map(gatehouse::api_duration);
    let info = try_open(c, request).await.expect("the spawner opens");
    eventually(
        "the worker's setsid sleeper runs",
        WORKER_PATIENCE,
        holds(|| sleepers(&s.tag) >= 1),
    )
    .await;
    info
}

async fn none_survive(s: &Setup, when: &str) {
    eventually(
        &format!("no sleeper survives {when}"),
        WORKER_PATIENCE,
        holds(|| sleepers(&s.tag) == 0),
    )
    .await;
}

#[tokio::test]
async fn a_failed_open_leaves_no_descendant() {
    let s = setup(31301).await;
    let mut c = s.gw.client().await;
    let err = try_open(&mut c, open_request("fails")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    none_survive(&s, "a failed open").await;
    // Still none a moment later: it was killed, not merely not yet started.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sleepers(&s.tag), 0);
}

#[tokio::test]
async fn a_close_ends_every_descendant() {
    let s = setup(31302).await;
    let mut c = s.gw.client().await;
    let info = open_spawner(&s, &mut c, None).await;
    let r = try_invoke(&mut c, &info.session_id, "spawn", "3")
        .await
        .unwrap();
    assert_eq!(r.payload, b"3");
    // The escaped sleeper is started in the background before the hello,
    // and may still be between its fork and its exec.
    eventually(
        "four sleepers",
        WORKER_PATIENCE,
        holds(|| sleepers(&s.tag) >= 4),
    )
    .await;
    if std::env::var_os("GATEHOUSE_REQUIRE_CGROUP_CONTAINMENT").is_some() {
        // The worker, its escaped sleeper and three more: its cgroup's count.
        let n = get(&mut c, &info.session_id).await.worker_processes;
        assert!(n >= 5, "worker_processes {n}");
    }
    close(&mut c, &info.session_id).await;
    none_survive(&s, "a close").await;
}

#[tokio::test]
async fn a_deadline_kill_ends_every_descendant() {
    let s = setup(31303).await;
    let mut c = s.gw.client().await;
    let info = open_spawner(&s, &mut c, Some(Duration::from_millis(300))).await;
    let err = try_invoke(&mut c, &info.session_id, "slow", "10000")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    none_survive(&s, "a kill for a deadline").await;
}

#[tokio::test]
async fn sigterm_of_the_gateway_ends_every_descendant() {
    let mut s = setup(31304).await;
    let mut c = s.gw.client().await;
    open_spawner(&s, &mut c, None).await;
    s.gw.sigterm();
    let status = s.gw.wait_exit(WORKER_PATIENCE).await;
    assert!(status.success(), "{status:?}");
    none_survive(&s, "SIGTERM of the gateway").await;
}

#[tokio::test]
async fn sigkill_of_the_gateway_then_a_restart_ends_every_descendant() {
    let mut s = setup(31305).await;
    let mut c = s.gw.client().await;
    let info = open_spawner(&s, &mut c, None).await;
    s.gw.kill();
    eventually(
        "the worker dies with the gateway",
        WORKER_PATIENCE,
        holds(|| !alive(info.worker_pid)),
    )
    .await;
    // The next gateway on the same state directory ends what is left
    // before it serves.
    let next = s.start(&[], 64).start().await;
    none_survive(&s, "SIGKILL of the gateway and a restart").await;
    assert!(next.stderr().contains("leftover"), "{}", next.stderr());
}

/// Waits for session `id` to be FAULTED, and asserts its fault is `code`.
async fn faulted_with(c: &mut Client, id: &str, code: &str) {
    let info = eventually(&format!("session {id} FAULTED"), WORKER_PATIENCE, || {
        let mut c = c.clone();
        async move {
            let info = get(&mut c, id).await;
            (info.state == pb::SessionState::Faulted as i32).then_some(info)
        }
    })
    .await;
    assert_eq!(info.final_fault, code, "{info:?}");
}

#[tokio::test]
async fn a_fork_bomb_past_max_processes_faults_only_its_session() {
    let s = setup_with(31306, &[], 16).await;
    let mut c = s.gw.client().await;
    let bystander = open_spawner(&s, &mut c, None).await;
    let bomb = try_open(&mut c, open_request("spawner")).await.unwrap();
    // As many sleepers as it can: 16 processes in all, counting itself.
    let _ = try_invoke(&mut c, &bomb.session_id, "spawn", "100").await;
    faulted_with(&mut c, &bomb.session_id, "process-limit").await;
    let r = try_invoke(&mut c, &bystander.session_id, "ping", "")
        .await
        .unwrap();
    assert_eq!(r.payload, b"pong");
    assert_eq!(
        get(&mut c, &bystander.session_id).await.state,
        pb::SessionState::Ready as i32
    );
    let faults =
        s.gw.metric(
            "gatehouse_faults_total",
            &[("backend", "spawner"), ("code", "process-limit")],
        )
        .await;
    assert_eq!(faults, 1.0);
}

#[tokio::test]
async fn a_worker_over_its_cgroup_memory_limit_is_faulted_with_memory_limit() {
    if std::env::var_os("GATEHOUSE_REQUIRE_CGROUP_CONTAINMENT").is_none() {
        // Only a memory cgroup counts the children together; .ci/run sets
        // the variable, as it runs where cgroups can be had.
        eprintln!(
            "skipped: GATEHOUSE_REQUIRE_CGROUP_CONTAINMENT is not set (a cgroup memory limit needs cgroup containment)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::create_dir(dir.path().join("pids")).expect("the pid dir");
    let tag = tag(31308);
    let mut text = config(
        &dir.path().join("state"),
        &dir.path().join("pids"),
        &tag,
        64,
    );
    // Each child holds 40MiB, under its own RLIMIT_DATA of 96MiB; three
    // are over the worker's 96MiB cgroup.
    text = text.replace(
        &format!("{tag:?}]\n"),
        &format!("{tag:?}]\n[backends.sessions]\nmemory_limit = \"96MiB\"\n"),
    );
    assert!(text.contains("memory_limit"), "{text}");
    let gw = Gatehouse::builder(text).start().await;
    let mut c = gw.client().await;
    let bystander = try_open(&mut c, open_request("spawner")).await.unwrap();
    let hog = try_open(&mut c, open_request("spawner")).await.unwrap();
    for _ in 0..3 {
        let _ = try_invoke(&mut c, &hog.session_id, "hold", "40").await;
    }
    faulted_with(&mut c, &hog.session_id, "memory-limit").await;
    let r = try_invoke(&mut c, &bystander.session_id, "ping", "")
        .await
        .unwrap();
    assert_eq!(r.payload, b"pong");
}

#[tokio::test]
async fn the_subreaper_fallback_ends_escaped_descendants_on_close() {
    let s = setup_with(31307, &[("GATEHOUSE_NATIVE_CONTAINMENT", "subreaper")], 64).await;
    let mut c = s.gw.client().await;
    let info = open_spawner(&s, &mut c, None).await;
    close(&mut c, &info.session_id).await;
    none_survive(&s, "a close under the subreaper").await;
}
