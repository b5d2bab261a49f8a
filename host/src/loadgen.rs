//! `gatehouse bench`: a load generator for a running gateway.
//!
//! Virtual users drive sessions in one of five modes:
//!
//! - `reuse`: one session per virtual user for the whole run;
//! - `per-request`: open, one command, close;
//! - `call`: one `Call` RPC per command (a fresh instance each, no session);
//! - `pool`: virtual users borrow sessions from a shared pool;
//! - `churn`: like `reuse`, but each session is replaced after K commands.
//!
//! Latencies go into HDR histograms per operation (open, invoke, close, and
//! event delivery with `--subscribe`); errors are counted by status code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

use crate::client::for_session;
use crate::proto::v1 as pb;

/// How sessions are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One session per virtual user for the whole run.
    Reuse,
    /// Open, one command, close.
    PerRequest,
    /// Borrow sessions from a shared pool.
    Pool,
    /// Replace each session after `--churn-after` commands.
    Churn,
    /// One `Call` per command: a fresh instance each, no session.
    Call,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Backend to open sessions on.
    pub backend: String,
    /// Session mode.
    pub mode: Mode,
    /// Virtual users.
    pub concurrency: usize,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many commands.
    pub count: Option<u64>,
    /// Command to invoke.
    pub command: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// `churn`: commands per session.
    pub churn_after: u64,
    /// `pool`: sessions in the pool.
    pub pool_size: usize,
    /// Attach an event stream to every session and time event delivery.
    pub subscribe: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// Per-operation latency, in microseconds.
struct Op {
    hist: Histogram<u64>,
}

impl Op {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
        }
    }

    fn record(&mut self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self.hist.record(us.min(self.hist.high()));
    }
}

/// What one virtual user saw.
struct Tally {
    ops: BTreeMap<&'static str, Op>,
    errors: BTreeMap<String, u64>,
    created: u64,
    closed: u64,
    reconnects: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            ops: ["open", "invoke", "close", "call", "event"]
                .into_iter()
                .map(|k| (k, Op::new()))
                .collect(),
            errors: BTreeMap::new(),
            created: 0,
            closed: 0,
            reconnects: 0,
        }
    }

    fn op(&mut self, name: &'static str) -> &mut Op {
        self.ops.entry(name).or_insert_with(Op::new)
    }

    fn error(&mut self, status: &tonic::Status) {
        *self
            .errors
            .entry(format!("{:?}", status.code()))
            .or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        for (k, op) in other.ops {
            let _ = self.op(k).hist.add(&op.hist);
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        self.created += other.created;
        self.closed += other.closed;
        self.reconnects += other.reconnects;
    }
}

/// The result of a run.
pub struct Report {
    options: BenchOptions,
    elapsed: Duration,
    tally: Tally,
}

struct Shared {
    options: BenchOptions,
    stop: AtomicBool,
    invoked: AtomicU64,
    deadline: Option<Instant>,
    pool: Option<(Mutex<mpsc::Receiver<String>>, mpsc::Sender<String>)>,
    /// Event-delivery histograms of finished streams.
    events: std::sync::Mutex<Vec<Histogram<u64>>>,
}

impl Shared {
    /// Claims the right to run one more command.
    fn next(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        let n = self.invoked.fetch_add(1, Ordering::Relaxed);
        match self.options.count {
            Some(c) if n >= c => {
                self.stop.store(true, Ordering::Relaxed);
                false
            }
            _ => true,
        }
    }
}

/// The client a run drives (with the caller's API key, if any).
pub type Client = crate::client::RawClient;

/// Runs the benchmark against `client` (cloned per virtual user).
pub async fn run(client: Client, options: BenchOptions) -> Report {
    let pool = if options.mode == Mode::Pool {
        let size = options.pool_size.max(1);
        let (tx, rx) = mpsc::channel(size);
        Some((Mutex::new(rx), tx))
    } else {
        None
    };
    let shared = Arc::new(Shared {
        deadline: options
            .duration
            .or(if options.count.is_none() {
                Some(Duration::from_secs(10))
            } else {
                None
            })
            .map(|d| Instant::now() + d),
        options: options.clone(),
        stop: AtomicBool::new(false),
        invoked: AtomicU64::new(0),
        pool,
        events: std::sync::Mutex::new(Vec::new()),
    });
    let began = Instant::now();
    let mut setup = Tally::new();
    let mut users = options.concurrency.max(1);
    if let Some((_, tx)) = &shared.pool {
        let mut c = client.clone();
        let mut filled = 0;
        for _ in 0..options.pool_size.max(1) {
            if let Some(id) = open(&mut c, &shared, &mut setup).await {
                let _ = tx.send(id).await;
                filled += 1;
            }
        }
        if filled == 0 {
            // Users would wait on an empty pool forever; the report shows
            // why the opens failed.
            users = 0;
        }
    }
    let progress = options.progress.then(|| progress_bar(&shared));
    let users: Vec<_> = (0..users)
        .map(|_| tokio::spawn(user(client.clone(), Arc::clone(&shared))))
        .collect();
    let mut tally = setup;
    for u in users {
        if let Ok(t) = u.await {
            tally.merge(t);
        }
    }
    if let Some((rx, _)) = &shared.pool {
        let mut c = client.clone();
        let mut rx = rx.lock().await;
        while let Ok(id) = rx.try_recv() {
            close(&mut c, &id, &mut tally).await;
        }
    }
    if let Some((bar, ticker)) = progress {
        ticker.abort();
        bar.finish_and_clear();
    }
    let elapsed = began.elapsed();
    if options.subscribe {
        // Streams end as their sessions close; give them a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let finished =
            std::mem::take(&mut *shared.events.lock().unwrap_or_else(|e| e.into_inner()));
        for h in finished {
            let _ = tally.op("event").hist.add(&h);
        }
    }
    Report {
        options,
        elapsed,
        tally,
    }
}

fn progress_bar(shared: &Arc<Shared>) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = match (shared.options.count, shared.deadline) {
        (Some(n), _) => indicatif::ProgressBar::new(n),
        _ => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} {pos} commands {per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let ticker = {
        let bar = bar.clone();
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            loop {
                bar.set_position(shared.invoked.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    (bar, ticker)
}

async fn open(c: &mut Client, shared: &Arc<Shared>, t: &mut Tally) -> Option<String> {
    let began = Instant::now();
    let r = c
        .open_session(pb::OpenSessionRequest {
            backend: shared.options.backend.clone(),
            client_session_name: "bench".into(),
            ..Default::default()
        })
        .await;
    match r {
        Ok(r) => {
            t.op("open").record(began.elapsed());
            t.created += 1;
            let id = r.into_inner().session.map(|s| s.session_id)?;
            if shared.options.subscribe {
                subscribe(c.clone(), id.clone(), shared);
            }
            Some(id)
        }
        Err(s) => {
            t.error(&s);
            None
        }
    }
}

/// Times event delivery (emit to receipt, by wall clock) on one session
/// until its stream ends.
fn subscribe(mut c: Client, id: String, shared: &Arc<Shared>) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let Ok(r) = c
            .stream_events(for_session(pb::StreamEventsRequest {
                session_id: id,
                resume_after_sequence: None,
            }))
            .await
        else {
            return;
        };
        let mut stream = r.into_inner();
        let mut op = Op::new();
        while let Ok(Some(e)) = stream.message().await {
            if let Some(at) = e
                .emitted_at
                .and_then(|t| SystemTime::try_from(t).ok())
                .and_then(|t| SystemTime::now().duration_since(t).ok())
            {
                op.record(at);
            }
        }
        shared
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(op.hist);
    });
}

async fn close(c: &mut Client, id: &str, t: &mut Tally) {
    let began = Instant::now();
    match c
        .close_session(for_session(pb::CloseSessionRequest {
            session_id: id.to_string(),
        }))
        .await
    {
        Ok(_) => {
            t.op("close").record(began.elapsed());
            t.closed += 1;
        }
        Err(s) => t.error(&s),
    }
}

/// One invoke; `Err(true)` means the session is gone and must be replaced.
async fn invoke(c: &mut Client, id: &str, shared: &Shared, t: &mut Tally) -> Result<(), bool> {
    let began = Instant::now();
    let r = c
        .invoke(for_session(pb::InvokeRequest {
            session_id: id.to_string(),
            command: Some(pb::Command {
                name: shared.options.command.clone(),
                payload: shared.options.payload.clone(),
            }),
            correlation_id: String::new(),
        }))
        .await;
    match r {
        Ok(_) => {
            t.op("invoke").record(began.elapsed());
            Ok(())
        }
        Err(s) => {
            t.error(&s);
            Err(matches!(
                s.code(),
                tonic::Code::NotFound
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Aborted
            ))
        }
    }
}

/// One `Call`: a fresh instance, the command, and nothing left behind.
async fn call(c: &mut Client, shared: &Shared, t: &mut Tally) {
    let began = Instant::now();
    let r = c
        .call(pb::CallRequest {
            backend: shared.options.backend.clone(),
            config: Default::default(),
            command: Some(pb::Command {
                name: shared.options.command.clone(),
                payload: shared.options.payload.clone(),
            }),
            command_timeout: None,
        })
        .await;
    match r {
        Ok(_) => t.op("call").record(began.elapsed()),
        Err(s) => t.error(&s),
    }
}

async fn user(mut c: Client, shared: Arc<Shared>) -> Tally {
    let mut t = Tally::new();
    let options = shared.options.clone();
    match options.mode {
        Mode::Call => {
            while shared.next() {
                call(&mut c, &shared, &mut t).await;
            }
        }
        Mode::PerRequest => {
            while shared.next() {
                if let Some(id) = open(&mut c, &shared, &mut t).await {
                    let _ = invoke(&mut c, &id, &shared, &mut t).await;
                    close(&mut c, &id, &mut t).await;
                }
            }
        }
        Mode::Pool => {
            let Some((rx, tx)) = &shared.pool else {
                return t;
            };
            while shared.next() {
                let id = { rx.lock().await.recv().await };
                let Some(mut id) = id else { break };
                if let Err(true) = invoke(&mut c, &id, &shared, &mut t).await {
                    t.reconnects += 1;
                    // A failed reopen puts the stale id back for the next
                    // user to retry: a pool that shrank to nothing would
                    // leave every user waiting on it forever.
                    if let Some(fresh) = open(&mut c, &shared, &mut t).await {
                        id = fresh;
                    }
                }
                let _ = tx.send(id).await;
            }
        }
        Mode::Reuse | Mode::Churn => {
            let limit = if options.mode == Mode::Churn {
                options.churn_after.max(1)
            } else {
                u64::MAX
            };
            let mut session: Option<(String, u64)> = None;
            while shared.next() {
                if session.is_none() {
                    session = open(&mut c, &shared, &mut t).await.map(|id| (id, 0));
                }
                let Some((id, used)) = session.as_mut() else {
                    continue;
                };
                match invoke(&mut c, id, &shared, &mut t).await {
                    Err(true) => {
                        t.reconnects += 1;
                        session = None;
                        continue;
                    }
                    _ => *used += 1,
                }
                if *used >= limit {
                    close(&mut c, id, &mut t).await;
                    session = None;
                }
            }
            if let Some((id, _)) = session {
                close(&mut c, &id, &mut t).await;
            }
        }
    }
    t
}

impl Mode {
    /// What one unit of this mode's throughput is: the operation counted
    /// and its name for people.
    fn unit(self) -> (&'static str, &'static str) {
        match self {
            Mode::PerRequest => ("open", "sessions"),
            Mode::Call => ("call", "calls"),
            Mode::Reuse | Mode::Pool | Mode::Churn => ("invoke", "invokes"),
        }
    }

    /// The mode's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Reuse => "reuse",
            Mode::PerRequest => "per-request",
            Mode::Pool => "pool",
            Mode::Churn => "churn",
            Mode::Call => "call",
        }
    }
}

/// Two runs against the same gateway, one after the other, and the ratio
/// of their throughputs (`gatehouse bench --compare`): the figure this
/// machine's noise leaves meaningful.
pub struct Comparison {
    /// The run of `--mode`.
    pub run: Report,
    /// The run of `--compare`, made first.
    pub baseline: Report,
}

impl Comparison {
    /// `run`'s units per second over `baseline`'s.
    pub fn ratio(&self) -> f64 {
        let base = self.baseline.units_per_sec();
        if base > 0.0 {
            self.run.units_per_sec() / base
        } else {
            0.0
        }
    }

    fn line(&self) -> String {
        format!(
            "{}: {:.1} {}/s = {:.2}x {} ({:.1} {}/s)",
            self.run.options.mode.name(),
            self.run.units_per_sec(),
            self.run.options.mode.unit().1,
            self.ratio(),
            self.baseline.options.mode.name(),
            self.baseline.units_per_sec(),
            self.baseline.options.mode.unit().1,
        )
    }

    /// Both reports and the ratio, as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "baseline": self.baseline.to_json(),
            "run": self.run.to_json(),
            "ratio": self.ratio(),
            "summary": self.line(),
        })
    }

    /// Both reports and the ratio, for people.
    pub fn to_text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.baseline.to_text(),
            self.run.to_text(),
            self.line()
        )
    }
}

/// Runs `compare` and then `options`' own mode, with otherwise the same
/// options, against the same gateway.
pub async fn compare(client: Client, options: BenchOptions, compare: Mode) -> Comparison {
    let baseline = run(
        client.clone(),
        BenchOptions {
            mode: compare,
            ..options.clone()
        },
    )
    .await;
    let run = run(client, options).await;
    Comparison { run, baseline }
}

impl Report {
    /// Completed units of the run's mode per second: sessions for
    /// `per-request`, calls for `call`, invokes otherwise.
    pub fn units_per_sec(&self) -> f64 {
        let (op, _) = self.options.mode.unit();
        let count = self.tally.ops.get(op).map_or(0, |o| o.hist.len());
        count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn rows(&self) -> Vec<(&'static str, Value)> {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        self.tally
            .ops
            .iter()
            .filter(|(_, op)| !op.hist.is_empty())
            .map(|(name, op)| {
                let h = &op.hist;
                (
                    *name,
                    json!({
                        "count": h.len(),
                        "per_sec": h.len() as f64 / secs,
                        "p50_us": h.value_at_quantile(0.5),
                        "p90_us": h.value_at_quantile(0.9),
                        "p99_us": h.value_at_quantile(0.99),
                        "max_us": h.max(),
                    }),
                )
            })
            .collect()
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let o = &self.options;
        json!({
            "backend": o.backend,
            "mode": format!("{:?}", o.mode).to_lowercase(),
            "concurrency": o.concurrency,
            "command": o.command,
            "payload_bytes": o.payload.len(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "operations": self.rows().into_iter().map(|(k, v)| (k.to_string(), v)).collect::<serde_json::Map<String, Value>>(),
            "errors": self.tally.errors,
            "sessions": {
                "created": self.tally.created,
                "closed": self.tally.closed,
                "reconnects": self.tally.reconnects,
            },
        })
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let o = &self.options;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:?} mode, concurrency {}, {:.1}s, backend {}, command {} ({} B)",
            o.mode,
            o.concurrency,
            self.elapsed.as_secs_f64(),
            o.backend,
            o.command,
            o.payload.len()
        );
        let _ = writeln!(
            s,
            "{:<8} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9}",
            "op", "count", "per sec", "p50", "p90", "p99", "max"
        );
        let us = |v: &Value| format_us(v.as_u64().unwrap_or(0));
        for (name, r) in self.rows() {
            let _ = writeln!(
                s,
                "{:<8} {:>10} {:>12.1} {:>9} {:>9} {:>9} {:>9}",
                name,
                r["count"].as_u64().unwrap_or(0),
                r["per_sec"].as_f64().unwrap_or(0.0),
                us(&r["p50_us"]),
                us(&r["p90_us"]),
                us(&r["p99_us"]),
                us(&r["max_us"]),
            );
        }
        if self.tally.errors.is_empty() {
            let _ = writeln!(s, "errors: none");
        } else {
            let list: Vec<String> = self
                .tally
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(s, "errors: {}", list.join(", "));
        }
        let _ = writeln!(
            s,
            "sessions: created {}, closed {}, reconnects after NOT_FOUND {}",
            self.tally.created, self.tally.closed, self.tally.reconnects
        );
        s
    }
}

fn format_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        format!("{us}us")
    }
}
