//! The registry tests' shared fixtures: a scriptable fake backend, a
//! registry over it with a hand-driven clock, and small helpers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::backend::{
    Backend, BackendInfo, CloseOutcome, Command, Fault, FaultReporter, Outcome, Progress,
    StartError, StartPhase, StartRequest, Worker,
};
use crate::clock::{Clock, ManualClock};
use crate::config::{BackendKind, SessionPolicy};
use crate::metrics::{BackendLabel, Metrics, TenantLabel};
use crate::registry::{
    BackendEntry, Caller, OpenRequest, RETRY_AFTER, Registry, RegistrySettings, Tenant,
};
/// What the fake backend does.
#[derive(Default)]
pub(super) struct Script {
    pub(super) fail_start: Mutex<Option<StartError>>,
    /// Close never finishes (a stuck worker).
    pub(super) hang_on_close: bool,
    /// The next start never finishes (until its future is dropped).
    pub(super) hang_on_start: Mutex<bool>,
    pub(super) fault_next_invoke: Mutex<Option<Fault>>,
    pub(super) started: AtomicUsize,
    pub(super) closed: AtomicUsize,
    pub(super) killed: AtomicUsize,
    pub(super) reporters: Mutex<Vec<FaultReporter>>,
}

pub(super) struct FakeBackend {
    pub(super) info: BackendInfo,
    pub(super) script: Arc<Script>,
}

pub(super) struct FakeWorker {
    pub(super) script: Arc<Script>,
}

#[async_trait]
impl Backend for FakeBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    async fn start(
        &self,
        request: StartRequest,
        progress: Progress<'_>,
    ) -> Result<Box<dyn Worker>, StartError> {
        progress(StartPhase::StartingWorker);
        if let Some(e) = self.script.fail_start.lock().unwrap().take() {
            return Err(e);
        }
        if std::mem::take(&mut *self.script.hang_on_start.lock().unwrap()) {
            std::future::pending::<()>().await;
        }
        progress(StartPhase::InitializingWorker);
        self.script.started.fetch_add(1, Ordering::SeqCst);
        self.script.reporters.lock().unwrap().push(request.faults);
        Ok(Box::new(FakeWorker {
            script: Arc::clone(&self.script),
        }))
    }
}

#[async_trait]
impl Worker for FakeWorker {
    async fn invoke(
        &self,
        commands: Vec<Command>,
        _timeout: Duration,
        _deadline: Option<Instant>,
    ) -> Result<Vec<Outcome>, Fault> {
        if let Some(f) = self.script.fault_next_invoke.lock().unwrap().take() {
            return Err(f);
        }
        Ok(commands
            .into_iter()
            .map(|c| Outcome::Reply(c.payload))
            .collect())
    }

    async fn close(&self, _grace: Duration) -> CloseOutcome {
        if self.script.hang_on_close {
            std::future::pending::<()>().await;
        }
        self.script.closed.fetch_add(1, Ordering::SeqCst);
        CloseOutcome::Graceful
    }

    fn kill(&self) {
        self.script.killed.fetch_add(1, Ordering::SeqCst);
    }

    fn pid(&self) -> Option<u32> {
        None
    }
}

pub(super) struct Fixture {
    pub(super) registry: Arc<Registry>,
    pub(super) clock: Arc<ManualClock>,
    pub(super) script: Arc<Script>,
    pub(super) metrics: Arc<Metrics>,
}

pub(super) fn policy() -> SessionPolicy {
    SessionPolicy {
        lease: Duration::from_secs(60),
        ..SessionPolicy::default()
    }
}

pub(super) fn fixture_with(max_sessions: usize, policy: SessionPolicy, script: Script) -> Fixture {
    let clock = Arc::new(ManualClock::new());
    let script = Arc::new(script);
    let metrics = Arc::new(Metrics::new());
    let mut backends = BTreeMap::new();
    backends.insert(
        "fake".to_string(),
        BackendEntry {
            backend: Arc::new(FakeBackend {
                info: BackendInfo {
                    name: "fake".into(),
                    kind: BackendKind::Wasm,
                    version: "1".into(),
                    digest: "sha256:0".into(),
                    description: String::new(),
                },
                script: Arc::clone(&script),
            }),
            policy,
            config: BTreeMap::new(),
            retire_after: None,
            recovery: Default::default(),
            rollout: None,
        },
    );
    let registry = Registry::new(
        backends,
        RegistrySettings {
            max_sessions,
            closed_session_retention: Duration::from_secs(30),
            retry_after: RETRY_AFTER,
            memory_budget: usize::MAX,
            node_id: None,
            ledger: None,
            guest_threads: None,
            phase: Default::default(),
        },
        Arc::clone(&clock) as Arc<dyn Clock>,
        Arc::clone(&metrics),
    );
    Fixture {
        registry,
        clock,
        script,
        metrics,
    }
}

pub(super) fn fixture() -> Fixture {
    fixture_with(4, policy(), Script::default())
}

pub(super) fn open_req() -> OpenRequest {
    OpenRequest {
        backend: "fake".into(),
        ..OpenRequest::default()
    }
}

pub(super) fn me() -> Caller {
    Caller::local()
}

pub(super) fn open_gauge(f: &Fixture) -> i64 {
    f.metrics
        .open_sessions
        .get_or_create(&BackendLabel {
            backend: "fake".into(),
        })
        .get()
}

pub(super) fn cmd() -> Vec<Command> {
    vec![Command {
        name: "x".into(),
        payload: b"p".to_vec(),
    }]
}

pub(super) fn tenant(
    name: &str,
    max_sessions: Option<usize>,
    backends: Option<&[&str]>,
) -> Arc<Tenant> {
    Tenant::from_spec(&crate::config::TenantSpec {
        name: name.into(),
        max_sessions,
        max_memory: None,
        backends: backends.map(|b| b.iter().map(|s| s.to_string()).collect()),
        limits: crate::config::LimitOverrides::default(),
        keys: Vec::new(),
        certs: Vec::new(),
        rates: Default::default(),
        cpu: Default::default(),
    })
}

pub(super) fn tenant_gauge(f: &Fixture, tenant: &str) -> i64 {
    f.metrics
        .tenant_open_sessions
        .get_or_create(&TenantLabel {
            tenant: tenant.into(),
        })
        .get()
}
