//! JavaScript plugins: `plugins/js-notes` built with the componentize-js
//! pinned in its package.json, served through the binary, and `plugin
//! check` on a component built with componentize-js's default features
//! (which import `wasi:http`, which gatehouse never provides).
//!
//! Needs `npm ci` in plugins/js-notes; skipped (with the reason) otherwise,
//! unless GATEHOUSE_REQUIRE_JS_PLUGIN is set, as `.ci/run` does.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixtures::*;

fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/js-notes")
}

/// The pinned componentize-js, or `None` (and a printed reason) to skip.
fn componentize_js() -> Option<PathBuf> {
    let bin = project().join("node_modules/.bin/componentize-js");
    if bin.is_file() {
        return Some(bin);
    }
    assert!(
        std::env::var_os("GATEHOUSE_REQUIRE_JS_PLUGIN").is_none(),
        "componentize-js is required: run `npm ci` in plugins/js-notes"
    );
    eprintln!("skipped: componentize-js is not installed (npm ci in plugins/js-notes)");
    None
}

/// Builds app.js into `out` with `extra` componentize-js arguments.
async fn build(tool: PathBuf, out: PathBuf, extra: &'static [&'static str]) {
    let built = tokio::task::spawn_blocking(move || {
        let root = project();
        Command::new(tool)
            .arg(root.join("app.js"))
            .arg("-w")
            .arg(root.join("../../wit"))
            .args(["-n", "backend"])
            .args(extra)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(built.status.success(), "componentize-js: {built:?}");
}

/// A compile cache shared across tests and runs: a 12 MB component takes
/// seconds to compile, and `plugin check --config` fills the cache the
/// gateway then reads.
fn cache_line() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/integration/cache");
    format!("cache_dir = {:?}", dir.display().to_string())
}

/// The flags docs/plugins.md gives: no wasi:http, no fetch event.
const NO_HTTP: &[&str] = &["-d", "http", "fetch-event"];

#[tokio::test]
async fn a_javascript_plugin_serves_sessions() {
    let Some(tool) = componentize_js() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("js-notes.wasm");
    build(tool, wasm.clone(), NO_HTTP).await;
    let config = Toml::new()
        .server(&cache_line())
        .backend("js-notes", &wasm.display().to_string())
        .render();
    let config_file = dir.path().join("gatehouse.toml");
    std::fs::write(&config_file, &config).unwrap();
    let check = Command::new(BIN)
        .args(["plugin", "check", "--config"])
        .arg(&config_file)
        .arg(&wasm)
        .output()
        .unwrap();
    assert!(check.status.success(), "plugin check: {check:?}");

    let gw = Gatehouse::start(config).await;
    assert!(
        gw.stderr()
            .lines()
            .any(|l| l.contains("backend loaded") && l.contains("cached=true")),
        "the check filled the cache the gateway reads:\n{}",
        gw.stderr()
    );
    let mut c = gw.client().await;
    let a = open(&mut c, "js-notes").await;
    let b = open(&mut c, "js-notes").await;
    assert_eq!(
        invoke_ok(&mut c, &a.session_id, "add", br#"{"text": "milk"}"#).await,
        "1"
    );
    assert_eq!(
        invoke_ok(&mut c, &a.session_id, "add", br#"{"text": "eggs"}"#).await,
        "2"
    );
    assert_eq!(
        invoke_ok(&mut c, &a.session_id, "list", b"").await,
        r#"[{"id":1,"text":"milk"},{"id":2,"text":"eggs"}]"#
    );
    assert_eq!(
        invoke_ok(&mut c, &b.session_id, "list", b"").await,
        "[]",
        "per-session state"
    );
    let whoami = invoke_ok(&mut c, &b.session_id, "whoami", b"").await;
    assert!(whoami.contains(&b.session_id), "{whoami}");

    use gatehouse::proto::v1::command_error::Kind;
    for (name, payload, kind) in [
        ("remove", &br#"{"id": 9}"#[..], Kind::Failed),
        ("add", b"not json", Kind::InvalidPayload),
        ("nope", b"", Kind::UnknownCommand),
        // An ordinary exception, turned into `failed` by the example's
        // handler instead of trapping the instance.
        ("bug", b"", Kind::Failed),
    ] {
        let r = try_invoke(&mut c, &a.session_id, name, payload)
            .await
            .unwrap();
        assert_eq!(r.error.map(|e| e.kind), Some(kind as i32), "{name}");
    }
    // Still READY after every error; events, and a timer tick.
    assert_eq!(
        invoke_ok(&mut c, &a.session_id, "remove", br#"{"id": 1}"#).await,
        ""
    );
    invoke_ok(&mut c, &a.session_id, "later", b"10").await;
    let mut events = subscribe(&mut c, &a.session_id, None).await.unwrap();
    let names: Vec<String> = [
        next_event(&mut events).await,
        next_event(&mut events).await,
        next_event(&mut events).await,
    ]
    .into_iter()
    .map(|e| e.name)
    .collect();
    assert_eq!(names, ["added", "added", "tick"]);
    assert!(!close(&mut c, &a.session_id).await.already_closed);
    assert!(!close(&mut c, &b.session_id).await.already_closed);
}

#[tokio::test]
async fn plugin_check_explains_a_javascript_component_importing_wasi_http() {
    let Some(tool) = componentize_js() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("default.wasm");
    build(tool, wasm.clone(), &[]).await;
    let out = Command::new(BIN)
        .args(["plugin", "check", "--no-cache"])
        .arg(&wasm)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let http = stdout
        .lines()
        .find(|l| l.starts_with("cannot run here: it imports wasi:http/"))
        .unwrap_or_else(|| panic!("wasi:http not named:\n{stdout}"));
    assert!(http.contains("never provides"), "{http}");
    assert!(
        stdout.contains("fix: ") && stdout.contains("-d http fetch-event"),
        "what to do:\n{stdout}"
    );
    // Filesystem imports are linked, and denied at run time.
    assert!(
        stdout.lines().any(|l| l.contains("denied")
            && l.contains("wasi:filesystem/")
            && l.contains("denied at run time unless")),
        "{stdout}"
    );
}

/// `gatehouse plugin new --lang js` to a running session, built with the
/// project's own build script's arguments and the pinned componentize-js.
#[tokio::test]
async fn plugin_new_js_to_session() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["plugin", "new", "hello", "--lang", "js"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "plugin new: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("npm ci && npm run build"), "{stdout}");
    let js_notes = project;
    let project = dir.path().join("hello");
    let read = |path: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let package = read(&project.join("package.json"));
    // The toolchain is pinned, checked whether or not it is installed
    // here: exact versions, and a lock file that agrees with package.json
    // (`npm ci` refuses one that does not) and resolves jco and
    // preview2-shim to what plugins/js-notes, built below, resolves.
    let lock = read(&project.join("package-lock.json"));
    let notes = read(&js_notes().join("package-lock.json"));
    let wanted = package["devDependencies"].as_object().unwrap();
    for (name, version) in wanted {
        let version = version.as_str().unwrap();
        assert!(
            version.chars().all(|c| c.is_ascii_digit() || c == '.'),
            "{name} {version} is not an exact version"
        );
    }
    assert_eq!(
        lock["packages"][""]["devDependencies"], package["devDependencies"],
        "package-lock.json and package.json disagree"
    );
    for dep in [
        "@bytecodealliance/componentize-js",
        "@bytecodealliance/jco",
        "@bytecodealliance/preview2-shim",
    ] {
        let key = format!("node_modules/{dep}");
        let pinned = &lock["packages"][&key];
        assert!(pinned["integrity"].is_string(), "{dep} is not locked");
        assert_eq!(
            pinned["version"], notes["packages"][&key]["version"],
            "{dep}"
        );
    }
    let Some(tool) = componentize_js() else {
        return;
    };
    let script = package["scripts"]["build"].as_str().unwrap().to_string();
    // `componentize-js ARGS...`: run the pinned binary with the same ARGS.
    let args: Vec<String> = script
        .split_whitespace()
        .skip(1)
        .map(String::from)
        .collect();
    let built = tokio::task::spawn_blocking({
        let project = project.clone();
        move || {
            Command::new(tool)
                .args(&args)
                .current_dir(&project)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(built.status.success(), "{script}: {built:?}");
    let wasm = project.join("hello.wasm");
    let config = Toml::new()
        .server(&cache_line())
        .backend_with(
            "hello",
            &wasm.display().to_string(),
            &["config = { greeting = \"hi\" }"],
            &[],
        )
        .render();
    let gw = Gatehouse::start(config).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "hello").await;
    assert_eq!(
        invoke_ok(&mut c, &s.session_id, "hello", br#"{"name": "ada"}"#).await,
        "hi, ada"
    );
    assert_eq!(
        invoke_ok(&mut c, &s.session_id, "calls", b"").await,
        r#"{"calls":2}"#
    );
    let mut events = subscribe(&mut c, &s.session_id, None).await.unwrap();
    assert_eq!(next_event(&mut events).await.name, "greeted");
}
