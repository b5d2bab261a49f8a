//! The wasm runtime against the built-in components: real instances, real
//! traps and deadlines.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::*;
use crate::backend::{CloseOutcome, Command, Fault, FaultClass, FaultReporter, Outcome};
use crate::config::{ModuleSource, SessionPolicy};
use crate::events::{EventLimits, EventLog, NoObserver};
use crate::memory_budget::{BudgetGauges, MemoryAccount, MemoryBudget, MemoryKind};

fn runtime() -> WasmRuntime {
    WasmRuntime::new(&RuntimeOptions {
        max_sessions: 8,
        max_memory_bytes: 64 << 20,
        epoch_tick: Duration::from_millis(5),
        max_reply_bytes: 1 << 20,
        max_snapshot_bytes: 1 << 20,
    })
    .unwrap()
}

fn spec(name: &str, policy: SessionPolicy) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        kind: BackendKind::Wasm,
        runner: crate::config::Runner::Wasm(ModuleSource::Builtin(name.into())),
        description: String::new(),
        version: "test".into(),
        config: BTreeMap::new(),
        grants: Default::default(),
        policy,
        retire_after: None,
        rollout: None,
        recovery: Default::default(),
    }
}

struct Opened {
    worker: Box<dyn Worker>,
    events: Arc<EventLog>,
    faults: mpsc::UnboundedReceiver<crate::backend::FaultReport>,
}

async fn open(rt: &WasmRuntime, name: &str, policy: SessionPolicy) -> Result<Opened, StartError> {
    open_charged(rt, name, policy, MemoryAccount::unlimited()).await
}

/// Like [`open`], charging the session's memory to `memory`.
async fn open_charged(
    rt: &WasmRuntime,
    name: &str,
    policy: SessionPolicy,
    memory: MemoryAccount,
) -> Result<Opened, StartError> {
    let backend = load(rt, name, &policy);
    let (request, events, faults) = request(name, &policy, memory);
    let states = std::sync::Mutex::new(Vec::new());
    let worker = backend
        .start(request, &|s| states.lock().unwrap().push(s))
        .await?;
    assert_eq!(
        *states.lock().unwrap(),
        vec![StartPhase::StartingWorker, StartPhase::InitializingWorker]
    );
    Ok(Opened {
        worker,
        events,
        faults,
    })
}

fn load(rt: &WasmRuntime, name: &str, policy: &SessionPolicy) -> WasmBackend {
    rt.load(
        &spec(name, policy.clone()),
        crate::builtin::component(name).unwrap(),
    )
    .unwrap()
}

/// A start request for session `s1`, with its event log and where its
/// out-of-band faults arrive.
fn request(
    name: &str,
    policy: &SessionPolicy,
    memory: MemoryAccount,
) -> (
    StartRequest,
    Arc<EventLog>,
    mpsc::UnboundedReceiver<crate::backend::FaultReport>,
) {
    let events = Arc::new(EventLog::new(
        EventLimits {
            queue: 1000,
            replay: 10,
            overflow: policy.event_overflow,
            max_subscribers: 1,
        },
        Arc::new(NoObserver),
    ));
    let (tx, faults) = mpsc::unbounded_channel();
    let id: Arc<str> = "s1".into();
    let request = StartRequest {
        session_id: Arc::clone(&id),
        tenant: "t".into(),
        backend: name.into(),
        config: [("fail_open".to_string(), "no".to_string())].into(),
        events: Arc::clone(&events),
        policy: policy.clone(),
        open_timeout: Duration::from_secs(5),
        faults: FaultReporter::new(id, tx),
        memory,
        cpu: crate::backend::cpu::CpuAccount::unlimited(),
        restore: None,
    };
    (request, events, faults)
}

fn c(name: &str, payload: &str) -> Vec<Command> {
    vec![Command {
        name: name.into(),
        payload: payload.as_bytes().to_vec(),
    }]
}

async fn call(
    w: &dyn Worker,
    name: &str,
    payload: &str,
    timeout: Duration,
) -> Result<Outcome, Fault> {
    let mut out = w.invoke(c(name, payload), timeout, None).await?;
    Ok(out.remove(0))
}

const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn instances_keep_their_own_state() {
    let rt = runtime();
    let a = open(&rt, "echo", SessionPolicy::default()).await.unwrap();
    let b = open(&rt, "echo", SessionPolicy::default()).await.unwrap();
    for want in ["1", "2", "3"] {
        assert_eq!(
            call(&*a.worker, "count", "", LONG).await.unwrap(),
            Outcome::Reply(want.into())
        );
    }
    assert_eq!(
        call(&*b.worker, "count", "", LONG).await.unwrap(),
        Outcome::Reply("1".into())
    );
}

#[tokio::test]
async fn memory_growth_past_the_budget_faults_and_the_instance_gives_it_back() {
    let rt = runtime();
    let budget = MemoryBudget::new(24 << 20, BudgetGauges::default());
    let account = || budget.account(budget.tenant("t", None));
    let s = open_charged(&rt, "chaos", SessionPolicy::default(), account())
        .await
        .unwrap();
    let initial = budget.reserved_for(MemoryKind::WasmMemory);
    assert!(initial > 0, "the initial memory is reserved");
    assert!(budget.reserved_for(MemoryKind::WasmTable) > 0);
    call(&*s.worker, "grow", "4", LONG).await.unwrap();
    assert!(budget.reserved_for(MemoryKind::WasmMemory) >= initial + (4 << 20));
    let fault = call(&*s.worker, "grow", "30", LONG).await.unwrap_err();
    assert_eq!(fault.code, FaultCode::MemoryBudget, "{fault}");
    assert!(fault.detail.contains("memory budget"), "{fault}");
    drop(s);
    // The store goes with the session task: everything comes back.
    let deadline = Instant::now() + LONG;
    while budget.reserved() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(budget.reserved(), 0);
    // An open whose initial memory does not fit is a capacity refusal.
    let tiny = MemoryBudget::new(4096, BudgetGauges::default());
    let refused = open_charged(
        &rt,
        "chaos",
        SessionPolicy::default(),
        tiny.account(tiny.tenant("t", None)),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        matches!(&refused, StartError::Exhausted(f) if f.code == FaultCode::MemoryBudget),
        "{refused}"
    );
    assert_eq!(tiny.reserved(), 0);
}

#[tokio::test]
async fn emitted_events_land_in_the_log() {
    let rt = runtime();
    let s = open(&rt, "echo", SessionPolicy::default()).await.unwrap();
    call(&*s.worker, "emit", "3", LONG).await.unwrap();
    assert_eq!(s.events.counts(), (3, 0));
    let mut sub = s.events.subscribe(None).unwrap();
    let first = sub.next().await.unwrap();
    assert_eq!(first.event.name, "tick");
    assert_eq!(first.event.payload, b"1");
}

#[tokio::test]
async fn ticks_fire_on_the_session_task() {
    let rt = runtime();
    let s = open(&rt, "echo", SessionPolicy::default()).await.unwrap();
    call(&*s.worker, "ticks", "5,3", LONG).await.unwrap();
    let mut sub = s.events.subscribe(None).unwrap();
    for want in 1..=3u64 {
        let d = tokio::time::timeout(LONG, sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.event.payload, want.to_string().into_bytes());
    }
}

/// A one-shot worker runs on its caller's task; however it ends (a close,
/// a trap, a deadline, a kill) its instance goes back to the pool at once,
/// while the worker itself is still held.
#[tokio::test]
async fn one_shot_workers_give_their_instance_back_however_they_end() {
    // The pool holds 12 instances (8 sessions and headroom): 40 workers
    // kept alive only fit if each ending frees its instance.
    let rt = runtime();
    let policy = SessionPolicy::default();
    let backend = load(&rt, "chaos", &policy);
    let mut ended = Vec::new();
    for i in 0..40 {
        let (request, _events, _faults) = request("chaos", &policy, MemoryAccount::unlimited());
        let w = backend.start_one_shot(request, &|_| {}).await.unwrap();
        match i % 4 {
            0 => {
                let reply = call(&*w, "echo", "x", LONG).await.unwrap();
                assert_eq!(reply, Outcome::Reply("x".into()));
                assert_eq!(w.close(LONG).await, CloseOutcome::Graceful);
            }
            1 => {
                let fault = call(&*w, "trap", "", LONG).await.unwrap_err();
                assert_eq!(fault.code.as_str(), "trap: unreachable");
            }
            2 => {
                let fault = call(&*w, "spin", "", Duration::from_millis(30))
                    .await
                    .unwrap_err();
                assert_eq!(fault.code.as_str(), "deadline");
            }
            _ => w.kill(),
        }
        // Whatever ended it, it serves nothing more.
        assert!(call(&*w, "echo", "", LONG).await.is_err(), "worker {i}");
        ended.push(w);
    }
}

#[tokio::test]
async fn a_spinning_command_hits_its_deadline() {
    let rt = runtime();
    let s = open(&rt, "chaos", SessionPolicy::default()).await.unwrap();
    let began = Instant::now();
    let fault = call(&*s.worker, "spin", "", Duration::from_millis(100))
        .await
        .unwrap_err();
    let took = began.elapsed();
    assert_eq!(fault.class, FaultClass::Deadline);
    assert_eq!(fault.code.as_str(), "deadline");
    // Its own 100 ms stopped it (the fault names the deadline that fired),
    // not before; no upper bound on a loaded machine's clock.
    assert!(
        fault.detail.contains("ran past its 100 ms deadline"),
        "{fault}"
    );
    assert!(took >= Duration::from_millis(100), "{took:?}");
    // The worker is gone for good.
    assert!(call(&*s.worker, "echo", "", LONG).await.is_err());
}

#[tokio::test]
async fn the_grpc_deadline_bounds_the_command() {
    let rt = runtime();
    let s = open(&rt, "chaos", SessionPolicy::default()).await.unwrap();
    let began = Instant::now();
    let fault = s
        .worker
        .invoke(
            c("spin", ""),
            LONG,
            Some(Instant::now() + Duration::from_millis(80)),
        )
        .await
        .unwrap_err();
    assert_eq!(fault.code.as_str(), "deadline");
    // The client's 80 ms bounded it, not the command's LONG timeout: the
    // fault names the deadline that fired.
    let ms: u64 = fault
        .detail
        .split("ran past its ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no deadline in {fault}"));
    assert!(ms <= 80, "{fault}");
    assert!(began.elapsed() < LONG);
}

#[tokio::test]
async fn slow_but_legitimate_commands_finish() {
    let rt = runtime();
    let s = open(&rt, "chaos", SessionPolicy::default()).await.unwrap();
    assert_eq!(
        call(&*s.worker, "busy", "50", Duration::from_secs(1))
            .await
            .unwrap(),
        Outcome::Reply("50".into())
    );
}

#[tokio::test]
async fn traps_are_classified() {
    let rt = runtime();
    for (cmd, arg, code) in [
        ("trap", "", "trap: unreachable"),
        ("panic", "", "trap: unreachable"),
        ("recurse", "", "stack-overflow"),
        ("grow", "100", "memory-limit"),
    ] {
        let policy = SessionPolicy {
            memory_limit: 32 << 20,
            ..SessionPolicy::default()
        };
        let s = open(&rt, "chaos", policy).await.unwrap();
        let fault = call(&*s.worker, cmd, arg, LONG).await.unwrap_err();
        assert_eq!(fault.code.as_str(), code, "{cmd}: {fault}");
        assert_eq!(fault.class, FaultClass::Crashed);
    }
}

#[tokio::test]
async fn a_trap_in_a_tick_is_reported() {
    let rt = runtime();
    let mut s = open(&rt, "chaos", SessionPolicy::default()).await.unwrap();
    call(&*s.worker, "tick-trap", "10", LONG).await.unwrap();
    let report = tokio::time::timeout(LONG, s.faults.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*report.session_id, "s1");
    assert_eq!(report.fault.code.as_str(), "trap: unreachable");
}

#[tokio::test]
async fn oversized_replies_are_refused_not_fatal() {
    let rt = runtime();
    let policy = SessionPolicy {
        max_reply_bytes: 1000,
        ..SessionPolicy::default()
    };
    let s = open(&rt, "chaos", policy).await.unwrap();
    assert_eq!(
        call(&*s.worker, "big-reply", "5000", LONG).await.unwrap(),
        Outcome::ReplyTooLarge {
            size: 5000,
            limit: 1000
        }
    );
    assert_eq!(
        call(&*s.worker, "echo", "ok", LONG).await.unwrap(),
        Outcome::Reply("ok".into())
    );
}

#[tokio::test]
async fn the_sandbox_grants_nothing_by_default() {
    let rt = runtime();
    let s = open(&rt, "chaos", SessionPolicy::default()).await.unwrap();
    assert!(matches!(
        call(&*s.worker, "read-file", "/etc/passwd", LONG)
            .await
            .unwrap(),
        Outcome::Error(_)
    ));
    assert_eq!(
        call(&*s.worker, "env", "", LONG).await.unwrap(),
        Outcome::Reply(Vec::new())
    );
    assert!(matches!(
        call(&*s.worker, "connect", "127.0.0.1:9", LONG)
            .await
            .unwrap(),
        Outcome::Error(_)
    ));
}

#[tokio::test]
async fn a_refused_open_is_reported_as_refused() {
    let rt = runtime();
    let backend = rt
        .load(
            &spec("chaos", SessionPolicy::default()),
            crate::builtin::component("chaos").unwrap(),
        )
        .unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let request = StartRequest {
        session_id: "s".into(),
        tenant: "t".into(),
        backend: "chaos".into(),
        config: [("fail_open".to_string(), "yes".to_string())].into(),
        events: Arc::new(EventLog::new(
            EventLimits {
                queue: 1,
                replay: 1,
                overflow: crate::config::OverflowPolicy::DropOldest,
                max_subscribers: 1,
            },
            Arc::new(NoObserver),
        )),
        policy: SessionPolicy::default(),
        open_timeout: LONG,
        faults: FaultReporter::new("s".into(), tx),
        memory: MemoryAccount::unlimited(),
        cpu: crate::backend::cpu::CpuAccount::unlimited(),
        restore: None,
    };
    let err = backend.start(request, &|_| {}).await.err().unwrap();
    assert!(matches!(err, StartError::Refused(m) if m.contains("fail_open")));
}

#[tokio::test]
async fn close_runs_the_plugin_close() {
    let rt = runtime();
    let s = open(&rt, "chaos", SessionPolicy::default()).await.unwrap();
    assert_eq!(
        s.worker.close(Duration::from_secs(1)).await,
        CloseOutcome::Graceful
    );
    // chaos's close emits `closed`: the plugin's own close ran.
    let mut sub = s.events.subscribe(None).unwrap();
    let closed = tokio::time::timeout(LONG, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.event.name, "closed");
    assert!(call(&*s.worker, "echo", "", LONG).await.is_err());
}

#[tokio::test]
async fn a_close_that_outruns_its_grace_is_killed() {
    let rt = runtime();
    let s = open(&rt, "chaos", SessionPolicy::default()).await.unwrap();
    call(&*s.worker, "spin-on-close", "", LONG).await.unwrap();
    let began = Instant::now();
    assert_eq!(
        s.worker.close(Duration::from_millis(200)).await,
        CloseOutcome::Killed
    );
    assert!(
        began.elapsed() < LONG,
        "the close waited {:?}",
        began.elapsed()
    );
    assert_eq!(s.events.counts().0, 0, "a killed close emits nothing");
}

#[test]
fn a_non_component_is_rejected() {
    let rt = runtime();
    let err = rt
        .load(&spec("x", SessionPolicy::default()), b"\0asm\x01\0\0\0")
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::Compile(_)), "{err}");
}

/// The test runtime has one thread, which runs the session's task too: its
/// CPU clock is everything the command cost the gateway.
#[tokio::test(flavor = "current_thread")]
async fn compute_is_metered_as_its_wasm_time() {
    use crate::backend::cpu::thread_cpu_time;
    let rt = runtime();
    let policy = SessionPolicy::default();
    let backend = load(&rt, "chaos", &policy);
    let (mut req, _events, _faults) = request("chaos", &policy, MemoryAccount::unlimited());
    let cpu = crate::backend::cpu::CpuAccount::unlimited();
    req.cpu = cpu.clone();
    let worker = backend.start(req, &|_| {}).await.unwrap();
    let metered = |commands| {
        let (worker, cpu) = (&worker, &cpu);
        async move {
            let (before, thread) = (cpu.used(), thread_cpu_time().unwrap());
            let out = worker
                .invoke(commands, Duration::from_secs(20), None)
                .await
                .unwrap();
            assert!(matches!(out[0], Outcome::Reply(_)), "{out:?}");
            (cpu.used() - before, thread_cpu_time().unwrap() - thread)
        }
    };
    // Pure wasm: nearly all of the command's CPU.
    let (used, spent) = metered(c("work", "100")).await;
    eprintln!("work: metered {used:?} of {spent:?}");
    assert!(
        used <= spent,
        "metered {used:?}, more than the {spent:?} spent"
    );
    assert!(
        used * 100 >= spent * 85,
        "metered only {used:?} of {spent:?}"
    );
    // `busy` reads the clock in a loop: those host calls are not wasm time.
    let (used, spent) = metered(c("busy", "100")).await;
    eprintln!("busy: metered {used:?} of {spent:?}");
    assert!(used < spent * 9 / 10, "metered {used:?} of {spent:?}");
    assert!(used > Duration::ZERO);
}

/// A tick due while its tenant is over its CPU budget is put off until the
/// refill, and the session goes on serving meanwhile.
#[tokio::test]
async fn a_tick_over_the_budget_waits_for_the_refill_without_blocking_the_session() {
    use crate::backend::cpu::{CpuMetrics, CpuScheduler};
    use crate::config::{CpuBudgetSpec, TenantCpuSpec};
    let rt = runtime();
    let policy = SessionPolicy::default();
    let backend = load(&rt, "echo", &policy);
    let (mut req, events, _faults) = request("echo", &policy, MemoryAccount::unlimited());
    let scheduler = CpuScheduler::new(2, CpuMetrics::default());
    let spec = TenantCpuSpec {
        budget: Some(CpuBudgetSpec {
            per_sec_ms: 1000.0,
            burst_ms: 1.0,
        }),
        ..Default::default()
    };
    let cpu = scheduler.account(scheduler.tenant("t", &spec), "echo", None);
    req.cpu = cpu.clone();
    let worker = backend.start(req, &|_| {}).await.unwrap();
    let mut sub = events.subscribe(None).unwrap();
    // 300 CPU-ms of debt at 1000 a second: about 300 ms to refill.
    cpu.charge(Duration::from_millis(301));
    let began = Instant::now();
    call(&*worker, "ticks", "1,1", LONG).await.unwrap();
    // The tick is due in 1 ms but waits; commands still run meanwhile.
    assert_eq!(
        call(&*worker, "echo", "still here", LONG).await.unwrap(),
        Outcome::Reply(b"still here".to_vec())
    );
    tokio::time::timeout(LONG, sub.next())
        .await
        .unwrap()
        .unwrap();
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "the tick ran after {waited:?}, before the refill"
    );
}
