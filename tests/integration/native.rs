//! Native workers through the real binary: sim-device sessions, faults,
//! misbehaving workers, and the no-orphans guarantees.
//!
//! The small harness at the top is private to this module (the shared one is
//! written elsewhere; the lead unifies them on merge).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use gatehouse::proto::v1 as pb;
use pb::gateway_client::GatewayClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

// ---- harness -----------------------------------------------------------------

const GATEHOUSE: &str = env!("CARGO_BIN_EXE_gatehouse");
const FAKE_WORKER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/integration/fake_worker.py"
);

/// How long anything in these tests may take before it counts as a hang.
const PATIENCE: Duration = Duration::from_secs(20);

struct Gateway {
    child: Child,
    grpc: String,
    metrics: String,
    stderr: PathBuf,
}

impl Gateway {
    /// Starts `gatehouse serve` with `config` (written into `dir`) on
    /// ephemeral ports and waits for its "listening" line.
    fn start(dir: &Path, config: &str) -> Self {
        let path = dir.join(format!("gatehouse-{}.toml", unique()));
        std::fs::write(&path, config).unwrap();
        let stderr = dir.join(format!("gatehouse-{}.log", unique()));
        let mut child = Process::new(GATEHOUSE)
            .args(["serve", "--config"])
            .arg(&path)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info,gatehouse=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(PATIENCE).unwrap_or_default();
        let addr = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_string)
        };
        let (Some(grpc), Some(metrics)) = (addr("grpc="), addr("metrics=")) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the gateway did not start: {line:?}\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        Self {
            child,
            grpc,
            metrics,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn client(&self) -> GatewayClient<Channel> {
        GatewayClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    async fn metrics(&self) -> String {
        let mut s = tokio::net::TcpStream::connect(&self.metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// The value of one metric line, e.g. `gatehouse_open_sessions{backend="sim"}`.
    async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// SIGKILL: no drain, no cleanup.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A live process (not a zombie) with this pid.
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Polls `cond` until it holds, or fails the test after `within`.
async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Children of `parent`, zombies included.
fn children(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(i) = stat.rfind(')') else { continue };
        let fields: Vec<&str> = stat[i + 1..].split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            out.push((pid, fields[0].to_string()));
        }
    }
    out
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The worker pids a gateway has recorded in its state directory.
fn recorded_workers(state_dir: &Path, gateway: u32) -> HashSet<u32> {
    std::fs::read_dir(state_dir.join(format!("gw-{gateway}")))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("worker-")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

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
         [[backends]]\nname = \"sim\"\nkind = \"native\"\ncommand = [{GATEHOUSE:?}, \"worker\", \"sim-device\"]\n{native}\n\
         [[backends]]\nname = \"sim-warm\"\nkind = \"native\"\ncommand = [{GATEHOUSE:?}, \"worker\", \"sim-device\"]\n{native}warm_pool = 2\n\n"
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

struct Setup {
    dir: tempfile::TempDir,
    pids: PathBuf,
    gw: Gateway,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    let gw = Gateway::start(dir.path(), &config(dir.path(), &pids));
    Setup { dir, pids, gw }
}

async fn open(
    c: &mut GatewayClient<Channel>,
    backend: &str,
) -> Result<pb::SessionInfo, tonic::Status> {
    open_with(c, backend, None).await
}

async fn open_with(
    c: &mut GatewayClient<Channel>,
    backend: &str,
    command_timeout: Option<Duration>,
) -> Result<pb::SessionInfo, tonic::Status> {
    let r = c
        .open_session(pb::OpenSessionRequest {
            backend: backend.into(),
            command_timeout: command_timeout.map(gatehouse::api_duration),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().session.expect("a session"))
}

async fn invoke(
    c: &mut GatewayClient<Channel>,
    sid: &str,
    name: &str,
    payload: &str,
) -> Result<pb::InvokeResponse, tonic::Status> {
    c.invoke(pb::InvokeRequest {
        session_id: sid.into(),
        command: Some(pb::Command {
            name: name.into(),
            payload: payload.as_bytes().to_vec(),
        }),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn get(c: &mut GatewayClient<Channel>, sid: &str) -> pb::SessionInfo {
    c.get_session(pb::GetSessionRequest {
        session_id: sid.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn close(c: &mut GatewayClient<Channel>, sid: &str) -> pb::CloseSessionResponse {
    c.close_session(pb::CloseSessionRequest {
        session_id: sid.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

// ---- tests -------------------------------------------------------------------

#[tokio::test]
async fn sim_device_session_lifecycle() {
    let s = setup();
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

    let info = open(&mut c, "sim").await.unwrap();
    assert_eq!(info.state, pb::SessionState::Ready as i32);
    assert_eq!(info.backend_kind, pb::BackendKind::Native as i32);
    let pid = info.worker_pid;
    assert!(pid > 0 && alive(pid), "worker pid {pid}");
    let sid = info.session_id;

    let r = invoke(&mut c, &sid, "write", "line1/temp 21.5")
        .await
        .unwrap();
    assert_eq!(r.payload, b"21.5");
    let r = invoke(&mut c, &sid, "read", "line1/temp").await.unwrap();
    assert_eq!(r.payload, b"21.5");
    assert!(r.error.is_none());
    // The worker's own errors come back inside an OK response.
    let r = invoke(&mut c, &sid, "read", "nope").await.unwrap();
    let e = r.error.expect("a command error");
    assert_eq!(e.kind, pb::command_error::Kind::Failed as i32);
    let r = invoke(&mut c, &sid, "frobnicate", "").await.unwrap();
    assert_eq!(
        r.error.unwrap().kind,
        pb::command_error::Kind::UnknownCommand as i32
    );
    let r = invoke(&mut c, &sid, "info", "").await.unwrap();
    assert_eq!(
        String::from_utf8(r.payload).unwrap(),
        format!("session={sid} pid={pid}")
    );

    // A command the worker's frame cap cannot carry is the client's error;
    // the session stays usable.
    let big = "x".repeat(100 << 10);
    let r = invoke(&mut c, &sid, "write", &format!("big {big}"))
        .await
        .unwrap();
    assert_eq!(
        r.error.expect("a command error").kind,
        pb::command_error::Kind::InvalidPayload as i32
    );
    let r = invoke(&mut c, &sid, "read", "line1/temp").await.unwrap();
    assert_eq!(r.payload, b"21.5");

    // A subscription: events arrive while the client only listens.
    invoke(&mut c, &sid, "subscribe", "line1/temp 30")
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
        let event = tokio::time::timeout(PATIENCE, stream.message())
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
    invoke(&mut c2, &sid, "unsubscribe", "line1/temp")
        .await
        .unwrap();

    let closed = close(&mut c, &sid).await;
    assert_eq!(closed.final_state, pb::SessionState::Closed as i32);
    assert!(!closed.already_closed);
    assert!(close(&mut c, &sid).await.already_closed);
    eventually("the worker exits on close", PATIENCE, || !alive(pid)).await;
    let gauge =
        s.gw.metric("gatehouse_open_sessions{backend=\"sim\"}")
            .await;
    assert_eq!(gauge, 0.0);
}

#[tokio::test]
async fn crash_is_aborted_and_faulted() {
    let s = setup();
    let mut c = s.gw.client().await;
    let info = open(&mut c, "sim").await.unwrap();
    let err = invoke(&mut c, &info.session_id, "crash", "")
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
    let err = invoke(&mut c, &info.session_id, "read", "x")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    eventually("the crashed worker is reaped", PATIENCE, || {
        !alive(info.worker_pid)
            && children(s.gw.pid())
                .iter()
                .all(|(p, state)| *p != info.worker_pid && state != "Z")
    })
    .await;
}

#[tokio::test]
async fn hang_faults_within_the_heartbeat_grace() {
    let s = setup();
    let mut c = s.gw.client().await;
    // The command timeout (30s) is far away: only the heartbeat can fault it.
    let info = open(&mut c, "sim").await.unwrap();
    let began = Instant::now();
    let err = invoke(&mut c, &info.session_id, "hang", "")
        .await
        .unwrap_err();
    let took = began.elapsed();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    // Grace 600ms, checked every 100ms heartbeat.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let after = get(&mut c, &info.session_id).await;
    assert_eq!(after.state, pb::SessionState::Faulted as i32);
    assert_eq!(after.final_fault, "heartbeat-timeout");
    eventually("the hung worker is killed", PATIENCE, || {
        !alive(info.worker_pid)
    })
    .await;
    let killed =
        s.gw.metric("gatehouse_workers_killed_total{backend=\"sim\",reason=\"fault\"}")
            .await;
    assert_eq!(killed, 1.0);
}

#[tokio::test]
async fn a_command_past_its_timeout_is_deadline_exceeded() {
    let s = setup();
    let mut c = s.gw.client().await;
    let info = open_with(&mut c, "sim", Some(Duration::from_millis(300)))
        .await
        .unwrap();
    let err = invoke(&mut c, &info.session_id, "slow", "10000")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let after = get(&mut c, &info.session_id).await;
    assert_eq!(after.state, pb::SessionState::Faulted as i32);
    assert_eq!(after.final_fault, "deadline");
    eventually("the slow worker is killed", PATIENCE, || {
        !alive(info.worker_pid)
    })
    .await;
    // A slow command inside its timeout is fine, heartbeats and all.
    let info = open(&mut c, "sim").await.unwrap();
    let r = invoke(&mut c, &info.session_id, "slow", "800")
        .await
        .unwrap();
    assert_eq!(r.payload, b"slept 800");
}

#[tokio::test]
async fn misbehaving_workers_are_rejected_and_killed() {
    let s = setup();
    let mut c = s.gw.client().await;
    for (mode, code) in [
        ("bad-nonce", "bad-nonce"),
        ("bad-version", "bad-version"),
        ("oversize", "protocol-violation"),
        ("garbage", "protocol-violation"),
    ] {
        let before: HashSet<u32> = pids_in(&s.pids).into_iter().collect();
        let began = Instant::now();
        let err = open(&mut c, &format!("fake-{mode}")).await.unwrap_err();
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
        eventually(&format!("the {mode} worker is killed"), PATIENCE, || {
            !alive(new[0])
        })
        .await;
    }
    assert_eq!(
        s.gw.metric("gatehouse_open_sessions{backend=\"fake-garbage\"}")
            .await,
        0.0
    );
    // What workers write to stderr lands in the gateway's log.
    eventually("worker output is logged", PATIENCE, || {
        s.gw.log().contains("fake worker garbage starting")
    })
    .await;
    let refused = open_refused(&mut c).await;
    assert_eq!(refused, Code::FailedPrecondition);
}

async fn open_refused(c: &mut GatewayClient<Channel>) -> Code {
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
    let s = setup();
    let state = s.dir.path().join("state");
    let gw_pid = s.gw.pid();
    eventually("the warm pool fills", PATIENCE, || {
        recorded_workers(&state, gw_pid).len() >= 2
    })
    .await;
    let pooled = recorded_workers(&state, gw_pid);
    let mut c = s.gw.client().await;
    let info = open(&mut c, "sim-warm").await.unwrap();
    assert!(
        pooled.contains(&info.worker_pid),
        "the session got a pre-started worker"
    );
    let r = invoke(&mut c, &info.session_id, "info", "").await.unwrap();
    assert!(
        String::from_utf8_lossy(&r.payload).starts_with(&format!("session={} ", info.session_id)),
        "a pooled worker learns its session id from open"
    );
    eventually("the pool refills", PATIENCE, || {
        recorded_workers(&state, gw_pid).len() >= 3
    })
    .await;
    close(&mut c, &info.session_id).await;

    // An idle worker that dies is replaced, and never handed to a session.
    eventually("the session's worker is gone", PATIENCE, || {
        !alive(info.worker_pid) && recorded_workers(&state, gw_pid).len() == 2
    })
    .await;
    let idle = recorded_workers(&state, gw_pid);
    let victim = *idle.iter().next().unwrap();
    // SAFETY: kill has no memory-safety preconditions; the pid is a worker
    // of the gateway this test started.
    unsafe {
        libc::kill(victim as i32, libc::SIGKILL);
    }
    eventually("the dead idle worker is replaced", PATIENCE, || {
        let now = recorded_workers(&state, gw_pid);
        now.len() == 2 && !now.contains(&victim)
    })
    .await;
    let info = open(&mut c, "sim-warm").await.unwrap();
    assert_ne!(info.worker_pid, victim);
    assert_eq!(
        invoke(&mut c, &info.session_id, "read", "sim.ramp")
            .await
            .unwrap()
            .payload,
        b"1"
    );
}

#[tokio::test]
async fn sigkill_of_the_gateway_leaves_no_workers() {
    let mut s = setup();
    let state = s.dir.path().join("state");
    let mut c = s.gw.client().await;
    let mut pids = Vec::new();
    for _ in 0..3 {
        let info = open(&mut c, "sim").await.unwrap();
        invoke(&mut c, &info.session_id, "subscribe", "sim.ramp 20")
            .await
            .unwrap();
        pids.push(info.worker_pid);
    }
    let gw_pid = s.gw.pid();
    eventually("the warm pool fills", PATIENCE, || {
        recorded_workers(&state, gw_pid).len() >= 5
    })
    .await;
    let all = recorded_workers(&state, gw_pid);
    assert!(pids.iter().all(|p| all.contains(p)));
    assert!(all.iter().all(|p| alive(*p)));
    s.gw.kill9();
    eventually("every worker dies with the gateway", PATIENCE, || {
        all.iter().all(|p| !alive(*p))
    })
    .await;
}

#[tokio::test]
async fn leftovers_of_a_previous_run_are_killed_at_start_up() {
    let mut s = setup();
    let mut c = s.gw.client().await;
    let info = open(&mut c, "fake-survivor").await.unwrap();
    let leftover = info.worker_pid;
    let r = invoke(&mut c, &info.session_id, "anything", "")
        .await
        .unwrap();
    assert_eq!(r.payload, b"ok");
    s.gw.kill9();
    // This worker cleared its parent-death signal and ignores the closed
    // socket: it outlives the gateway, as a badly behaved program can.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(leftover), "the survivor should have survived");

    // The next gateway on the same state directory removes it before it
    // accepts sessions: by the time it prints its listening line.
    let next = Gateway::start(s.dir.path(), &config(s.dir.path(), &s.pids));
    eventually(
        "the leftover is killed at start-up",
        Duration::from_secs(2),
        || !alive(leftover),
    )
    .await;
    assert!(
        next.log().contains("leftover"),
        "the gateway logs what it killed"
    );
    let state = s.dir.path().join("state");
    assert!(!state.join(format!("gw-{}", s.gw.pid())).exists());
}

#[tokio::test]
async fn two_hundred_sessions_leave_no_zombies_descriptors_or_gauges() {
    let s = setup();
    let gw_pid = s.gw.pid();
    let mut c = s.gw.client().await;
    // Warm up: the first session sets up lazily created things (the
    // spawner thread, metric series, the client connection).
    let first = open(&mut c, "sim").await.unwrap();
    close(&mut c, &first.session_id).await;
    eventually("the first worker is reaped", PATIENCE, || {
        !alive(first.worker_pid)
    })
    .await;
    let pool_workers = || {
        children(gw_pid)
            .into_iter()
            .filter(|(_, state)| state != "Z")
            .count()
    };
    eventually("the warm pool fills", PATIENCE, || pool_workers() == 2).await;
    let fds_before = open_fds(gw_pid);

    let began = Instant::now();
    let mut handles = Vec::new();
    for lane in 0..4 {
        let mut c = s.gw.client().await;
        let backend = if lane == 0 { "sim-warm" } else { "sim" };
        handles.push(tokio::spawn(async move {
            for _ in 0..50 {
                let info = open(&mut c, backend).await.unwrap();
                let r = invoke(&mut c, &info.session_id, "write", "t 1")
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

    eventually("no zombies and only the warm pool left", PATIENCE, || {
        let kids = children(gw_pid);
        kids.iter().all(|(_, state)| state != "Z") && kids.len() == 2
    })
    .await;
    eventually("no leaked descriptors", PATIENCE, || {
        open_fds(gw_pid) <= fds_before + 2
    })
    .await;
    for backend in ["sim", "sim-warm"] {
        let gauge =
            s.gw.metric(&format!("gatehouse_open_sessions{{backend=\"{backend}\"}}"))
                .await;
        assert_eq!(gauge, 0.0, "{backend}");
    }
    let opened =
        s.gw.metric("gatehouse_sessions_opened_total{backend=\"sim\"}")
            .await;
    assert_eq!(opened, 151.0);
}

#[tokio::test]
async fn sigterm_closes_sessions_and_kills_a_stuck_worker() {
    let mut s = setup();
    let state = s.dir.path().join("state");
    let gw_pid = s.gw.pid();
    let mut c = s.gw.client().await;
    let idle = open(&mut c, "sim").await.unwrap();
    invoke(&mut c, &idle.session_id, "subscribe", "sim.ramp 20")
        .await
        .unwrap();
    let busy = open(&mut c, "sim").await.unwrap();
    let mut c2 = s.gw.client().await;
    let busy_id = busy.session_id.clone();
    // A command that will not finish before the shutdown timeout (2s).
    let stuck = tokio::spawn(async move { invoke(&mut c2, &busy_id, "slow", "60000").await });
    eventually("the slow command reaches the worker", PATIENCE, || {
        s.gw.log()
            .lines()
            .any(|l| l.contains("command sent") && l.contains("slow"))
    })
    .await;
    let workers = recorded_workers(&state, gw_pid);
    assert!(workers.contains(&idle.worker_pid) && workers.contains(&busy.worker_pid));

    let began = Instant::now();
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    unsafe {
        libc::kill(gw_pid as i32, libc::SIGTERM);
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = s.gw.child.wait().unwrap();
        (status, s)
    });
    let (status, s) = tokio::time::timeout(PATIENCE, status)
        .await
        .expect("the gateway stops in time")
        .unwrap();
    let took = began.elapsed();
    assert!(status.success(), "{status:?}\n{}", s.gw.log());
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    assert!(stuck.await.unwrap().is_err());
    eventually("every worker is gone after shutdown", PATIENCE, || {
        workers.iter().all(|p| !alive(*p))
    })
    .await;
    assert!(
        !state.join(format!("gw-{gw_pid}")).exists(),
        "a clean exit removes its state directory"
    );
    let log = s.gw.log();
    assert!(log.contains("gateway-shutdown"), "{log}");
}
