//! Registry behaviour with a fake backend and a hand-driven clock: leases,
//! timeouts, the cap, rollback and close, without sleeping.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::backend::{BackendInfo, Progress, Worker};
use crate::clock::ManualClock;
use crate::config::{BackendKind, SessionPolicy};

/// What the fake backend does.
#[derive(Default)]
struct Script {
    fail_start: Mutex<Option<StartError>>,
    /// Close never finishes (a stuck worker).
    hang_on_close: bool,
    /// The next start never finishes (until its future is dropped).
    hang_on_start: Mutex<bool>,
    fault_next_invoke: Mutex<Option<Fault>>,
    started: AtomicUsize,
    closed: AtomicUsize,
    killed: AtomicUsize,
    reporters: Mutex<Vec<FaultReporter>>,
}

struct FakeBackend {
    info: BackendInfo,
    script: Arc<Script>,
}

struct FakeWorker {
    script: Arc<Script>,
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

struct Fixture {
    registry: Arc<Registry>,
    clock: Arc<ManualClock>,
    script: Arc<Script>,
    metrics: Arc<Metrics>,
}

fn policy() -> SessionPolicy {
    SessionPolicy {
        lease: Duration::from_secs(60),
        ..SessionPolicy::default()
    }
}

fn fixture_with(max_sessions: usize, policy: SessionPolicy, script: Script) -> Fixture {
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
        },
    );
    let registry = Registry::new(
        backends,
        RegistrySettings {
            max_sessions,
            closed_session_retention: Duration::from_secs(30),
            retry_after: Duration::from_secs(1),
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

fn fixture() -> Fixture {
    fixture_with(4, policy(), Script::default())
}

fn open_req() -> OpenRequest {
    OpenRequest {
        backend: "fake".into(),
        ..OpenRequest::default()
    }
}

fn me() -> Caller {
    Caller::local()
}

fn open_gauge(f: &Fixture) -> i64 {
    f.metrics
        .open_sessions
        .get_or_create(&BackendLabel {
            backend: "fake".into(),
        })
        .get()
}

fn cmd() -> Vec<Command> {
    vec![Command {
        name: "x".into(),
        payload: b"p".to_vec(),
    }]
}

#[tokio::test]
async fn open_reaches_ready_and_holds_a_slot() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    assert_eq!(s.state(), SessionState::Ready);
    assert_eq!(s.tenant, "default");
    assert_eq!(s.id.len(), 32, "128 bits as hex");
    assert_eq!(f.registry.open_count(), 1);
    assert_eq!(open_gauge(&f), 1);
}

#[tokio::test]
async fn session_ids_are_unique() {
    let f = fixture();
    let a = f.registry.open(&me(), open_req()).await.unwrap();
    let b = f.registry.open(&me(), open_req()).await.unwrap();
    assert_ne!(a.id, b.id);
}

#[tokio::test]
async fn the_cap_refuses_at_once_and_slots_come_back() {
    let f = fixture_with(2, policy(), Script::default());
    let a = f.registry.open(&me(), open_req()).await.unwrap();
    let _b = f.registry.open(&me(), open_req()).await.unwrap();
    match f.registry.open(&me(), open_req()).await {
        Err(GatewayError::SessionCapReached { cap: 2, .. }) => {}
        other => panic!("expected the cap, got {:?}", other.map(|s| s.id.clone())),
    }
    f.registry.close(&me(), &a.id).await.unwrap();
    f.registry.open(&me(), open_req()).await.unwrap();
}

#[tokio::test]
async fn an_open_abandoned_mid_start_rolls_back_everything() {
    let script = Script::default();
    *script.hang_on_start.lock().unwrap() = true;
    let f = fixture_with(1, policy(), script);
    let caller = me();
    {
        let open = f.registry.open(&caller, open_req());
        tokio::pin!(open);
        assert!(futures::poll!(open.as_mut()).is_pending(), "start hangs");
        assert_eq!(
            f.registry.open_count(),
            1,
            "the slot is held while starting"
        );
        assert_eq!(f.registry.list(&me()).len(), 1, "registered while starting");
    } // The caller goes away: the open's future is dropped mid-start.
    assert_rolled_back(&f, "open-abandoned").await;
}

/// Every step of an open undone: slot and gauge, registration, one fault
/// counted under `code`, and the (single) slot usable again.
async fn assert_rolled_back(f: &Fixture, code: &str) {
    assert_eq!(f.registry.open_count(), 0);
    assert_eq!(open_gauge(f), 0);
    assert!(f.registry.list(&me()).is_empty(), "deregistered");
    let faults = f
        .metrics
        .faults
        .get_or_create(&CodeLabel {
            backend: "fake".into(),
            code: code.into(),
        })
        .get();
    assert_eq!(faults, 1);
    f.registry.open(&me(), open_req()).await.unwrap();
}

#[tokio::test]
async fn a_failed_start_rolls_back_everything() {
    let script = Script::default();
    *script.fail_start.lock().unwrap() = Some(StartError::Failed(Fault::crashed(
        FaultCode::WorkerFault,
        "x",
    )));
    let f = fixture_with(1, policy(), script);
    let err = f.registry.open(&me(), open_req()).await.unwrap_err();
    assert!(matches!(
        err,
        GatewayError::StartFailed(StartError::Failed(_))
    ));
    assert_rolled_back(&f, "worker-fault").await;
}

#[tokio::test]
async fn unknown_backend_and_bad_values() {
    let f = fixture();
    let err = f
        .registry
        .open(
            &me(),
            OpenRequest {
                backend: "nope".into(),
                ..OpenRequest::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GatewayError::BackendNotFound(_)));
    let err = f
        .registry
        .open(
            &me(),
            OpenRequest {
                lease: Some(Duration::ZERO),
                ..open_req()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GatewayError::InvalidArgument(_)));
    assert_eq!(f.registry.open_count(), 0);
}

#[tokio::test]
async fn requested_values_are_capped_by_the_backend() {
    let f = fixture();
    let s = f
        .registry
        .open(
            &me(),
            OpenRequest {
                lease: Some(Duration::from_secs(1_000_000)),
                command_timeout: Some(Duration::from_secs(2)),
                ..open_req()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.times.lease, SessionPolicy::default().max_lease);
    assert_eq!(s.times.command_timeout, Duration::from_secs(2));
}

#[tokio::test]
async fn the_lease_expires_without_activity() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    f.clock.advance(Duration::from_secs(59));
    assert_eq!(f.registry.sweep().await, 0);
    assert_eq!(s.state(), SessionState::Ready);
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(f.registry.sweep().await, 1);
    assert_eq!(s.state(), SessionState::Closed);
    assert_eq!(s.snapshot().close_reason, Some(CloseReason::LeaseExpired));
    assert_eq!(f.registry.open_count(), 0);
    assert_eq!(
        f.script.closed.load(Ordering::SeqCst),
        1,
        "closed gracefully"
    );
}

#[tokio::test]
async fn every_call_renews_the_lease() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    for _ in 0..5 {
        f.clock.advance(Duration::from_secs(40));
        f.registry.invoke(&me(), &s.id, cmd(), None).await.unwrap();
        f.registry.sweep().await;
    }
    f.clock.advance(Duration::from_secs(40));
    f.registry.renew(&me(), &s.id).unwrap();
    f.clock.advance(Duration::from_secs(40));
    f.registry.get(&me(), &s.id).unwrap();
    f.clock.advance(Duration::from_secs(40));
    f.registry.sweep().await;
    assert_eq!(
        s.state(),
        SessionState::Ready,
        "renewed after 280s of a 60s lease"
    );
    f.clock.advance(Duration::from_secs(21));
    f.registry.sweep().await;
    assert_eq!(s.state(), SessionState::Closed);
}

#[tokio::test]
async fn an_attached_stream_keeps_the_lease_alive() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let sub = f.registry.subscribe(&me(), &s.id, None).await.unwrap();
    for _ in 0..10 {
        f.clock.advance(Duration::from_secs(30));
        f.registry.sweep().await;
    }
    assert_eq!(s.state(), SessionState::Ready, "5 minutes on a 60s lease");
    drop(sub);
    f.clock.advance(Duration::from_secs(61));
    f.registry.sweep().await;
    assert_eq!(s.state(), SessionState::Closed);
    assert_eq!(s.snapshot().close_reason, Some(CloseReason::LeaseExpired));
}

#[tokio::test]
async fn idle_timeout_ignores_an_attached_stream() {
    let f = fixture_with(
        4,
        SessionPolicy {
            idle_timeout: Some(Duration::from_secs(10)),
            ..policy()
        },
        Script::default(),
    );
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let _sub = f.registry.subscribe(&me(), &s.id, None).await.unwrap();
    f.clock.advance(Duration::from_secs(9));
    f.registry.sweep().await;
    assert_eq!(s.state(), SessionState::Ready);
    f.clock.advance(Duration::from_secs(1));
    f.registry.sweep().await;
    assert_eq!(s.snapshot().close_reason, Some(CloseReason::IdleTimeout));
}

#[tokio::test]
async fn max_lifetime_closes_a_busy_session() {
    let f = fixture_with(
        4,
        SessionPolicy {
            max_lifetime: Some(Duration::from_secs(30)),
            ..policy()
        },
        Script::default(),
    );
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    for _ in 0..2 {
        f.clock.advance(Duration::from_secs(10));
        f.registry.invoke(&me(), &s.id, cmd(), None).await.unwrap();
        f.registry.sweep().await;
    }
    assert_eq!(s.state(), SessionState::Ready);
    f.clock.advance(Duration::from_secs(10));
    f.registry.sweep().await;
    assert_eq!(s.snapshot().close_reason, Some(CloseReason::MaxLifetime));
}

#[tokio::test]
async fn ended_sessions_are_forgotten_after_retention() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    f.registry.close(&me(), &s.id).await.unwrap();
    f.clock.advance(Duration::from_secs(29));
    f.registry.sweep().await;
    assert_eq!(
        f.registry.get(&me(), &s.id).unwrap().state(),
        SessionState::Closed
    );
    f.clock.advance(Duration::from_secs(1));
    f.registry.sweep().await;
    assert!(matches!(
        f.registry.get(&me(), &s.id),
        Err(GatewayError::SessionNotFound(_))
    ));
}

#[tokio::test]
async fn close_is_idempotent() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let first = f.registry.close(&me(), &s.id).await.unwrap();
    assert_eq!(first.final_state, SessionState::Closed);
    assert!(!first.already_closed);
    let second = f.registry.close(&me(), &s.id).await.unwrap();
    assert!(second.already_closed);
    assert_eq!(f.script.closed.load(Ordering::SeqCst), 1);
    assert!(matches!(
        f.registry.invoke(&me(), &s.id, cmd(), None).await,
        Err(GatewayError::NotReady(SessionState::Closed))
    ));
}

#[tokio::test]
async fn concurrent_closes_close_once() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let caller = me();
    let results = futures::future::join_all((0..8).map(|_| f.registry.close(&caller, &s.id))).await;
    let first = results
        .iter()
        .filter(|r| !r.as_ref().unwrap().already_closed)
        .count();
    assert_eq!(first, 1);
    assert_eq!(f.script.closed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_fault_stops_the_worker_and_frees_the_slot() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    *f.script.fault_next_invoke.lock().unwrap() = Some(Fault::deadline("slow"));
    let err = f
        .registry
        .invoke(&me(), &s.id, cmd(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, GatewayError::Faulted(_)));
    assert_eq!(s.state(), SessionState::Faulted);
    assert_eq!(s.snapshot().fault.unwrap().code.as_str(), "deadline");
    assert_eq!(f.script.killed.load(Ordering::SeqCst), 1);
    assert_eq!(f.registry.open_count(), 0);
    assert_eq!(open_gauge(&f), 0);
    // Still visible, no longer usable, and closing it makes it final.
    assert!(matches!(
        f.registry.invoke(&me(), &s.id, cmd(), None).await,
        Err(GatewayError::NotReady(SessionState::Faulted))
    ));
    let closed = f.registry.close(&me(), &s.id).await.unwrap();
    assert_eq!(closed.final_state, SessionState::Closed);
    assert!(!closed.already_closed);
    assert!(f.registry.close(&me(), &s.id).await.unwrap().already_closed);
}

#[tokio::test]
async fn out_of_band_faults_reach_the_session() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let reporter = f.script.reporters.lock().unwrap()[0].clone();
    reporter.report(Fault::crashed(
        FaultCode::Trap(crate::backend::TrapCode::Unreachable),
        "in a tick",
    ));
    for _ in 0..100 {
        if s.state() == SessionState::Faulted {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(s.state(), SessionState::Faulted);
    assert_eq!(f.registry.open_count(), 0);
}

#[tokio::test]
async fn a_late_fault_never_reopens_a_closed_session() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    f.registry.close(&me(), &s.id).await.unwrap();
    let reporter = f.script.reporters.lock().unwrap()[0].clone();
    reporter.report(Fault::crashed(FaultCode::WorkerFault, "after close"));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(s.state(), SessionState::Closed);
    assert_eq!(s.snapshot().close_reason, Some(CloseReason::ClientClose));
}

#[tokio::test]
async fn other_tenants_sessions_are_not_found() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let other = Caller::new(Tenant::unrestricted("other"), None, false);
    assert!(matches!(
        f.registry.get(&other, &s.id),
        Err(GatewayError::SessionNotFound(_))
    ));
    assert!(matches!(
        f.registry.close(&other, &s.id).await,
        Err(GatewayError::SessionNotFound(_))
    ));
    assert!(f.registry.list(&other).is_empty());
    for result in [
        f.registry.renew(&other, &s.id).map(|_| ()),
        f.registry.subscribe(&other, &s.id, None).await.map(|_| ()),
        f.registry
            .invoke(&other, &s.id, cmd(), None)
            .await
            .map(|_| ()),
    ] {
        assert!(matches!(result, Err(GatewayError::SessionNotFound(_))));
    }
    let admin = Caller::new(Tenant::unrestricted("ops"), None, true);
    assert_eq!(f.registry.list(&admin).len(), 1);
    assert_eq!(s.state(), SessionState::Ready);
}

fn tenant(name: &str, max_sessions: Option<usize>, backends: Option<&[&str]>) -> Arc<Tenant> {
    Tenant::from_spec(&crate::config::TenantSpec {
        name: name.into(),
        max_sessions,
        backends: backends.map(|b| b.iter().map(|s| s.to_string()).collect()),
        limits: crate::config::LimitOverrides::default(),
        keys: Vec::new(),
    })
}

fn tenant_gauge(f: &Fixture, tenant: &str) -> i64 {
    f.metrics
        .tenant_open_sessions
        .get_or_create(&TenantLabel {
            tenant: tenant.into(),
        })
        .get()
}

#[tokio::test]
async fn admin_sees_and_closes_every_session_but_does_not_drive_them() {
    let f = fixture();
    let owner = Caller::new(tenant("b", None, None), Some("kb".into()), false);
    let s = f.registry.open(&owner, open_req()).await.unwrap();
    let admin = Caller::new(tenant("ops", None, None), Some("root".into()), true);
    assert_eq!(f.registry.list(&admin).len(), 1);
    f.registry.get(&admin, &s.id).unwrap();
    assert!(matches!(
        f.registry.invoke(&admin, &s.id, cmd(), None).await,
        Err(GatewayError::SessionNotFound(_))
    ));
    assert!(matches!(
        f.registry.renew(&admin, &s.id),
        Err(GatewayError::SessionNotFound(_))
    ));
    let closed = f.registry.close(&admin, &s.id).await.unwrap();
    assert_eq!(closed.final_state, SessionState::Closed);
    assert!(!closed.already_closed);
    assert_eq!(owner.tenant.open_sessions(), 0);
    assert_eq!(tenant_gauge(&f, "b"), 0);
}

#[tokio::test]
async fn only_the_owning_key_renews_the_lease_by_reading() {
    let f = fixture();
    let t = tenant("a", None, None);
    let opener = Caller::new(Arc::clone(&t), Some("k1".into()), false);
    let reader = Caller::new(Arc::clone(&t), Some("k2".into()), false);
    let s = f.registry.open(&opener, open_req()).await.unwrap();
    assert!(s.is_owned_by(&opener) && !s.is_owned_by(&reader));
    let before = s.snapshot().lease_expires;
    f.clock.advance(Duration::from_secs(10));
    f.registry.get(&reader, &s.id).unwrap();
    assert_eq!(s.snapshot().lease_expires, before, "a read by another key");
    f.registry.get(&opener, &s.id).unwrap();
    assert!(s.snapshot().lease_expires > before);
}

#[tokio::test]
async fn tenant_quota_is_enforced_with_the_cap_and_never_leaks() {
    let f = fixture_with(3, policy(), Script::default());
    let a = Caller::new(tenant("a", Some(2), None), None, false);
    let b = Caller::new(tenant("b", None, None), None, false);
    let a1 = f.registry.open(&a, open_req()).await.unwrap();
    let _a2 = f.registry.open(&a, open_req()).await.unwrap();
    // The quota is reached while the cap is not.
    match f.registry.open(&a, open_req()).await {
        Err(GatewayError::TenantQuotaReached {
            tenant, quota: 2, ..
        }) => assert_eq!(tenant, "a"),
        other => panic!("expected the quota, got {:?}", other.map(|s| s.id.clone())),
    }
    assert_eq!(
        f.registry.open_count(),
        2,
        "the refusal took no gateway slot"
    );
    let _b1 = f.registry.open(&b, open_req()).await.unwrap();
    // Now the cap is reached while b has no quota at all.
    assert!(matches!(
        f.registry.open(&b, open_req()).await,
        Err(GatewayError::SessionCapReached { cap: 3, .. })
    ));
    assert_eq!(
        b.tenant.open_sessions(),
        1,
        "the refusal gave b's slot back"
    );
    // Closing gives both back: a may open again, and only once.
    f.registry.close(&a, &a1.id).await.unwrap();
    assert_eq!(a.tenant.open_sessions(), 1);
    let a3 = f.registry.open(&a, open_req()).await.unwrap();
    assert!(f.registry.open(&a, open_req()).await.is_err());
    assert_eq!((tenant_gauge(&f, "a"), tenant_gauge(&f, "b")), (2, 1));
    // A fault gives both back too.
    f.script
        .reporters
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .report(Fault::crashed(FaultCode::WorkerFault, "x"));
    for _ in 0..100 {
        if a3.state() == SessionState::Faulted {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(a3.state(), SessionState::Faulted);
    assert_eq!(a.tenant.open_sessions(), 1);
    assert_eq!(f.registry.open_count(), 2);
    assert_eq!(tenant_gauge(&f, "a"), 1);
}

#[tokio::test]
async fn a_failed_open_gives_back_the_tenant_slot_too() {
    let script = Script::default();
    *script.fail_start.lock().unwrap() = Some(StartError::Refused("no".into()));
    let f = fixture_with(4, policy(), script);
    let a = Caller::new(tenant("a", Some(1), None), None, false);
    assert!(matches!(
        f.registry.open(&a, open_req()).await,
        Err(GatewayError::StartFailed(StartError::Refused(_)))
    ));
    assert_eq!(a.tenant.open_sessions(), 0);
    assert_eq!(f.registry.open_count(), 0);
    assert_eq!((tenant_gauge(&f, "a"), open_gauge(&f)), (0, 0));
    // The single quota slot is free again.
    f.registry.open(&a, open_req()).await.unwrap();
}

#[tokio::test]
async fn backends_outside_the_tenants_list_are_refused_and_hidden() {
    let f = fixture();
    let a = Caller::new(tenant("a", None, Some(&["other"])), None, false);
    assert!(matches!(
        f.registry.open(&a, open_req()).await,
        Err(GatewayError::BackendNotAllowed(b)) if b == "fake"
    ));
    assert_eq!(f.registry.backends_for(&a).count(), 0);
    assert_eq!(a.tenant.open_sessions(), 0);
    assert_eq!(f.registry.open_count(), 0);
    // An unknown backend is still NOT_FOUND, whatever the list says.
    assert!(matches!(
        f.registry
            .open(
                &a,
                OpenRequest {
                    backend: "nope".into(),
                    ..OpenRequest::default()
                }
            )
            .await,
        Err(GatewayError::BackendNotFound(_))
    ));
    let all = Caller::new(tenant("b", None, Some(&["fake"])), None, false);
    assert_eq!(f.registry.backends_for(&all).count(), 1);
}

#[tokio::test]
async fn tenant_limits_lower_the_backends() {
    let f = fixture();
    let t = Tenant::from_spec(&crate::config::TenantSpec {
        name: "a".into(),
        max_sessions: None,
        backends: None,
        limits: crate::config::LimitOverrides {
            lease: Some(Duration::from_secs(5)),
            command_timeout: Some(Duration::from_secs(3600)),
            ..Default::default()
        },
        keys: Vec::new(),
    });
    let a = Caller::new(t, None, false);
    let s = f.registry.open(&a, open_req()).await.unwrap();
    assert_eq!(s.times.lease, Duration::from_secs(5));
    assert_eq!(
        s.times.command_timeout,
        policy().command_timeout,
        "an override above the backend's is clamped"
    );
    // The tenant lowered the default lease, not its maximum: a client may
    // still ask for up to the backend's maximum.
    let s = f
        .registry
        .open(
            &a,
            OpenRequest {
                lease: Some(Duration::from_secs(7200)),
                ..open_req()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.times.lease, policy().max_lease);
}

#[tokio::test(start_paused = true)]
async fn a_stuck_worker_is_killed_and_blocks_no_one() {
    let script = Script {
        hang_on_close: true,
        ..Script::default()
    };
    let f = fixture_with(
        4,
        SessionPolicy {
            close_timeout: Duration::from_millis(200),
            ..policy()
        },
        script,
    );
    let a = f.registry.open(&me(), open_req()).await.unwrap();
    let b = f.registry.open(&me(), open_req()).await.unwrap();
    f.clock.advance(Duration::from_secs(61));
    assert_eq!(f.registry.sweep().await, 2);
    assert_eq!(a.state(), SessionState::Closed);
    assert_eq!(b.state(), SessionState::Closed);
    assert_eq!(f.script.killed.load(Ordering::SeqCst), 2);
    assert_eq!(f.registry.open_count(), 0);
}

#[tokio::test]
async fn shutdown_closes_everything_and_refuses_new_sessions() {
    let f = fixture();
    let a = f.registry.open(&me(), open_req()).await.unwrap();
    let b = f.registry.open(&me(), open_req()).await.unwrap();
    f.registry.shutdown(Duration::from_secs(5)).await;
    for s in [&a, &b] {
        assert_eq!(s.state(), SessionState::Closed);
        assert_eq!(
            s.snapshot().close_reason,
            Some(CloseReason::GatewayShutdown)
        );
    }
    assert!(matches!(
        f.registry.open(&me(), open_req()).await,
        Err(GatewayError::ShuttingDown)
    ));
    assert_eq!(open_gauge(&f), 0);
}

#[tokio::test]
async fn a_detached_stream_restarts_the_lease_even_without_sweeps() {
    let f = fixture();
    let s = f.registry.open(&me(), open_req()).await.unwrap();
    let sub = f.registry.subscribe(&me(), &s.id, None).await.unwrap();
    // The sweeper was starved while the stream was attached...
    f.clock.advance(Duration::from_secs(59));
    drop(sub);
    // ...yet the lease runs from the moment the stream went away.
    f.clock.advance(Duration::from_secs(59));
    f.registry.sweep().await;
    assert_eq!(s.state(), SessionState::Ready);
    f.clock.advance(Duration::from_secs(1));
    f.registry.sweep().await;
    assert_eq!(s.state(), SessionState::Closed);
}
