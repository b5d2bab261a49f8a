//! The key store's SQL: plain blocking functions on a connection. The
//! [`KeyStore`](super::KeyStore) runs them off the async threads.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::error::StoreError;
use super::record::{Actor, AuditEntry, AuditEvent, NewKey, StoredKey, parse_scopes, scopes_text};
use crate::keys::KeyHash;

const KEY_COLUMNS: &str =
    "id, tenant, name, scopes, hash, created, expires, last_used, revoked, cpu_ns";

fn key_row(row: &Row<'_>) -> rusqlite::Result<StoredKey> {
    let hash: String = row.get(4)?;
    let hash = KeyHash::parse(&hash).map_err(|m| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, m.into())
    })?;
    Ok(StoredKey {
        id: row.get(0)?,
        tenant: row.get(1)?,
        name: row.get(2)?,
        scopes: parse_scopes(&row.get::<_, String>(3)?),
        hash,
        created: row.get(5)?,
        expires: row.get(6)?,
        last_used: row.get(7)?,
        revoked: row.get(8)?,
        cpu_ns: row.get(9)?,
    })
}

/// Every key, oldest first.
pub fn keys(conn: &Connection) -> Result<Vec<StoredKey>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM keys ORDER BY created, id"
    ))?;
    let rows = stmt.query_map([], key_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One key.
pub fn key(conn: &Connection, id: &str) -> Result<Option<StoredKey>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?1"))?;
    Ok(stmt.query_row([id], key_row).optional()?)
}

fn audit(conn: &Connection, now: i64, actor: &Actor, entry: &AuditEntry) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO audit (at, actor, tenant, action, target, detail, via)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        now,
        actor.label,
        actor.tenant,
        entry.action,
        entry.target,
        entry.detail,
        actor.via
    ])?;
    Ok(())
}

/// Inserts a key and its audit event in one transaction.
pub fn insert_key(
    conn: &mut Connection,
    id: &str,
    hash: KeyHash,
    new: &NewKey,
    now: i64,
    actor: &Actor,
    entry: &AuditEntry,
) -> Result<StoredKey, StoreError> {
    let expires = new
        .expires_in
        .map(|s| now.saturating_add(i64::try_from(s).unwrap_or(i64::MAX)));
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO keys (id, tenant, name, scopes, hash, created, expires)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            id,
            new.tenant,
            new.name,
            scopes_text(new.scopes),
            hash.to_string(),
            now,
            expires
        ],
    )?;
    audit(&tx, now, actor, entry)?;
    tx.commit()?;
    Ok(StoredKey {
        id: id.to_string(),
        tenant: new.tenant.clone(),
        name: new.name.clone(),
        scopes: new.scopes,
        hash,
        created: now,
        expires,
        last_used: None,
        revoked: None,
        cpu_ns: 0,
    })
}

/// Revokes a key (if it is not already) and records the action; returns
/// the key and whether it was revoked before.
pub fn revoke_key(
    conn: &mut Connection,
    id: &str,
    now: i64,
    actor: &Actor,
    entry: &AuditEntry,
) -> Result<(StoredKey, bool), StoreError> {
    let tx = conn.transaction()?;
    let before = key(&tx, id)?.ok_or_else(|| StoreError::NoSuchKey(id.to_string()))?;
    let already = before.revoked.is_some();
    if !already {
        tx.execute(
            "UPDATE keys SET revoked = ?2 WHERE id = ?1",
            params![id, now],
        )?;
    }
    audit(&tx, now, actor, entry)?;
    tx.commit()?;
    let after = StoredKey {
        revoked: before.revoked.or(Some(now)),
        ..before
    };
    Ok((after, already))
}

/// Records an admin action that changes nothing in the store.
pub fn record(
    conn: &Connection,
    now: i64,
    actor: &Actor,
    entry: &AuditEntry,
) -> Result<(), StoreError> {
    audit(conn, now, actor, entry)
}

/// Writes last-used times (id, Unix seconds), never moving one back.
pub fn touch(conn: &mut Connection, used: &[(String, i64)]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "UPDATE keys SET last_used = ?2 WHERE id = ?1 AND (last_used IS NULL OR last_used < ?2)",
        )?;
        for (id, at) in used {
            stmt.execute(params![id, at])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Adds guest CPU (id, nanoseconds) to keys' totals.
pub fn add_cpu(conn: &mut Connection, cpu: &[(String, i64)]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached("UPDATE keys SET cpu_ns = cpu_ns + ?2 WHERE id = ?1")?;
        for (id, ns) in cpu {
            stmt.execute(params![id, ns])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Audit events, newest first: at most `limit`, with ids below `before`
/// when given.
pub fn audit_events(
    conn: &Connection,
    limit: u32,
    before: Option<i64>,
) -> Result<Vec<AuditEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, actor, tenant, action, target, detail, via FROM audit
         WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![before.unwrap_or(i64::MAX), limit], |row| {
        Ok(AuditEvent {
            id: row.get(0)?,
            at: row.get(1)?,
            actor: row.get(2)?,
            tenant: row.get(3)?,
            action: row.get(4)?,
            target: row.get(5)?,
            detail: row.get(6)?,
            via: row.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// SQLite's count of commits by other connections: when it changes,
/// another process wrote the file.
pub fn data_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}
