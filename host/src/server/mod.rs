//! `gatehouse serve`: loads the backends, builds the registry and serves
//! gRPC (with health and reflection) and the HTTP port (Prometheus
//! metrics, health and the web console) until Ctrl-C or SIGTERM, then
//! drains every session. SIGHUP reloads the config file and the TLS files
//! ([`reload`]).
//!
//! The wiring of `gatehouse serve` lives here, each part in its file:
//! [`loader`] (a config into loaded backends), [`preflight`] (what is
//! checked before anything listens), [`reload`] (SIGHUP and `Reload`),
//! [`drain`] (`gatehouse drain`), [`health`] (gRPC health, `/healthz`,
//! `/readyz`, the gate before the backends load), `http` (the HTTP port's
//! server), [`plugin_check`] (`gatehouse plugin check`) and [`telemetry`]
//! (logs and traces).

pub mod drain;
pub mod health;
mod http;
pub mod loader;
pub mod plugin_check;
pub mod preflight;
pub mod reload;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;

use self::health::{Gate, Health};
use self::loader::{LoadError, Loader};
use self::preflight::PreflightError;
use self::reload::{ConfigSource, Reloader};
use crate::api::{self, ApiLimits, Authenticator};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::config::ServerSettings;
use crate::metrics::Metrics;
use crate::registry::{RETRY_AFTER, Registry, RegistrySettings};
use crate::transport::{Acceptor, ActivityLayer, Budget, Caps, Protocol, TlsError, TlsStore};

/// The gRPC name of the Gateway service, as health checks ask for it.
pub const GATEWAY_SERVICE: &str = <crate::proto::v1::gateway_server::GatewayServer<
    api::GatewayService,
> as tonic::server::NamedService>::NAME;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Refused by policy before anything started.
    #[error("{0}")]
    Refused(String),
    /// A backend could not be loaded.
    #[error("backend {name:?}: {message}")]
    Backend {
        /// The backend.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// A socket could not be bound or served.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The key store (`server.data_dir`) cannot be used.
    #[error("server.data_dir: {0}")]
    KeyStore(#[from] crate::keystore::StoreError),
    /// A port's certificate files cannot be used.
    #[error("{key}: {source}")]
    Tls {
        /// The config table, `server.tls` or `server.http_tls`.
        key: &'static str,
        /// Why.
        source: TlsError,
    },
}

/// ALPN of the gRPC port: HTTP/2 only.
const GRPC_ALPN: &[&[u8]] = &[b"h2"];
/// ALPN of the HTTP port (metrics, health): it speaks HTTP/1.1.
const HTTP_ALPN: &[&[u8]] = &[b"http/1.1"];

impl From<PreflightError> for ServeError {
    fn from(e: PreflightError) -> Self {
        match e {
            PreflightError::Exposure(m) => ServeError::Refused(m),
            PreflightError::Tls { key, source } => ServeError::Tls { key, source },
        }
    }
}

/// The certificate stores of the two ports; `None` serves plaintext.
struct PortTls {
    grpc: Option<Arc<TlsStore>>,
    http: Option<Arc<TlsStore>>,
}

/// The certificate stores of both ports, loaded before anything listens.
/// The HTTP port has its own store even when it shares the files: it
/// offers other ALPN protocols.
fn open_tls(config: &Config, metrics: &Metrics) -> Result<PortTls, ServeError> {
    let server = &config.server;
    let open = |files: &crate::config::TlsFiles, port, alpn: &[&'static [u8]], key| {
        TlsStore::open(
            port,
            files.clone(),
            alpn.to_vec(),
            metrics.transport.clone(),
        )
        .map_err(|source| ServeError::Tls { key, source })
    };
    let grpc = server
        .tls
        .as_ref()
        .map(|f| open(f, "grpc", GRPC_ALPN, "server.tls"))
        .transpose()?;
    let http_key = if server.tls == server.http_tls {
        "server.tls"
    } else {
        "server.http_tls"
    };
    let http = match (&server.http_tls, server.metrics_listen) {
        (Some(f), Some(_)) => Some(open(f, "http", HTTP_ALPN, http_key)?),
        _ => None,
    };
    Ok(PortTls { grpc, http })
}

/// The addresses the server actually bound (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    /// gRPC.
    pub grpc: SocketAddr,
    /// Prometheus, if enabled.
    pub metrics: Option<SocketAddr>,
}

/// Loads every backend of `config` into a registry. The loader is
/// returned for reloads and shutdown: its native runtime kills what the
/// drain left and removes the state directory.
pub fn build_registry(
    config: &Config,
    metrics: Arc<Metrics>,
    phase: crate::phase::GatewayPhase,
) -> Result<(Arc<Registry>, Arc<Loader>), ServeError> {
    let loader = Loader::new(config).map_err(ServeError::from)?;
    let backends = loader.load(config).map_err(ServeError::from)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let registry = Registry::new(
        backends,
        RegistrySettings {
            max_sessions: config.server.max_sessions,
            closed_session_retention: config.server.closed_session_retention,
            retry_after: RETRY_AFTER,
            memory_budget: config.server.memory_budget,
            node_id: config.cluster.node_id.as_deref().map(Arc::from),
            ledger: crate::cluster::Ledger::start(&config.cluster, metrics.cluster.clone())
                .map_err(|e| ServeError::Refused(e.to_string()))?,
            guest_threads: config.server.guest_threads,
            phase,
        },
        Arc::new(SystemClock::new()),
        metrics,
    );
    Ok((registry, Arc::new(loader)))
}

impl From<LoadError> for ServeError {
    /// The one place load failures become serve errors, with the messages
    /// `gatehouse serve` has always printed.
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::StateDir { path, source } => ServeError::Io {
                what: format!("opening the state directory {}", path.display()),
                source,
            },
            LoadError::Runtime(e) => ServeError::Backend {
                name: "*".into(),
                message: e.to_string(),
            },
            LoadError::Backend { name, failure } => ServeError::Backend {
                name,
                message: failure.to_string(),
            },
        }
    }
}

/// Serves until Ctrl-C or SIGTERM, then drains. `on_bound` is told the bound
/// addresses once the backends are loaded and the gateway is ready.
///
/// The order matters to health checks: both ports are bound and answer
/// first (gRPC health `NOT_SERVING`, `/readyz` 503, Gateway calls
/// `UNAVAILABLE`), then the backends load and health turns `SERVING`; on
/// a signal health turns `NOT_SERVING` before any session is closed.
///
/// `source` says where `config` came from: SIGHUP and the Admin `Reload`
/// RPC read it again (see `reload`).
pub async fn serve(
    config: Config,
    source: ConfigSource,
    on_bound: impl FnOnce(BoundAddrs),
) -> Result<(), ServeError> {
    serve_from(config, source, on_bound, wait_for_signal()).await
}

/// Serves until `stop` resolves, then drains. For embedding and benchmarks.
pub async fn serve_until(
    config: Config,
    on_bound: impl FnOnce(BoundAddrs),
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_from(config, ConfigSource::default(), on_bound, stop).await
}

/// [`serve`] with the stop signal given.
pub async fn serve_from(
    config: Config,
    source: ConfigSource,
    on_bound: impl FnOnce(BoundAddrs),
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new());
    let store = open_key_store(&config, &metrics)?;
    let mut auth = Authenticator::from_tenants(&config.tenants);
    if let Some(store) = &store {
        auth = auth.with_store(Arc::clone(store));
    }
    preflight::check_exposure(&config, &auth)?;
    let upkeep = store.as_ref().map(|s| s.spawn_upkeep());
    // One throttle of failed authentications for every gRPC service and
    // console sign-ins alike: an address guessing keys gets one budget.
    let auth_throttle = config.server.auth_failures.map(|rate| {
        Arc::new(api::FailureThrottle::new(
            rate,
            Arc::new(SystemClock::new()),
            &metrics,
        ))
    });
    // What exists once the backends are loaded (api/live.rs): empty until
    // then for the gate, the Admin service and the console alike.
    let live = api::LiveCell::new();
    let console = crate::console::enabled(&config).then(|| {
        crate::console::Console::new(
            auth.clone(),
            config.server.http_tls.is_some(),
            auth_throttle.clone(),
            live.clone(),
        )
    });
    let PortTls {
        grpc: grpc_tls,
        http: http_tls,
    } = open_tls(&config, &metrics)?;
    // Answers systemd's watchdog from the start: loading can be slow.
    let _watchdog = crate::notify::Watchdog::start();
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // The gateway's one phase: health reports it, the registry refuses
    // starts by it.
    let phase = crate::phase::GatewayPhase::new(metrics.cluster.draining.clone());
    let health = Health::starting(reporter, GATEWAY_SERVICE, phase.clone()).await;

    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| ServeError::Io {
            what: format!("binding {}", config.server.listen),
            source,
        })?;
    let incoming = Acceptor::spawn(
        listener,
        "grpc",
        grpc_tls.clone(),
        connection_budget(&config.server),
        &metrics.transport,
    )
    .map_err(|source| ServeError::Io {
        what: "reading the bound address".into(),
        source,
    })?;
    let grpc = incoming.local_addr();

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let metrics_addr = match config.server.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Io {
                    what: format!("binding metrics {addr}"),
                    source,
                })?;
            let l = Acceptor::spawn(
                l,
                "http",
                http_tls.clone(),
                connection_budget(&config.server),
                &metrics.transport,
            )
            .map_err(|source| ServeError::Io {
                what: format!("binding metrics {addr}"),
                source,
            })?;
            let bound = l.local_addr();
            let m = Arc::clone(&metrics);
            let mut routes = health.routes();
            if let Some(console) = &console {
                routes = routes.merge(console.routes());
            }
            let stop = stopped(stop_rx.clone());
            let hosts = config.server.http_hosts.clone();
            tokio::spawn(async move {
                if let Err(e) = http::serve(l, m, &hosts, routes, stop).await {
                    tracing::error!("metrics endpoint failed: {e}");
                }
            });
            Some(bound)
        }
        None => None,
    };

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Refused(format!("building reflection: {e}")))?;
    // v1alpha too, with the same descriptors: grpcio-reflection, Postman and
    // older grpcurl speak only it.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Refused(format!("building reflection: {e}")))?;
    let gate = Gate::new(live.clone());
    let admin = api::AdminService::new(live.clone()).with_audit(api::KeyAdmin::new(auth.clone()));

    let server = &config.server;
    let grpc_server = tokio::spawn(
        Server::builder()
            .http2_keepalive_interval(Some(server.keepalive_interval))
            .http2_keepalive_timeout(Some(server.keepalive_timeout))
            .max_concurrent_streams(Some(server.max_concurrent_streams))
            .http2_max_pending_accept_reset_streams(Some(server.max_pending_resets))
            .concurrency_limit_per_connection(server.max_connection_concurrency)
            .load_shed(true)
            .layer(ActivityLayer(Protocol::Grpc))
            .layer(api::StandardStatusLayer)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(gate.clone())
            .add_service(api::admin_server(
                admin.clone(),
                auth.clone(),
                auth_throttle.clone(),
            ))
            .add_service(api::keys_admin_server(auth.clone(), auth_throttle.clone()))
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())),
    );
    tracing::info!(%grpc, metrics = ?metrics_addr, tls = grpc_tls.is_some(), "listening; loading backends");
    let tls_stores: Vec<Arc<TlsStore>> = [grpc_tls, http_tls].into_iter().flatten().collect();
    let reloader = tokio::spawn(reload_on_hangup(admin.clone(), tls_stores.clone()));

    // Load the backends off the async threads: compiling takes a while.
    let signal = stop;
    tokio::pin!(signal);
    let loading = {
        let config = config.clone();
        let metrics = Arc::clone(&metrics);
        let phase = phase.clone();
        tokio::task::spawn_blocking(move || build_registry(&config, metrics, phase))
    };
    let loaded = tokio::select! {
        loaded = loading => loaded.unwrap_or_else(|e| Err(ServeError::Backend {
            name: "*".into(),
            message: format!("loading panicked: {e}"),
        })),
        _ = &mut signal => {
            tracing::info!("stopped while loading backends");
            crate::notify::stopping();
            health.shutting_down().await;
            let _ = stop_tx.send(true);
            let _ = grpc_server.await;
            reloader.abort();
            return Ok(());
        }
    };
    let (registry, loader) = match loaded {
        Ok(r) => r,
        Err(e) => {
            let _ = stop_tx.send(true);
            let _ = grpc_server.await;
            reloader.abort();
            return Err(e);
        }
    };
    // The live parts appear together: the gate, the Admin service and the
    // console see the gateway started in one step.
    live.set(api::Live {
        gateway: api::gateway_server(
            Arc::clone(&registry),
            auth.clone(),
            ApiLimits {
                max_message_bytes: config.server.max_message_bytes,
                max_batch_commands: config.server.max_batch_commands,
                max_event_stream_age: config.server.max_event_stream_age,
                deadline_margin: config.server.epoch_tick + Duration::from_millis(5),
            },
            auth_throttle,
        ),
        drainer: Arc::new(drain::Drainer::new(
            Arc::clone(&registry),
            health.clone(),
            config.cluster.drain_timeout,
            config.server.shutdown_timeout,
            metrics.cluster.clone(),
        )),
        reloader: Arc::new(Reloader::new(
            source,
            config.clone(),
            Arc::clone(&loader),
            Arc::clone(&registry),
            auth.clone(),
            tls_stores,
            Arc::clone(&metrics),
        )),
        registry: Arc::clone(&registry),
    });
    if let Some(console) = &console {
        console.start_charts(Arc::clone(&metrics));
    }

    // Per-key CPU totals: what the registry charged to each key goes to
    // the key store, which writes it with its upkeep.
    let key_cpu = store.as_ref().map(|store| {
        let (registry, store) = (Arc::downgrade(&registry), Arc::downgrade(store));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::keystore::UPKEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(registry), Some(store)) = (registry.upgrade(), store.upgrade()) else {
                    return;
                };
                for (key, cpu) in registry.take_cpu_by_key() {
                    store.note_cpu(&key, cpu);
                }
            }
        })
    });

    // The sweeper: leases, idle timeouts, lifetimes, retention, retired
    // backend versions.
    let sweeper = {
        let registry = Arc::downgrade(&registry);
        let every = config.server.sweep_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                registry.sweep().await;
            }
        })
    };

    health.serving().await;
    crate::notify::ready();
    on_bound(BoundAddrs {
        grpc,
        metrics: metrics_addr,
    });
    tracing::info!(%grpc, local_mode = auth.is_local(), tenants = config.tenants.len(), "gatehouse listening");

    // Drain: NOT_SERVING first, so balancers stop sending work while the
    // sessions close; then stop both servers.
    signal.await;
    tracing::info!("shutting down: draining sessions");
    crate::notify::stopping();
    health.shutting_down().await;
    registry.shutdown(config.server.shutdown_timeout).await;
    // A clean stop gives the cluster's slots back now, not after the lease.
    if let Some(ledger) = registry.ledger() {
        ledger.leave().await;
    }
    // Whatever is still alive after the drain (warm pools, stuck workers)
    // is killed; the state directory goes with a clean exit.
    if let Some(n) = loader.native() {
        n.shutdown();
    }
    let _ = stop_tx.send(true);
    let served = grpc_server.await;
    sweeper.abort();
    reloader.abort();
    if let Some(upkeep) = upkeep {
        upkeep.abort();
    }
    if let Some(key_cpu) = key_cpu {
        key_cpu.abort();
    }
    if let Some(store) = store {
        for (key, cpu) in registry.take_cpu_by_key() {
            store.note_cpu(&key, cpu);
        }
        // The last-used times and CPU noted since the last upkeep.
        let _ = tokio::task::spawn_blocking(move || store.flush()).await;
    }
    if let Some(n) = loader.native() {
        // Late stragglers (a pool refill racing the drain), then the state
        // directory: a clean exit leaves nothing to reap at the next start.
        n.shutdown();
        n.remove_state();
    }
    tracing::info!("gatehouse stopped");
    match served {
        Ok(result) => result.map_err(ServeError::from),
        Err(e) => Err(ServeError::Refused(format!(
            "the gRPC server task failed: {e}"
        ))),
    }
}

/// What each port lets its connections hold (`[server]`'s connection keys).
fn connection_budget(server: &ServerSettings) -> Budget {
    Budget {
        caps: Caps {
            max: server.max_connections,
            per_address: server.max_connections_per_address,
            health: server.health_connections,
        },
        first_request: server.first_request_timeout,
        idle: server.idle_timeout,
    }
}

/// Opens the key store at `server.data_dir`, unless it is `"off"`.
fn open_key_store(
    config: &Config,
    metrics: &Metrics,
) -> Result<Option<Arc<crate::keystore::KeyStore>>, ServeError> {
    let Some(dir) = &config.server.data_dir else {
        tracing::info!("key store off (server.data_dir = \"off\"): keys come from the config only");
        return Ok(None);
    };
    let store = crate::keystore::KeyStore::open(dir, metrics)?;
    tracing::info!(path = %store.path().display(), "key store open");
    Ok(Some(store))
}

/// Reloads on each SIGHUP, which operators send out of habit to reload:
/// without a handler it would end the process and every session with it.
/// Once the backends are loaded it is a whole reload (see `reload`); before
/// that, only the certificate files are read again.
async fn reload_on_hangup(admin: api::AdminService, stores: Vec<Arc<TlsStore>>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            match admin.reloader() {
                Some(reloader) => {
                    tracing::info!("SIGHUP: reloading the config");
                    // The outcome is logged and counted by the reload.
                    let _ = reloader.reload().await;
                }
                None => {
                    tracing::info!(
                        stores = stores.len(),
                        "SIGHUP while starting: re-reading TLS certificates only"
                    );
                    for store in &stores {
                        let store = Arc::clone(store);
                        let _ = tokio::task::spawn_blocking(move || store.reload()).await;
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (admin, stores);
        std::future::pending::<()>().await;
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::loader::BackendFailure;
    use super::*;
    use crate::backend::Command;
    use crate::registry::{Caller, GatewayError, OpenRequest};

    /// `gatehouse serve` prints load failures as it always has.
    #[test]
    fn load_errors_keep_their_serve_messages() {
        let e = ServeError::from(LoadError::Backend {
            name: "plc".into(),
            failure: BackendFailure::NoStateDir,
        });
        assert_eq!(
            e.to_string(),
            "backend \"plc\": no state directory for native workers"
        );
        let e = ServeError::from(LoadError::StateDir {
            path: "/run/x".into(),
            source: std::io::Error::other("denied"),
        });
        assert_eq!(e.to_string(), "opening the state directory /run/x: denied");
    }

    /// The loader drops the wasm runtime once the backends are loaded; the
    /// epoch ticker must live on with them, or no deadline would fire.
    #[test]
    fn wasm_deadlines_fire_after_the_runtime_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::parse(
            "[[backends]]\nname = \"chaos\"\nmodule = \"builtin:chaos\"\n",
            Path::new("."),
        )
        .unwrap();
        config.server.state_dir = dir.path().join("state");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let outcome = runtime.block_on(async {
            let (registry, _loader) =
                build_registry(&config, Arc::new(Metrics::new()), Default::default()).unwrap();
            let caller = Caller::local();
            let request = OpenRequest {
                backend: "chaos".into(),
                command_timeout: Some(Duration::from_millis(100)),
                ..OpenRequest::default()
            };
            let session = registry.open(&caller, request).await.unwrap();
            let spin = vec![Command {
                name: "spin".into(),
                payload: Vec::new(),
            }];
            // Without ticks the spin never yields its thread: it runs on a
            // task of its own, so the wait for it can time out.
            let invoked =
                tokio::spawn(
                    async move { registry.invoke(&caller, &session.id, spin, None).await },
                );
            tokio::time::timeout(Duration::from_secs(5), invoked).await
        });
        // A thread stuck in the spin would make a plain drop wait forever.
        runtime.shutdown_background();
        match outcome {
            Ok(Ok(Err(GatewayError::Faulted(fault)))) => {
                assert_eq!(fault.code.as_str(), "deadline")
            }
            other => panic!("expected a deadline fault, got {other:?}"),
        }
    }
}
