//! TLS and mutual TLS through the real binary: sessions over TLS, what is
//! refused (plaintext on a TLS port, missing and foreign client
//! certificates, plaintext keys on a public address), certificate
//! identities as tenants, rotation without a restart, and the CLI and a
//! Python grpcio client over TLS.

use std::path::Path;
use std::process::Command;

use futures::StreamExt;
use gatehouse::proto::v1 as pb;
use gatehouse::proto::v1::gateway_client::GatewayClient;
use tonic::Code;

use crate::fixtures::*;

/// A test's certificates: a CA and a server certificate it signed.
struct Pki {
    ca: Ca,
    server: Pem,
}

impl Pki {
    fn new() -> Self {
        let ca = Ca::new("gatehouse test CA");
        let server = ca.server("gateway one");
        Self { ca, server }
    }

    /// A gateway builder with the files written and the harness trusting
    /// the CA. `server_lines` go under `[server]`; `rest` after the TLS
    /// table (tenants, backends).
    fn gateway(&self, server_lines: &str, tls_lines: &str, rest: &str) -> Start {
        let config = format!(
            "[server]\n{server_lines}\n[server.tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n{tls_lines}\n{rest}"
        );
        Gatehouse::builder(config)
            .file("server.pem", self.server.cert.clone())
            .file("server.key", self.server.key.clone())
            .file("ca.pem", self.ca.pem())
            .tls_client(TlsClient::trusting(&self.ca))
    }
}

/// A backend table serving only `echo`.
const ECHO_ONLY: &str = "[[backends]]\nname = \"echo\"\nmodule = \"builtin:echo\"\n";

/// A tenant entry naming a certificate identity (`subject = ...` or
/// `uri = ...`) with every session scope.
fn cert_tenant(name: &str, identity: &str) -> String {
    format!(
        "[[tenants]]\nname = \"{name}\"\n[[tenants.certs]]\n{identity}\nscopes = [\"sessions:open\", \"sessions:use\", \"sessions:read\", \"backends:read\"]\n"
    )
}

/// A generated client on a new connection with `tls`, sending `key`.
async fn client_with(gw: &Gatehouse, tls: &TlsClient, key: Option<&str>) -> Client {
    let channel = gw.try_channel(Some(tls)).await.expect("a TLS connection");
    let key = gatehouse::client::BearerKey::new(key).expect("a usable key");
    GatewayClient::with_interceptor(channel, key)
}

/// What a connection with `tls` gets for ListBackends: the connection may
/// fail, or the call.
async fn list_backends(gw: &Gatehouse, tls: Option<&TlsClient>) -> Result<(), tonic::Status> {
    let channel = gw
        .try_channel(tls)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut c = GatewayClient::new(channel);
    bounded("ListBackends", c.list_backends(pb::ListBackendsRequest {}))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_session_over_tls_end_to_end() {
    let pki = Pki::new();
    let gw = pki.gateway("", "", ECHO_ONLY).start().await;
    let gateway = gw.connect().await;
    assert!(gateway.addr().starts_with("https://"), "{}", gateway.addr());
    let session = gateway.open("echo").await.expect("open over TLS");
    let reply = session.invoke("echo", "over tls").await.expect("invoke");
    assert_eq!(reply.payload, b"over tls");
    session.invoke("emit", "3").await.expect("emit");
    let mut events = session.events();
    for want in 1..=3 {
        let event = bounded("an event over TLS", events.next())
            .await
            .expect("the stream ended")
            .expect("an event");
        assert_eq!(event.sequence, want);
    }
    drop(events);
    session.close().await.expect("close");

    // The HTTP port shares [server.tls]: metrics over TLS count the
    // connection; plaintext there gets no answer.
    assert!(
        gw.metric("gatehouse_connections_open", &[("port", "grpc")])
            .await
            >= 1.0
    );
    let metrics = gw.metrics_addr.expect("a metrics port");
    let plain = bounded("plaintext on the HTTPS port", http_get(metrics, "/metrics")).await;
    assert!(
        !matches!(plain, Ok((200, _))),
        "plaintext metrics answered: {plain:?}"
    );
    let expiry = gw
        .metric(
            "gatehouse_tls_certificate_expiry_timestamp_seconds",
            &[("port", "grpc")],
        )
        .await;
    assert!(expiry > 1.6e9, "certificate expiry gauge: {expiry}");

    // The CLI: an https:// address with --ca-cert (or GATEHOUSE_CA_CERT);
    // without it the system roots do not know the test CA.
    let ca = gw.dir().join("ca.pem");
    let addr = gw.url();
    let out = Command::new(BIN)
        .args(["--addr", &addr, "--ca-cert"])
        .arg(&ca)
        .arg("backends")
        .output()
        .expect("running the CLI");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("echo"),
        "{out:?}"
    );
    let out = Command::new(BIN)
        .args(["--addr", &addr, "backends"])
        .env("GATEHOUSE_CA_CERT", &ca)
        .output()
        .expect("running the CLI");
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(BIN)
        .args(["--addr", &addr, "backends"])
        .env_remove("GATEHOUSE_CA_CERT")
        .output()
        .expect("running the CLI");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test]
async fn plaintext_clients_are_refused_on_a_tls_port() {
    let pki = Pki::new();
    let gw = pki.gateway("", "", "").start().await;
    let plain = list_backends(&gw, None).await;
    assert!(plain.is_err(), "a plaintext call succeeded on a TLS port");
    gw.wait_metric(
        "gatehouse_tls_handshake_failures_total",
        &[("port", "grpc")],
        1.0,
    )
    .await;
    // The failed handshake let go of its connection slot, and TLS works.
    list_backends(&gw, Some(&TlsClient::trusting(&pki.ca)))
        .await
        .expect("TLS call");
}

/// Waits until the gRPC port has counted more failed TLS handshakes than
/// `before`; returns the count.
async fn handshake_failures(gw: &Gatehouse, before: f64) -> f64 {
    eventually("a failed handshake to be counted", PATIENCE, || async {
        let n = gw
            .metric(
                "gatehouse_tls_handshake_failures_total",
                &[("port", "grpc")],
            )
            .await;
        (n > before).then_some(n)
    })
    .await
}

#[tokio::test]
async fn mutual_tls_refuses_missing_and_foreign_client_certificates() {
    let pki = Pki::new();
    let good = TlsClient::trusting(&pki.ca).with_identity(pki.ca.client("alpha", "Acme", None));
    let gw = pki
        .gateway(
            "",
            "client_ca = \"ca.pem\"",
            &cert_tenant("alpha", "subject = \"CN=alpha, O=Acme\""),
        )
        // The fixture's own calls (metrics) carry the good certificate.
        .tls_client(good.clone())
        .start()
        .await;
    // Refused at the handshake, before any RPC: the client's status is a
    // transport error of its own (the connection closed or a TLS alert,
    // whose code varies with when TLS 1.3 reports it), never an answer of
    // the gateway's such as UNAUTHENTICATED; and the gateway counts a
    // failed handshake.
    let refused_at_handshake = |what: &str, result: Result<(), tonic::Status>| {
        let status = result.expect_err(what);
        assert!(
            matches!(
                status.code(),
                Code::Cancelled | Code::Unavailable | Code::Unknown
            ) && std::error::Error::source(&status).is_some(),
            "{what}: not refused by the transport: {status:?}"
        );
    };
    let trusting = TlsClient::trusting(&pki.ca);
    refused_at_handshake(
        "a call without a client certificate",
        list_backends(&gw, Some(&trusting)).await,
    );
    let failed = handshake_failures(&gw, 0.0).await;
    // The same subject, signed by a CA the gateway does not trust.
    let other = Ca::new("another CA");
    let foreign = trusting
        .clone()
        .with_identity(other.client("alpha", "Acme", None));
    refused_at_handshake(
        "a certificate of a foreign CA",
        list_backends(&gw, Some(&foreign)).await,
    );
    handshake_failures(&gw, failed).await;
    list_backends(&gw, Some(&good))
        .await
        .expect("the CA's certificate is accepted");
}

#[tokio::test]
async fn certificate_identities_are_tenants_and_are_isolated() {
    let pki = Pki::new();
    let (beta_key, beta_hash) = gatehouse::keys::generate().unwrap();
    let tenants = format!(
        "{}{}[[tenants.keys]]\nhash = \"{beta_hash}\"\nscopes = [\"sessions:read\", \"backends:read\"]\n",
        cert_tenant("alpha", "subject = \"O=Acme, CN=alpha\""),
        cert_tenant("beta", "uri = \"spiffe://acme/beta\""),
    );
    let gw = pki
        .gateway("", "client_ca = \"ca.pem\"", &tenants)
        .start()
        .await;
    let trusting = TlsClient::trusting(&pki.ca);
    let alpha = trusting
        .clone()
        .with_identity(pki.ca.client("alpha", "Acme", None));
    let beta = trusting.clone().with_identity(pki.ca.client(
        "beta-runner",
        "Acme",
        Some("spiffe://acme/beta"),
    ));
    let stranger = trusting.with_identity(pki.ca.client("stranger", "Acme", None));

    let mut a = client_with(&gw, &alpha, None).await;
    let opened = a
        .open_session(pb::OpenSessionRequest {
            backend: "echo".into(),
            ..Default::default()
        })
        .await
        .expect("alpha opens")
        .into_inner()
        .session
        .expect("a session");
    assert_eq!(opened.tenant, "alpha");
    let sid = opened.session_id;

    // beta (by its SAN URI) sees none of alpha's sessions.
    let mut b = client_with(&gw, &beta, None).await;
    let listed = b
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .expect("beta lists")
        .into_inner();
    assert!(listed.sessions.is_empty(), "{listed:?}");
    let invoke = b
        .invoke(pb::InvokeRequest {
            session_id: sid.clone(),
            command: Some(pb::Command {
                name: "echo".into(),
                payload: b"x".to_vec(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(invoke.code(), Code::NotFound, "{invoke:?}");

    // A certificate of the right CA that no tenant names is refused, and
    // says so; with beta's key it is beta (the key decides).
    let mut s = client_with(&gw, &stranger, None).await;
    let refused = s
        .list_backends(pb::ListBackendsRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("names no tenant"), "{refused:?}");
    let mut s = client_with(&gw, &stranger, Some(&beta_key)).await;
    s.list_backends(pb::ListBackendsRequest {})
        .await
        .expect("an unnamed certificate with a key");

    // A key and a certificate of different tenants are refused.
    let mut mixed = client_with(&gw, &alpha, Some(&beta_key)).await;
    let refused = mixed
        .list_backends(pb::ListBackendsRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("different tenants"),
        "{refused:?}"
    );

    a.close_session(pb::CloseSessionRequest { session_id: sid })
        .await
        .expect("close");
}

#[tokio::test]
async fn keys_are_never_served_in_plaintext_on_a_public_address() {
    let (_, hash) = gatehouse::keys::generate().unwrap();
    let tenant = format!(
        "[[tenants]]\nname = \"a\"\n[[tenants.keys]]\nhash = \"{hash}\"\nscopes = [\"admin\"]\n"
    );
    let e = Gatehouse::builder(tenant.clone())
        .listen("0.0.0.0:0")
        .try_start()
        .await
        .err()
        .expect("keys in plaintext on 0.0.0.0 must be refused");
    let line = e
        .stderr()
        .lines()
        .find(|l| l.contains("refusing"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("server.tls") && line.contains("server.allow_plaintext"),
        "{e}"
    );
    assert!(e.status().is_some_and(|s| !s.success()), "{e}");

    // `config check` says the same before anything runs.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    std::fs::write(
        &file,
        format!("[server]\nlisten = \"0.0.0.0:50051\"\n{tenant}"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("server.allow_plaintext"),
        "{out:?}"
    );

    // With TLS the same tenant serves every interface.
    let pki = Pki::new();
    let gw = pki
        .gateway("", "", &tenant)
        .listen("0.0.0.0:0")
        .start()
        .await;
    assert!(gw.grpc.ip().is_unspecified());
}

/// Replaces `name` in `dir` whole (write then rename), as a deploy tool does.
fn replace(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.new"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Waits until a new handshake presents `cert`.
async fn wait_for_certificate(gw: &Gatehouse, tls: &TlsClient, cert: &Pem, what: &str) {
    let want = cert.der();
    let addr = gw.dial_addr();
    eventually(what, PATIENCE, || async {
        let got = tls.server_certificate(addr).await.ok()?;
        (got == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sighup_rotates_the_certificate_and_streams_survive() {
    let pki = Pki::new();
    let gw = pki.gateway("", "", ECHO_ONLY).start().await;
    let tls = TlsClient::trusting(&pki.ca);
    wait_for_certificate(&gw, &tls, &pki.server, "the first certificate").await;

    // A raw stream on one connection: it cannot resume by itself, so
    // events after the rotation prove the connection survived it.
    let mut c = gw.client().await;
    let sid = open(&mut c, "echo").await.session_id;
    invoke_ok(&mut c, &sid, "emit", b"2").await;
    let mut stream = c
        .stream_events(pb::StreamEventsRequest {
            session_id: sid.clone(),
            ..Default::default()
        })
        .await
        .expect("a stream")
        .into_inner();
    assert_eq!(next_event(&mut stream).await.sequence, 1);

    let two = pki.ca.server("gateway two");
    replace(gw.dir(), "server.key", two.key.as_bytes());
    replace(gw.dir(), "server.pem", two.cert.as_bytes());
    gw.sighup();
    wait_for_certificate(&gw, &tls, &two, "the rotated certificate").await;
    assert!(
        gw.metric("gatehouse_tls_reloads_total", &[("result", "ok")])
            .await
            >= 1.0
    );

    invoke_ok(&mut c, &sid, "emit", b"2").await;
    for want in 2..=4 {
        assert_eq!(next_event(&mut stream).await.sequence, want);
    }
    // The gateway is still running: SIGHUP no longer ends it.
    let mut fresh = gw.client().await;
    fresh
        .list_backends(pb::ListBackendsRequest {})
        .await
        .expect("a new connection after the rotation");
}

#[tokio::test]
async fn a_bad_certificate_file_leaves_the_old_one_serving() {
    let pki = Pki::new();
    let gw = pki.gateway("", "", "").start().await;
    let tls = TlsClient::trusting(&pki.ca);

    // Noticed on disk, no signal: the broken file is reported once and the
    // old certificate keeps serving.
    replace(gw.dir(), "server.pem", b"not a certificate\n");
    gw.wait_metric(
        "gatehouse_tls_reloads_total",
        &[("port", "grpc"), ("result", "error")],
        1.0,
    )
    .await;
    wait_for_certificate(&gw, &tls, &pki.server, "the old certificate").await;
    list_backends(&gw, Some(&tls))
        .await
        .expect("calls go on with the old certificate");
    assert!(gw.stderr().contains("TLS reload failed"), "{}", gw.stderr());

    // A good pair replaces it, again without a signal.
    let two = pki.ca.server("gateway two");
    replace(gw.dir(), "server.key", two.key.as_bytes());
    replace(gw.dir(), "server.pem", two.cert.as_bytes());
    wait_for_certificate(&gw, &tls, &two, "the fixed certificate").await;
}

/// The Python client package over mutual TLS: `ca_cert`, `client_cert`
/// and `client_key` as file paths, the way a user passes them.
const PYTHON_TLS_CLIENT: &str = r#"
import sys
import gatehouse_client as gh
addr, ca, cert, key = sys.argv[1:5]
with gh.Client(addr, ca_cert=ca, client_cert=cert, client_key=key, timeout=30) as c:
    assert any(b.name == "echo" for b in c.list_backends())
    with c.open("echo", name="py-tls") as s:
        assert s.info.tenant == "py", s.info.tenant
        assert [s.invoke("count") for _ in range(2)] == [b"1", b"2"]
        s.invoke("emit", b"2")
        with s.events() as events:
            assert [next(events).sequence for _ in range(2)] == [1, 2]
print("python tls: ok")
"#;

#[tokio::test]
async fn the_python_client_passes_over_mutual_tls() {
    let probe = Command::new("python3")
        .args(["-c", "import gatehouse_client"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("GATEHOUSE_REQUIRE_PYTHON_PLUGIN").is_none(),
            "the Python client is required here: pip install ./proto/clients/python"
        );
        eprintln!("skipped: python3 with gatehouse_client is not installed");
        return;
    }
    let pki = Pki::new();
    let client = pki.ca.client("py", "Acme", None);
    let gw = pki
        .gateway(
            "",
            "client_ca = \"ca.pem\"",
            &cert_tenant("py", "subject = \"CN=py, O=Acme\""),
        )
        .file("client.pem", client.cert.clone())
        .file("client.key", client.key.clone())
        .tls_client(TlsClient::trusting(&pki.ca).with_identity(client))
        .start()
        .await;
    let dir = gw.dir();
    let out = tokio::task::spawn_blocking({
        let addr = format!("localhost:{}", gw.dial_addr().port());
        let (ca, cert, key) = (
            dir.join("ca.pem"),
            dir.join("client.pem"),
            dir.join("client.key"),
        );
        move || {
            Command::new("python3")
                .args(["-c", PYTHON_TLS_CLIENT, &addr])
                .arg(ca)
                .arg(cert)
                .arg(key)
                .output()
        }
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("python tls: ok"), "{stdout}");
}
