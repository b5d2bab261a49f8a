//! Start-up failures against real processes: timeouts, early exits and
//! cancellation, each leaving nothing behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::*;
use crate::backend::{Fault, FaultReporter};
use crate::config::{Grants, NativeSpec, SessionPolicy};
use crate::events::{EventLimits, EventLog, NoObserver};

fn spec(command: &[&str], startup_timeout: Duration) -> BackendSpec {
    let mut native = NativeSpec::new(command.iter().map(|s| s.to_string()).collect());
    native.startup_timeout = startup_timeout;
    BackendSpec {
        name: "t".into(),
        kind: BackendKind::Native,
        runner: Runner::Native(native),
        description: String::new(),
        version: "0".into(),
        config: BTreeMap::new(),
        grants: Grants::default(),
        policy: SessionPolicy::default(),
        retire_after: None,
        rollout: None,
        recovery: Default::default(),
    }
}

fn request() -> StartRequest {
    let (tx, _rx) = mpsc::unbounded_channel();
    let id: Arc<str> = "s1".into();
    StartRequest {
        session_id: Arc::clone(&id),
        tenant: "t".into(),
        backend: "t".into(),
        config: BTreeMap::new(),
        events: Arc::new(EventLog::new(
            EventLimits {
                queue: 10,
                replay: 10,
                overflow: crate::config::OverflowPolicy::DropOldest,
                max_subscribers: 1,
            },
            Arc::new(NoObserver),
        )),
        policy: SessionPolicy::default(),
        open_timeout: Duration::from_secs(5),
        faults: FaultReporter::new(id, tx),
        memory: crate::memory_budget::MemoryAccount::unlimited(),
        cpu: crate::backend::cpu::CpuAccount::unlimited(),
        restore: None,
    }
}

async fn until_no_workers(rt: &NativeRuntime) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while rt.live_workers() > 0 {
        assert!(Instant::now() < deadline, "a worker outlived its start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn failure(result: Result<Box<dyn Worker>, StartError>) -> Fault {
    match result {
        Err(StartError::Failed(f)) => f,
        Err(other) => panic!("expected Failed, got {other}"),
        Ok(_) => panic!("expected a failure"),
    }
}

#[tokio::test]
async fn a_silent_worker_times_out_and_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = NativeRuntime::new(dir.path()).unwrap();
    let backend = rt
        .load(&spec(&["sleep", "30"], Duration::from_millis(300)))
        .unwrap();
    let states = std::sync::Mutex::new(Vec::new());
    let began = Instant::now();
    let fault = failure(
        backend
            .start(request(), &|s| states.lock().unwrap().push(s))
            .await,
    );
    assert_eq!(fault.code.as_str(), "startup-timeout", "{fault}");
    assert!(began.elapsed() < Duration::from_secs(3));
    assert_eq!(
        *states.lock().unwrap(),
        [StartPhase::StartingWorker, StartPhase::WaitingForWorker]
    );
    until_no_workers(&rt).await;
}

#[tokio::test]
async fn a_worker_that_exits_before_its_hello_is_reported_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let rt = NativeRuntime::new(dir.path()).unwrap();
    let backend = rt
        .load(&spec(&["sh", "-c", "exit 3"], Duration::from_secs(10)))
        .unwrap();
    let fault = failure(backend.start(request(), &|_| {}).await);
    assert_eq!(fault.code.as_str(), "worker-exited", "{fault}");
    until_no_workers(&rt).await;

    let backend = rt
        .load(&spec(&["/no/such/program"], Duration::from_secs(10)))
        .unwrap();
    let fault = failure(backend.start(request(), &|_| {}).await);
    assert_eq!(fault.code.as_str(), "spawn-failed", "{fault}");
}

#[tokio::test]
async fn a_cancelled_start_kills_the_worker_without_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let rt = NativeRuntime::new(dir.path()).unwrap();
    let backend = rt
        .load(&spec(&["sleep", "30"], Duration::from_secs(30)))
        .unwrap();
    let start = backend.start(request(), &|_| {});
    // Cancel once the process is running.
    let cancelled = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::select! {
            _ = start => panic!("a silent worker cannot start"),
            _ = async {
                while rt.live_workers() == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            } => {}
        }
    })
    .await;
    assert!(cancelled.is_ok());
    until_no_workers(&rt).await;
}
