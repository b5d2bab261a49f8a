//! Runs the real `gatehouse` binary on loopback and talks to it over real
//! gRPC and HTTP.

use std::fmt::Write as _;
use std::future::Future;
use std::io::{BufRead, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gatehouse::proto::v1 as pb;
use gatehouse::proto::v1::gateway_client::GatewayClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// The client type every test uses.
pub type Client = GatewayClient<Channel>;

/// A client without client-side deadline enforcement; see
/// [`Gateway::raw_client`].
pub type RawClient = GatewayClient<
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        tonic::body::Body,
    >,
>;

/// How long any "eventually" condition may take before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How often conditions are re-checked.
const POLL: Duration = Duration::from_millis(20);

/// Builds a config file: `[server]` lines plus backends with optional
/// `[backends.sessions]` lines. Defining any backend replaces the built-in
/// set, so every test names what it uses.
#[derive(Default, Clone)]
pub struct Toml {
    server: Vec<String>,
    sessions: Vec<String>,
    backends: String,
}

impl Toml {
    /// A config with a 50ms sweep (so leases are checked promptly).
    pub fn new() -> Self {
        Self::default().server("sweep_interval = \"50ms\"")
    }

    /// Adds one `[server]` line, e.g. `max_sessions = 2`.
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.to_string());
        self
    }

    /// Adds one global `[sessions]` line.
    pub fn sessions(mut self, line: &str) -> Self {
        self.sessions.push(line.to_string());
        self
    }

    /// Adds a backend `name` running `module` (e.g. `builtin:echo`) with
    /// extra lines for its table and its `[backends.sessions]` table.
    pub fn backend_with(
        mut self,
        name: &str,
        module: &str,
        table: &[&str],
        sessions: &[&str],
    ) -> Self {
        let b = &mut self.backends;
        let _ = writeln!(b, "[[backends]]\nname = \"{name}\"\nmodule = \"{module}\"");
        for line in table {
            let _ = writeln!(b, "{line}");
        }
        if !sessions.is_empty() {
            let _ = writeln!(b, "[backends.sessions]");
            for line in sessions {
                let _ = writeln!(b, "{line}");
            }
        }
        b.push('\n');
        self
    }

    /// Adds a backend with default settings.
    pub fn backend(self, name: &str, module: &str) -> Self {
        self.backend_with(name, module, &[], &[])
    }

    /// The usual trio: `echo`, `kv`, and `chaos` with a 300ms command
    /// timeout.
    pub fn standard() -> Self {
        Self::new()
            .backend("echo", "builtin:echo")
            .backend("kv", "builtin:kv")
            .backend_with(
                "chaos",
                "builtin:chaos",
                &[],
                &["command_timeout = \"300ms\""],
            )
    }

    /// The file text.
    pub fn render(&self) -> String {
        let mut out = String::from("[server]\n");
        for line in &self.server {
            let _ = writeln!(out, "{line}");
        }
        if !self.sessions.is_empty() {
            out.push_str("\n[sessions]\n");
            for line in &self.sessions {
                let _ = writeln!(out, "{line}");
            }
        }
        out.push('\n');
        out.push_str(&self.backends);
        out
    }
}

/// A running gateway process. Killed on drop.
pub struct Gateway {
    child: Option<Child>,
    /// The gRPC address.
    pub grpc: SocketAddr,
    /// The Prometheus address.
    pub metrics_addr: SocketAddr,
    /// Held open so the child never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
    stderr_path: PathBuf,
    dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts `gatehouse serve` with `config` and waits for its "listening"
    /// line.
    pub async fn start(config: impl Into<String>) -> Gateway {
        let config = config.into();
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("gatehouse.toml");
        std::fs::write(&config_path, &config).expect("writing config");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env_remove("GATEHOUSE_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawning gatehouse");
        let stdout = child.stdout.take().expect("child stdout");
        let read = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let n = reader.read_line(&mut line);
            (reader, line, n)
        });
        let (reader, line) = match tokio::time::timeout(Duration::from_secs(60), read).await {
            Ok(Ok((reader, line, Ok(n)))) if n > 0 => (reader, line),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!(
                    "gatehouse did not report its addresses ({:?})\nconfig:\n{config}\nstderr:\n{log}",
                    other.map(|r| r.map(|(_, line, n)| (line, n.map_err(|e| e.to_string()))))
                );
            }
        };
        let (grpc, metrics_addr) = parse_listening(&line)
            .unwrap_or_else(|| panic!("unexpected first stdout line: {line:?}"));
        Gateway {
            child: Some(child),
            grpc,
            metrics_addr,
            _stdout: reader,
            stderr_path,
            dir,
        }
    }

    /// A new client on its own connection.
    pub async fn client(&self) -> Client {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connecting to gatehouse");
        GatewayClient::new(channel)
    }

    /// A client over a plain hyper HTTP/2 connection. A tonic `Channel`
    /// enforces a request's `grpc-timeout` on the client side (and reports
    /// CANCELLED when it fires); this client does not, so a test sees the
    /// status the server itself sends.
    pub fn raw_client(&self) -> RawClient {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http();
        let origin: tonic::codegen::http::Uri =
            format!("http://{}", self.grpc).parse().expect("origin URI");
        GatewayClient::with_origin(client, origin)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let fetch = async {
            let mut s = tokio::net::TcpStream::connect(self.metrics_addr).await?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let buf = tokio::time::timeout(PATIENCE, fetch)
            .await
            .expect("metrics request timed out")
            .expect("metrics request failed");
        let text = String::from_utf8(buf).expect("metrics are UTF-8");
        let (head, body) = text
            .split_once("\r\n\r\n")
            .expect("an HTTP response with a body");
        assert!(
            head.starts_with("HTTP/1.") && head.contains(" 200 "),
            "metrics status: {head}"
        );
        body.to_string()
    }

    /// The sum of every sample of `name` whose labels include `labels`
    /// (0 when there is none).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics().await, name, labels)
    }

    /// Waits until the metric equals `want`.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let what = format!("{name}{labels:?} == {want}");
        eventually(&what, || async {
            let text = self.metrics().await;
            let v = metric_sum(&text, name, labels);
            (v == want).then_some(())
        })
        .await;
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway already stopped").id()
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("gateway already stopped");
        let pid = child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        self.wait_exit(PATIENCE).await
    }

    /// Waits up to `limit` for the process to exit; panics if it does not.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("gateway already stopped");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for gatehouse") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "gatehouse did not exit within {limit:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What the gateway logged so far.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.stderr_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.stderr();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- gatehouse stderr (last {} lines, {}) ----",
                tail.len(),
                self.dir.path().display()
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix("gatehouse listening ")?;
    let mut grpc = None;
    let mut metrics = None;
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("grpc=") {
            grpc = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("metrics=") {
            metrics = v.parse().ok();
        }
    }
    Some((grpc?, metrics?))
}

/// Parses `{a="x",b="y"}` label sets of the Prometheus text format.
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 2..];
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        out.push((key, value));
        rest = &after[end..];
    }
    out
}

/// Every sample of `name` as (labels, value).
pub fn metric_samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(inner) = rest.strip_prefix('{') {
            let Some(close) = inner.rfind('}') else {
                continue;
            };
            (parse_labels(&inner[..close]), inner[close + 1..].trim())
        } else if rest.starts_with(' ') {
            (Vec::new(), rest.trim())
        } else {
            continue;
        };
        let value = value.split_whitespace().next().unwrap_or("");
        if let Ok(v) = value.parse::<f64>() {
            out.push((labels, v));
        }
    }
    out
}

/// The sum of the samples of `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_samples(text, name)
        .into_iter()
        .filter(|(have, _)| {
            labels
                .iter()
                .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
        })
        .fold(0.0, |sum, (_, v)| sum + v)
}

/// Polls `check` every 20ms until it returns `Some`, for at most
/// [`PATIENCE`]; panics naming `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, PATIENCE, check).await
}

/// [`eventually`] with an explicit limit.
pub async fn eventually_within<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Awaits `f` for at most [`PATIENCE`].
pub async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {PATIENCE:?}: {what}"),
    }
}

// ---- request helpers ---------------------------------------------------------

/// A protobuf duration.
pub fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// An open request for `backend` with everything else unset.
pub fn open_request(backend: &str) -> pb::OpenSessionRequest {
    pb::OpenSessionRequest {
        backend: backend.to_string(),
        ..Default::default()
    }
}

/// Opens a session on `backend` and returns its info.
pub async fn open(client: &mut Client, backend: &str) -> pb::SessionInfo {
    open_with(client, open_request(backend)).await
}

/// Opens a session with a 60s lease... or whatever `request` says.
pub async fn open_with(client: &mut Client, request: pb::OpenSessionRequest) -> pb::SessionInfo {
    let backend = request.backend.clone();
    bounded("OpenSession", client.open_session(request))
        .await
        .unwrap_or_else(|s| panic!("opening a session on {backend}: {s:?}"))
        .into_inner()
        .session
        .expect("OpenSession returned no session")
}

/// A command.
pub fn cmd(name: &str, payload: impl AsRef<[u8]>) -> pb::Command {
    pb::Command {
        name: name.to_string(),
        payload: payload.as_ref().to_vec(),
    }
}

/// An Invoke request.
pub fn invoke_request(
    session_id: &str,
    name: &str,
    payload: impl AsRef<[u8]>,
) -> pb::InvokeRequest {
    pb::InvokeRequest {
        session_id: session_id.to_string(),
        command: Some(cmd(name, payload)),
        correlation_id: String::new(),
    }
}

/// Invokes one command and returns the raw result.
pub async fn try_invoke(
    client: &mut Client,
    session_id: &str,
    name: &str,
    payload: impl AsRef<[u8]>,
) -> Result<pb::InvokeResponse, tonic::Status> {
    bounded(
        "Invoke",
        client.invoke(invoke_request(session_id, name, payload)),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Invokes one command that must succeed without a command error; returns the
/// reply payload as text.
pub async fn invoke_ok(
    client: &mut Client,
    session_id: &str,
    name: &str,
    payload: impl AsRef<[u8]>,
) -> String {
    let r = try_invoke(client, session_id, name, payload)
        .await
        .unwrap_or_else(|s| panic!("invoking {name}: {s:?}"));
    assert!(
        r.error.is_none(),
        "{name} returned a command error: {:?}",
        r.error
    );
    String::from_utf8(r.payload).expect("UTF-8 reply")
}

/// GetSession, which must succeed.
pub async fn get(client: &mut Client, session_id: &str) -> pb::SessionInfo {
    bounded(
        "GetSession",
        client.get_session(pb::GetSessionRequest {
            session_id: session_id.to_string(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetSession {session_id}: {s:?}"))
    .into_inner()
}

/// ListSessions, which must succeed.
pub async fn list(client: &mut Client) -> Vec<pb::SessionInfo> {
    bounded(
        "ListSessions",
        client.list_sessions(pb::ListSessionsRequest {}),
    )
    .await
    .expect("ListSessions")
    .into_inner()
    .sessions
}

/// A session as ListSessions shows it. Unlike GetSession, ListSessions does
/// not renew the lease, so it is how lease tests look without touching.
pub async fn peek(client: &mut Client, session_id: &str) -> Option<pb::SessionInfo> {
    list(client)
        .await
        .into_iter()
        .find(|s| s.session_id == session_id)
}

/// CloseSession, which must succeed.
pub async fn close(client: &mut Client, session_id: &str) -> pb::CloseSessionResponse {
    bounded(
        "CloseSession",
        client.close_session(pb::CloseSessionRequest {
            session_id: session_id.to_string(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("CloseSession {session_id}: {s:?}"))
    .into_inner()
}

/// Opens an event stream.
pub async fn subscribe(
    client: &mut Client,
    session_id: &str,
    resume_after: Option<u64>,
) -> Result<tonic::Streaming<pb::Event>, tonic::Status> {
    bounded(
        "StreamEvents",
        client.stream_events(pb::StreamEventsRequest {
            session_id: session_id.to_string(),
            resume_after_sequence: resume_after,
        }),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Opens an event stream, retrying while a just-dropped stream is still
/// being detached on the server (ALREADY_EXISTS).
pub async fn resubscribe(
    client: &mut Client,
    session_id: &str,
    resume_after: Option<u64>,
) -> tonic::Streaming<pb::Event> {
    eventually("the previous subscriber to detach", || {
        let mut c = client.clone();
        async move {
            match subscribe(&mut c, session_id, resume_after).await {
                Ok(s) => Some(s),
                Err(s) if s.code() == tonic::Code::AlreadyExists => None,
                Err(s) => panic!("StreamEvents: {s:?}"),
            }
        }
    })
    .await
}

/// The next event, which must arrive within [`PATIENCE`].
pub async fn next_event(stream: &mut tonic::Streaming<pb::Event>) -> pb::Event {
    bounded("the next event", stream.message())
        .await
        .expect("event stream failed")
        .expect("event stream ended early")
}

/// Waits for the stream to end; returns how it ended (`Ok` for a clean end).
pub async fn stream_end(stream: &mut tonic::Streaming<pb::Event>) -> Result<(), tonic::Status> {
    loop {
        match bounded("the event stream to end", stream.message()).await {
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(()),
            Err(s) => return Err(s),
        }
    }
}

/// Starts a `spin` on the session in the background and waits until the
/// gateway has it (the session's last activity moves).
pub async fn start_spin(
    c: &Client,
    s: &pb::SessionInfo,
) -> tokio::task::JoinHandle<Result<pb::InvokeResponse, tonic::Status>> {
    let spinning = {
        let mut c = c.clone();
        let id = s.session_id.clone();
        tokio::spawn(async move {
            c.invoke(invoke_request(&id, "spin", b""))
                .await
                .map(tonic::Response::into_inner)
        })
    };
    eventually("the spin to start", || {
        let mut c = c.clone();
        let id = s.session_id.clone();
        let opened = system_time(&s.last_activity_at);
        async move {
            let info = peek(&mut c, &id).await?;
            (system_time(&info.last_activity_at) > opened).then_some(())
        }
    })
    .await;
    spinning
}

/// The session's state as the wire enum.
pub fn state(s: &pb::SessionInfo) -> pb::SessionState {
    pb::SessionState::try_from(s.state).expect("a known state")
}

/// The session's close reason as the wire enum.
pub fn close_reason(s: &pb::SessionInfo) -> pb::CloseReason {
    pb::CloseReason::try_from(s.close_reason).expect("a known close reason")
}

/// A timestamp as `SystemTime`.
pub fn system_time(t: &Option<prost_types::Timestamp>) -> std::time::SystemTime {
    let t = t.as_ref().expect("timestamp is set");
    std::time::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

/// Asserts `result` is an error with `code`; returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
) -> tonic::Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got OK: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "wrong status: {s:?}");
            s
        }
    }
}
