//! Reloading a running gateway through the real binary: by SIGHUP and by
//! the Admin RPC (and `gatehouse reload`); sessions keep their version and
//! state while new opens get the new code; pins by version and digest; a
//! removed backend; retirement by last close and by `retire_after`; bad
//! configs, components and commands changing nothing; a revoked key; and
//! the `[server]` keys that need a restart.

use std::process::Command;

use gatehouse::proto::v1 as pb;
use gatehouse::proto::v1::admin_client::AdminClient;
use tonic::Code;

use crate::fixtures::*;

fn component(name: &str) -> Vec<u8> {
    gatehouse::builtin::component(name)
        .expect("a built-in component")
        .to_vec()
}

/// A config serving `app` from `app.wasm` at `version`, with extra lines
/// for the backend and a tail (tenants).
fn app_config(version: &str, backend_lines: &str, tail: &str) -> String {
    format!(
        "[server]\nsweep_interval = \"50ms\"\n[[backends]]\nname = \"app\"\nmodule = \"app.wasm\"\nversion = \"{version}\"\n{backend_lines}\n[[backends]]\nname = \"echo\"\nmodule = \"builtin:echo\"\n{tail}"
    )
}

/// Rewrites the gateway's config file.
fn rewrite(gw: &Gatehouse, text: &str) {
    std::fs::write(gw.dir().join("gatehouse.toml"), text).expect("writing the config");
}

/// The listed versions of `name`: (version, retiring, live sessions).
async fn versions(c: &mut Client, name: &str) -> Vec<(String, bool, u32)> {
    c.list_backends(pb::ListBackendsRequest {})
        .await
        .expect("ListBackends")
        .into_inner()
        .backends
        .into_iter()
        .filter(|b| b.name == name)
        .map(|b| {
            (
                b.version,
                b.state == pb::BackendVersionState::Retiring as i32,
                b.live_sessions,
            )
        })
        .collect()
}

/// Waits for the reload counter of `result` to reach `n`.
async fn reloads(gw: &Gatehouse, result: &str, n: f64) {
    gw.wait_metric("gatehouse_reloads_total", &[("result", result)], n)
        .await;
}

#[tokio::test]
async fn sighup_swaps_the_code_for_new_sessions_and_keeps_the_old_ones() {
    let gw = Gatehouse::builder(app_config("1.0.0", "", ""))
        .file("app.wasm", component("echo"))
        .start()
        .await;
    let mut c = gw.client().await;
    let old = open(&mut c, "app").await;
    assert_eq!(old.backend_version, "1.0.0");
    let v1_digest = old.backend_digest.clone();
    assert!(v1_digest.starts_with("sha256:"), "{old:?}");
    for n in 1..=2 {
        assert_eq!(
            invoke_ok(&mut c, &old.session_id, "count", b"").await,
            n.to_string()
        );
    }

    // The new version is the kv component: a different program.
    std::fs::write(gw.dir().join("app.wasm"), component("kv")).unwrap();
    rewrite(&gw, &app_config("2.0.0", "", ""));
    gw.sighup();
    reloads(&gw, "ok", 1.0).await;
    assert_eq!(
        versions(&mut c, "app").await,
        [("2.0.0".into(), false, 0), ("1.0.0".into(), true, 1)]
    );

    // The old session keeps its code and its state.
    assert_eq!(invoke_ok(&mut c, &old.session_id, "count", b"").await, "3");
    let info = get(&mut c, &old.session_id).await;
    assert_eq!(
        (info.backend_version.as_str(), info.backend_digest.as_str()),
        ("1.0.0", v1_digest.as_str())
    );
    // A new session runs the new code.
    let new = open(&mut c, "app").await;
    assert_eq!(new.backend_version, "2.0.0");
    assert_ne!(new.backend_digest, v1_digest);
    invoke_ok(&mut c, &new.session_id, "put", br#"{"key":"a","value":1}"#).await;
    let r = try_invoke(&mut c, &new.session_id, "count", b"")
        .await
        .unwrap();
    assert!(r.error.is_some(), "kv has no count: {r:?}");

    // Pins: by version and by digest prefix, while version 1 is loaded.
    let pinned = open_with(
        &mut c,
        pb::OpenSessionRequest {
            backend: "app@1.0.0".into(),
            ..open_request("app")
        },
    )
    .await;
    assert_eq!(pinned.backend_version, "1.0.0");
    let prefix = &v1_digest["sha256:".len().."sha256:".len() + 12];
    let by_digest = open_with(
        &mut c,
        pb::OpenSessionRequest {
            backend: format!("app@sha256:{prefix}"),
            ..open_request("app")
        },
    )
    .await;
    assert_eq!(by_digest.backend_digest, v1_digest);
    let missing = try_open(
        &mut c,
        pb::OpenSessionRequest {
            backend: "app@9.9.9".into(),
            ..open_request("app")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Version 1 goes with its last session.
    for sid in [&old.session_id, &pinned.session_id, &by_digest.session_id] {
        close(&mut c, sid).await;
    }
    eventually("version 1 to be unloaded", PATIENCE, || async {
        let mut c = gw.client().await;
        (versions(&mut c, "app").await == [("2.0.0".to_string(), false, 1)]).then_some(())
    })
    .await;
    assert!(gw.stderr().contains("retired backend version unloaded"));
}

#[tokio::test]
async fn a_removed_backend_and_retire_after() {
    let gw = Gatehouse::builder(app_config("1.0.0", "retire_after = \"300ms\"", ""))
        .file("app.wasm", component("echo"))
        .start()
        .await;
    let mut c = gw.client().await;
    let app = open(&mut c, "app").await;
    let bystander = open(&mut c, "echo").await;

    // Removed: no new opens, the session goes on until retire_after.
    rewrite(
        &gw,
        "[server]\nsweep_interval = \"50ms\"\n[[backends]]\nname = \"echo\"\nmodule = \"builtin:echo\"\n",
    );
    gw.sighup();
    reloads(&gw, "ok", 1.0).await;
    let refused = try_open(&mut c, open_request("app")).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    eventually("the retired session to close", PATIENCE, || async {
        let mut c = gw.client().await;
        let info = get(&mut c, &app.session_id).await;
        (info.close_reason == pb::CloseReason::BackendRetired as i32).then_some(())
    })
    .await;
    assert_eq!(
        invoke_ok(&mut c, &bystander.session_id, "count", b"").await,
        "1"
    );
    eventually("the removed backend to be gone", PATIENCE, || async {
        let mut c = gw.client().await;
        versions(&mut c, "app").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_bad_reload_changes_nothing() {
    let (admin_key, admin_hash) = gatehouse::keys::generate().unwrap();
    let tenant = format!(
        "[[tenants]]\nname = \"ops\"\n[[tenants.keys]]\nhash = \"{admin_hash}\"\nscopes = [\"admin\"]\n"
    );
    let gw = Gatehouse::builder(app_config("1.0.0", "", &tenant))
        .file("app.wasm", component("echo"))
        .api_key(admin_key.clone())
        .start()
        .await;
    let mut c = gw.client().await;
    let s = open(&mut c, "app").await;
    let mut admin = AdminClient::with_interceptor(
        gw.channel().await,
        gatehouse::client::BearerKey::new(Some(&admin_key)).unwrap(),
    );
    let good = app_config("1.0.0", "", &tenant);
    let native = format!(
        "{good}[[backends]]\nname = \"plc\"\nkind = \"native\"\ncommand = [\"/no/such/worker\"]\n"
    );
    let cases: [(&str, String, Option<&[u8]>); 4] = [
        ("bad TOML", "[[backends]\n".into(), None),
        (
            "an unknown key",
            format!("{good}[server]\nlisten_addr = 1\n"),
            None,
        ),
        (
            "a component that does not compile",
            app_config("2.0.0", "", &tenant),
            Some(b"not wasm"),
        ),
        ("a missing native command", native, None),
    ];
    for (n, (what, text, wasm)) in cases.into_iter().enumerate() {
        if let Some(bytes) = wasm {
            std::fs::write(gw.dir().join("app.wasm"), bytes).unwrap();
        }
        rewrite(&gw, &text);
        let e = admin
            .reload(pb::ReloadRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{what}: {e:?}");
        assert!(e.message().contains("nothing was changed"), "{what}: {e:?}");
        reloads(&gw, "error", (n + 1) as f64).await;
        // The old config keeps serving, and the session its code.
        assert_eq!(
            versions(&mut c, "app").await,
            [("1.0.0".into(), false, 1)],
            "{what}"
        );
        invoke_ok(&mut c, &s.session_id, "count", b"").await;
        if wasm.is_some() {
            std::fs::write(gw.dir().join("app.wasm"), component("echo")).unwrap();
        }
    }

    // A good one: what changed, and the [server] keys that need a restart.
    rewrite(
        &gw,
        &app_config("1.0.0", "", &tenant).replace(
            "sweep_interval = \"50ms\"",
            "sweep_interval = \"50ms\"\nmax_sessions = 7",
        ),
    );
    let r = admin
        .reload(pb::ReloadRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.unchanged, ["app", "echo"]);
    assert_eq!(r.restart_required, ["server.max_sessions"]);
    assert_eq!(r.tenants, 1);

    // Without the admin scope, or anonymously: refused.
    let mut anon = AdminClient::new(gw.channel().await);
    assert_eq!(
        anon.reload(pb::ReloadRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    // The CLI prints what changed.
    let out = Command::new(BIN)
        .args(["--addr", &gw.url(), "--key", &admin_key, "reload"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("unchanged: app, echo"), "{stdout}");
    assert!(stdout.contains("server.max_sessions"), "{stdout}");
}

#[tokio::test]
async fn a_revoked_key_is_refused_and_its_tenant_keeps_its_sessions() {
    let (kept, kept_hash) = gatehouse::keys::generate().unwrap();
    let (leaked, leaked_hash) = gatehouse::keys::generate().unwrap();
    let scopes =
        "scopes = [\"sessions:open\", \"sessions:use\", \"sessions:read\", \"backends:read\"]";
    let with_both = format!(
        "[[tenants]]\nname = \"acme\"\nmax_sessions = 2\n[[tenants.keys]]\nhash = \"{kept_hash}\"\n{scopes}\n[[tenants.keys]]\nhash = \"{leaked_hash}\"\n{scopes}\n"
    );
    let gw = Gatehouse::builder(app_config("1.0.0", "", &with_both))
        .file("app.wasm", component("echo"))
        .api_key(leaked.clone())
        .start()
        .await;
    let mut by_leaked = gw.client().await;
    let s = open(&mut by_leaked, "echo").await;

    // The leaked key goes; the quota drops to 1.
    let only_kept = format!(
        "[[tenants]]\nname = \"acme\"\nmax_sessions = 1\n[[tenants.keys]]\nhash = \"{kept_hash}\"\n{scopes}\n"
    );
    rewrite(&gw, &app_config("1.0.0", "", &only_kept));
    gw.sighup();
    reloads(&gw, "ok", 1.0).await;
    let refused = by_leaked
        .list_backends(pb::ListBackendsRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // The tenant's session lives on for its other key; the lowered quota
    // counts it and refuses a second one.
    let mut by_kept = gatehouse::proto::v1::gateway_client::GatewayClient::with_interceptor(
        gw.channel().await,
        gatehouse::client::BearerKey::new(Some(&kept)).unwrap(),
    );
    assert_eq!(
        invoke_ok(&mut by_kept, &s.session_id, "count", b"").await,
        "1"
    );
    let full = try_open(&mut by_kept, open_request("echo"))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    close(&mut by_kept, &s.session_id).await;
    open(&mut by_kept, "echo").await;
}

#[tokio::test]
async fn a_canary_that_faults_rolls_itself_back() {
    let rollout = "[backends.rollout]\npercent = 50\nmax_faults = 2\nwindow = \"1m\"";
    let gw = Gatehouse::builder(app_config("1.0.0", rollout, ""))
        .file("app.wasm", component("echo"))
        .start()
        .await;
    let mut c = gw.client().await;
    let stable = open(&mut c, "app").await;

    // Version 2 is the chaos build: its "trap" faults the session.
    std::fs::write(gw.dir().join("app.wasm"), component("chaos")).unwrap();
    rewrite(&gw, &app_config("2.0.0", rollout, ""));
    gw.sighup();
    reloads(&gw, "ok", 1.0).await;
    let states: Vec<(String, i32)> = c
        .list_backends(pb::ListBackendsRequest {})
        .await
        .unwrap()
        .into_inner()
        .backends
        .into_iter()
        .filter(|b| b.name == "app")
        .map(|b| (b.version, b.state))
        .collect();
    assert_eq!(
        states,
        [
            ("1.0.0".into(), pb::BackendVersionState::Current as i32),
            ("2.0.0".into(), pb::BackendVersionState::Canary as i32)
        ]
    );

    // About half the opens land on the canary; each of those traps.
    let mut on_canary = 0;
    for _ in 0..60 {
        let s = open(&mut c, "app").await;
        if s.backend_version == "2.0.0" {
            on_canary += 1;
            let _ = try_invoke(&mut c, &s.session_id, "trap", b"").await;
        } else {
            close(&mut c, &s.session_id).await;
        }
        if on_canary == 3 {
            break;
        }
    }
    assert_eq!(on_canary, 3, "no open of 60 reached a 50% canary");
    gw.wait_metric("gatehouse_rollbacks_total", &[("backend", "app")], 1.0)
        .await;
    assert!(gw.stderr().contains("canary rolled back"));
    // Rolled back by itself: every new open gets version 1 again.
    for _ in 0..20 {
        let s = open(&mut c, "app").await;
        assert_eq!(s.backend_version, "1.0.0");
        close(&mut c, &s.session_id).await;
    }
    assert_eq!(
        invoke_ok(&mut c, &stable.session_id, "count", b"").await,
        "1"
    );

    // A new version without a rollout replaces version 1 at once.
    std::fs::write(gw.dir().join("app.wasm"), component("kv")).unwrap();
    rewrite(&gw, &app_config("3.0.0", "", ""));
    gw.sighup();
    reloads(&gw, "ok", 2.0).await;
    for _ in 0..10 {
        let s = open(&mut c, "app").await;
        assert_eq!(s.backend_version, "3.0.0");
        close(&mut c, &s.session_id).await;
    }
}

/// The versions of `name` with their states.
async fn version_states(c: &mut Client, name: &str) -> Vec<(String, pb::BackendVersionState)> {
    c.list_backends(pb::ListBackendsRequest {})
        .await
        .expect("ListBackends")
        .into_inner()
        .backends
        .into_iter()
        .filter(|b| b.name == name)
        .map(|b| (b.version.clone(), b.state()))
        .collect()
}

#[tokio::test]
async fn gatehouse_reload_promotes_or_rolls_back_a_canary_by_hand() {
    let (admin_key, hash) = gatehouse::keys::generate().unwrap();
    let tail = format!(
        "[[tenants]]\nname = \"ops\"\n[[tenants.keys]]\nhash = \"{hash}\"\nscopes = [\"admin\"]\n"
    );
    // No automatic rollback: only the operator ends these rollouts.
    let rollout = "[backends.rollout]\npercent = 50\nmax_faults = 1000\nwindow = \"1m\"";
    let gw = Gatehouse::builder(app_config("1.0.0", rollout, &tail))
        .file("app.wasm", component("echo"))
        .api_key(admin_key.clone())
        .start()
        .await;
    let mut c = gw.client().await;
    let reload = |args: &[&str]| {
        Command::new(BIN)
            .args(["--addr", &gw.url(), "--key", &admin_key, "reload"])
            .args(args)
            .output()
            .unwrap()
    };
    let opens = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            let mut got = std::collections::BTreeSet::new();
            for _ in 0..10 {
                let s = open(&mut c, "app").await;
                got.insert(s.backend_version.clone());
                close(&mut c, &s.session_id).await;
            }
            got.into_iter().collect::<Vec<_>>()
        }
    };
    // Nothing to promote yet.
    let out = reload(&["--promote", "app"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no rollout in progress"),
        "{out:?}"
    );

    // Version 2 as a canary, promoted by hand: every open gets it.
    rewrite(&gw, &app_config("2.0.0", rollout, &tail));
    let out = reload(&[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        version_states(&mut c, "app").await,
        [
            ("1.0.0".into(), pb::BackendVersionState::Current),
            ("2.0.0".into(), pb::BackendVersionState::Canary)
        ]
    );
    let out = reload(&["--promote", "app"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        version_states(&mut c, "app").await,
        [("2.0.0".into(), pb::BackendVersionState::Current)],
        "version 1 had no sessions left: it is gone"
    );
    assert_eq!(opens(&mut c).await, ["2.0.0"]);

    // Version 3 as a canary, rolled back by hand: every open stays on 2.
    rewrite(&gw, &app_config("3.0.0", rollout, &tail));
    assert!(reload(&[]).status.success());
    assert!(
        version_states(&mut c, "app")
            .await
            .contains(&("3.0.0".into(), pb::BackendVersionState::Canary))
    );
    let out = reload(&["--rollback", "app"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        version_states(&mut c, "app").await,
        [("2.0.0".into(), pb::BackendVersionState::Current)]
    );
    assert_eq!(opens(&mut c).await, ["2.0.0"]);
    // Ended rollouts cannot be ended again.
    let out = reload(&["--rollback", "app"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // Both are audited as the admin's.
    let events = gw
        .connect()
        .await
        .audit_events(gatehouse::proto::admin::v1::ListAuditEventsRequest::default())
        .await
        .unwrap();
    for action in ["rollout.promote", "rollout.rollback"] {
        assert!(
            events
                .iter()
                .any(|e| e.action == action && e.target == "app"),
            "{action}: {events:?}"
        );
    }
}

/// A native backend on `gatehouse worker sim-device` with `args` after it
/// and one warm worker.
fn native_config(args: &str) -> String {
    format!(
        "[server]\nsweep_interval = \"50ms\"\n[[backends]]\nname = \"plc\"\nkind = \"native\"\ncommand = [{BIN:?}, \"worker\", \"sim-device\"{args}]\n[backends.native]\nwarm_pool = 1\n"
    )
}

/// The gateway's live worker processes (its only children here).
fn workers(gw: &Gatehouse) -> Vec<u32> {
    children(gw.pid())
        .into_iter()
        .filter(|(_, state)| state != "Z")
        .map(|(pid, _)| pid)
        .collect()
}

#[tokio::test]
async fn a_native_backend_reloads_its_warm_pool_and_gauges_return_to_baseline() {
    let gw = Gatehouse::start(native_config("")).await;
    let mut c = gw.client().await;
    let old = open(&mut c, "plc").await;
    invoke_ok(&mut c, &old.session_id, "write", b"t 7").await;
    // The session's worker and a refilled warm one.
    eventually("the warm pool to refill", PATIENCE, || async {
        (workers(&gw).len() == 2).then_some(())
    })
    .await;
    let before: Vec<u32> = workers(&gw)
        .into_iter()
        .filter(|p| *p != old.worker_pid)
        .collect();

    // A changed command line is a new version with a pool of its own; the
    // old version's warm worker goes, its session's stays.
    rewrite(&gw, &native_config(", \"--\""));
    gw.sighup();
    reloads(&gw, "ok", 1.0).await;
    eventually(
        "the old warm worker to go and a new one to start",
        PATIENCE,
        || async {
            let now = workers(&gw);
            (now.len() == 2
                && now.contains(&old.worker_pid)
                && !now.iter().any(|p| before.contains(p)))
            .then_some(())
        },
    )
    .await;
    assert_eq!(invoke_ok(&mut c, &old.session_id, "read", b"t").await, "7");
    let new = open(&mut c, "plc").await;
    assert_ne!(new.backend_digest, old.backend_digest);

    close(&mut c, &old.session_id).await;
    close(&mut c, &new.session_id).await;
    gw.wait_metric("gatehouse_open_sessions", &[], 0.0).await;
    eventually(
        "only the new version's warm worker to be left",
        PATIENCE,
        || async { (workers(&gw).len() == 1).then_some(()) },
    )
    .await;
}
