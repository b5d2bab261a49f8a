//! The key store through the binary: keys created with `gatehouse keys
//! create` work at once and after a restart, a revoked or expired key is
//! refused from the next call on (on a connection opened before), the
//! admin API needs the admin scope and names bad fields, an old database is
//! migrated and a corrupt or newer one refused clearly.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use gatehouse::keys::{KeyHash, generate};
use gatehouse::proto::admin::v1 as admin;
use serde_json::Value;
use tonic::Code;

use crate::fixtures::*;

/// The admin key of every test's config, tenant `ops`.
struct Setup {
    admin_key: String,
    config: String,
}

/// Tenants `ops` (an admin key in the file) and `acme` (no key in the file,
/// a quota of 5), the echo backend, and the key store in `data_dir`.
fn setup(data_dir: &Path) -> Setup {
    let (admin_key, admin_hash) = generate().expect("a key");
    let config = Toml::new()
        .server(&format!("data_dir = {:?}", data_dir.display().to_string()))
        .backend("echo", "builtin:echo")
        .render()
        + &format!(
            "\n[[tenants]]\nname = \"ops\"\n[[tenants.keys]]\nname = \"ops-admin\"\nhash = \"{admin_hash}\"\nscopes = [\"admin\"]\n\
             \n[[tenants]]\nname = \"acme\"\nmax_sessions = 5\n"
        );
    Setup { admin_key, config }
}

/// Runs the CLI against `gw` with `key`: (exit code, stdout, stderr).
fn cli(gw: &Gatehouse, key: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--addr", &gw.url(), "--key", key])
        .env_remove("GATEHOUSE_KEY")
        .env_remove("GATEHOUSE_ADDR")
        .stdin(Stdio::null())
        .output()
        .expect("running the CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// `keys create ... --json`: (id, secret).
fn create(gw: &Gatehouse, admin_key: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["keys", "create", "--tenant", "acme", "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = cli(gw, admin_key, &args);
    assert_eq!(code, 0, "keys create failed: {err}");
    let v: Value = serde_json::from_str(&out).expect("JSON from keys create");
    let id = v["id"].as_str().expect("an id").to_string();
    let key = v["key"].as_str().expect("the key").to_string();
    assert!(id.starts_with("key_") && key.starts_with("ghk_"), "{v}");
    assert_eq!(v["tenant"], "acme");
    (id, key)
}

/// A `gatehouse::client` connection with `key`.
async fn connect(gw: &Gatehouse, key: &str) -> gatehouse::client::Gateway {
    gatehouse::client::Gateway::connect(gw.url())
        .with_key(key)
        .await
        .expect("connecting")
}

/// The gRPC code of a `ListSessions` call with this connection's key.
async fn list_code(gw: &gatehouse::client::Gateway) -> Result<(), (Code, String)> {
    gw.sessions().await.map(|_| ()).map_err(|e| match e {
        gatehouse::client::Error::Status(s) => (s.code(), s.message().to_string()),
        other => panic!("not a status: {other}"),
    })
}

fn status_of(e: gatehouse::client::Error) -> tonic::Status {
    match e {
        gatehouse::client::Error::Status(s) => s,
        other => panic!("not a status: {other}"),
    }
}

#[tokio::test]
async fn a_created_key_works_survives_a_restart_and_is_refused_once_revoked() {
    let data = tempfile::tempdir().unwrap();
    let s = setup(data.path());
    let gw = Gatehouse::start(s.config.clone()).await;
    let (id, key) = create(
        &gw,
        &s.admin_key,
        &[
            "--scope",
            "sessions:open,sessions:use,sessions:read",
            "--name",
            "ci",
        ],
    );

    let user = connect(&gw, &key).await;
    let session = user
        .open("echo")
        .await
        .expect("the new key opens a session");
    assert_eq!(session.info().tenant, "acme");
    assert_eq!(reply(&session, "echo", "hi").await, "hi");
    session.close().await.unwrap();
    assert_eq!(gw.metric("gatehouse_store_keys_active", &[]).await, 1.0);

    // Listed with the config's key, and no hash anywhere.
    let (code, out, _) = cli(&gw, &s.admin_key, &["keys", "list", "--json"]);
    assert_eq!(code, 0);
    assert!(!out.contains("sha256:"), "a hash in the listing: {out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let keys = v["keys"].as_array().unwrap();
    let mine = keys
        .iter()
        .find(|k| k["id"] == id.as_str())
        .expect("the new key is listed");
    assert_eq!(
        (
            mine["source"].as_str(),
            mine["status"].as_str(),
            mine["name"].as_str()
        ),
        (Some("store"), Some("active"), Some("ci"))
    );
    let config_key = keys
        .iter()
        .find(|k| k["source"] == "config")
        .expect("the config key is listed");
    assert_eq!(config_key["tenant"], "ops");
    assert_eq!(config_key["name"], "ops-admin");

    // A restart keeps the key.
    drop(user);
    drop(gw);
    let gw = Gatehouse::start(s.config.clone()).await;
    let user = connect(&gw, &key).await;
    list_code(&user)
        .await
        .expect("the key works after a restart");

    // Revoked: refused on the connection that was open before, at once.
    let (code, out, err) = cli(&gw, &s.admin_key, &["keys", "revoke", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked"), "{out}");
    let (code, message) = list_code(&user)
        .await
        .expect_err("a revoked key is refused");
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("revoked"), "{message}");
    let fresh = connect(&gw, &key).await;
    assert_eq!(
        list_code(&fresh).await.unwrap_err().0,
        Code::Unauthenticated
    );
    // Revoking again says so.
    let (code, out, _) = cli(&gw, &s.admin_key, &["keys", "revoke", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("already revoked"), "{out}");
    assert_eq!(gw.metric("gatehouse_store_keys_active", &[]).await, 0.0);
    assert_eq!(
        gw.metric("gatehouse_admin_actions_total", &[("action", "key.revoke")])
            .await,
        2.0
    );

    // The audit log holds both actions, by the admin's key, through the API.
    let admin = connect(&gw, &s.admin_key).await;
    let events = admin
        .audit_events(admin::ListAuditEventsRequest::default())
        .await
        .unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["key.revoke", "key.revoke", "key.create"]);
    assert!(
        events.iter().all(|e| e.actor == "ops-admin"
            && e.tenant == "ops"
            && e.via == "api"
            && e.target == id)
    );
    assert!(
        std::fs::read_to_string(gw.dir().join("stderr.log"))
            .unwrap()
            .contains("gatehouse::audit"),
        "admin actions are logged under the gatehouse::audit target"
    );
    // Listing without --all leaves the revoked key out.
    let listed = admin.keys(admin::ListKeysRequest::default()).await.unwrap();
    assert!(listed.iter().all(|k| k.id != id));
    let all = admin
        .keys(admin::ListKeysRequest {
            include_inactive: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let k = all
        .iter()
        .find(|k| k.id == id)
        .expect("listed with include_inactive");
    assert!(
        !k.active && k.revoked.is_some() && k.last_used.is_some(),
        "{k:?}"
    );
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let s = setup(data.path());
    let gw = Gatehouse::start(s.config.clone()).await;
    let (code, _, err) = cli(
        &gw,
        &s.admin_key,
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--scope",
            "sessions:read",
            "--expires",
            "0d",
        ],
    );
    assert_eq!(code, 64, "a zero expiry is a usage error");
    assert!(err.contains("--expires"), "{err}");

    let (_, key) = create(
        &gw,
        &s.admin_key,
        &["--scope", "sessions:read", "--expires", "2s"],
    );
    let user = connect(&gw, &key).await;
    list_code(&user).await.expect("works before it expires");
    let message = eventually("the key to expire", Duration::from_secs(15), || async {
        list_code(&user).await.err()
    })
    .await;
    assert_eq!(message.0, Code::Unauthenticated);
    assert!(message.1.contains("expired"), "{}", message.1);
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_scope_and_names_bad_fields() {
    let data = tempfile::tempdir().unwrap();
    let s = setup(data.path());
    let gw = Gatehouse::start(s.config.clone()).await;
    let admin = connect(&gw, &s.admin_key).await;
    let new = |tenant: &str, scopes: &[&str]| gatehouse::client::NewKey {
        tenant: tenant.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let e = status_of(
        admin
            .create_key(new("nobody", &["sessions:read"]))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("tenant:") && e.message().contains("acme"),
        "{}",
        e.message()
    );
    let e = status_of(
        admin
            .create_key(new("acme", &["sessions:write"]))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("scopes:"), "{}", e.message());
    let e = status_of(admin.revoke_key("config:ops:1").await.unwrap_err());
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = status_of(admin.revoke_key("key_0000000000000000").await.unwrap_err());
    assert_eq!(e.code(), Code::NotFound);

    // A key without admin may not create keys.
    let reader = admin
        .create_key(new("acme", &["sessions:read", "sessions:open"]))
        .await
        .unwrap();
    let user = connect(&gw, &reader.key).await;
    let e = status_of(user.create_key(new("acme", &["admin"])).await.unwrap_err());
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = status_of(
        user.keys(admin::ListKeysRequest::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::PermissionDenied);
    // A reload over the API is audited too.
    admin.reload().await.expect("a reload");
    let events = admin
        .audit_events(admin::ListAuditEventsRequest::default())
        .await
        .unwrap();
    let reload = events
        .iter()
        .find(|e| e.action == "config.reload")
        .expect("the reload is audited");
    assert_eq!(
        (reload.actor.as_str(), reload.via.as_str()),
        ("ops-admin", "api")
    );
    // No key at all: the gateway is out of local mode.
    let anonymous = gatehouse::client::Gateway::connect(gw.url()).await.unwrap();
    assert_eq!(
        list_code(&anonymous).await.unwrap_err().0,
        Code::Unauthenticated
    );
}

/// Version 1 of the schema as released, written by hand: the migration must
/// read the old file, not today's.
const SCHEMA_V1: &str = "CREATE TABLE keys (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT,
        scopes TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, created INTEGER NOT NULL,
        expires INTEGER, last_used INTEGER, revoked INTEGER);
     CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL,
        actor TEXT NOT NULL, tenant TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, detail TEXT NOT NULL);
     PRAGMA user_version = 1;";

#[tokio::test]
async fn a_version_1_database_is_migrated_and_its_keys_work() {
    let data = tempfile::tempdir().unwrap();
    let (secret, hash) = generate().unwrap();
    {
        let conn = rusqlite::Connection::open(data.path().join("gatehouse.db")).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute(
            "INSERT INTO keys (id, tenant, name, scopes, hash, created) VALUES ('key_00000000000000aa', 'acme', 'old', 'sessions:read', ?1, 1700000000)",
            [hash.to_string()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO audit (at, actor, tenant, action, target, detail) VALUES (1700000000, 'ops-admin', 'ops', 'key.create', 'key_00000000000000aa', '')",
            [],
        )
        .unwrap();
    }
    let s = setup(data.path());
    let gw = Gatehouse::start(s.config.clone()).await;
    let user = connect(&gw, &secret).await;
    list_code(&user).await.expect("the old file's key works");
    let admin = connect(&gw, &s.admin_key).await;
    let events = admin
        .audit_events(admin::ListAuditEventsRequest::default())
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].via, "api",
        "the new column's default for old rows"
    );
    let conn = rusqlite::Connection::open(data.path().join("gatehouse.db")).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
    let cpu: i64 = conn
        .query_row("SELECT cpu_ns FROM keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(cpu, 0, "the CPU column's default for old rows");
    assert_eq!(KeyHash::of(&secret), hash);
}

#[tokio::test]
async fn a_corrupt_or_newer_database_is_refused_naming_the_file() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("gatehouse.db");
    std::fs::write(&path, vec![0x5a_u8; 16384]).unwrap();
    let s = setup(data.path());
    let e = Gatehouse::builder(s.config.clone())
        .try_start()
        .await
        .err()
        .expect("a corrupt store is refused");
    assert!(e.status().is_some_and(|st| !st.success()), "{e}");
    let shown = path.display().to_string();
    assert!(
        e.stderr().contains("server.data_dir")
            && e.stderr().contains(&shown)
            && e.stderr().contains("corrupt"),
        "{}",
        e.stderr()
    );

    std::fs::remove_file(&path).unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let e = Gatehouse::builder(s.config)
        .try_start()
        .await
        .err()
        .expect("a newer store is refused");
    assert!(
        e.stderr().contains("schema version 99 is newer") && e.stderr().contains(&shown),
        "{}",
        e.stderr()
    );
}

#[tokio::test]
async fn gateways_sharing_a_key_store_see_each_others_keys_and_revocations() {
    let data = tempfile::tempdir().unwrap();
    let s = setup(data.path());
    let one = Gatehouse::start(s.config.clone()).await;
    let two = Gatehouse::start(s.config.clone()).await;
    let (id, key) = create(&one, &s.admin_key, &["--scope", "sessions:read"]);
    let on_two = connect(&two, &key).await;
    eventually(
        "the other gateway to accept the new key",
        Duration::from_secs(15),
        || async { list_code(&on_two).await.ok() },
    )
    .await;
    let (code, _, err) = cli(&one, &s.admin_key, &["keys", "revoke", &id]);
    assert_eq!(code, 0, "{err}");
    let (code, message) = eventually(
        "the other gateway to refuse the revoked key",
        Duration::from_secs(15),
        || async { list_code(&on_two).await.err() },
    )
    .await;
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("revoked"), "{message}");
}

#[tokio::test]
async fn a_store_keys_guest_cpu_is_totalled_and_listed() {
    let data = tempfile::tempdir().unwrap();
    let s = setup(data.path());
    let gw = Gatehouse::start(s.config.clone()).await;
    let (id, key) = create(
        &gw,
        &s.admin_key,
        &["--scope", "sessions:open,sessions:use,sessions:read"],
    );
    let user = connect(&gw, &key).await;
    let session = user.open("echo").await.unwrap();
    for _ in 0..20 {
        assert_eq!(reply(&session, "echo", "hi").await, "hi");
    }
    let info = session.refresh().await.unwrap();
    let metered = info.cpu_time.expect("SessionInfo.cpu_time");
    assert!(metered.nanos > 0 || metered.seconds > 0, "{metered:?}");
    // The key's total reaches the store within a few upkeeps.
    let admin_conn = connect(&gw, &s.admin_key).await;
    let total = eventually(
        "the key's CPU in the store",
        Duration::from_secs(15),
        || {
            let admin_conn = &admin_conn;
            let id = &id;
            async move {
                let keys = admin_conn
                    .keys(admin::ListKeysRequest::default())
                    .await
                    .unwrap();
                let mine = keys.iter().find(|k| &k.id == id)?;
                let cpu = mine.cpu_time?;
                (cpu.seconds > 0 || cpu.nanos > 0).then_some(cpu)
            }
        },
    )
    .await;
    // What the key's one session used, as the session says (the total
    // may trail it by the last upkeep).
    assert!(
        (total.seconds, total.nanos) <= (metered.seconds, metered.nanos),
        "key {total:?}, session {metered:?}"
    );
    let (code, out, _) = cli(&gw, &s.admin_key, &["keys", "list"]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().contains("CPU"), "{out}");
}
