//! A hostile client through the real binary, on loopback only: silent
//! connections (plaintext and after a TLS handshake) cannot lock out other
//! clients or the health checks, idle connections end, a revoked or
//! expired key (or one a reload removed) keeps no stream, client text
//! cannot forge or flood a log line, and the low items: key lifetimes, a
//! repeated session header, the HTTP port's `Host` check and audited admin
//! refusals.

use std::net::SocketAddr;
use std::time::Duration;

use gatehouse::client::NewKey;
use gatehouse::keys::generate;
use gatehouse::proto::admin::v1 as admin;
use gatehouse::proto::v1 as pb;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tonic::Code;

use crate::fixtures::*;

/// A TCP connection to `to` from the loopback address `from` (another
/// "client address" on the same machine).
async fn dial_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().expect("a loopback address"))?;
    socket.connect(to).await
}

/// `n` connections from `from` that never send a byte.
async fn silent(n: usize, from: &str, to: SocketAddr) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(dial_from(from, to).await.expect("a TCP connect"));
    }
    out
}

/// Whether the gateway has closed `stream` (EOF or an error) within `limit`.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // Bytes (a TLS alert, h2 settings): keep reading to the end.
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Whether a new client (from 127.0.0.1) gets an answer to ListBackends.
async fn served(gw: &Gatehouse) -> bool {
    let Ok(Ok(channel)) = tokio::time::timeout(Duration::from_secs(2), gw.try_channel(None)).await
    else {
        return false;
    };
    let mut c = pb::gateway_client::GatewayClient::new(channel);
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            c.list_backends(pb::ListBackendsRequest::default())
        )
        .await,
        Ok(Ok(_))
    )
}

fn echo_with(server: &str) -> String {
    Toml::new()
        .server(server)
        .backend("echo", "builtin:echo")
        .render()
}

#[tokio::test]
async fn one_address_holding_silent_sockets_does_not_lock_out_another() {
    // max_connections = 20: 5 per address by default.
    let gw = Gatehouse::start(echo_with("max_connections = 20")).await;
    let http = gw.metrics_addr.expect("the HTTP port");
    let mut held = silent(40, "127.0.0.2", gw.dial_addr()).await;
    held.extend(silent(40, "127.0.0.2", http).await);

    // Another address is served at once, on both ports.
    assert!(served(&gw).await, "a new client was locked out");
    assert_eq!(http_get(http, "/healthz").await.unwrap().0, 200);
    for port in ["grpc", "http"] {
        gw.wait_metric(
            "gatehouse_connections_refused_per_address_total",
            &[("port", port)],
            35.0,
        )
        .await;
    }
    let mut closed = 0;
    for s in &mut held {
        if closed_within(s, Duration::from_millis(50)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 70,
        "only {closed} of the 80 over the cap were closed"
    );
}

#[tokio::test]
async fn silent_connections_end_at_the_first_request_deadline() {
    let gw = Gatehouse::start(echo_with(
        "max_connections = 20\nmax_connections_per_address = \"off\"\nhealth_connections = 0\nfirst_request_timeout = \"1s\"",
    ))
    .await;
    let http = gw.metrics_addr.expect("the HTTP port");
    let mut held = silent(40, "127.0.0.2", gw.dial_addr()).await;
    held.extend(silent(40, "127.0.0.2", http).await);

    // Both ports are full; within the deadline (and some slack) the silent
    // ones are gone and everyone else is served again.
    eventually("a new client to be served", PATIENCE, || async {
        served(&gw).await.then_some(())
    })
    .await;
    eventually("/healthz to answer", PATIENCE, || async {
        matches!(http_get(http, "/healthz").await, Ok((200, _))).then_some(())
    })
    .await;
    for s in &mut held {
        assert!(
            closed_within(s, PATIENCE).await,
            "a silent connection stayed open"
        );
    }
    // Counted (and a connection that starts a request in time is not:
    // the watchdog's unit tests hold that one to the millisecond).
    for port in ["grpc", "http"] {
        let n = gw
            .metric(
                "gatehouse_connections_timed_out_total",
                &[("port", port), ("reason", "first-request")],
            )
            .await;
        assert!(n >= 20.0, "{port}: {n} connections timed out");
    }
    let mut c = gw.client().await;
    let sid = open(&mut c, "echo").await.session_id;
    assert_eq!(invoke_ok(&mut c, &sid, "count", b"").await, "1");
}

#[tokio::test]
async fn silent_tls_connections_end_at_the_first_request_deadline() {
    let ca = Ca::new("hardening CA");
    let server = ca.server("gateway");
    let tls = TlsClient::trusting(&ca);
    let config = String::from(
        "[server]\nmax_connections = 10\nmax_connections_per_address = \"off\"\nhealth_connections = 0\nfirst_request_timeout = \"1s\"\n\
         [server.tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         [[backends]]\nname = \"echo\"\nmodule = \"builtin:echo\"\n",
    );
    let gw = Gatehouse::builder(config)
        .file("server.pem", server.cert.clone())
        .file("server.key", server.key.clone())
        .tls_client(tls.clone())
        .start()
        .await;
    // Ten finished handshakes that then say nothing fill the port.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(tls.handshake(gw.dial_addr()).await.expect("a handshake"));
    }
    eventually("a new TLS client to be served", PATIENCE, || async {
        let channel = tokio::time::timeout(Duration::from_secs(2), gw.try_channel(Some(&tls)))
            .await
            .ok()?
            .ok()?;
        let mut c = pb::gateway_client::GatewayClient::new(channel);
        tokio::time::timeout(
            Duration::from_secs(2),
            c.list_backends(pb::ListBackendsRequest::default()),
        )
        .await
        .ok()?
        .ok()
    })
    .await;
    for s in &mut held {
        assert!(
            closed_within(s, PATIENCE).await,
            "a silent TLS connection stayed open"
        );
    }
    assert!(
        gw.metric(
            "gatehouse_connections_timed_out_total",
            &[("port", "grpc"), ("reason", "first-request")],
        )
        .await
            >= 10.0
    );
}

#[tokio::test]
async fn a_full_port_still_answers_its_health_checks() {
    use tonic_health::pb::health_client::HealthClient;

    let gw = Gatehouse::start(echo_with(
        "max_connections = 4\nmax_connections_per_address = \"off\"\nhealth_connections = 2\nfirst_request_timeout = \"60s\"",
    ))
    .await;
    let http = gw.metrics_addr.expect("the HTTP port");
    let mut grpc_held = silent(4, "127.0.0.2", gw.dial_addr()).await;
    let http_held = silent(4, "127.0.0.2", http).await;

    // HTTP: the reserve answers /healthz and /readyz, and nothing else.
    assert_eq!(http_get(http, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(http, "/readyz").await.unwrap().0, 200);
    assert_eq!(http_get(http, "/metrics").await.unwrap().0, 503);

    // gRPC: the health service answers on a reserved connection; the
    // gateway's own calls are refused UNAVAILABLE there.
    let channel = gw.try_channel(None).await.expect("a reserved connection");
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "gatehouse.v1.Gateway".into(),
        })
        .await
        .expect("a health answer on a full port")
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");
    let refused = pb::gateway_client::GatewayClient::new(channel)
        .list_backends(pb::ListBackendsRequest::default())
        .await
        .expect_err("a reserved connection serves only health checks");
    assert_eq!(refused.code(), Code::Unavailable);

    drop(http_held);
    drop(grpc_held.pop());
    eventually("a slot to come back", PATIENCE, || async {
        served(&gw).await.then_some(())
    })
    .await;
    assert!(
        gw.metric(
            "gatehouse_health_connections_admitted_total",
            &[("port", "http")]
        )
        .await
            >= 2.0
    );
    assert!(
        gw.metric(
            "gatehouse_health_connections_admitted_total",
            &[("port", "grpc")]
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn idle_connections_end_and_open_streams_do_not() {
    let gw = Gatehouse::start(echo_with("idle_timeout = \"1s\"")).await;
    let http = gw.metrics_addr.expect("the HTTP port");
    // A stream opened first, on a connection of its own.
    let mut c = gw.client().await;
    let sid = open(&mut c, "echo").await.session_id;
    let mut events = subscribe(&mut c, &sid, None).await.unwrap();

    // A keep-alive HTTP/1.1 connection that got its answer, then idles.
    let mut idle = TcpStream::connect(http).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut idle, PATIENCE).await,
        "an idle connection stayed open past server.idle_timeout"
    );
    gw.wait_metric(
        "gatehouse_connections_timed_out_total",
        &[("port", "http"), ("reason", "idle")],
        1.0,
    )
    .await;

    // The stream's connection was never idle: it still delivers.
    invoke_ok(&mut c, &sid, "emit", b"1").await;
    assert_eq!(next_event(&mut events).await.sequence, 1);
}

/// Tenants `ops` (an admin key) and `acme` (keys from the store), `beta`
/// (a key in the file), the echo backend and the key store in `data`.
struct Keys {
    admin: String,
    beta: String,
    config: String,
}

fn keyed(data: &std::path::Path) -> Keys {
    let (admin, admin_hash) = generate().expect("a key");
    let (beta, beta_hash) = generate().expect("a key");
    let config = Toml::new()
        .server(&format!("data_dir = {:?}", data.display().to_string()))
        .backend("echo", "builtin:echo")
        .render()
        + &format!(
            "\n[[tenants]]\nname = \"ops\"\n[[tenants.keys]]\nname = \"ops-admin\"\nhash = \"{admin_hash}\"\nscopes = [\"admin\"]\n\
             \n[[tenants]]\nname = \"acme\"\n\
             \n[[tenants]]\nname = \"beta\"\n[[tenants.keys]]\nname = \"beta-app\"\nhash = \"{beta_hash}\"\nscopes = [\"sessions:open\", \"sessions:use\", \"sessions:read\"]\n"
        );
    Keys {
        admin,
        beta,
        config,
    }
}

/// A gateway with the tenants of [`keyed`], and an admin connection to it.
async fn start_keyed(data: &std::path::Path) -> (Keys, Gatehouse, gatehouse::client::Gateway) {
    let k = keyed(data);
    let gw = Gatehouse::start(k.config.clone()).await;
    let admin = gatehouse::client::Gateway::connect(gw.url())
        .with_key(&k.admin)
        .await
        .unwrap();
    (k, gw, admin)
}

/// A key of `acme` from the store: (id, secret).
async fn store_key(gw: &Gatehouse, admin_key: &str, expires: Option<Duration>) -> (String, String) {
    let admin = gatehouse::client::Gateway::connect(gw.url())
        .with_key(admin_key)
        .await
        .unwrap();
    let created = admin
        .create_key(NewKey {
            tenant: "acme".into(),
            scopes: vec!["sessions:open,sessions:use,sessions:read".into()],
            expires_in: expires,
            ..Default::default()
        })
        .await
        .expect("creating a key");
    let info = created.info.expect("the key's info");
    (info.id, created.key)
}

/// A generated client sending `key`.
async fn keyed_client(gw: &Gatehouse, key: &str) -> Client {
    gatehouse::client::Gateway::connect(gw.url())
        .with_key(key)
        .await
        .unwrap()
        .raw()
}

#[tokio::test]
async fn a_revoked_expired_or_removed_key_keeps_no_stream() {
    let data = tempfile::tempdir().unwrap();
    let (k, gw, admin) = start_keyed(data.path()).await;

    // Revoked: the stream ends UNAUTHENTICATED, and the slot is free for
    // the owner's next key.
    let (id, key) = store_key(&gw, &k.admin, None).await;
    let mut c = keyed_client(&gw, &key).await;
    let sid = open(&mut c, "echo").await.session_id;
    let mut events = subscribe(&mut c, &sid, None).await.unwrap();
    invoke_ok(&mut c, &sid, "emit", b"1").await;
    assert_eq!(next_event(&mut events).await.sequence, 1);
    admin.revoke_key(id.clone()).await.expect("revoking");
    let end = stream_end(&mut events)
        .await
        .expect_err("the stream of a revoked key ends with an error");
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    assert!(end.message().contains("revoked"), "{end:?}");
    let (_, next_key) = store_key(&gw, &k.admin, None).await;
    let mut owner = keyed_client(&gw, &next_key).await;
    let mut again = subscribe(&mut owner, &sid, Some(1))
        .await
        .expect("the subscriber slot was freed");
    invoke_ok(&mut owner, &sid, "emit", b"1").await;
    assert_eq!(next_event(&mut again).await.sequence, 2);
    drop(again);

    // Expired: the stream ends at the key's expiry, by itself.
    let (_, brief) = store_key(&gw, &k.admin, Some(Duration::from_secs(2))).await;
    let mut c = keyed_client(&gw, &brief).await;
    let sid = open(&mut c, "echo").await.session_id;
    let mut events = subscribe(&mut c, &sid, None).await.unwrap();
    let end = stream_end(&mut events)
        .await
        .expect_err("the stream of an expired key ends with an error");
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    assert!(end.message().contains("expired"), "{end:?}");

    // Removed by a reload: the file's key of tenant beta goes.
    let mut c = keyed_client(&gw, &k.beta).await;
    let sid = open(&mut c, "echo").await.session_id;
    let mut events = subscribe(&mut c, &sid, None).await.unwrap();
    let without_beta =
        k.config[..k.config.find("\n[[tenants]]\nname = \"beta\"").unwrap()].to_string();
    std::fs::write(gw.dir().join("gatehouse.toml"), without_beta).unwrap();
    gw.sighup();
    let end = stream_end(&mut events)
        .await
        .expect_err("the stream of a removed key ends with an error");
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
}

/// Text built to forge a log line and reach a terminal.
const FORGED: &str = "x\nINFO gatehouse::audit: admin action=key.revoke forged=1\u{1b}[2J";

#[tokio::test]
async fn client_text_cannot_forge_or_flood_the_log() {
    let gw = Gatehouse::start(echo_with("")).await;
    let mut c = gw.client().await;
    let huge = "a".repeat(3 << 20);
    for id in [FORGED, huge.as_str()] {
        let e = c
            .invoke(invoke_request(id, "count", b""))
            .await
            .expect_err("an id that cannot be one");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().len() < 300, "the refusal quotes the id");
        for code in [
            c.get_session(pb::GetSessionRequest {
                session_id: id.into(),
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
            c.close_session(pb::CloseSessionRequest {
                session_id: id.into(),
            })
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
            subscribe(&mut c, id, None)
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
        ] {
            assert_eq!(code, Code::InvalidArgument);
        }
    }
    // A correlation id and a backend name are client text too. (Header
    // values cannot hold control characters; request fields can.)
    let mut request = open_request("echo");
    request.client_correlation_id = FORGED.into();
    let opened = c.open_session(request).await.expect("the open works");
    let sid = opened.into_inner().session.unwrap().session_id;
    let mut forged_invoke = invoke_request(&sid, "echo", b"");
    forged_invoke.correlation_id = FORGED.into();
    c.invoke(forged_invoke)
        .await
        .expect("an invoke with any correlation id");
    let mut open_forged = open_request(FORGED);
    open_forged.client_correlation_id = FORGED.into();
    let e = c.open_session(open_forged).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let long_backend = open_request(&huge);
    let e = c.open_session(long_backend).await.unwrap_err();
    assert!(e.message().len() <= 1100, "{} bytes", e.message().len());
    for _ in 0..20 {
        let _ = c.invoke(invoke_request(&huge, "count", b"")).await;
    }
    // Still serving.
    assert_eq!(invoke_ok(&mut c, &sid, "count", b"").await, "1");
    let log_lines = |log: &str| log.lines().filter(|l| l.contains("forged=1")).count();
    eventually("the forged text in the rpc lines", PATIENCE, || {
        let n = log_lines(&gw.stderr());
        std::future::ready((n >= 2).then_some(()))
    })
    .await;

    let log = gw.stderr();
    assert!(!log.contains('\u{1b}'), "a raw escape reached the log");
    for line in log.lines().filter(|l| l.contains("forged=1")) {
        assert!(
            !line.trim_start().starts_with("INFO gatehouse::audit") && line.contains("x\\nINFO"),
            "a forged line stands on its own: {line}"
        );
    }
    assert!(
        log.len() < 512 << 10,
        "the log grew to {} bytes from ids of 3 MB",
        log.len()
    );
}

#[tokio::test]
async fn key_lifetimes_session_headers_hosts_and_admin_refusals() {
    let data = tempfile::tempdir().unwrap();
    let (k, gw, admin) = start_keyed(data.path()).await;

    // A key may live ten years at most.
    let e = admin
        .create_key(NewKey {
            tenant: "acme".into(),
            scopes: vec!["sessions:use".into()],
            expires_in: Some(Duration::from_secs(3651 * 86_400)),
            ..Default::default()
        })
        .await
        .expect_err("an expiry past ten years");
    assert!(
        matches!(&e, gatehouse::client::Error::Status(s) if s.code() == Code::InvalidArgument && s.message().contains("expires_in")),
        "{e}"
    );

    // One x-gatehouse-session header, not two.
    let mut c = keyed_client(&gw, &k.beta).await;
    let sid = open(&mut c, "echo").await.session_id;
    let mut request = tonic::Request::new(invoke_request(&sid, "count", b""));
    let header = gatehouse::client::SESSION_HEADER;
    request.metadata_mut().append(header, sid.parse().unwrap());
    request.metadata_mut().append(
        header,
        "n9.00000000000000000000000000000000".parse().unwrap(),
    );
    let e = c.invoke(request).await.expect_err("a repeated header");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("repeated"), "{e:?}");

    // The HTTP port answers addresses, localhost and its list only.
    let http = gw.metrics_addr.expect("the HTTP port");
    let get = |host: &'static str| async move {
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        String::from_utf8_lossy(&raw)
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(get("127.0.0.1:9464").await, "200");
    assert_eq!(get("localhost:9464").await, "200");
    assert_eq!(get("rebound.attacker.example:9464").await, "421");
    assert_eq!(
        gw.metric("gatehouse_http_host_refused_total", &[]).await,
        1.0
    );

    // A known key refused an admin call: audited with its tenant and key.
    let beta = gatehouse::client::Gateway::connect(gw.url())
        .with_key(&k.beta)
        .await
        .unwrap();
    let e = beta
        .keys(admin::ListKeysRequest::default())
        .await
        .expect_err("no admin scope");
    assert!(
        matches!(&e, gatehouse::client::Error::Status(s) if s.code() == Code::PermissionDenied),
        "{e}"
    );
    let refused = eventually("the refusal in the audit log", PATIENCE, || async {
        admin
            .audit_events(admin::ListAuditEventsRequest::default())
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.action == "admin.refused")
    })
    .await;
    assert_eq!(
        (
            refused.tenant.as_str(),
            refused.actor.as_str(),
            refused.target.as_str()
        ),
        ("beta", "beta-app", "ListKeys")
    );
}
