//! Moving live sessions between versions through the real binary:
//! `UpgradeSession` carries the state through snapshot and restore (the
//! plugin sees the version it came from) and keeps the id and event
//! sequence; a refused restore and a plugin without state leave the
//! session on its version, untouched; `[backends.rollout]
//! upgrade_sessions` moves every live session after a reload.

use gatehouse::proto::v1 as pb;
use tonic::Code;

use crate::fixtures::*;

/// `chaos` at `version`, and `echo`, with extra backend lines.
fn config(version: &str, lines: &str) -> String {
    format!(
        "[server]\nsweep_interval = \"50ms\"\n\
         [[backends]]\nname = \"chaos\"\nmodule = \"builtin:chaos\"\nversion = \"{version}\"\n{lines}\n\
         [[backends]]\nname = \"echo\"\nmodule = \"builtin:echo\"\nversion = \"{version}\"\n"
    )
}

async fn reload_to(gw: &Gatehouse, text: &str, n: f64) {
    std::fs::write(gw.dir().join("gatehouse.toml"), text).expect("writing the config");
    gw.sighup();
    gw.wait_metric("gatehouse_reloads_total", &[("result", "ok")], n)
        .await;
}

async fn upgrade(
    c: &mut Client,
    id: &str,
    version: &str,
) -> Result<pb::SessionInfo, tonic::Status> {
    bounded(
        "UpgradeSession",
        c.upgrade_session(pb::UpgradeSessionRequest {
            session_id: id.to_string(),
            version: version.to_string(),
        }),
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn an_upgrade_moves_the_state_to_the_new_version() {
    let gw = Gatehouse::start(config("1.0.0", "")).await;
    let mut c = gw.client().await;
    let id = open(&mut c, "chaos").await.session_id;
    let mut events = subscribe(&mut c, &id, None).await.expect("subscribe");
    invoke_ok(&mut c, &id, "put", "colour blue").await;
    invoke_ok(&mut c, &id, "flood", "1").await;
    assert_eq!(next_event(&mut events).await.sequence, 1);

    reload_to(&gw, &config("2.0.0", ""), 1.0).await;
    // Without upgrade_sessions the session stays where it was.
    let info = get(&mut c, &id).await;
    assert_eq!(info.backend_version, "1.0.0");
    let old_digest = info.backend_digest.clone();

    let info = upgrade(&mut c, &id, "2.0.0").await.expect("UpgradeSession");
    assert_eq!(info.session_id, id);
    assert_eq!(info.backend_version, "2.0.0");
    assert_eq!(state(&info), pb::SessionState::Ready);
    assert_eq!(invoke_ok(&mut c, &id, "get", "colour").await, "blue");
    assert_eq!(invoke_ok(&mut c, &id, "restored-from", "").await, "1.0.0");

    // The old instance closed; the event sequence goes on.
    assert_eq!(next_event(&mut events).await.name, "closed");
    let upgraded = next_event(&mut events).await;
    assert_eq!(upgraded.name, "gatehouse.upgraded");
    assert_eq!(upgraded.sequence, 3);
    let payload: serde_json::Value = serde_json::from_slice(&upgraded.payload).unwrap();
    assert_eq!(payload["from"], "1.0.0");
    assert_eq!(payload["to"], "2.0.0");

    // The old version had only this session: it is unloaded.
    eventually("the old version to be unloaded", PATIENCE, || {
        let mut c = c.clone();
        let old = old_digest.clone();
        async move {
            let backends = c
                .list_backends(pb::ListBackendsRequest {})
                .await
                .ok()?
                .into_inner()
                .backends;
            (!backends
                .iter()
                .any(|b| b.digest == old && b.version == "1.0.0"))
            .then_some(())
        }
    })
    .await;
    assert_eq!(
        gw.metric("gatehouse_session_upgrades_total", &[("reason", "ok")])
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_refused_restore_leaves_the_old_version_serving() {
    let gw = Gatehouse::start(config("1.0.0", "")).await;
    let mut c = gw.client().await;
    let mut request = open_request("chaos");
    request.config.insert("fail_restore".into(), "yes".into());
    let id = open_with(&mut c, request).await.session_id;
    invoke_ok(&mut c, &id, "put", "k v").await;
    reload_to(&gw, &config("2.0.0", ""), 1.0).await;

    let status = expect_code(
        upgrade(&mut c, &id, "2.0.0").await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("fail_restore"), "{status:?}");
    let info = get(&mut c, &id).await;
    assert_eq!(info.backend_version, "1.0.0");
    assert_eq!(state(&info), pb::SessionState::Ready);
    assert_eq!(invoke_ok(&mut c, &id, "get", "k").await, "v");
    assert_eq!(invoke_ok(&mut c, &id, "restored-from", "").await, "");
    assert_eq!(
        gw.metric("gatehouse_session_upgrades_total", &[("reason", "failed")])
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_plugin_without_state_is_not_upgraded() {
    let gw = Gatehouse::start(config("1.0.0", "")).await;
    let mut c = gw.client().await;
    let id = open(&mut c, "echo").await.session_id;
    invoke_ok(&mut c, &id, "count", "").await;
    reload_to(&gw, &config("2.0.0", ""), 1.0).await;
    let status = expect_code(upgrade(&mut c, &id, "").await, Code::FailedPrecondition);
    assert!(status.message().contains("keeps no state"), "{status:?}");
    assert_eq!(get(&mut c, &id).await.backend_version, "1.0.0");
    assert_eq!(invoke_ok(&mut c, &id, "count", "").await, "2");
    expect_code(upgrade(&mut c, &id, "9.9.9").await, Code::NotFound);
}

#[tokio::test]
async fn upgrade_sessions_moves_every_live_session_after_a_reload() {
    let rollout = "[backends.rollout]\nupgrade_sessions = true";
    let gw = Gatehouse::start(config("1.0.0", rollout)).await;
    let mut c = gw.client().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = open(&mut c, "chaos").await.session_id;
        invoke_ok(&mut c, &id, "put", format!("n {n}")).await;
        ids.push(id);
    }
    reload_to(&gw, &config("2.0.0", rollout), 1.0).await;
    for (n, id) in ids.iter().enumerate() {
        eventually("the session to move to 2.0.0", PATIENCE, || {
            let mut c = c.clone();
            let id = id.clone();
            async move { (get(&mut c, &id).await.backend_version == "2.0.0").then_some(()) }
        })
        .await;
        assert_eq!(invoke_ok(&mut c, id, "get", "n").await, n.to_string());
        assert_eq!(invoke_ok(&mut c, id, "restored-from", "").await, "1.0.0");
    }
}

#[tokio::test]
async fn upgrade_sessions_stops_at_the_first_failure() {
    let rollout = "[backends.rollout]\nupgrade_sessions = true";
    let gw = Gatehouse::start(config("1.0.0", rollout)).await;
    let mut c = gw.client().await;
    // Oldest first: one that moves, one whose restore is refused, one the
    // failure leaves where it is.
    let first = open(&mut c, "chaos").await.session_id;
    let mut refusing = open_request("chaos");
    refusing.config.insert("fail_restore".into(), "yes".into());
    let second = open_with(&mut c, refusing).await.session_id;
    let third = open(&mut c, "chaos").await.session_id;
    for id in [&first, &second, &third] {
        invoke_ok(&mut c, id, "put", "k v").await;
    }
    reload_to(&gw, &config("2.0.0", rollout), 1.0).await;
    eventually("upgrade_sessions to finish", PATIENCE, || async {
        gw.stderr()
            .contains("live sessions moved to the current version")
            .then_some(())
    })
    .await;
    let text = gw.metrics().await;
    let upgrades = |reason: &str| {
        metric_sum(
            &text,
            "gatehouse_session_upgrades_total",
            &[("backend", "chaos"), ("reason", reason)],
        )
    };
    assert_eq!((upgrades("ok"), upgrades("failed")), (1.0, 1.0), "{text}");
    assert!(
        gw.stderr()
            .contains("upgrade_sessions stopped at the first failure")
    );
    let version = |id: &String| {
        let mut c = c.clone();
        let id = id.clone();
        async move { get(&mut c, &id).await.backend_version }
    };
    assert_eq!(version(&first).await, "2.0.0");
    assert_eq!(version(&second).await, "1.0.0", "its restore was refused");
    assert_eq!(
        version(&third).await,
        "1.0.0",
        "not tried after the failure"
    );
    // Both left behind are untouched and READY.
    for id in [&second, &third] {
        assert_eq!(state(&get(&mut c, id).await), pb::SessionState::Ready);
        assert_eq!(invoke_ok(&mut c, id, "get", "k").await, "v");
    }
}

#[tokio::test]
async fn promoting_a_canary_over_the_admin_rpc_makes_it_current_and_moves_sessions() {
    use gatehouse::proto::v1::admin_client::AdminClient;
    let rollout = "[backends.rollout]\npercent = 1\nupgrade_sessions = true";
    let (key, hash) = gatehouse::keys::generate().unwrap();
    let tenant = format!(
        "[[tenants]]\nname = \"ops\"\n[[tenants.keys]]\nhash = \"{hash}\"\nscopes = [\"admin\"]\n"
    );
    let with_tenant = |version: &str| config(version, rollout) + &tenant;
    let gw = Gatehouse::builder(with_tenant("1.0.0"))
        .api_key(key.clone())
        .start()
        .await;
    let mut c = gw.client().await;
    let id = open_with(&mut c, {
        let mut r = open_request("chaos@1.0.0");
        r.client_session_name = "pinned".into();
        r
    })
    .await
    .session_id;
    invoke_ok(&mut c, &id, "put", "k v").await;
    reload_to(&gw, &with_tenant("2.0.0"), 1.0).await;
    // A canary: the session stays until the promotion.
    assert_eq!(get(&mut c, &id).await.backend_version, "1.0.0");

    let mut admin = AdminClient::with_interceptor(
        gw.channel().await,
        gatehouse::client::BearerKey::new(Some(&key)).unwrap(),
    );
    let both = admin
        .reload(pb::ReloadRequest {
            promote: "chaos".into(),
            rollback: "chaos".into(),
        })
        .await;
    expect_code(both, Code::InvalidArgument);
    let promoted = admin
        .reload(pb::ReloadRequest {
            promote: "chaos".into(),
            ..Default::default()
        })
        .await
        .expect("promote")
        .into_inner();
    assert_eq!(promoted.updated, ["chaos"]);
    let opened = open(&mut c, "chaos").await;
    assert_eq!(opened.backend_version, "2.0.0", "the canary is current");
    eventually("the session to move to 2.0.0", PATIENCE, || {
        let mut c = c.clone();
        let id = id.clone();
        async move { (get(&mut c, &id).await.backend_version == "2.0.0").then_some(()) }
    })
    .await;
    assert_eq!(invoke_ok(&mut c, &id, "get", "k").await, "v");
    // Nothing left to promote.
    let again = admin
        .reload(pb::ReloadRequest {
            promote: "chaos".into(),
            ..Default::default()
        })
        .await;
    expect_code(again, Code::FailedPrecondition);
}
