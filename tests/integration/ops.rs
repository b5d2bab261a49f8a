//! Operations, through the real binary: the Rust client's event resume,
//! health transitions, reflection, metrics baselines, per-RPC log lines,
//! completions and help, and the Python client.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gatehouse::client::{Gateway, OpenOptions, ResumePolicy};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tonic::transport::Channel;

use crate::fixtures::*;

/// A free loopback port (bound, then released).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

// ---- the client resumes event streams --------------------------------------

/// A server-side stream cancel: `max_event_stream_age` makes the gateway end
/// every event stream with UNAVAILABLE after 300 ms while the session lives
/// on. The client resumes each time after the last sequence it saw.
#[tokio::test]
async fn client_events_resume_across_server_side_stream_ends() {
    let gh = Gatehouse::start("[server]\nmax_event_stream_age = \"300ms\"\n").await;
    let gateway = gh.connect().await;
    let session = gateway.open("echo").await.unwrap();
    // 30 ticks, 50 ms apart: about 1.5 s, so the stream is cut several times.
    session.invoke("ticks", "50,30").await.unwrap();
    let mut events = session.events();
    let mut sequences = Vec::new();
    while let Some(e) = events.next().await {
        let e = e.unwrap();
        assert_eq!(e.dropped_before, 0);
        sequences.push(e.sequence);
        if e.sequence == 30 {
            break;
        }
    }
    assert_eq!(sequences, (1..=30).collect::<Vec<_>>());
    assert!(events.resumes() >= 2, "resumed {} times", events.resumes());
    session.close().await.unwrap();
    let log = gh.stderr();
    assert!(
        log.lines().any(|l| l.contains("method=StreamEvents")
            && l.contains(&format!("session_id={}", session.id()))
            && l.contains("code=UNAVAILABLE")),
        "{log}"
    );
}

/// A dropped connection: the client talks to the gateway through a TCP
/// proxy that the test cuts (every socket closed) while the stream is open.
/// The client reconnects and resumes; the server notices the old stream is
/// gone, so the resume is accepted (at first perhaps after ALREADY_EXISTS).
#[tokio::test]
async fn client_events_resume_after_a_dropped_connection() {
    let gh = Gatehouse::start("").await;
    let proxy = Proxy::start(gh.grpc).await;
    let gateway = Gateway::connect(format!("http://{}", proxy.addr))
        .await
        .unwrap();
    let session = gateway.open("echo").await.unwrap();
    session.invoke("emit", "5").await.unwrap();
    let mut events = session.events().resume_policy(ResumePolicy {
        max_retries: 20,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(500),
    });
    for want in 1..=3 {
        assert_eq!(events.next().await.unwrap().unwrap().sequence, want);
    }
    let cut = proxy.cut();
    assert!(cut >= 1, "no connection to cut");
    // More events while the connection is down.
    let direct = Gateway::connect(gh.url()).await.unwrap();
    direct
        .session(session.id())
        .invoke("emit", "2")
        .await
        .unwrap();
    let mut rest = Vec::new();
    while rest.len() < 4 {
        rest.push(events.next().await.unwrap().unwrap().sequence);
    }
    // 4 and 5 replayed after the last one seen, then the new 6 and 7.
    assert_eq!(rest, vec![4, 5, 1 + 5, 2 + 5]);
    assert!(events.resumes() >= 1);
    session.close().await.unwrap();
    // A closed session ends the stream cleanly.
    assert!(events.next().await.is_none());
}

/// A TCP proxy whose connections can be cut.
struct Proxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let c = Arc::clone(&conns);
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c.lock().unwrap().push(conn.abort_handle());
            }
        });
        Self { addr, conns, task }
    }

    /// Closes every open connection; returns how many.
    fn cut(&self) -> usize {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        let n = conns.iter().filter(|c| !c.is_finished()).count();
        for c in conns {
            c.abort();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

// ---- health ---------------------------------------------------------------------

async fn grpc_health(addr: SocketAddr, service: &str) -> Result<i32, tonic::Status> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(r.into_inner().status)
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

/// The echo component with a custom section appended: a valid component
/// with its own digest, so it is compiled afresh (no cache hit).
fn distinct_echo(n: usize) -> Vec<u8> {
    let mut bytes = gatehouse::builtin::component("echo").unwrap().to_vec();
    let name = b"gatehouse-test";
    let payload = format!("{n}-{}-{:?}", std::process::id(), Instant::now());
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(payload.as_bytes());
    bytes.push(0); // custom section id
    let mut len = section.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.extend_from_slice(&section);
    bytes
}

/// Starting (backends still compiling: NOT_SERVING, /readyz 503, calls
/// UNAVAILABLE), serving, then draining (NOT_SERVING and 503 while a stuck
/// session takes its close timeout to be killed), then a clean exit.
#[tokio::test]
async fn health_goes_starting_serving_draining() {
    // Several distinct components make the load take a few seconds; the
    // ports are chosen up front because the ready line comes after it.
    let mut config = String::from(
        "[server]\nshutdown_timeout = \"30s\"\n\n\
         [[backends]]\nname = \"chaos\"\nmodule = \"builtin:chaos\"\n\
         [backends.sessions]\ncommand_timeout = \"60s\"\nclose_timeout = \"4s\"\n",
    );
    let components: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("echo{i}.wasm"), distinct_echo(i)))
        .collect();
    for (file, _) in &components {
        config.push_str(&format!(
            "\n[[backends]]\nname = \"{}\"\nmodule = \"{file}\"\n",
            file.trim_end_matches(".wasm")
        ));
    }
    let (grpc, http) = (free_port(), free_port());
    let mut start = Gatehouse::builder(config).listen(grpc).metrics_listen(http);
    for (file, bytes) in components {
        start = start.file(file, bytes);
    }
    let starting = start.spawn();

    // Starting: both ports answer before the backends are loaded.
    let (code, body) = eventually("/readyz to answer", Duration::from_secs(30), || async {
        http_get(http, "/readyz").await.ok()
    })
    .await;
    assert_eq!((code, body.trim()), (503, "starting"));
    assert_eq!(http_get(http, "/healthz").await.unwrap().0, 200);
    assert_eq!(grpc_health(grpc, "").await.unwrap(), NOT_SERVING);
    assert_eq!(
        grpc_health(grpc, "gatehouse.v1.Gateway").await.unwrap(),
        NOT_SERVING
    );
    let early = Gateway::connect(format!("http://{grpc}")).await.unwrap();
    assert_eq!(
        early.backends().await.unwrap_err().code(),
        Some(Code::Unavailable)
    );

    // Serving, from the ready line on.
    let mut gh = starting.ready().await;
    assert_eq!(http_get(http, "/readyz").await.unwrap().0, 200);
    assert_eq!(grpc_health(grpc, "").await.unwrap(), SERVING);
    assert_eq!(
        grpc_health(grpc, "gatehouse.v1.Gateway").await.unwrap(),
        SERVING
    );
    assert_eq!(early.backends().await.unwrap().len(), 7);

    // A session stuck in a command: its close takes the 4 s close timeout.
    // The invoke touches the session just before the worker runs it, and
    // ListSessions does not touch, so a new last_activity_at means the
    // worker is spinning.
    let stuck = early.open("chaos").await.unwrap();
    let activity = || async { early.sessions().await.unwrap()[0].last_activity_at };
    let before = activity().await;
    let spinning = {
        let gateway = early.clone();
        let id = stuck.id().to_string();
        tokio::spawn(async move { gateway.session(id).invoke("spin", "").await })
    };
    eventually("the spin to start", Duration::from_secs(10), || async {
        (activity().await != before).then_some(())
    })
    .await;
    assert!(!spinning.is_finished());

    // Draining: NOT_SERVING and 503 while the session is being closed.
    gh.sigterm();
    eventually(
        "NOT_SERVING while draining",
        Duration::from_secs(3),
        || async { (grpc_health(grpc, "").await.ok() == Some(NOT_SERVING)).then_some(()) },
    )
    .await;
    assert_eq!(
        grpc_health(grpc, "gatehouse.v1.Gateway").await.unwrap(),
        NOT_SERVING
    );
    let (code, body) = http_get(http, "/readyz").await.unwrap();
    assert_eq!((code, body.trim()), (503, "draining"));
    assert_eq!(http_get(http, "/healthz").await.unwrap().0, 200);
    assert_eq!(
        early.open("echo0").await.unwrap_err().code(),
        Some(Code::Unavailable)
    );
    assert!(
        gh.exit_status().is_none(),
        "the gateway should still be draining"
    );

    // Then it kills the stuck worker and exits cleanly.
    let status = gh.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    assert!(spinning.await.unwrap().is_err());
    let log = gh.stderr();
    let drain = log.find("shutting down: draining sessions").unwrap();
    let closed = log.find("reason=gateway-shutdown").unwrap();
    assert!(drain < closed, "{log}");
}

// ---- reflection -----------------------------------------------------------------

#[tokio::test]
async fn reflection_lists_the_gateway_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let gh = Gatehouse::start("").await;
    let channel = Channel::from_shared(gh.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = futures::stream::iter(vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "gatehouse.v1.Gateway".into(),
        )),
    ]);
    let responses: Vec<ServerReflectionResponse> = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    let Some(MessageResponse::ListServicesResponse(list)) = &responses[0].message_response else {
        panic!("{:?}", responses[0]);
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"gatehouse.v1.Gateway"), "{names:?}");
    assert!(names.contains(&"gatehouse.admin.v1.Admin"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) = &responses[1].message_response
    else {
        panic!("{:?}", responses[1]);
    };
    let file: prost_types::FileDescriptorProto =
        prost::Message::decode(files.file_descriptor_proto[0].as_slice()).unwrap();
    assert_eq!(file.package(), "gatehouse.v1");
    let methods: Vec<&str> = file.service[0].method.iter().map(|m| m.name()).collect();
    assert!(methods.contains(&"OpenSession") && methods.contains(&"StreamEvents"));
}

/// Python's grpcio-reflection speaks only v1alpha (as do Postman and older
/// grpcurl): a new user listing services with it must not get
/// UNIMPLEMENTED. A session opened before keeps answering.
#[tokio::test]
async fn a_python_client_lists_services_through_v1alpha_reflection() {
    let probe = Command::new("python3")
        .args(["-c", "import grpc, grpc_reflection"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("GATEHOUSE_REQUIRE_PYTHON_PLUGIN").is_none(),
            "python3 with grpc_reflection is required: pip install grpcio grpcio-reflection"
        );
        eprintln!("skipped: python3 with grpcio-reflection is not installed");
        return;
    }
    let gh = Gatehouse::start(Toml::new().backend("echo", "builtin:echo").render()).await;
    let gw = gh.connect().await;
    let bystander = open_session(&gw, "echo").await;
    assert_eq!(reply(&bystander, "count", "").await, "1");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/reflection.py");
    let addr = gh.dial_addr().to_string();
    let out = bounded(
        "the Python reflection client",
        tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .arg(script)
                .arg(addr)
                .output()
                .unwrap()
        }),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    for want in [
        "service gatehouse.v1.Gateway",
        "service grpc.health.v1.Health",
        "method OpenSession",
        "method StreamEvents",
    ] {
        assert!(lines.contains(&want), "{want:?} missing from:\n{stdout}");
    }
    assert_eq!(reply(&bystander, "count", "").await, "2");
}

// ---- metrics --------------------------------------------------------------------

/// A burst of sessions (half closed by the client, half left to their 1 s
/// lease) leaves every gauge at its baseline and the counters balanced.
#[tokio::test]
async fn metrics_return_to_baseline_after_a_burst_of_sessions() {
    let gh = Gatehouse::start("[server]\nsweep_interval = \"100ms\"\n").await;
    let echo = [("backend", "echo")];
    let open = |text: &str| metric_sum(text, "gatehouse_open_sessions", &echo);
    let opened = |text: &str| metric_sum(text, "gatehouse_sessions_opened_total", &echo);
    let closed = |text: &str, reason: &str| {
        let labels = [("backend", "echo"), ("reason", reason)];
        metric_sum(text, "gatehouse_sessions_closed_total", &labels)
    };
    let before = gh.metrics().await;
    assert_eq!(open(&before), 0.0);

    let gateway = gh.connect().await;
    let burst = (0..40).map(|i| {
        let gateway = gateway.clone();
        async move {
            let s = gateway
                .open_with(OpenOptions::new("echo").lease(Duration::from_secs(1)))
                .await
                .unwrap();
            s.invoke("count", "").await.unwrap();
            s.invoke("emit", "3").await.unwrap();
            if i % 2 == 0 {
                s.close().await.unwrap();
            }
        }
    });
    futures::future::join_all(burst).await;
    assert_eq!(opened(&gh.metrics().await), 40.0);

    let after = eventually(
        "the gauges to return to baseline",
        Duration::from_secs(20),
        || async {
            let m = gh.metrics().await;
            (open(&m) == 0.0 && closed(&m, "lease-expired") == 20.0).then_some(m)
        },
    )
    .await;
    assert_eq!(closed(&after, "client-close"), 20.0);
    assert_eq!(opened(&after), 40.0);
    assert_eq!(
        metric_sum(
            &after,
            "gatehouse_events_emitted_total",
            &[("backend", "echo")]
        ),
        120.0
    );
    assert!(
        gateway
            .sessions()
            .await
            .unwrap()
            .iter()
            .all(|s| s.state == gatehouse::client::SessionState::Closed as i32)
    );
}

// ---- logs -----------------------------------------------------------------------

/// `--log-format json`: one `gatehouse::rpc` line per call with the method,
/// session id, status code and duration.
#[tokio::test]
async fn a_json_log_line_per_rpc_with_the_session_id() {
    let gh = Gatehouse::builder("")
        .metrics_listen("off")
        .args(["--log-format", "json"])
        .start()
        .await;
    let gateway = gh.connect().await;
    let session = gateway
        .open_with(OpenOptions::new("echo").correlation_id("order-17"))
        .await
        .unwrap();
    let sid = session.id().to_string();
    session
        .invoke_with(
            "echo",
            "hi",
            &gatehouse::client::CallOptions {
                correlation_id: Some("call-1".into()),
                timeout: None,
            },
        )
        .await
        .unwrap();
    assert!(
        session
            .invoke("nope", "")
            .await
            .unwrap_err()
            .command_error()
            .is_some()
    );
    session.close().await.unwrap();
    assert_eq!(
        gateway
            .session("missing")
            .refresh()
            .await
            .unwrap_err()
            .code(),
        Some(Code::NotFound)
    );

    let rpc_lines = |log: &str| -> Vec<serde_json::Value> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "gatehouse::rpc")
            .collect()
    };
    let lines = eventually("five rpc lines", Duration::from_secs(10), || {
        let lines = rpc_lines(&gh.stderr());
        async move { (lines.len() >= 5).then_some(lines) }
    })
    .await;
    let of = |method: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|v| v["method"] == method).collect()
    };
    let open = of("OpenSession");
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["session_id"], sid.as_str());
    assert_eq!(open[0]["correlation_id"], "order-17");
    assert_eq!(open[0]["backend"], "echo");
    assert_eq!(open[0]["tenant"], "default");
    let invokes = of("Invoke");
    assert_eq!(invokes.len(), 2);
    for line in &invokes {
        assert_eq!(line["session_id"], sid.as_str());
        assert_eq!(line["code"], "OK");
        assert_eq!(line["level"], "INFO");
        assert!(line["ms"].as_f64().is_some());
    }
    assert_eq!(invokes[0]["correlation_id"], "call-1");
    assert_eq!(of("CloseSession")[0]["session_id"], sid.as_str());
    let missing = of("GetSession");
    assert_eq!(missing[0]["session_id"], "missing");
    assert_eq!(missing[0]["code"], "NOT_FOUND");
    // Registry lines inside a call carry its span.
    let log = gh.stderr();
    let opened = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "session opened")
        .unwrap();
    assert_eq!(opened["span"]["name"], "rpc");
    assert_eq!(opened["span"]["method"], "OpenSession");
}

/// Text lines by default; the filter turns the per-RPC lines off.
#[tokio::test]
async fn rpc_lines_follow_the_log_filter() {
    let text = Gatehouse::start("").await;
    let s = text.connect().await.open("echo").await.unwrap();
    s.invoke("count", "").await.unwrap();
    let sid = s.id().to_string();
    let line = eventually("a text rpc line", Duration::from_secs(10), || {
        let log = text.stderr();
        let sid = sid.clone();
        async move {
            log.lines()
                .find(|l| l.contains("gatehouse::rpc") && l.contains("method=Invoke"))
                .filter(|l| l.contains(&format!("session_id={sid}")))
                .map(String::from)
        }
    })
    .await;
    assert!(line.contains("code=OK"), "{line}");
    assert!(!line.contains('\u{1b}'), "no colours in a file: {line}");

    let quiet = Gatehouse::builder("")
        .env("RUST_LOG", "info,gatehouse::rpc=warn")
        .start()
        .await;
    let s = quiet.connect().await.open("echo").await.unwrap();
    s.invoke("count", "").await.unwrap();
    s.close().await.unwrap();
    let log = quiet.stderr();
    assert!(log.contains("session closed"), "{log}");
    assert!(!log.contains("gatehouse::rpc"), "{log}");

    let bad = Command::new(BIN)
        .args(["serve", "--log-filter", "info,gatehouse=loud"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad log filter"));
}

// ---- the CLI: completions and help --------------------------------------------

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    for args in [
        &["no-such-command"][..],
        &["invoke"][..],
        &["sessions", "--no-such-flag"][..],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?} says why");
    }
    for args in [
        &["--help"][..],
        &["invoke", "--help"][..],
        &["--version"][..],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn completions_and_help_with_examples() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("gatehouse") && script.contains("invoke"),
            "{shell}"
        );
    }
    let commands = [
        "serve",
        "config",
        "backends",
        "open",
        "invoke",
        "events",
        "session",
        "renew",
        "sessions",
        "close",
        "completions",
    ];
    for cmd in commands {
        let out = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd}");
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(
            help.lines()
                .any(|l| l.starts_with("Example:") && l.contains("gatehouse")),
            "{cmd} --help has no example:\n{help}"
        );
    }
}

/// The CLI, now on the client library, keeps its output and exit codes.
#[tokio::test]
async fn the_cli_keeps_its_output_and_exit_codes() {
    let gh = Gatehouse::start("").await;
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("GATEHOUSE_ADDR", gh.grpc.to_string())
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, sid, _) = cli(&["open", "echo", "--lease", "30s"]);
    assert_eq!(code, 0);
    let sid = sid.trim();
    assert_eq!(cli(&["invoke", sid, "count"]).1, "1\n");
    let (code, _, err) = cli(&["invoke", sid, "nope"]);
    assert_eq!(code, 3);
    assert!(err.starts_with("command error (unknown-command):"), "{err}");
    assert_eq!(cli(&["invoke", sid, "emit", "2"]).0, 0);
    assert_eq!(cli(&["events", sid]).1, "#1 tick 1\n#2 tick 2\n");
    let (_, json, _) = cli(&["--json", "events", sid, "--resume-after", "1"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["sequence"], 2);
    assert_eq!(cli(&["close", sid]).1, format!("{sid} CLOSED\n"));
    assert_eq!(
        cli(&["close", sid]).1,
        format!("{sid} was already CLOSED\n")
    );
    let (code, _, err) = cli(&["session", "nope"]);
    assert_eq!(code, 2);
    assert_eq!(err, "error: NOT_FOUND: no session \"nope\"\n");
    let (code, _, err) = cli(&["--addr", "127.0.0.1:1", "backends"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: cannot connect to http://127.0.0.1:1"),
        "{err}"
    );
    // Each cause once: hyper nests two errors saying "tcp connect error".
    assert_eq!(err.matches("tcp connect error").count(), 1, "{err}");
}

/// Client options work before and after a client command, the one after
/// the command winning, and are refused, not ignored, before a command
/// they do nothing for.
#[test]
fn client_options_before_or_after_the_command() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("GATEHOUSE_ADDR", "127.0.0.1:3")
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    // The address dialled, from the connection error.
    let dialled = |args: &[&str]| {
        let (code, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        err.strip_prefix("error: cannot connect to http://")
            .and_then(|rest| rest.split(": ").next())
            .unwrap_or_else(|| panic!("{args:?}: {err}"))
            .to_string()
    };
    assert_eq!(dialled(&["backends"]), "127.0.0.1:3", "GATEHOUSE_ADDR");
    assert_eq!(
        dialled(&["--addr", "127.0.0.1:1", "backends"]),
        "127.0.0.1:1"
    );
    assert_eq!(
        dialled(&["backends", "--addr", "127.0.0.1:2"]),
        "127.0.0.1:2"
    );
    assert_eq!(
        dialled(&["--addr", "127.0.0.1:1", "sessions", "--addr", "127.0.0.1:2"]),
        "127.0.0.1:2"
    );
    let (code, err) = run(&["--addr", "127.0.0.1:1", "serve"]);
    assert_eq!(code, 64);
    assert_eq!(
        err,
        "error: --addr is an option of the client commands; `serve` does not take it\n"
    );
    let (code, err) = run(&["plugin", "new", "x", "--key", "k"]);
    assert_eq!(code, 64, "{err}");
}

/// Help lists the client options only under the client commands, and
/// shows which variable sets an option without showing its value (or an
/// empty one, as if it were set).
#[test]
fn help_lists_options_where_they_apply() {
    let help = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--help")
            .env_remove("GATEHOUSE_ADDR")
            .env("GATEHOUSE_KEY", "sekrit")
            .env("RUST_LOG", "")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for cmd in [&["serve"][..], &["plugin", "new"], &["config", "check"]] {
        let text = help(cmd);
        for flag in ["--addr", "--key", "--ca-cert", "--client-cert", "--json"] {
            assert!(!text.contains(flag), "{cmd:?} lists {flag}:\n{text}");
        }
    }
    let keys = help(&["keys", "new"]);
    assert!(
        keys.contains("--json") && !keys.contains("--addr"),
        "{keys}"
    );
    for cmd in [&[][..], &["backends"], &["invoke"], &["bench"]] {
        let text = help(cmd);
        for flag in ["--addr", "--key", "--ca-cert", "--client-cert", "--json"] {
            assert!(text.contains(flag), "{cmd:?} does not list {flag}:\n{text}");
        }
        assert!(text.contains("[env: GATEHOUSE_ADDR]"), "{text}");
        assert!(!text.contains("sekrit"), "{text}");
    }
    for cmd in [&["serve"][..], &["backends"]] {
        let text = help(cmd);
        assert!(
            !text.contains("=]"),
            "{cmd:?} shows an empty env value:\n{text}"
        );
    }
}

/// An empty reply prints nothing; the session list says why a session
/// closed; a key sent to a gateway in local mode is ignored, and the
/// gateway says so once.
#[tokio::test]
async fn empty_replies_close_reasons_and_ignored_keys() {
    let gh = Gatehouse::start("").await;
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("GATEHOUSE_ADDR", gh.grpc.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let sid = cli(&["open", "echo"]).trim().to_string();
    assert_eq!(cli(&["invoke", &sid, "echo"]), "");
    assert_eq!(cli(&["invoke", &sid, "echo", "hi"]), "hi\n");
    cli(&["close", &sid]);
    let list = cli(&["sessions"]);
    assert!(
        list.lines().next().unwrap().contains("CLOSE-REASON"),
        "{list}"
    );
    let row = list
        .lines()
        .find(|l| l.starts_with(&sid))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        row.contains("CLOSED") && row.contains("client-close"),
        "{row}"
    );

    let warning = "local development mode ignores keys";
    assert!(!gh.stderr().contains(warning));
    cli(&["--key", "not-a-key", "backends"]);
    cli(&["backends", "--key", "not-a-key"]);
    eventually("the ignored-key warning", PATIENCE, || async {
        gh.stderr().contains(warning).then_some(())
    })
    .await;
    assert_eq!(gh.stderr().matches(warning).count(), 1, "{}", gh.stderr());
}

// ---- a client written outside Rust ----------------------------------------------

/// The Python client package (`proto/clients/python`, installed with pip)
/// and its pytest suite against this binary, when Python has it installed
/// (CI installs it, and also runs the suite directly).
#[test]
fn the_python_client_package_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let probe = Command::new("python3")
        .args(["-c", "import gatehouse_client, pytest"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("GATEHOUSE_REQUIRE_PYTHON_PLUGIN").is_none(),
            "the Python client is required: pip install \"./proto/clients/python[test]\""
        );
        eprintln!("skipped: python3 with gatehouse_client and pytest is not installed");
        return;
    }
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(root.join("proto/clients/python/tests"))
        .env("GATEHOUSE_BIN", BIN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(" passed") && !stdout.contains("failed"),
        "{stdout}"
    );
}

/// Output piped into a reader that went away (`gatehouse ... | head`) ends
/// the command the Unix way, by SIGPIPE, not with a panic in `println!`.
#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    use std::os::fd::FromRawFd;
    use std::os::unix::process::ExitStatusExt;
    let mut fds = [0; 2];
    // SAFETY: pipe fills the two descriptors it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here.
    let (reader, writer) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    drop(reader);
    let out = Command::new(BIN)
        .args(["completions", "bash"])
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {stderr}",
        out.status
    );
}
