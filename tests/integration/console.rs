//! The web console: refusals checked over plain HTTP (always), and the
//! whole console driven in headless Chromium by tests/browser/console.py
//! (when Chromium, its WebDriver and Selenium are installed; `.ci/run`
//! installs them and sets GATEHOUSE_REQUIRE_BROWSER=1). With
//! GATEHOUSE_CONSOLE_SCREENSHOTS=DIR the browser test saves its pages
//! there (docs/console/ holds the ones docs/console.md shows).

use std::path::Path;
use std::process::{Command, Stdio};

use gatehouse::keys::generate;
use gatehouse::proto::admin::v1 as admin;
use gatehouse::proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::fixtures::*;

/// Tenants `ops` (an admin key in the file) and `acme`; returns (config,
/// admin key).
fn config() -> (String, String) {
    config_with(Toml::new())
}

/// [`config`] over `toml`'s `[server]` lines.
fn config_with(toml: Toml) -> (String, String) {
    let (admin_key, admin_hash) = generate().expect("a key");
    let config = toml.backend("echo", "builtin:echo").render()
        + &format!(
            "\n[[tenants]]\nname = \"ops\"\n[[tenants.keys]]\nname = \"ops-admin\"\nhash = \"{admin_hash}\"\nscopes = [\"admin\"]\n\
             \n[[tenants]]\nname = \"acme\"\nmax_sessions = 5\n"
        );
    (config, admin_key)
}

/// A raw HTTP/1.0 request: (status, headers and body).
async fn http(addr: std::net::SocketAddr, request: String) -> (u16, String) {
    http_from([127, 0, 0, 1], addr, request).await
}

/// [`http`] from the loopback address `from` (127.0.0.0/8 is all
/// loopback): the console throttles failed sign-ins by address.
async fn http_from(from: [u8; 4], addr: std::net::SocketAddr, request: String) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn post(path: &str, cookie: Option<&str>, body: &str) -> String {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{cookie}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn get(path: &str, cookie: Option<&str>) -> String {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{cookie}\r\n")
}

/// The value of `name=` in the response's `Set-Cookie` headers.
fn set_cookie(response: &str, name: &str) -> Option<String> {
    response
        .lines()
        .filter_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .filter_map(|c| c.split(';').next()?.strip_prefix(&format!("{name}=")))
        .map(String::from)
        .next()
}

/// Asserts a refusal's status and that it is a console page with the
/// console's security headers.
#[track_caller]
fn assert_refused(response: &(u16, String), status: u16, what: &str) {
    let (code, text) = response;
    assert_eq!(*code, status, "{what}: {text}");
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    for header in [
        "content-security-policy: default-src 'none'",
        "x-frame-options: deny",
        "cache-control: no-store",
        "content-type: text/html",
    ] {
        assert!(head.contains(header), "{what}: no `{header}`:\n{head}");
    }
    assert!(
        text.contains("<html") || text.contains("<!doctype"),
        "{what}: not a console page:\n{text}"
    );
}

/// The first hidden CSRF field of a page.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..at + 64].to_string()
}

#[tokio::test]
async fn the_console_refuses_requests_without_a_sign_in_or_with_a_forged_csrf_token() {
    let (config, admin_key) = config();
    let gw = Gatehouse::builder(config)
        .api_key(admin_key.clone())
        .start()
        .await;
    let http_addr = gw.metrics_addr.expect("the HTTP port");
    let client = gw.connect().await;
    let session = client
        .open_with(gatehouse::client::OpenOptions::new("echo").name("<b>bold</b>"))
        .await
        .unwrap();
    let id = session.info().session_id.clone();

    // No cookie: pages lead to sign-in, forms are refused.
    let (code, text) = http(http_addr, get("/console/sessions", None)).await;
    assert_eq!(code, 303, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("location: /console/login"),
        "{text}"
    );
    // Every form, anonymous, is refused as anonymous whatever its body:
    // the sign-in is checked before the form is read.
    let forms = [
        format!("/console/sessions/{id}/close"),
        "/console/keys".to_string(),
        "/console/keys/key_0123456789abcdef/revoke".to_string(),
        "/console/logout".to_string(),
    ];
    for path in &forms {
        for body in ["csrf=x", "", "tenant=acme", "%zz=&&"] {
            let response = http(http_addr, post(path, None, body)).await;
            assert_refused(&response, 401, &format!("anonymous POST {path} {body:?}"));
        }
    }
    let response = http(http_addr, get("/console/sessions/rows", None)).await;
    assert_refused(&response, 401, "the refresh script's endpoint, anonymous");

    // Sign-in needs the form's double-submitted token, and an admin key.
    let (code, page) = http(http_addr, get("/console/login", None)).await;
    assert_eq!(code, 200);
    assert!(page.contains("Content-Security-Policy") || page.contains("content-security-policy"));
    let login_cookie = set_cookie(&page, "gatehouse_console_login").expect("the sign-in cookie");
    let token = csrf(&page);
    let jar = format!("gatehouse_console_login={login_cookie}");
    let (code, _) = http(
        http_addr,
        post(
            "/console/login",
            Some(&jar),
            &format!("csrf=forged&key={admin_key}"),
        ),
    )
    .await;
    assert_eq!(code, 403, "a forged sign-in token");
    for (body, what) in [
        (
            format!("key={admin_key}"),
            "a sign-in without its csrf field",
        ),
        (format!("csrf={token}"), "a sign-in without its key field"),
        (String::new(), "an empty sign-in form"),
    ] {
        let response = http(http_addr, post("/console/login", Some(&jar), &body)).await;
        assert_refused(&response, 403, what);
    }
    let (user_key, _) = generate().unwrap();
    let (code, _) = http(
        http_addr,
        post(
            "/console/login",
            Some(&jar),
            &format!("csrf={token}&key={user_key}"),
        ),
    )
    .await;
    assert_eq!(code, 401, "an unknown key");
    let (code, text) = http(
        http_addr,
        post(
            "/console/login",
            Some(&jar),
            &format!("csrf={token}&key={admin_key}"),
        ),
    )
    .await;
    assert_eq!(code, 303, "{text}");
    let cookie_line = text
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: gatehouse_console=")
        })
        .expect("the session cookie");
    assert!(
        cookie_line.contains("HttpOnly") && cookie_line.contains("SameSite=Strict"),
        "{cookie_line}"
    );
    let signed_in = format!(
        "gatehouse_console={}",
        set_cookie(&text, "gatehouse_console").unwrap()
    );

    // Signed in, the page lists the session; a forged token closes nothing.
    let (code, page) = http(http_addr, get("/console/sessions", Some(&signed_in))).await;
    assert_eq!(code, 200);
    assert!(page.contains(&id));
    assert!(
        page.contains("&lt;b&gt;bold&lt;") && !page.contains("<b>bold"),
        "a client-chosen session name is escaped"
    );
    let (code, text) = http(
        http_addr,
        post(
            &format!("/console/sessions/{id}/close"),
            Some(&signed_in),
            "csrf=0000",
        ),
    )
    .await;
    assert_eq!(code, 403, "{text}");
    // Signed in, a form without its token, or not a form at all, is
    // refused 403 as a console page, and changes nothing.
    for path in &forms {
        for body in ["", "tenant=acme&name=x", "csrf=0000"] {
            let response = http(http_addr, post(path, Some(&signed_in), body)).await;
            assert_refused(&response, 403, &format!("POST {path} {body:?}"));
        }
    }
    let json = format!(
        "POST /console/sessions/{id}/close HTTP/1.0\r\nHost: 127.0.0.1\r\nCookie: {signed_in}\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{{\"a\": 1}}"
    );
    assert_refused(&http(http_addr, json).await, 403, "a JSON body");
    assert_eq!(
        session.refresh().await.unwrap().state(),
        pb::SessionState::Ready
    );
    let keys = client
        .keys(admin::ListKeysRequest {
            tenant: String::new(),
            include_inactive: true,
        })
        .await
        .unwrap();
    assert!(
        keys.iter()
            .all(|k| k.source != admin::KeySource::Store as i32),
        "a refused form created a key: {keys:?}"
    );
    let (code, _) = http(
        http_addr,
        post(
            &format!("/console/sessions/{id}/close"),
            Some(&signed_in),
            &format!("csrf={}", csrf(&page)),
        ),
    )
    .await;
    assert_eq!(code, 303);
    let info = client
        .raw()
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.state(), pb::SessionState::Closed);

    // The close is in the audit log, through the console.
    let events = client
        .audit_events(admin::ListAuditEventsRequest::default())
        .await
        .unwrap();
    let close = events
        .iter()
        .find(|e| e.action == "session.close")
        .expect("the close is audited");
    assert_eq!(
        (
            close.via.as_str(),
            close.target.as_str(),
            close.actor.as_str()
        ),
        ("console", id.as_str(), "ops-admin")
    );
}

/// The sign-in form as `from` gets it: (cookie jar, CSRF token).
async fn login_form(from: [u8; 4], addr: std::net::SocketAddr) -> (String, String) {
    let (code, page) = http_from(from, addr, get("/console/login", None)).await;
    assert_eq!(code, 200, "{page}");
    let cookie = set_cookie(&page, "gatehouse_console_login").expect("the sign-in cookie");
    (format!("gatehouse_console_login={cookie}"), csrf(&page))
}

#[tokio::test]
async fn failed_sign_ins_are_counted_audited_and_throttled_with_grpc_failures() {
    // Two failures, then one more try every 100 s: the guesser stays
    // throttled for the whole test, whatever the machine's speed.
    let (config, admin_key) = config_with(
        Toml::new()
            .server("max_auth_failures_per_sec = 0.01")
            .server("auth_failures_burst = 2"),
    );
    let gw = Gatehouse::builder(config)
        .api_key(admin_key.clone())
        .start()
        .await;
    let http_addr = gw.metrics_addr.expect("the HTTP port");
    const GUESSER: [u8; 4] = [127, 0, 0, 2];
    let (jar, token) = login_form(GUESSER, http_addr).await;
    let (wrong, _) = generate().unwrap();
    for n in 1..=2 {
        let response = http_from(
            GUESSER,
            http_addr,
            post(
                "/console/login",
                Some(&jar),
                &format!("csrf={token}&key={wrong}"),
            ),
        )
        .await;
        assert_refused(&response, 401, &format!("wrong key {n}"));
    }
    // The budget is spent: even the right key is not checked.
    let response = http_from(
        GUESSER,
        http_addr,
        post(
            "/console/login",
            Some(&jar),
            &format!("csrf={token}&key={admin_key}"),
        ),
    )
    .await;
    assert_refused(&response, 429, "a throttled sign-in");
    assert!(
        response.1.to_ascii_lowercase().contains("retry-after: "),
        "{}",
        response.1
    );
    assert!(set_cookie(&response.1, "gatehouse_console").is_none());
    // One budget for the console and gRPC: the address's calls are refused
    // unchecked too.
    let channel = tonic::transport::Channel::from_shared(gw.url())
        .unwrap()
        .local_address(Some(std::net::IpAddr::from(GUESSER)))
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(pb::ListBackendsRequest {});
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {admin_key}").parse().unwrap(),
    );
    let status = pb::gateway_client::GatewayClient::new(channel)
        .list_backends(request)
        .await
        .expect_err("throttled over gRPC");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("too many failed"),
        "{}",
        status.message()
    );
    // Another address signs in.
    sign_in(http_addr, &admin_key).await;

    // Counted, audited with the address and why, logged without the key.
    assert_eq!(gw.metric("gatehouse_auth_failures_total", &[]).await, 2.0);
    assert_eq!(gw.metric("gatehouse_auth_throttled_total", &[]).await, 2.0);
    let client = gw.connect().await;
    let events = client
        .audit_events(admin::ListAuditEventsRequest::default())
        .await
        .unwrap();
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.action == "console.sign_in_failed")
        .collect();
    assert_eq!(failed.len(), 2, "{events:?}");
    for e in &failed {
        assert_eq!(
            (e.via.as_str(), e.target.as_str(), e.detail.as_str()),
            ("console", "127.0.0.2", "unknown API key"),
            "{e:?}"
        );
    }
    let log = gw.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("authentication failed") && l.contains("127.0.0.2")),
        "{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("console.sign_in_failed"))
            .count(),
        2,
        "one audit line a failure:\n{log}"
    );
    assert!(
        !log.contains(&wrong) && !log.contains(&admin_key),
        "a key in the log"
    );
}

/// Signs in from 127.0.0.1 with `key`; returns the session cookie.
async fn sign_in(addr: std::net::SocketAddr, key: &str) -> String {
    let (jar, token) = login_form([127, 0, 0, 1], addr).await;
    let (code, text) = http(
        addr,
        post(
            "/console/login",
            Some(&jar),
            &format!("csrf={token}&key={key}"),
        ),
    )
    .await;
    assert_eq!(code, 303, "{text}");
    format!(
        "gatehouse_console={}",
        set_cookie(&text, "gatehouse_console").expect("the session cookie")
    )
}

/// The text of the element with id `id` on `page`, tags stripped.
fn element_text(page: &str, id: &str) -> String {
    let Some(at) = page.find(&format!("id=\"{id}\"")) else {
        return String::new();
    };
    let rest = &page[at..];
    let start = rest.find('>').map_or(0, |i| i + 1);
    let end = rest
        .find("</dd>")
        .or_else(|| rest.find("</pre>"))
        .unwrap_or(rest.len());
    let mut text = String::new();
    let mut in_tag = false;
    for ch in rest[start..end].chars() {
        match ch {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.trim().to_string()
}

#[tokio::test]
async fn the_session_page_keeps_the_fault_behind_a_failed_restore() {
    let (config, admin_key) = config_with(Toml::new().backend_with(
        "chaos",
        "builtin:chaos",
        &[
            "[backends.restart]",
            "policy = \"on-fault\"",
            "backoff = \"10ms\"",
        ],
        &[],
    ));
    let gw = Gatehouse::builder(config)
        .api_key(admin_key.clone())
        .start()
        .await;
    let http_addr = gw.metrics_addr.expect("the HTTP port");
    let mut c = gw.client().await;
    let mut request = open_request("chaos");
    request.config.insert("fail_restore".into(), "yes".into());
    let id = open_with(&mut c, request).await.session_id;
    invoke_ok(&mut c, &id, "put", "k v").await;
    expect_code(try_invoke(&mut c, &id, "trap", "").await, Code::Aborted);
    eventually("the restart to give up", PATIENCE, || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            (state(&crate::fixtures::get(&mut c, &id).await) == pb::SessionState::Faulted)
                .then_some(())
        }
    })
    .await;

    let cookie = sign_in(http_addr, &admin_key).await;
    let (code, page) = http(
        http_addr,
        get(&format!("/console/sessions/{id}"), Some(&cookie)),
    )
    .await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(element_text(&page, "fault"), "restore-failed", "{page}");
    assert!(
        element_text(&page, "fault-detail").contains("fail_restore"),
        "{page}"
    );
    assert_eq!(
        element_text(&page, "last-fault"),
        "trap: unreachable",
        "the fault that started the restart: {page}"
    );
}

/// Whether the browser test can run here, or why not.
fn browser_missing() -> Option<String> {
    let found = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !["chromium", "chromium-browser"]
        .iter()
        .any(|c| found(c, &["--version"]))
    {
        return Some("chromium is not installed (apt-get install chromium chromium-driver)".into());
    }
    if !found("chromedriver", &["--version"]) {
        return Some("chromedriver is not installed (apt-get install chromium-driver)".into());
    }
    if !found("python3", &["-c", "import selenium"]) {
        return Some("Python's selenium is not installed (pip install selenium)".into());
    }
    None
}

#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    if let Some(why) = browser_missing() {
        assert!(
            std::env::var_os("GATEHOUSE_REQUIRE_BROWSER").is_none(),
            "GATEHOUSE_REQUIRE_BROWSER is set, but {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    // chaos: the charts page needs a fault.
    let (config, admin_key) = config_with(Toml::new().backend("chaos", "builtin:chaos"));
    let gw = Gatehouse::builder(config)
        .api_key(admin_key.clone())
        .start()
        .await;
    let http_addr = gw.metrics_addr.expect("the HTTP port");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser/console.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .args(["--console", &format!("http://{http_addr}")])
        .args(["--grpc", &gw.url()])
        .args(["--key", &admin_key])
        .args(["--bin", BIN]);
    if let Some(dir) = std::env::var_os("GATEHOUSE_CONSOLE_SCREENSHOTS") {
        cmd.arg("--screenshots").arg(dir);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("running the browser script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .expect("the script's result line");

    // What the page did, checked over gRPC.
    let client = gw.connect().await;
    let closed = client
        .raw()
        .get_session(pb::GetSessionRequest {
            session_id: result["session"].as_str().unwrap().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.state(), pb::SessionState::Closed);
    assert_eq!(closed.close_reason(), pb::CloseReason::ClientClose);
    let revoked = gatehouse::client::Gateway::connect(gw.url())
        .with_key(result["key"].as_str().unwrap())
        .await
        .unwrap();
    match revoked.sessions().await {
        Err(gatehouse::client::Error::Status(s)) => assert_eq!(s.code(), Code::Unauthenticated),
        other => panic!("the key revoked on the page still works: {other:?}"),
    }
    let events = client
        .audit_events(admin::ListAuditEventsRequest::default())
        .await
        .unwrap();
    for action in [
        "console.sign_in",
        "session.close",
        "key.create",
        "key.revoke",
        "console.sign_out",
    ] {
        assert!(
            events
                .iter()
                .any(|e| e.action == action && e.via == "console"),
            "{action} through the console is not in the audit log: {events:?}"
        );
    }
}

/// The number in `data-points="N"` of the element with id `id`.
fn chart_points(page: &str, id: &str) -> usize {
    let Some(at) = page.find(&format!("id=\"{id}\"")) else {
        return 0;
    };
    let rest = &page[at..];
    rest.find("data-points=\"")
        .and_then(|i| rest[i + 13..].split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_charts_page_draws_each_figure_from_the_gateways_metrics() {
    let (config, admin_key) = config_with(Toml::new().backend("chaos", "builtin:chaos"));
    let gw = Gatehouse::builder(config)
        .api_key(admin_key.clone())
        .start()
        .await;
    let addr = gw.metrics_addr.expect("the HTTP port");
    let cookie = sign_in(addr, &admin_key).await;
    let (code, empty) = http(addr, get("/console/charts", Some(&cookie))).await;
    assert_eq!(code, 200, "{empty}");
    assert_eq!(chart_points(&empty, "chart-faults"), 0, "no fault yet");

    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    for _ in 0..5 {
        invoke_ok(&mut c, &s.session_id, "count", b"").await;
    }
    let chaos = open(&mut c, "chaos").await;
    let _ = try_invoke(&mut c, &chaos.session_id, "trap", b"").await;

    // Rates have a point once a second passed since the last sample.
    let charts = [
        "chart-sessions",
        "chart-opens",
        "chart-invokes",
        "chart-p99",
        "chart-faults",
        "chart-memory",
        "chart-cpu",
    ];
    let page = eventually("every chart to have a point", PATIENCE, || async {
        let (code, page) = http(addr, get("/console/charts", Some(&cookie))).await;
        assert_eq!(code, 200, "{page}");
        charts
            .iter()
            .all(|id| chart_points(&page, id) > 0)
            .then_some(page)
    })
    .await;
    assert!(page.contains("<circle class=\"last\""), "{page}");
    assert!(
        page.contains("</svg> echo <"),
        "a legend names the backend:\n{page}"
    );
    assert!(
        !page.contains("<script src=\"http"),
        "nothing from elsewhere"
    );

    // Signed out, no charts.
    let (code, _) = http(addr, get("/console/charts", None)).await;
    assert_ne!(code, 200);
}
