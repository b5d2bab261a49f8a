use super::*;
use crate::keys::{Scope, Scopes};

fn actor() -> Actor {
    Actor {
        label: "ops-admin".into(),
        tenant: "ops".into(),
        via: "api",
    }
}

fn new_key(tenant: &str, expires_in: Option<u64>) -> NewKey {
    NewKey {
        tenant: tenant.into(),
        name: Some("ci".into()),
        scopes: [Scope::SessionsOpen, Scope::SessionsUse]
            .into_iter()
            .collect::<Scopes>(),
        expires_in,
    }
}

#[tokio::test]
async fn keys_are_found_by_secret_revoked_and_kept_across_opens() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let store = KeyStore::open(dir.path(), &metrics).unwrap();
    assert!(!store.has_keys());
    let (secret, key) = store.create(new_key("acme", None), actor()).await.unwrap();
    assert!(
        key.id.starts_with("key_") && key.id.len() == 20,
        "{}",
        key.id
    );
    assert_eq!(store.find(&secret).unwrap().id, key.id);
    assert!(store.find("ghk_nope").is_none());
    assert!(store.has_keys());
    assert_eq!(metrics.store_keys_active.get(), 1);

    let (revoked, already) = store.revoke(&key.id, actor()).await.unwrap();
    assert!(!already && revoked.revoked.is_some());
    assert!(store.find(&secret).unwrap().revoked.is_some());
    let (_, already) = store.revoke(&key.id, actor()).await.unwrap();
    assert!(already);
    assert!(matches!(
        store.revoke("key_0000000000000000", actor()).await,
        Err(StoreError::NoSuchKey(_))
    ));
    assert_eq!(metrics.store_keys_active.get(), 0);

    store.note_used(&key.id);
    store.flush();
    drop(store);
    let again = KeyStore::open(dir.path(), &metrics).unwrap();
    let found = again.find(&secret).unwrap();
    assert!(found.revoked.is_some() && found.last_used.is_some());
    let events = again.audit_events(10, None).await.unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["key.revoke", "key.revoke", "key.create"]);
    assert!(
        events
            .iter()
            .all(|e| e.actor == "ops-admin" && e.via == "api")
    );
    let older = again.audit_events(10, Some(events[1].id)).await.unwrap();
    assert_eq!(older.len(), 1);
}

#[tokio::test]
async fn expiry_is_a_property_of_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(dir.path(), &Metrics::new()).unwrap();
    let (_, key) = store
        .create(new_key("acme", Some(60)), actor())
        .await
        .unwrap();
    assert_eq!(key.expires, Some(key.created + 60));
    assert!(key.is_active(key.created + 59));
    assert!(key.is_expired(key.created + 60) && !key.is_active(key.created + 60));
}

#[test]
fn newer_and_corrupt_files_are_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let e = KeyStore::open(dir.path(), &Metrics::new()).unwrap_err();
    assert!(matches!(e, StoreError::TooNew { found, .. } if found == SCHEMA_VERSION + 1));
    let text = e.to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains("newer"),
        "{text}"
    );

    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let _ = std::fs::remove_file(dir.path().join("gatehouse.db-wal"));
    let e = KeyStore::open(dir.path(), &Metrics::new()).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("corrupt"), "{e}");
}

#[test]
fn a_version_1_file_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(schema_v1()).unwrap();
        conn.execute(
            "INSERT INTO audit (at, actor, tenant, action, target, detail) VALUES (1, 'a', 'ops', 'key.create', 'key_1', '')",
            [],
        )
        .unwrap();
    }
    let store = KeyStore::open(dir.path(), &Metrics::new()).unwrap();
    let conn = store.conn();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let via: String = conn
        .query_row("SELECT via FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(via, "api");
}

/// Version 1 as it was released, written out here so that the migration is
/// tested against the old file and not against today's code.
fn schema_v1() -> &'static str {
    "CREATE TABLE keys (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT,
        scopes TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, created INTEGER NOT NULL,
        expires INTEGER, last_used INTEGER, revoked INTEGER);
     CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL,
        actor TEXT NOT NULL, tenant TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, detail TEXT NOT NULL);
     PRAGMA user_version = 1;"
}

#[tokio::test]
async fn guest_cpu_adds_up_per_key_across_upkeeps_and_opens() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let store = KeyStore::open(dir.path(), &metrics).unwrap();
    let (secret, key) = store.create(new_key("acme", None), actor()).await.unwrap();
    assert_eq!(store.find(&secret).unwrap().cpu_ns, 0);
    store.note_cpu(&key.id, Duration::from_millis(2));
    store.note_cpu(&key.id, Duration::from_millis(3));
    // A config key's label is not a store key: nothing to add it to.
    store.note_cpu("ci", Duration::from_secs(1));
    store.flush();
    store.note_cpu(&key.id, Duration::from_millis(5));
    store.flush();
    drop(store);
    let again = KeyStore::open(dir.path(), &metrics).unwrap();
    assert_eq!(again.find(&secret).unwrap().cpu_ns, 10_000_000);
}
