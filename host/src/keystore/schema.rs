//! The key store's schema and its migrations.
//!
//! `PRAGMA user_version` holds the schema version. Opening a file runs every
//! migration above its version, in order, in one transaction; a file whose
//! version is above [`LATEST`] was written by a newer gatehouse and is
//! refused rather than guessed at. A migration, once released, is never
//! edited: a change is a new entry at the end.

use std::path::Path;

use rusqlite::{Connection, ErrorCode};

use super::error::StoreError;

/// The schema version this build writes.
pub const LATEST: i64 = 3;

/// Migration `i` takes a file from version `i` to `i + 1`.
const MIGRATIONS: [&str; LATEST as usize] = [
    // 1: keys and the audit log.
    "CREATE TABLE keys (
         id        TEXT PRIMARY KEY,
         tenant    TEXT NOT NULL,
         name      TEXT,
         scopes    TEXT NOT NULL,
         hash      TEXT NOT NULL UNIQUE,
         created   INTEGER NOT NULL,
         expires   INTEGER,
         last_used INTEGER,
         revoked   INTEGER
     );
     CREATE TABLE audit (
         id     INTEGER PRIMARY KEY AUTOINCREMENT,
         at     INTEGER NOT NULL,
         actor  TEXT NOT NULL,
         tenant TEXT NOT NULL,
         action TEXT NOT NULL,
         target TEXT NOT NULL,
         detail TEXT NOT NULL
     );",
    // 2: where an admin action came from (API or console), and keys by
    // tenant for the console's listing.
    "ALTER TABLE audit ADD COLUMN via TEXT NOT NULL DEFAULT 'api';
     CREATE INDEX keys_by_tenant ON keys (tenant);",
    // 3: the guest CPU (nanoseconds) of the sessions and calls each key
    // opened.
    "ALTER TABLE keys ADD COLUMN cpu_ns INTEGER NOT NULL DEFAULT 0;",
];

/// Checks the file and brings its schema to [`LATEST`].
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| classify(e, path))?;
    if version > LATEST {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            supported: LATEST,
        });
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| classify(e, path))?;
    if check != "ok" {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            message: check,
        });
    }
    if version == LATEST {
        return Ok(());
    }
    let tx = conn.transaction().map_err(corrupt)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.execute_batch(sql).map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            message: format!("migrating the schema to version {}: {e}", i + 1),
        })?;
    }
    tx.pragma_update(None, "user_version", LATEST)?;
    tx.commit()?;
    if version > 0 {
        tracing::info!(path = %path.display(), from = version, to = LATEST, "key store schema migrated");
    }
    Ok(())
}

/// A failure of the first reads: a file that is not a database is corrupt;
/// anything else is an open failure.
fn classify(e: rusqlite::Error, path: &Path) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
        _ => StoreError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    }
}
