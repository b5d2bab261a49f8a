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
    let (admin_key, admin_hash) = generate().expect("a key");
    let config = Toml::new().backend("echo", "builtin:echo").render()
        + &format!(
            "\n[[tenants]]\nname = \"ops\"\n[[tenants.keys]]\nname = \"ops-admin\"\nhash = \"{admin_hash}\"\nscopes = [\"admin\"]\n\
             \n[[tenants]]\nname = \"acme\"\nmax_sessions = 5\n"
        );
    (config, admin_key)
}

/// A raw HTTP/1.0 request: (status, headers and body).
async fn http(addr: std::net::SocketAddr, request: String) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
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
    let (code, _) = http(
        http_addr,
        post(&format!("/console/sessions/{id}/close"), None, "csrf=x"),
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) = http(http_addr, get("/console/sessions/rows", None)).await;
    assert_eq!(code, 401, "the refresh script's endpoint answers 401");

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
    assert_eq!(
        session.refresh().await.unwrap().state(),
        pb::SessionState::Ready
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
    let (config, admin_key) = config();
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
