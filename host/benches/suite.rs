//! The gatehouse benchmark suite: `cargo bench --bench suite`.
//!
//! Every figure is measured next to its baseline in the same run, on the
//! same engine settings, and reported as a ratio, because one machine's
//! absolute numbers drift between runs:
//!
//! - session open, host side: `Registry::open` (+ close) of an `echo`
//!   session vs a bare `Store::new` + instantiate + `open` of the same
//!   component on the same engine;
//! - host-side dispatch: a command through the session task vs a direct
//!   typed call into an instance;
//! - Invoke over gRPC on loopback vs a bare tonic unary server answering the
//!   same `Invoke` message, same client, same concurrency;
//! - invokes/s at concurrency 1, 8 and 64; events/s on one stream;
//! - density: RSS and open time with 1,000 and 10,000 idle sessions;
//! - native: open of `sim-device`, cold and from the warm pool, vs a wasm
//!   open in the same run;
//! - recovery: a snapshot after every command on a kv session of 1,000
//!   keys vs none, and a restart (fault to READY) vs a fresh open, wasm and
//!   native.
//!
//! `GATEHOUSE_BENCH_QUICK=1` runs a shorter version;
//! `GATEHOUSE_BENCH_ONLY=open,native` (any of density, open, native,
//! recovery, grpc, tls)
//! runs only those sections, for profiling (`GATEHOUSE_BENCH_ROUNDS` sets
//! the open section's rounds); `GATEHOUSE_BENCH_LOG=filter`
//! logs the gateway's own events (spawn and handshake timings) to stderr.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::backend::Command;
use gatehouse::backend::wasm::{RuntimeOptions, WasmRuntime};
use gatehouse::config::Config;
use gatehouse::loadgen::{BenchOptions, Mode};
use gatehouse::metrics::Metrics;
use gatehouse::proto::v1 as pb;
use gatehouse::proto::v1::gateway_client::GatewayClient;
use gatehouse::proto::v1::gateway_server::{Gateway, GatewayServer};
use gatehouse::registry::{CallRequest, Caller, OpenRequest, Registry};
use tonic::{Request, Response, Status};

#[path = "suite/recovery.rs"]
mod recovery;

fn quick() -> bool {
    std::env::var_os("GATEHOUSE_BENCH_QUICK").is_some()
}

/// Whether `GATEHOUSE_BENCH_ONLY` (comma-separated) selects `section`.
fn selected(section: &str) -> bool {
    std::env::var("GATEHOUSE_BENCH_ONLY")
        .map_or(true, |only| only.split(',').any(|s| s.trim() == section))
}

/// Latency samples in microseconds.
struct Samples(Vec<f64>);

impl Samples {
    fn new() -> Self {
        Samples(Vec::new())
    }
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e6);
    }
    fn pct(&mut self, p: f64) -> f64 {
        self.0.sort_by(|a, b| a.total_cmp(b));
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0.get(i).copied().unwrap_or(f64::NAN)
    }
}

fn row(name: &str, ours: f64, base: f64, unit: &str) {
    println!(
        "| {name} | {ours:.1} {unit} | {base:.1} {unit} | {:.2}x |",
        ours / base
    );
}

/// Memory mappings of this process (`vm.max_map_count` caps them).
fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn registry(max_sessions: usize) -> Arc<Registry> {
    registry_with(max_sessions, |_| {})
}

/// A registry of the built-in backends, after `adjust` has had the config.
fn registry_with(max_sessions: usize, adjust: impl FnOnce(&mut Config)) -> Arc<Registry> {
    let mut config = Config::builtin();
    config.server.max_sessions = max_sessions;
    config.server.cache_dir = None;
    adjust(&mut config);
    gatehouse::server::build_registry(&config, Arc::new(Metrics::new()), Default::default())
        .expect("registry")
        .0
}

fn echo() -> OpenRequest {
    OpenRequest {
        backend: "echo".into(),
        ..OpenRequest::default()
    }
}

async fn open_section(n: usize) {
    let runtime = WasmRuntime::new(&RuntimeOptions {
        max_sessions: 64,
        max_memory_bytes: 64 << 20,
        epoch_tick: Duration::from_millis(10),
        max_reply_bytes: 1 << 20,
        max_snapshot_bytes: 1 << 20,
    })
    .expect("runtime");
    let bare = runtime
        .bare(gatehouse::builtin::component("echo").expect("echo"))
        .expect("bare");
    let reg = registry(64);
    let me = Caller::local();

    let (mut bare_open, mut bare_cycle) = (Samples::new(), Samples::new());
    let (mut gh_open, mut gh_cycle, mut gh_invoke_cycle, mut gh_call) = (
        Samples::new(),
        Samples::new(),
        Samples::new(),
        Samples::new(),
    );
    let one_call = CallRequest {
        backend: "echo".into(),
        config: Default::default(),
        command: cmd(),
        command_timeout: None,
    };
    for round in 0..n + n / 10 {
        let warm = round >= n / 10;
        let t = Instant::now();
        let mut inst = bare.open().await.expect("bare open");
        let opened = t.elapsed();
        inst.call("echo", b"0123456789abcdef")
            .await
            .expect("bare call");
        drop(inst);
        let cycle = t.elapsed();
        if warm {
            bare_open.push(opened);
            bare_cycle.push(cycle);
        }

        let t = Instant::now();
        let s = reg.open(&me, echo()).await.expect("open");
        let opened = t.elapsed();
        reg.close(&me, &s.id).await.expect("close");
        let cycle = t.elapsed();
        let t = Instant::now();
        let s = reg.open(&me, echo()).await.expect("open");
        reg.invoke(&me, &s.id, vec![cmd()], None)
            .await
            .expect("invoke");
        reg.close(&me, &s.id).await.expect("close");
        let invoke_cycle = t.elapsed();
        let t = Instant::now();
        reg.call(&me, one_call.clone(), None).await.expect("call");
        let call = t.elapsed();
        if warm {
            gh_open.push(opened);
            gh_cycle.push(cycle);
            gh_invoke_cycle.push(invoke_cycle);
            gh_call.push(call);
        }
    }
    println!("\n### Session open, host side ({n} rounds, p50 / p99 in us)\n");
    println!("| figure | gatehouse | bare wasmtime | ratio |\n|---|---|---|---|");
    row("open, p50", gh_open.pct(0.5), bare_open.pct(0.5), "us");
    row("open, p99", gh_open.pct(0.99), bare_open.pct(0.99), "us");
    row(
        "open + one invoke + close, p50",
        gh_invoke_cycle.pct(0.5),
        bare_cycle.pct(0.5),
        "us",
    );
    row(
        "one-shot `Call` (fresh instance, command, close), p50",
        gh_call.pct(0.5),
        bare_cycle.pct(0.5),
        "us",
    );
    println!(
        "| open + close (no invoke), p50 | {:.1} us | | |",
        gh_cycle.pct(0.5)
    );

    // Dispatch: the same command through the session task vs a direct call.
    let rounds = n * 4;
    let s = reg.open(&me, echo()).await.expect("open");
    let mut inst = bare.open().await.expect("bare open");
    let (mut ours, mut base) = (Samples::new(), Samples::new());
    for round in 0..rounds + rounds / 10 {
        let t = Instant::now();
        reg.invoke(&me, &s.id, vec![cmd()], None)
            .await
            .expect("invoke");
        let a = t.elapsed();
        let t = Instant::now();
        inst.call("echo", b"0123456789abcdef").await.expect("call");
        let b = t.elapsed();
        if round >= rounds / 10 {
            ours.push(a);
            base.push(b);
        }
    }
    println!("\n### Host-side dispatch ({rounds} calls of echo, 16 B)\n");
    println!(
        "| figure | through the session task | direct typed call | ratio |\n|---|---|---|---|"
    );
    let (o, b) = (ours.pct(0.5), base.pct(0.5));
    row("one command, p50", o, b, "us");
    println!("| difference, p50 | {:.1} us | | |", o - b);
}

fn cmd() -> Command {
    Command {
        name: "echo".into(),
        payload: b"0123456789abcdef".to_vec(),
    }
}

/// A bare tonic server answering `Invoke` with the payload: the transport's
/// floor, same messages and codec as the gateway.
struct BareEcho;

#[tonic::async_trait]
impl Gateway for BareEcho {
    async fn list_backends(
        &self,
        _: Request<pb::ListBackendsRequest>,
    ) -> Result<Response<pb::ListBackendsResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn open_session(
        &self,
        _: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        Ok(Response::new(pb::OpenSessionResponse {
            session: Some(pb::SessionInfo {
                session_id: "bare".into(),
                ..Default::default()
            }),
        }))
    }
    async fn invoke(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(pb::InvokeResponse {
            payload: r.command.map(|c| c.payload).unwrap_or_default(),
            error: None,
            correlation_id: r.correlation_id,
        }))
    }
    async fn invoke_batch(
        &self,
        _: Request<pb::InvokeBatchRequest>,
    ) -> Result<Response<pb::InvokeBatchResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    type StreamEventsStream = futures::stream::Empty<Result<pb::Event, Status>>;
    async fn stream_events(
        &self,
        _: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn renew_lease(
        &self,
        _: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_session(
        &self,
        _: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn close_session(
        &self,
        _: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        Ok(Response::new(pb::CloseSessionResponse::default()))
    }

    async fn restart_session(
        &self,
        _: Request<pb::RestartSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn upgrade_session(
        &self,
        _: Request<pb::UpgradeSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn call(
        &self,
        _: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
}

async fn bare_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GatewayServer::new(BareEcho))
            .serve_with_incoming(incoming),
    );
    addr
}

async fn gatehouse_server() -> SocketAddr {
    gatehouse_server_with(None).await
}

async fn gatehouse_server_with(tls: Option<gatehouse::config::TlsFiles>) -> SocketAddr {
    let mut config = Config::builtin();
    config.server.tls = tls;
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.server.metrics_listen = None;
    config.server.cache_dir = None;
    config.server.max_sessions = 256;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(gatehouse::server::serve_until(
        config,
        move |a| {
            let _ = tx.send(a.grpc);
        },
        std::future::pending(),
    ));
    rx.await.expect("gatehouse started")
}

async fn client(addr: SocketAddr) -> gatehouse::loadgen::Client {
    client_with(addr, None).await
}

/// A client over plaintext, or over TLS trusting the CA PEM `ca`.
async fn client_with(addr: SocketAddr, ca: Option<&str>) -> gatehouse::loadgen::Client {
    let scheme = if ca.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true);
    if let Some(ca) = ca {
        endpoint = endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )
            .expect("TLS config");
    }
    let channel = endpoint.connect().await.expect("connect");
    GatewayClient::with_interceptor(
        channel,
        gatehouse::client::BearerKey::new(None).expect("no key"),
    )
}

fn load(
    concurrency: usize,
    secs: f64,
    command: &str,
    payload: &[u8],
    subscribe: bool,
) -> BenchOptions {
    BenchOptions {
        backend: "echo".into(),
        mode: Mode::Reuse,
        concurrency,
        duration: Some(Duration::from_secs_f64(secs)),
        count: None,
        command: command.into(),
        payload: payload.to_vec(),
        churn_after: 1,
        pool_size: 1,
        subscribe,
        progress: false,
    }
}

fn rate(report: &gatehouse::loadgen::Report, op: &str) -> (f64, f64) {
    let v = report.to_json();
    (
        v["operations"][op]["per_sec"].as_f64().unwrap_or(0.0),
        v["operations"][op]["p50_us"].as_f64().unwrap_or(0.0),
    )
}

async fn grpc_section() {
    let secs = if quick() { 1.0 } else { 3.0 };
    let ours = gatehouse_server().await;
    let bare = bare_server().await;
    let (ours_c, bare_c) = (client(ours).await, client(bare).await);
    println!("\n### Invoke over gRPC on loopback (echo, 16 B, {secs}s each)\n");
    println!(
        "| concurrency | gatehouse invokes/s | bare tonic req/s | ratio | gatehouse p50 | bare p50 | p50 ratio |\n|---|---|---|---|---|---|---|"
    );
    invoke_rows(&ours_c, &bare_c, &[1, 8, 64], secs).await;
    // Events: one session, one stream, `emit 1000` in a loop.
    let events =
        gatehouse::loadgen::run(ours_c.clone(), load(1, secs, "emit", b"1000", true)).await;
    let (ev, lat) = rate(&events, "event");
    println!("\n### Events on one stream\n\n| figure | value |\n|---|---|");
    println!("| events/s delivered | {ev:.0} |\n| emit to receipt, p50 | {lat:.0} us |");
}

/// One table row per concurrency: echo invokes through `a` next to `b`
/// (rates, p50s and their ratios), each for `secs`.
async fn invoke_rows(
    a: &gatehouse::loadgen::Client,
    b: &gatehouse::loadgen::Client,
    concurrencies: &[usize],
    secs: f64,
) {
    for &c in concurrencies {
        let ra =
            gatehouse::loadgen::run(a.clone(), load(c, secs, "echo", b"0123456789abcdef", false))
                .await;
        let rb =
            gatehouse::loadgen::run(b.clone(), load(c, secs, "echo", b"0123456789abcdef", false))
                .await;
        let ((ra, pa), (rb, pb_)) = (rate(&ra, "invoke"), rate(&rb, "invoke"));
        println!(
            "| {c} | {ra:.0} | {rb:.0} | {:.2}x | {pa:.0} us | {pb_:.0} us | {:.2}x |",
            ra / rb,
            pa / pb_
        );
    }
}

/// Invoke over TLS next to plaintext, same gateway config, same client.
async fn tls_section() {
    let secs = if quick() { 1.0 } else { 3.0 };
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
    let key = rcgen::KeyPair::generate().expect("server key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server cert");
    let files = gatehouse::config::TlsFiles {
        cert: dir.path().join("server.pem"),
        key: dir.path().join("server.key"),
        client_ca: None,
    };
    std::fs::write(&files.cert, cert.pem()).expect("writing the cert");
    std::fs::write(&files.key, key.serialize_pem()).expect("writing the key");
    let plain = client(gatehouse_server().await).await;
    let tls = client_with(gatehouse_server_with(Some(files)).await, Some(&ca.pem())).await;
    println!("\n### Invoke over TLS next to plaintext (echo, 16 B, {secs}s each)\n");
    println!(
        "| concurrency | TLS invokes/s | plaintext invokes/s | ratio | TLS p50 | plaintext p50 | p50 ratio |\n|---|---|---|---|---|---|---|"
    );
    invoke_rows(&tls, &plain, &[1, 64], secs).await;
}

/// A registry serving `sim-device` from the gatehouse binary with a warm
/// pool of `warm` workers, and `echo` for comparison.
fn native_registry(warm: usize, state_dir: &std::path::Path) -> Arc<Registry> {
    registry_with(64, |config| {
        config.server.state_dir = state_dir.to_path_buf();
        for spec in &mut config.backends {
            if let gatehouse::config::Runner::Native(native) = &mut spec.runner {
                // This process is the bench binary: name the real one.
                native.command[0] = env!("CARGO_BIN_EXE_gatehouse").into();
                native.warm_pool = warm;
            }
        }
    })
}

async fn native_section(n: usize) {
    let dirs = tempfile::tempdir().expect("state dirs");
    let cold = native_registry(0, &dirs.path().join("cold"));
    let warm = native_registry(4, &dirs.path().join("warm"));
    let me = Caller::local();
    let device = || OpenRequest {
        backend: gatehouse::builtin::SIM_DEVICE.into(),
        ..OpenRequest::default()
    };
    // Let the pool fill before the first warm open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut c, mut w, mut wasm) = (Samples::new(), Samples::new(), Samples::new());
    for round in 0..n + n / 10 {
        let measured = round >= n / 10;
        for (registry, request, samples) in [
            (&cold, device(), &mut c),
            (&warm, device(), &mut w),
            (&cold, echo(), &mut wasm),
        ] {
            let t = Instant::now();
            let s = registry.open(&me, request).await.expect("open");
            let opened = t.elapsed();
            registry.close(&me, &s.id).await.expect("close");
            if measured {
                samples.push(opened);
            }
        }
        // Time for the pool to refill (a cold start) between rounds. Busy,
        // not asleep: after a sleep every open would first pay for waking
        // the runtime's parked threads, wasm and native alike.
        let pause = Instant::now();
        while pause.elapsed() < Duration::from_millis(15) {
            tokio::task::yield_now().await;
        }
    }
    println!("\n### Native workers: open of sim-device, host side ({n} rounds)\n");
    println!("| figure | p50 | p99 | p50 vs wasm open |\n|---|---|---|---|");
    let wasm50 = wasm.pct(0.5);
    for (name, s) in [
        ("cold (spawn + handshake + open)", &mut c),
        ("from the warm pool", &mut w),
    ] {
        let p50 = s.pct(0.5);
        println!(
            "| {name} | {p50:.1} us | {:.1} us | {:.1}x |",
            s.pct(0.99),
            p50 / wasm50
        );
    }
    println!(
        "| wasm open of echo, same conditions | {wasm50:.1} us | {:.1} us | 1.0x |",
        wasm.pct(0.99)
    );
    cold.shutdown(Duration::from_secs(10)).await;
    warm.shutdown(Duration::from_secs(10)).await;
}

async fn density_section() {
    let counts: &[usize] = if quick() { &[1_000] } else { &[1_000, 10_000] };
    println!("\n### Density: idle echo sessions (one invoke each)\n");
    println!(
        "| sessions | RSS added | per session | mappings per session | open p50 | open p99 |\n|---|---|---|---|---|---|"
    );
    for &n in counts {
        let reg = registry(n);
        let me = Caller::local();
        let before = rss_kib();
        let maps_before = mappings();
        let mut opens = Samples::new();
        let mut held = Vec::with_capacity(n);
        let mut failed = None;
        for i in 0..n {
            let t = Instant::now();
            match reg.open(&me, echo()).await {
                Ok(s) => {
                    opens.push(t.elapsed());
                    let _ = reg.invoke(&me, &s.id, vec![cmd()], None).await;
                    held.push(s);
                }
                Err(e) => {
                    failed = Some((i, e.to_string()));
                    break;
                }
            }
        }
        let added = rss_kib().saturating_sub(before);
        let maps = mappings().saturating_sub(maps_before);
        println!(
            "| {} | {:.1} MiB | {:.1} KiB | {:.1} | {:.1} us | {:.1} us |",
            held.len(),
            added as f64 / 1024.0,
            added as f64 / held.len().max(1) as f64,
            maps as f64 / held.len().max(1) as f64,
            opens.pct(0.5),
            opens.pct(0.99)
        );
        if let Some((i, e)) = failed {
            println!("\nopening session {} failed: {e}", i + 1);
        }
        reg.shutdown(Duration::from_secs(30)).await;
    }
}

fn main() {
    // Off by default: logging costs, and the figures are without it.
    if let Ok(filter) = std::env::var("GATEHOUSE_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    // On a worker thread, as a gRPC handler would run: block_on's own thread
    // is not a runtime worker, so every hop to a session task from there
    // would pay for waking another OS thread.
    let suite = runtime.spawn(async {
        println!("## gatehouse benchmark suite\n");
        println!(
            "{} cores; `vm.max_map_count` {}\n",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::fs::read_to_string("/proc/sys/vm/max_map_count")
                .unwrap_or_default()
                .trim()
        );
        // Density first: engines live as long as the process (their epoch
        // ticker holds them), and the earlier sections' pools would use up
        // memory mappings the 10k run needs.
        if selected("density") {
            density_section().await;
        }
        if selected("open") {
            let rounds = std::env::var("GATEHOUSE_BENCH_ROUNDS").ok();
            let rounds = rounds.and_then(|r| r.parse().ok());
            open_section(rounds.unwrap_or(if quick() { 500 } else { 5_000 })).await;
        }
        if selected("native") {
            native_section(if quick() { 50 } else { 300 }).await;
        }
        if selected("recovery") {
            recovery::section(quick()).await;
        }
        if selected("grpc") {
            grpc_section().await;
        }
        if selected("tls") {
            tls_section().await;
        }
    });
    runtime.block_on(suite).expect("the suite ran");
}
