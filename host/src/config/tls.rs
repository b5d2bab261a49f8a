//! `[server.tls]` and `[server.http_tls]`: the certificate files of a port.
//!
//! ```toml
//! [server.tls]
//! cert = "tls/server.pem"     # PEM: the certificate, then its chain
//! key = "tls/server.key"      # PEM: PKCS#8, PKCS#1 or SEC1 private key
//! client_ca = "tls/ca.pem"    # optional: require client certificates signed by it
//! ```
//!
//! Relative paths are resolved against the config file. The files are read
//! (and checked) when the gateway starts and again on SIGHUP or when they
//! change; this module only names them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, invalid};

/// The certificate files of one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these
    /// CAs (PEM).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Every file, for change detection.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }
}

/// `[server.tls]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

impl TlsFile {
    /// Resolves the paths against `base`; `at` is the table's key, for errors.
    pub(super) fn resolve(self, base: &Path, at: &str) -> Result<TlsFiles, ConfigError> {
        let cert = self
            .cert
            .ok_or_else(|| invalid(format!("{at}.cert"), "is required with a key"))?;
        let key = self
            .key
            .ok_or_else(|| invalid(format!("{at}.key"), "is required with a cert"))?;
        for (name, path) in [("cert", &cert), ("key", &key)] {
            if path.as_os_str().is_empty() {
                return Err(invalid(format!("{at}.{name}"), "must not be empty"));
            }
        }
        Ok(TlsFiles {
            cert: base.join(cert),
            key: base.join(key),
            client_ca: self.client_ca.map(|p| base.join(p)),
        })
    }
}
