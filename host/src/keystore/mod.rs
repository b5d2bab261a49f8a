//! The key store: API keys created at runtime and the audit log of admin
//! actions, in an embedded SQLite database (`<server.data_dir>/gatehouse.db`).
//!
//! SQLite calls block, so none is made while authenticating a call: the
//! store keeps every key's hash in memory ([`KeyStore::find`]), replaced
//! whole after each change, and collects last-used times in memory for
//! [`KeyStore::spawn_upkeep`] to write every few seconds. The upkeep also
//! notices writes by another gateway sharing the file (SQLite's
//! `data_version`) and reloads the table then. Writes run on the blocking
//! thread pool.
//!
//! Once the store has held any key (even a revoked one), the gateway is
//! out of local development mode: revoking the last key must not open the
//! gateway to anonymous calls.

mod clock;
mod db;
mod error;
mod record;
mod schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rand::TryRngCore;
use rusqlite::Connection;

pub use self::clock::{format_utc, from_unix, now, to_unix};
pub use self::error::StoreError;
pub use self::record::{Actor, AuditEntry, AuditEvent, NewKey, StoredKey};
pub use self::schema::LATEST as SCHEMA_VERSION;
use crate::keys::KeyTable;
use crate::metrics::{ActionLabel, Metrics};

/// The database's file name inside `server.data_dir`.
pub const FILE_NAME: &str = "gatehouse.db";

/// How often [`KeyStore::spawn_upkeep`] writes last-used times and looks
/// for other writers.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(2);

/// The in-memory copy of the keys table that authentication reads.
#[derive(Default)]
struct Cache {
    table: KeyTable<Arc<StoredKey>>,
}

/// The key store. Shared as an `Arc`; see the module docs.
pub struct KeyStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    cache: RwLock<Arc<Cache>>,
    used: Mutex<HashMap<String, i64>>,
    /// Guest CPU (ns) per key id, not yet written.
    cpu: Mutex<HashMap<String, i64>>,
    data_version: AtomicI64,
    /// Bumped whenever the keys table is read anew: credentials in use
    /// (open streams) are checked again then.
    changes: tokio::sync::watch::Sender<u64>,
    active: Gauge,
    actions: Family<ActionLabel, Counter>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("path", &self.path)
            .finish()
    }
}

impl KeyStore {
    /// Opens (creating if needed) the store in `dir`, migrating an older
    /// schema and refusing a newer or corrupt file. Blocks: call it at
    /// start-up.
    pub fn open(dir: &Path, metrics: &Metrics) -> Result<Arc<Self>, StoreError> {
        let open_err = |path: &Path, e: &dyn std::fmt::Display| StoreError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        create_private_dir(dir).map_err(|e| open_err(dir, &e))?;
        let path = dir.join(FILE_NAME);
        let mut conn = Connection::open(&path).map_err(|e| open_err(&path, &e))?;
        restrict_to_owner(&path).map_err(|e| open_err(&path, &e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| open_err(&path, &e))?;
        schema::migrate(&mut conn, &path)?;
        // WAL: readers in other processes do not block the writer.
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            .map_err(|e| open_err(&path, &e))?;
        let version = db::data_version(&conn)?;
        let store = Arc::new(Self {
            path,
            conn: Mutex::new(conn),
            cache: RwLock::new(Arc::default()),
            used: Mutex::new(HashMap::new()),
            cpu: Mutex::new(HashMap::new()),
            data_version: AtomicI64::new(version),
            changes: tokio::sync::watch::Sender::new(0),
            active: metrics.store_keys_active.clone(),
            actions: metrics.admin_actions.clone(),
        });
        store.reload(&store.conn())?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cache(&self) -> Arc<Cache> {
        Arc::clone(&self.cache.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads the keys table into the cache, and tells [`Self::changes`].
    fn reload(&self, conn: &Connection) -> Result<(), StoreError> {
        let keys = db::keys(conn)?;
        let table = KeyTable::new(keys.into_iter().map(|k| (k.hash, Arc::new(k))).collect());
        *self.cache.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Cache { table });
        self.count_active();
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Sets the active-keys gauge from the cache.
    fn count_active(&self) {
        let now = now();
        let active = self
            .cache()
            .table
            .values()
            .filter(|k| k.is_active(now))
            .count();
        self.active.set(i64::try_from(active).unwrap_or(i64::MAX));
    }

    /// Changes whenever the keys table changes (a key created or revoked
    /// here, or any write by another process sharing the file, seen within
    /// [`UPKEEP_INTERVAL`]).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The key whose hash is the hash of `secret`, revoked and expired ones
    /// included (the caller tells them apart). Memory only: no disk.
    pub fn find(&self, secret: &str) -> Option<Arc<StoredKey>> {
        self.cache().table.find(secret).cloned()
    }

    /// Whether the store holds any key at all (see the module docs).
    pub fn has_keys(&self) -> bool {
        !self.cache().table.is_empty()
    }

    /// Notes that key `id` authenticated a call now; written by the upkeep.
    pub fn note_used(&self, id: &str) {
        let now = now();
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        match used.get_mut(id) {
            Some(at) => *at = now,
            None => {
                used.insert(id.to_string(), now);
            }
        }
    }

    /// Adds guest CPU to key `id`'s total (a label that is not a store
    /// key, a config key's, is ignored); written by the upkeep.
    pub fn note_cpu(&self, id: &str, cpu: Duration) {
        let ns = i64::try_from(cpu.as_nanos()).unwrap_or(i64::MAX);
        let mut pending = self.cpu.lock().unwrap_or_else(PoisonError::into_inner);
        let total = pending.entry(id.to_string()).or_insert(0);
        *total = total.saturating_add(ns);
    }

    /// Runs `f` on the blocking thread pool.
    async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&KeyStore) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Creates a key; returns its secret (shown once) and its record.
    pub async fn create(
        self: &Arc<Self>,
        new: NewKey,
        actor: Actor,
    ) -> Result<(String, StoredKey), StoreError> {
        let (secret, hash) = crate::keys::generate().map_err(StoreError::Invalid)?;
        let id = new_id()?;
        let entry = AuditEntry {
            action: "key.create",
            target: id.clone(),
            detail: describe(&new),
        };
        let stored = {
            let (actor, entry) = (actor.clone(), entry.clone());
            self.blocking(move |s| {
                let mut conn = s.conn();
                let key = db::insert_key(&mut conn, &id, hash, &new, now(), &actor, &entry)?;
                s.reload(&conn)?;
                Ok(key)
            })
            .await?
        };
        self.log(&actor, &entry);
        Ok((secret, stored))
    }

    /// Revokes key `id`: refused from the next call on. Returns the key and
    /// whether it was already revoked.
    pub async fn revoke(
        self: &Arc<Self>,
        id: &str,
        actor: Actor,
    ) -> Result<(StoredKey, bool), StoreError> {
        let entry = AuditEntry {
            action: "key.revoke",
            target: id.to_string(),
            detail: String::new(),
        };
        let (id, a, e) = (id.to_string(), actor.clone(), entry.clone());
        let (key, already) = self
            .blocking(move |s| {
                let mut conn = s.conn();
                let out = db::revoke_key(&mut conn, &id, now(), &a, &e)?;
                s.reload(&conn)?;
                Ok(out)
            })
            .await?;
        let entry = AuditEntry {
            detail: if already {
                "already revoked".into()
            } else {
                format!("tenant={}", key.tenant)
            },
            ..entry
        };
        self.log(&actor, &entry);
        Ok((key, already))
    }

    /// Records an admin action done elsewhere (closing a session, signing
    /// in to the console).
    pub async fn record(
        self: &Arc<Self>,
        actor: Actor,
        entry: AuditEntry,
    ) -> Result<(), StoreError> {
        let (a, e) = (actor.clone(), entry.clone());
        self.blocking(move |s| db::record(&s.conn(), now(), &a, &e))
            .await?;
        self.log(&actor, &entry);
        Ok(())
    }

    /// Every key, oldest first, with last-used times not yet written.
    pub async fn list(self: &Arc<Self>) -> Result<Vec<StoredKey>, StoreError> {
        let mut keys = self.blocking(|s| db::keys(&s.conn())).await?;
        let used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        for k in &mut keys {
            if let Some(at) = used.get(&k.id) {
                k.last_used = k.last_used.max(Some(*at));
            }
        }
        Ok(keys)
    }

    /// Audit events, newest first.
    pub async fn audit_events(
        self: &Arc<Self>,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.blocking(move |s| db::audit_events(&s.conn(), limit, before))
            .await
    }

    /// The `gatehouse::audit` log line and the metric of an admin action.
    fn log(&self, actor: &Actor, entry: &AuditEntry) {
        self.actions
            .get_or_create(&ActionLabel {
                action: entry.action.to_string(),
            })
            .inc();
        log_action(actor, entry);
    }

    /// Writes collected last-used times, and reloads the table if another
    /// process wrote the file.
    fn upkeep(&self) -> Result<(), StoreError> {
        let used: Vec<(String, i64)> =
            std::mem::take(&mut *self.used.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        let cpu: Vec<(String, i64)> =
            std::mem::take(&mut *self.cpu.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        let mut conn = self.conn();
        if !used.is_empty() {
            db::touch(&mut conn, &used)?;
        }
        if !cpu.is_empty() {
            db::add_cpu(&mut conn, &cpu)?;
        }
        let version = db::data_version(&conn)?;
        if self.data_version.swap(version, Ordering::Relaxed) != version {
            tracing::info!(path = %self.path.display(), "key store changed by another process; reloading keys");
            return self.reload(&conn);
        }
        // The gauge follows keys as they expire.
        self.count_active();
        Ok(())
    }

    /// Starts the upkeep task (see the module docs); it ends with the
    /// store.
    pub fn spawn_upkeep(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                let done = tokio::task::spawn_blocking(move || store.upkeep()).await;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("key store upkeep: {e}"),
                    Err(e) => tracing::warn!("key store upkeep task failed: {e}"),
                }
            }
        })
    }

    /// Writes what is pending now (at shutdown).
    pub fn flush(&self) {
        if let Err(e) = self.upkeep() {
            tracing::warn!("key store: writing last-used times: {e}");
        }
    }
}

/// The `gatehouse::audit` log line of an admin action.
pub fn log_action(actor: &Actor, entry: &AuditEntry) {
    tracing::info!(
        target: "gatehouse::audit",
        actor = %actor.label,
        tenant = %actor.tenant,
        via = actor.via,
        action = entry.action,
        target = %entry.target,
        detail = %entry.detail,
        "admin action"
    );
}

fn describe(new: &NewKey) -> String {
    let mut out = format!("tenant={} scopes={}", new.tenant, new.scopes);
    if let Some(n) = &new.name {
        out.push_str(&format!(" name={n}"));
    }
    if let Some(s) = new.expires_in {
        out.push_str(&format!(" expires_in={s}s"));
    }
    out
}

/// `key_` and 16 random hex digits.
fn new_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| StoreError::Invalid(format!("the random number generator failed: {e}")))?;
    Ok(format!("key_{}", hex::encode(bytes)))
}

/// The data directory, readable only by its owner.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests;
