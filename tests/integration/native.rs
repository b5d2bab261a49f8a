//! Native workers through the real binary: sim-device sessions, faults,
//! misbehaving workers, and the no-orphans guarantees.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gatehouse::proto::v1 as pb;
use tonic::Code;

use crate::fixtures::*;

const FAKE_WORKER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/integration/fixtures/fake_worker.py"
);

/// Longer than [`PATIENCE`]: workers are processes, started and reaped
/// under the load of the whole suite.
const WORKER_PATIENCE: Duration = Duration::from_secs(20);

fn pids_in(dir: &Path) -> Vec<u32> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A config with sim-device (fast heartbeats), a warm-pooled sim-device,
/// and the fake workers.
fn config(dir: &Path, pids: &Path) -> String {
    let state = dir.join("state");
    let native = "[backends.native]\nheartbeat_interval = \"100ms\"\nheartbeat_grace = \"600ms\"\nstartup_timeout = \"5s\"\nmax_frame_bytes = \"64KiB\"\n";
    let mut c = format!(
        "[server]\nstate_dir = {state:?}\nsweep_interval = \"100ms\"\nshutdown_timeout = \"2s\"\n\n\
         [[backends]]\nname = \"sim\"\nkind = \"native\"\ncommand = [{BIN:?}, \"worker\", \"sim-device\"]\n{native}\n\
         [[backends]]\nname = \"sim-warm\"\nkind = \"native\"\ncommand = [{BIN:?}, \"worker\", \"sim-device\"]\n{native}warm_pool = 2\n\n"
    );
    for mode in [
        "bad-nonce",
        "bad-version",
        "oversize",
        "garbage",
        "survivor",
    ] {
        c.push_str(&format!(
            "[[backends]]\nname = \"fake-{mode}\"\nkind = \"native\"\ncommand = [\"python3\", {FAKE_WORKER:?}, \"{mode}\", {pids:?}]\n{native}\n"
        ));
    }
    c
}

/// A state directory and a pid directory that outlive one gateway (a test
/// may start a second on the same state), and the gateway.
struct Setup {
    dir: tempfile::TempDir,
    pids: PathBuf,
    gw: Gatehouse,
}

/// `RUST_LOG` with the debug lines some tests look for.
fn start(dir: &Path, pids: &Path) -> Start {
    Gatehouse::builder(config(dir, pids)).env("RUST_LOG", "info,gatehouse=debug")
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("a temp dir");
    let pids = dir.path().join("pids");
    std::fs::create_dir(&pids).expect("creating the pid dir");
    let gw = start(dir.path(), &pids).start().await;
    Setup { dir, pids, gw }
}

async fn try_open_on(
    c: &mut Client,
    backend: &str,
    command_timeout: Option<Duration>,
) -> Result<pb::SessionInfo, tonic::Status> {
    let mut request = open_request(backend);
    request.command_timeout = command_timeout.map(gatehouse::api_duration);
    try_open(c, request).await
}

// ---- tests -------------------------------------------------------------------

#[tokio::test]
async fn sim_device_session_lifecycle() {
    let s = setup().await;
    let mut c = s.gw.client().await;

    let backends = c
        .list_backends(pb::ListBackendsRequest {})
        .await
        .unwrap()
        .into_inner()
        .backends;
    let sim = backends.iter().find(|b| b.name == "sim").unwrap();
    assert_eq!(sim.kind, pb::BackendKind::Native as i32);
    assert!(sim.digest.starts_with("sha256:") && sim.digest.len() == 7 + 64);

    let info = try_open_on(&mut c, "sim", None).await.unwrap();
    assert_eq!(info.state, pb::SessionState::Ready as i32);
    assert_eq!(info.backend_kind, pb::BackendKind::Native as i32);
    let pid = info.worker_pid;
    assert!(pid > 0 && alive(pid), "worker pid {pid}");
    let sid = info.session_id;

    let r = try_invoke(&mut c, &sid, "write", "line1/temp 21.5")
        .await
        .unwrap();
    assert_eq!(r.payload, b"21.5");
    let r = try_invoke(&mut c, &sid, "read", "line1/temp")
        .await
        .unwrap();
    assert_eq!(r.payload, b"21.5");
    assert!(r.error.is_none());
    // The worker's own errors come back inside an OK response.
    let r = try_invoke(&mut c, &sid, "read", "nope").await.unwrap();
    let e = r.error.expect("a command error");
    assert_eq!(e.kind, pb::command_error::Kind::Failed as i32);
    let r = try_invoke(&mut c, &sid, "frobnicate", "").await.unwrap();
    assert_eq!(
        r.error.unwrap().kind,
        pb::command_error::Kind::UnknownCommand as i32
    );
    let r = try_invoke(&mut c, &sid, "info", "").await.unwrap();
    assert_eq!(
        String::from_utf8(r.payload).unwrap(),
        format!("session={sid} pid={pid}")
    );

    // A command the worker's frame cap cannot carry is the client's error;
    // the session stays usable.
    let big = "x".repeat(100 << 10);
    let r = try_invoke(&mut c, &sid, "write", &format!("big {big}"))
        .await
        .unwrap();
    assert_eq!(
        r.error.expect("a command error").kind,
        pb::command_error::Kind::InvalidPayload as i32
    );
    let r = try_invoke(&mut c, &sid, "read", "line1/temp")
        .await
        .unwrap();
    assert_eq!(r.payload, b"21.5");

    // A subscription: events arrive while the client only listens.
    try_invoke(&mut c, &sid, "subscribe", "line1/temp 30")
        .await
        .unwrap();
    let mut stream = c
        .stream_events(pb::StreamEventsRequest {
            session_id: sid.clone(),
            resume_after_sequence: None,
        })
        .await
        .unwrap()
        .into_inner();
    for expected in 1..=5u64 {
        let event = tokio::time::timeout(WORKER_PATIENCE, stream.message())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream stays open");
        assert_eq!(event.sequence, expected);
        assert_eq!(event.name, "data-change");
        let v: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        assert_eq!(v["tag"], "line1/temp");
        assert_eq!(v["value"], "21.5");
        assert_eq!(v["quality"], "good");
        assert!(v["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    }
    let mut c2 = s.gw.client().await;
    try_invoke(&mut c2, &sid, "unsubscribe", "line1/temp")
        .await
        .unwrap();

    let closed = close(&mut c, &sid).await;
    assert_eq!(closed.final_state, pb::SessionState::Closed as i32);
    assert!(!closed.already_closed);
    assert!(close(&mut c, &sid).await.already_closed);
    eventually(
        "the worker exits on close",
        WORKER_PATIENCE,
        holds(|| !alive(pid)),
    )
    .await;
    let gauge =
        s.gw.metric("gatehouse_open_sessions", &[("backend", "sim")])
            .await;
    assert_eq!(gauge, 0.0);
}

#[tokio::test]
async fn crash_is_aborted_and_faulted() {
    let s = setup().await;
    let mut c = s.gw.client().await;
    let info = try_open_on(&mut c, "sim", None).await.unwrap();
    let err = try_invoke(&mut c, &info.session_id, "crash", "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    let after = get(&mut c, &info.session_id).await;
    assert_eq!(after.state, pb::SessionState::Faulted as i32);
    assert_eq!(after.final_fault, "worker-exited");
    assert!(
        after.final_fault_detail.contains("70"),
        "{}",
        after.final_fault_detail
    );
    // Not READY any more.
    let err = try_invoke(&mut c, &info.session_id, "read", "x")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    eventually(
        "the crashed worker is reaped",
        WORKER_PATIENCE,
        holds(|| {
            !alive(info.worker_pid)
                && children(s.gw.pid())
                    .iter()
                    .all(|(p, state)| *p != info.worker_pid && state != "Z")
        }),
    )
    .await;
}

#[tokio::test]
async fn hang_faults_within_the_heartbeat_grace() {
    let s = setup().await;
    let mut c = s.gw.client().await;
    // The command timeout (30s) is far away: only the heartbeat can fault it.
    let info = try_open_on(&mut c, "sim", None).await.unwrap();
    let began = Instant::now();
    let err = try_invoke(&mut c, &info.session_id, "hang", "")
        .await
        .unwrap_err();
    let took = began.elapsed();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    // Grace 600ms, checked every 100ms heartbeat.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let after = get(&mut c, &info.session_id).await;
    assert_eq!(after.state, pb::SessionState::Faulted as i32);
    assert_eq!(after.final_fault, "heartbeat-timeout");
    eventually(
        "the hung worker is killed",
        WORKER_PATIENCE,
        holds(|| !alive(info.worker_pid)),
    )
    .await;
    let killed =
        s.gw.metric(
            "gatehouse_workers_killed_total",
            &[("backend", "sim"), ("reason", "fault")],
        )
        .await;
    assert_eq!(killed, 1.0);
}

#[tokio::test]
async fn a_command_past_its_timeout_is_deadline_exceeded() {
    let s = setup().await;
    let mut c = s.gw.client().await;
    let info = try_open_on(&mut c, "sim", Some(Duration::from_millis(300)))
        .await
        .unwrap();
    let err = try_invoke(&mut c, &info.session_id, "slow", "10000")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let after = get(&mut c, &info.session_id).await;
    assert_eq!(after.state, pb::SessionState::Faulted as i32);
    assert_eq!(after.final_fault, "deadline");
    eventually(
        "the slow worker is killed",
        WORKER_PATIENCE,
        holds(|| !alive(info.worker_pid)),
    )
    .await;
    // A slow command inside its timeout is fine, heartbeats and all.
    let info = try_open_on(&mut c, "sim", None).await.unwrap();
    let r = try_invoke(&mut c, &info.session_id, "slow", "800")
        .await
        .unwrap();
    assert_eq!(r.payload, b"slept 800");
}

#[tokio::test]
async fn misbehaving_workers_are_rejected_and_killed() {
    let s = setup().await;
    let mut c = s.gw.client().await;
    for (mode, code) in [
        ("bad-nonce", "bad-nonce"),
        ("bad-version", "bad-version"),
        ("oversize", "protocol-violation"),
        ("garbage", "protocol-violation"),
    ] {
        let before: HashSet<u32> = pids_in(&s.pids).into_iter().collect();
        let began = Instant::now();
        let err = try_open_on(&mut c, &format!("fake-{mode}"), None)
            .await
            .unwrap_err();
        let took = began.elapsed();
        assert_eq!(err.code(), Code::Unavailable, "{mode}: {err:?}");
        assert!(err.message().contains(code), "{mode}: {}", err.message());
        // Rejected at once, not by the 5s startup timeout.
        assert!(took < Duration::from_secs(4), "{mode} took {took:?}");
        let new: Vec<u32> = pids_in(&s.pids)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        assert_eq!(new.len(), 1, "{mode}: one worker was started");
        eventually(
            &format!("the {mode} worker is killed"),
            WORKER_PATIENCE,
            holds(|| !alive(new[0])),
        )
        .await;
    }
    assert_eq!(
        s.gw.metric("gatehouse_open_sessions", &[("backend", "fake-garbage")])
            .await,
        0.0
    );
    // What workers write to stderr lands in the gateway's log.
    eventually(
        "worker output is logged",
        WORKER_PATIENCE,
        holds(|| s.gw.stderr().contains("fake worker garbage starting")),
    )
    .await;
    let refused = open_refused(&mut c).await;
    assert_eq!(refused, Code::FailedPrecondition);
}

async fn open_refused(c: &mut Client) -> Code {
    c.open_session(pb::OpenSessionRequest {
        backend: "sim".into(),
        config: [("fail_open".to_string(), "yes".to_string())].into(),
        ..Default::default()
    })
    .await
    .unwrap_err()
    .code()
}

#[tokio::test]
async fn warm_pool_sessions_use_pre_started_workers() {
    let s = setup().await;
    let state = s.dir.path().join("state");
    let gw_pid = s.gw.pid();
    eventually(
        "the warm pool fills",
        WORKER_PATIENCE,
        holds(|| recorded_workers(&state, gw_pid).len() >= 2),
    )
    .await;
    let pooled = recorded_workers(&state, gw_pid);
    let mut c = s.gw.client().await;
    let info = try_open_on(&mut c, "sim-warm", None).await.unwrap();
    assert!(
        pooled.contains(&info.worker_pid),
        "the session got a pre-started worker"
    );
    let r = try_invoke(&mut c, &info.session_id, "info", "")
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&r.payload).starts_with(&format!("session={} ", info.session_id)),
        "a pooled worker learns its session id from open"
    );
    eventually(
        "the pool refills",
        WORKER_PATIENCE,
        holds(|| recorded_workers(&state, gw_pid).len() >= 3),
    )
    .await;
    close(&mut c, &info.session_id).await;

    // An idle worker that dies is replaced, and never handed to a session.
    eventually(
        "the session's worker is gone",
        WORKER_PATIENCE,
        holds(|| !alive(info.worker_pid) && recorded_workers(&state, gw_pid).len() == 2),
    )
    .await;
    let idle = recorded_workers(&state, gw_pid);
    let victim = *idle.iter().next().unwrap();
    // SAFETY: kill has no memory-safety preconditions; the pid is a worker
    // of the gateway this test started.
    unsafe {
        libc::kill(victim as i32, libc::SIGKILL);
    }
    eventually(
        "the dead idle worker is replaced",
        WORKER_PATIENCE,
        holds(|| {
            let now = recorded_workers(&state, gw_pid);
            now.len() == 2 && !now.contains(&victim)
        }),
    )
    .await;
    let info = try_open_on(&mut c, "sim-warm", None).await.unwrap();
    assert_ne!(info.worker_pid, victim);
    assert_eq!(
        try_invoke(&mut c, &info.session_id, "read", "sim.ramp")
            .await
            .unwrap()
            .payload,
        b"1"
    );
}

#[tokio::test]
async fn sigkill_of_the_gateway_leaves_no_workers() {
    let mut s = setup().await;
    let state = s.dir.path().join("state");
    let mut c = s.gw.client().await;
    let mut pids = Vec::new();
    for _ in 0..3 {
        let info = try_open_on(&mut c, "sim", None).await.unwrap();
        try_invoke(&mut c, &info.session_id, "subscribe", "sim.ramp 20")
            .await
            .unwrap();
        pids.push(info.worker_pid);
    }
    let gw_pid = s.gw.pid();
    eventually(
        "the warm pool fills",
        WORKER_PATIENCE,
        holds(|| recorded_workers(&state, gw_pid).len() >= 5),
    )
    .await;
    let all = recorded_workers(&state, gw_pid);
    assert!(pids.iter().all(|p| all.contains(p)));
    assert!(all.iter().all(|p| alive(*p)));
    s.gw.kill();
    eventually(
        "every worker dies with the gateway",
        WORKER_PATIENCE,
        holds(|| all.iter().all(|p| !alive(*p))),
    )
    .await;
}

#[tokio::test]
async fn leftovers_of_a_previous_run_are_killed_at_start_up() {
    let mut s = setup().await;
    let mut c = s.gw.client().await;
    let info = try_open_on(&mut c, "fake-survivor", None).await.unwrap();
    let leftover = info.worker_pid;
    let r = try_invoke(&mut c, &info.session_id, "anything", "")
        .await
        .unwrap();
    assert_eq!(r.payload, b"ok");
    s.gw.kill();
    // This worker cleared its parent-death signal and ignores the closed
    // socket: it outlives the gateway, as a badly behaved program can.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(leftover), "the survivor should have survived");

    // The next gateway on the same state directory removes it before it
    // accepts sessions: by the time it prints its listening line.
    let next = start(s.dir.path(), &s.pids).start().await;
    eventually(
        "the leftover is killed at start-up",
        Duration::from_secs(2),
        holds(|| !alive(leftover)),
    )
    .await;
    assert!(
        next.stderr().contains("leftover"),
        "the gateway logs what it killed"
    );
    let state = s.dir.path().join("state");
    assert!(!state.join(format!("gw-{}", s.gw.pid())).exists());
}

#[tokio::test]
async fn two_hundred_sessions_leave_no_zombies_descriptors_or_gauges() {
    let s = setup().await;
    let gw_pid = s.gw.pid();
    let mut c = s.gw.client().await;
    // Warm up: the first session sets up lazily created things (the
    // spawner thread, metric series, the client connection).
    let first = try_open_on(&mut c, "sim", None).await.unwrap();
    close(&mut c, &first.session_id).await;
    eventually(
        "the first worker is reaped",
        WORKER_PATIENCE,
        holds(|| !alive(first.worker_pid)),
    )
    .await;
    let pool_workers = || {
        children(gw_pid)
            .into_iter()
            .filter(|(_, state)| state != "Z")
            .count()
    };
    eventually(
        "the warm pool fills",
        WORKER_PATIENCE,
        holds(|| pool_workers() == 2),
    )
    .await;
    let fds_before = open_fds(gw_pid);

    let began = Instant::now();
    let mut handles = Vec::new();
    for lane in 0..4 {
        let mut c = s.gw.client().await;
        let backend = if lane == 0 { "sim-warm" } else { "sim" };
        handles.push(tokio::spawn(async move {
            for _ in 0..50 {
                let info = try_open_on(&mut c, backend, None).await.unwrap();
                let r = try_invoke(&mut c, &info.session_id, "write", "t 1")
                    .await
                    .unwrap();
                assert_eq!(r.payload, b"1");
                close(&mut c, &info.session_id).await;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    eprintln!(
        "200 native sessions opened, used and closed in {:?}",
        began.elapsed()
    );

    eventually(
        "no zombies and only the warm pool left",
        WORKER_PATIENCE,
        holds(|| {
            let kids = children(gw_pid);
            kids.iter().all(|(_, state)| state != "Z") && kids.len() == 2
        }),
    )
    .await;
    eventually(
        "no leaked descriptors",
        WORKER_PATIENCE,
        holds(|| open_fds(gw_pid) <= fds_before + 2),
    )
    .await;
    for backend in ["sim", "sim-warm"] {
        let gauge =
            s.gw.metric("gatehouse_open_sessions", &[("backend", backend)])
                .await;
        assert_eq!(gauge, 0.0, "{backend}");
    }
    let opened =
        s.gw.metric("gatehouse_sessions_opened_total", &[("backend", "sim")])
            .await;
    assert_eq!(opened, 151.0);
}

#[tokio::test]
async fn sigterm_closes_sessions_and_kills_a_stuck_worker() {
    let mut s = setup().await;
    let state = s.dir.path().join("state");
    let gw_pid = s.gw.pid();
    let mut c = s.gw.client().await;
    let idle = try_open_on(&mut c, "sim", None).await.unwrap();
    try_invoke(&mut c, &idle.session_id, "subscribe", "sim.ramp 20")
        .await
        .unwrap();
    let busy = try_open_on(&mut c, "sim", None).await.unwrap();
    let mut c2 = s.gw.client().await;
    let busy_id = busy.session_id.clone();
    // A command that will not finish before the shutdown timeout (2s).
    let stuck = tokio::spawn(async move { try_invoke(&mut c2, &busy_id, "slow", "60000").await });
    eventually(
        "the slow command reaches the worker",
        WORKER_PATIENCE,
        holds(|| {
            s.gw.stderr()
                .lines()
                .any(|l| l.contains("command sent") && l.contains("slow"))
        }),
    )
    .await;
    let workers = recorded_workers(&state, gw_pid);
    assert!(workers.contains(&idle.worker_pid) && workers.contains(&busy.worker_pid));

    let began = Instant::now();
    s.gw.sigterm();
    let status = s.gw.wait_exit(WORKER_PATIENCE).await;
    let took = began.elapsed();
    assert!(status.success(), "{status:?}\n{}", s.gw.stderr());
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    assert!(stuck.await.unwrap().is_err());
    eventually(
        "every worker is gone after shutdown",
        WORKER_PATIENCE,
        holds(|| workers.iter().all(|p| !alive(*p))),
    )
    .await;
    assert!(
        !state.join(format!("gw-{gw_pid}")).exists(),
        "a clean exit removes its state directory"
    );
    let log = s.gw.stderr();
    assert!(log.contains("gateway-shutdown"), "{log}");
}
