//! Reloading a running gateway: SIGHUP or `gatehouse reload` re-read the
//! config file (with `plugins_dir` and the TLS files) and apply it whole,
//! or not at all.
//!
//! The order is what makes it all or nothing: everything that can fail runs
//! first, off the serving path (read and check the file, check the TLS
//! files, compile the backends that changed); only then is anything
//! swapped in: the backends (new opens get new versions, live sessions keep
//! theirs), the tenants and keys, the certificates. A failure before the
//! swap leaves the running config as it was.
//!
//! `[server]` and `[cluster]` settings are read once, at start (addresses,
//! pools, sizes, the node id and its Redis): a reload that changes one
//! names its key in `restart_required` and keeps the running value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::api::{Authenticator, Reload, ReloadFailure, ReloadOutcome};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::server::loader::Loader;
use crate::transport::TlsStore;

/// Where the running config came from, so it can be read again the same
/// way: the file and the command line's overrides.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `--config`; `None` runs the built-in config, which never changes.
    pub path: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--metrics-listen` (`Some(None)` is `off`).
    pub metrics_listen: Option<Option<SocketAddr>>,
}

impl ConfigSource {
    /// Reads the config as `serve` did: the file, then the overrides.
    pub fn read(&self) -> Result<Option<Config>, crate::config::ConfigError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let mut config = Config::load(path)?;
        self.apply(&mut config);
        Ok(Some(config))
    }

    /// The command line's overrides over `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(l) = self.listen {
            config.server.listen = l;
        }
        if let Some(m) = self.metrics_listen {
            config.server.metrics_listen = m;
        }
    }
}

/// What a reload works on; see the module docs.
pub struct Reloader {
    source: ConfigSource,
    running: tokio::sync::Mutex<Config>,
    loader: Arc<Loader>,
    registry: Arc<Registry>,
    auth: Authenticator,
    tls: Vec<Arc<TlsStore>>,
    metrics: Arc<Metrics>,
}

impl Reloader {
    /// A reloader for a gateway running `running`.
    pub fn new(
        source: ConfigSource,
        running: Config,
        loader: Arc<Loader>,
        registry: Arc<Registry>,
        auth: Authenticator,
        tls: Vec<Arc<TlsStore>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            source,
            running: tokio::sync::Mutex::new(running),
            loader,
            registry,
            auth,
            tls,
            metrics,
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .reloads
            .get_or_create(&crate::metrics::ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    async fn try_reload(&self) -> Result<ReloadOutcome, ReloadFailure> {
        // One at a time: a second SIGHUP waits for the first.
        let mut running = self.running.lock().await;
        let source = self.source.clone();
        let loader = Arc::clone(&self.loader);
        let running_config = running.clone();
        // Everything that can fail, on a blocking thread: reading,
        // checking, compiling.
        let prepared = tokio::task::spawn_blocking(move || {
            let mut next = source
                .read()
                .map_err(|e| ReloadFailure::Rejected(config_error(&source, &e)))?
                .ok_or(ReloadFailure::NoConfigFile)?;
            let restart_required = restart_required(&running_config, &next);
            // The running [server] and [cluster] stay: only a restart
            // changes them.
            next.server = running_config.server;
            next.cluster = running_config.cluster;
            crate::server::preflight::check(&next)
                .map_err(|e| ReloadFailure::Rejected(e.to_string()))?;
            loader.fits(&next).map_err(ReloadFailure::Rejected)?;
            let backends = loader
                .load(&next)
                .map_err(|e| ReloadFailure::Rejected(e.to_string()))?;
            Ok::<_, ReloadFailure>((next, backends, restart_required))
        })
        .await
        .map_err(|e| ReloadFailure::Rejected(format!("the reload task failed: {e}")))??;
        let (next, backends, restart_required) = prepared;

        // The swap: nothing below can fail.
        let changes = self.registry.install_backends(backends);
        self.registry.upgrade_in_background(&changes.updated, false);
        self.auth.reload(&next.tenants);
        for store in &self.tls {
            let store = Arc::clone(store);
            // A certificate that stopped loading since the check keeps the
            // old one serving, as a watch reload would; it is logged there.
            let _ = tokio::task::spawn_blocking(move || store.reload()).await;
        }
        let outcome = ReloadOutcome {
            changes,
            tenants: next.tenants.len(),
            restart_required,
        };
        *running = next;
        Ok(outcome)
    }
}

#[async_trait::async_trait]
impl Reload for Reloader {
    async fn end_rollout(
        &self,
        backend: &str,
        promote: bool,
    ) -> Result<ReloadOutcome, ReloadFailure> {
        let _one_at_a_time = self.running.lock().await;
        self.registry
            .end_rollout(backend, promote)
            .map_err(|e| ReloadFailure::Rejected(e.to_string()))?;
        if promote {
            self.registry
                .upgrade_in_background(&[backend.to_string()], true);
        }
        Ok(ReloadOutcome {
            changes: crate::registry::Changes {
                updated: vec![backend.to_string()],
                ..Default::default()
            },
            ..Default::default()
        })
    }

    async fn reload(&self) -> Result<ReloadOutcome, ReloadFailure> {
        crate::notify::reloading();
        let result = self.try_reload().await;
        // A refused reload leaves the running config serving: ready either way.
        crate::notify::ready();
        match result {
            Ok(outcome) => {
                self.count("ok");
                let c = &outcome.changes;
                tracing::info!(
                    added = ?c.added,
                    updated = ?c.updated,
                    removed = ?c.removed,
                    unchanged = c.unchanged.len(),
                    tenants = outcome.tenants,
                    restart_required = ?outcome.restart_required,
                    "config reloaded"
                );
                Ok(outcome)
            }
            Err(e) => {
                self.count("error");
                tracing::error!("reload refused, the running config stays: {e}");
                Err(e)
            }
        }
    }
}

fn config_error(source: &ConfigSource, e: &crate::config::ConfigError) -> String {
    match &source.path {
        Some(p) => format!("{}: {e}", p.display()),
        None => e.to_string(),
    }
}

/// The keys read only at start whose value differs: each needs a restart.
fn restart_required(running: &Config, next: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    macro_rules! compare {
        ($section:ident: $($field:ident),* $(,)?) => {
            $(
                if running.$section.$field != next.$section.$field {
                    keys.push(concat!(stringify!($section), ".", stringify!($field)).to_string());
                }
            )*
        };
    }
    compare!(server:
        listen,
        metrics_listen,
        max_sessions,
        max_message_bytes,
        max_batch_commands,
        sweep_interval,
        shutdown_timeout,
        closed_session_retention,
        epoch_tick,
        max_concurrent_streams,
        max_connection_concurrency,
        keepalive_interval,
        keepalive_timeout,
        max_pending_resets,
        cache_dir,
        max_event_stream_age,
        state_dir,
        tls,
        http_tls,
        allow_plaintext,
        max_connections,
        max_connections_per_address,
        health_connections,
        first_request_timeout,
        idle_timeout,
        http_hosts,
        memory_budget,
        auth_failures,
        data_dir,
        console,
        guest_threads,
    );
    compare!(cluster: node_id, redis, node_lease, max_sessions, drain_timeout);
    keys
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn changed_server_keys_are_named() {
        let parse = |t: &str| Config::parse(t, Path::new("/x")).unwrap();
        let running = parse("");
        assert!(restart_required(&running, &parse("")).is_empty());
        let next = parse(
            "[server]\nlisten = \"127.0.0.1:6000\"\nmax_sessions = 3\n[server.tls]\ncert = \"c\"\nkey = \"k\"\n",
        );
        assert_eq!(
            restart_required(&running, &next),
            [
                "server.listen",
                "server.max_sessions",
                "server.tls",
                "server.http_tls"
            ]
        );
    }

    #[test]
    fn changed_cluster_keys_are_named() {
        let parse = |t: &str| Config::parse(t, Path::new("/x")).unwrap();
        let running = parse("");
        assert!(restart_required(&running, &parse("")).is_empty());
        let next = parse("[cluster]\nnode_id = \"n1\"\ndrain_timeout = \"1m\"\n");
        assert_eq!(
            restart_required(&running, &next),
            ["cluster.node_id", "cluster.drain_timeout"]
        );
    }
}
