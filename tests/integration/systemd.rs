//! systemd's notify protocol through the real binary, as a `Type=notify`
//! unit (deploy/systemd/gatehouse.service) sees it: the test binds the
//! socket `NOTIFY_SOCKET` names and reads what the gateway says.

use std::time::Duration;

use gatehouse::proto::v1 as pb;
use gatehouse::proto::v1::gateway_client::GatewayClient;
use tokio::net::UnixDatagram;

use crate::fixtures::*;

/// How long the first `READY=1` may take: the backends compile first.
const LOADING: Duration = Duration::from_secs(120);

/// The socket a service manager would listen on, and every line it read.
struct NotifySocket {
    socket: UnixDatagram,
    /// The `NOTIFY_SOCKET` value.
    name: String,
    heard: Vec<String>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    /// A socket at a path in a temp dir.
    fn at_path() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for the socket");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        Self {
            socket,
            name: path.display().to_string(),
            heard: Vec::new(),
            _dir: dir,
        }
    }

    /// A socket in the abstract namespace (`@name`).
    fn abstract_name() -> Self {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "gatehouse-test-notify-{}-{}",
            std::process::id(),
            free_port()
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("an abstract address");
        let std_socket =
            std::os::unix::net::UnixDatagram::bind_addr(&addr).expect("binding the socket");
        std_socket.set_nonblocking(true).expect("nonblocking");
        Self {
            socket: UnixDatagram::from_std(std_socket).expect("a tokio socket"),
            name: format!("@{name}"),
            heard: Vec::new(),
            _dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    /// Reads datagrams until a line equals `line`, within `limit`.
    async fn until(&mut self, line: &str, limit: Duration) {
        let mut buf = vec![0u8; 4096];
        let read = async {
            loop {
                let n = self
                    .socket
                    .recv(&mut buf)
                    .await
                    .expect("reading the socket");
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = text.lines().any(|l| l == line);
                self.heard.extend(text.lines().map(str::to_string));
                if found {
                    return;
                }
            }
        };
        if tokio::time::timeout(limit, read).await.is_err() {
            panic!("no {line} within {limit:?}; heard {:?}", self.heard);
        }
    }

    /// The state changes heard so far, in order (no watchdog or status).
    fn states(&self) -> Vec<&str> {
        self.heard
            .iter()
            .map(String::as_str)
            .filter(|l| ["READY=1", "RELOADING=1", "STOPPING=1"].contains(l))
            .collect()
    }
}

fn config() -> String {
    Toml::new().backend("echo", "builtin:echo").render()
}

#[tokio::test]
async fn a_notify_unit_hears_ready_reloading_ready_stopping_and_the_watchdog() {
    let mut notify = NotifySocket::at_path();
    let port = free_port();
    let starting = Gatehouse::builder(config())
        .listen(format!("127.0.0.1:{port}"))
        .env("NOTIFY_SOCKET", &notify.name)
        .env("WATCHDOG_USEC", "200000")
        .spawn();

    // READY=1 means the backends serve: a call made the moment it arrives
    // must not be refused as "starting".
    notify.until("READY=1", LOADING).await;
    let mut early = GatewayClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("the gRPC port listens at READY=1");
    let listed = early
        .list_backends(pb::ListBackendsRequest::default())
        .await
        .expect("ListBackends answers at READY=1")
        .into_inner();
    assert!(listed.backends.iter().any(|b| b.name == "echo"));
    let mut gw = starting.ready().await;

    // WATCHDOG_USEC=200ms: answered every 100ms.
    notify.until("WATCHDOG=1", PATIENCE).await;

    gw.sighup();
    notify.until("RELOADING=1", PATIENCE).await;
    notify.until("READY=1", PATIENCE).await;
    gw.wait_metric("gatehouse_reloads_total", &[("result", "ok")], 1.0)
        .await;
    assert!(
        notify
            .heard
            .iter()
            .any(|l| l.starts_with("MONOTONIC_USEC=")),
        "RELOADING=1 comes with MONOTONIC_USEC: {:?}",
        notify.heard
    );

    let status = gw.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    notify.until("STOPPING=1", PATIENCE).await;
    assert_eq!(
        notify.states(),
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    );
}

#[tokio::test]
async fn a_refused_reload_still_ends_in_ready_and_abstract_sockets_work() {
    let mut notify = NotifySocket::abstract_name();
    let mut gw = Gatehouse::builder(config())
        .env("NOTIFY_SOCKET", &notify.name)
        .start()
        .await;
    notify.until("READY=1", LOADING).await;

    std::fs::write(gw.dir().join("gatehouse.toml"), "[[backends]\nbroken")
        .expect("breaking the config");
    gw.sighup();
    notify.until("RELOADING=1", PATIENCE).await;
    notify.until("READY=1", PATIENCE).await;
    gw.wait_metric("gatehouse_reloads_total", &[("result", "error")], 1.0)
        .await;

    let status = gw.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    notify.until("STOPPING=1", PATIENCE).await;
    assert_eq!(
        notify.states(),
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    );
    assert!(
        !notify.heard.iter().any(|l| l == "WATCHDOG=1"),
        "no watchdog without WATCHDOG_USEC: {:?}",
        notify.heard
    );
}
