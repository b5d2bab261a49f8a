//! Why the key store refused: typed here, mapped to gRPC statuses in the API
//! and to start-up errors in the server.

use std::path::PathBuf;

/// A key store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory or the file could not be created or opened.
    #[error("key store {}: {message}", .path.display())]
    Open {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The file was written by a newer gatehouse: its schema is unknown here.
    #[error(
        "key store {}: schema version {found} is newer than this gatehouse knows (up to {supported}); \
         run the newer gatehouse, or restore a backup made for this one",
        .path.display()
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The newest schema this build knows.
        supported: i64,
    },
    /// The file is not an SQLite database, or fails its integrity check.
    #[error(
        "key store {}: the file is corrupt ({message}); move it aside to start with an empty \
         key store, or restore a backup",
        .path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        message: String,
    },
    /// A query failed after the store was open.
    #[error("key store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// No key has this id.
    #[error("no key {0:?} in the key store")]
    NoSuchKey(String),
    /// A request the store cannot take (bad tenant, scope or name).
    #[error("{0}")]
    Invalid(String),
    /// The key store is switched off (`server.data_dir = "off"`).
    #[error(
        "the key store is off (server.data_dir = \"off\"): keys can only be set in the config file"
    )]
    Off,
    /// The blocking task running a query did not finish.
    #[error("key store task failed: {0}")]
    Task(String),
}
