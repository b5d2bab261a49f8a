//! The certificate a port serves: read from its [`TlsFiles`], swapped
//! whole on SIGHUP or when a file changes, never left half-loaded.
//!
//! The provider is rustls' `ring` (see the workspace manifest for why),
//! named explicitly so that another crate enabling a second provider cannot
//! make the choice ambiguous. TLS 1.2 and 1.3 only.
//!
//! Rotation replaces the whole `ServerConfig`: a handshake takes the config
//! current when it starts, so established connections keep the keys they
//! negotiated and only new handshakes see the new certificate (and client
//! CA). A reload that fails leaves the old config serving and is reported
//! once per change of the files, not on every check.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::TlsFiles;
use crate::metrics::{PortLabel, PortResultLabel, TransportMetrics};

/// How often the files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Why a port's certificate files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file has no PEM item of the kind it should hold, or a bad one.
    #[error("{}: {message}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificate, key or CA (for instance a key that
    /// does not belong to the certificate).
    #[error("{}: {source}", path.display())]
    Rejected {
        /// The file the problem is with.
        path: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The client CA could not be turned into a verifier.
    #[error("{}: {message}", path.display())]
    ClientCa {
        /// The CA file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// The rustls provider every gatehouse TLS config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A loaded certificate: the rustls config and what it was loaded from.
struct Loaded {
    config: Arc<ServerConfig>,
    stamps: Vec<Stamp>,
}

/// A file's identity for change detection: a rotated file (rewritten in
/// place or replaced through a symlink, as Kubernetes does) changes one of
/// these.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64, u64)>);

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp(
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino()))),
    )
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Every certificate of a PEM file, in order.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error(
            path,
            "no certificate in it (expected PEM \"BEGIN CERTIFICATE\")",
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        pem_error(
            path,
            format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })
}

/// When the leaf certificate of `certs` expires, as a Unix timestamp.
fn not_after(certs: &[CertificateDer<'_>]) -> Option<i64> {
    let leaf = certs.first()?;
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Reads `files` into a rustls server config offering `alpn`; checks
/// everything a handshake would need.
fn load(files: &TlsFiles, alpn: &[&[u8]]) -> Result<(Loaded, Option<i64>), TlsError> {
    // Stamps first: a file changed while being read is read again at the
    // next check.
    let stamps = files.paths().map(stamp).collect();
    let chain = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let expires = not_after(&chain);
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rejected {
            path: files.cert.clone(),
            source,
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|source| TlsError::Rejected {
                    path: ca.clone(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    message: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rejected {
            path: files.key.clone(),
            source,
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((
        Loaded {
            config: Arc::new(config),
            stamps,
        },
        expires,
    ))
}

/// Checks that `files` load, for `config check` and start-up.
pub fn check(files: &TlsFiles) -> Result<(), TlsError> {
    load(files, &[b"h2"]).map(|_| ())
}

/// A port's current certificate, reloadable. Dropping the store stops its
/// file watcher.
pub struct TlsStore {
    port: &'static str,
    files: TlsFiles,
    alpn: Vec<&'static [u8]>,
    current: RwLock<Arc<ServerConfig>>,
    /// The stamps of the last load attempt, good or bad.
    seen: Mutex<Vec<Stamp>>,
    metrics: TransportMetrics,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for TlsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStore")
            .field("port", &self.port)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsStore {
    /// Loads `files` for `port` (`grpc` or `http`), offering `alpn`, and
    /// starts watching them. Must run inside a tokio runtime.
    pub fn open(
        port: &'static str,
        files: TlsFiles,
        alpn: Vec<&'static [u8]>,
        metrics: TransportMetrics,
    ) -> Result<Arc<Self>, TlsError> {
        let (loaded, expires) = load(&files, &alpn)?;
        let store = Arc::new(Self {
            port,
            files,
            alpn,
            current: RwLock::new(loaded.config),
            seen: Mutex::new(loaded.stamps),
            metrics,
            watcher: Mutex::new(None),
        });
        store.set_expiry(expires);
        let weak = Arc::downgrade(&store);
        let watcher = tokio::spawn(watch(weak, WATCH_INTERVAL));
        *store.watcher.lock().unwrap_or_else(PoisonError::into_inner) = Some(watcher);
        Ok(store)
    }

    /// An acceptor with the current certificate, for one handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self.current.read().unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(Arc::clone(&config))
    }

    /// Re-reads the files and, if they load, serves them to new handshakes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let result = load(&self.files, &self.alpn);
        let label = |result: &str| PortResultLabel {
            port: self.port.into(),
            result: result.into(),
        };
        match result {
            Ok((loaded, expires)) => {
                *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = loaded.stamps;
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded.config;
                self.set_expiry(expires);
                self.metrics.tls_reloads.get_or_create(&label("ok")).inc();
                tracing::info!(port = self.port, cert = %self.files.cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                *self.seen.lock().unwrap_or_else(PoisonError::into_inner) =
                    self.files.paths().map(stamp).collect();
                self.metrics
                    .tls_reloads
                    .get_or_create(&label("error"))
                    .inc();
                tracing::error!(
                    port = self.port,
                    "TLS reload failed, still serving the previous certificate: {e}"
                );
                Err(e)
            }
        }
    }

    /// Reloads if any file changed since the last attempt.
    fn reload_if_changed(&self) {
        let now: Vec<Stamp> = self.files.paths().map(stamp).collect();
        let changed = *self.seen.lock().unwrap_or_else(PoisonError::into_inner) != now;
        if changed {
            let _ = self.reload();
        }
    }

    fn set_expiry(&self, expires: Option<i64>) {
        if let Some(t) = expires {
            self.metrics
                .tls_certificate_expiry
                .get_or_create(&PortLabel {
                    port: self.port.into(),
                })
                .set(t);
        }
    }
}

impl Drop for TlsStore {
    fn drop(&mut self) {
        let watcher = self
            .watcher
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = watcher.take() {
            task.abort();
        }
    }
}

/// Checks the files every `every` until the store goes.
async fn watch(store: Weak<TlsStore>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else {
            return;
        };
        // Reading files blocks; they are small, but a slow disk must not
        // stall a runtime thread.
        let _ = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
    }
}
