//! A Rust client for the gatehouse gRPC API.
//!
//! [`Gateway`] is a connection (cheap to clone, shareable between tasks);
//! [`Session`] is a handle on one session. Gateway failures keep their gRPC
//! status ([`Error::Status`]); a command the plugin refused is
//! [`Error::Command`]. [`Session::events`] is a [`Stream`](futures::Stream)
//! that resumes by itself after a dropped connection.
//!
//! ```no_run
//! use futures::StreamExt;
//! use gatehouse::client::{Error, Gateway};
//!
//! # async fn demo() -> Result<(), Error> {
//! let gateway = Gateway::connect("http://127.0.0.1:50051").await?;
//! let session = gateway.open("echo").await?;
//!
//! let reply = session.invoke("echo", "hello").await?;
//! assert_eq!(reply.payload, b"hello");
//!
//! session.invoke("emit", "3").await?;
//! let mut events = session.events();
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     println!("#{} {}", event.sequence, event.name);
//!     if event.sequence == 3 {
//!         break;
//!     }
//! }
//! session.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! With an API key, a lease kept alive in the background, and JSON
//! payloads:
//!
//! ```no_run
//! use std::time::Duration;
//! use gatehouse::client::{Error, Gateway, OpenOptions};
//! use serde_json::{Value, json};
//!
//! # async fn demo() -> Result<(), Error> {
//! let gateway = Gateway::connect("127.0.0.1:50051")
//!     .with_key("gh_example_key")
//!     .await?;
//! // Over TLS, trusting a private CA and presenting a client certificate:
//! // Gateway::connect("https://gateway.internal:50051")
//! //     .ca_certificate(std::fs::read("ca.pem")?)
//! //     .client_identity(std::fs::read("client.pem")?, std::fs::read("client.key")?)
//! let kv = gateway
//!     .open_with(
//!         OpenOptions::new("kv")
//!             .name("cart")
//!             .lease(Duration::from_secs(30))
//!             .keep_alive(Duration::from_secs(10)),
//!     )
//!     .await?;
//! let _: Value = kv.invoke_json("put", &json!({"key": "a", "value": [1, 2]})).await?;
//! let value: Vec<u32> = kv.invoke_json("get", &json!({"key": "a"})).await?;
//! assert_eq!(value, [1, 2]);
//! # Ok(())
//! # }
//! ```

mod call;
mod error;
mod events;
mod keys;
mod session;

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub use self::call::OneShot;
pub use self::error::{CommandError, CommandErrorKind, Error, code_name};
pub use self::events::{EventStream, ResumePolicy};
pub use self::keys::NewKey;
pub use self::session::{CallOptions, Closed, Reply, Session};
use crate::proto::v1 as pb;
use crate::proto::v1::gateway_client::GatewayClient;
pub use crate::proto::v1::{
    BackendInfo, BackendKind, CloseReason, Event, SessionInfo, SessionState,
};

pub use crate::proto::SESSION_HEADER;

/// `message` as a request that carries [`SESSION_HEADER`]. Message types
/// name their session in `session_id`.
pub fn for_session<T: SessionMessage>(message: T) -> tonic::Request<T> {
    let id = message.session_id().to_string();
    let mut request = tonic::Request::new(message);
    // A session id is hex and a node id: always a valid header value. One
    // that is not (a hand-made id) is sent without the header, and the
    // gateway answers it as it would any unknown id.
    if let Ok(value) = id.parse::<MetadataValue<Ascii>>() {
        request.metadata_mut().insert(SESSION_HEADER, value);
    }
    request
}

pub use crate::proto::SessionMessage;

/// The generated client with the API key interceptor.
pub type RawClient = GatewayClient<InterceptedService<Channel, BearerKey>>;
type Inner = RawClient;

/// Sends `authorization: Bearer <key>` on every call, when there is a key.
#[derive(Clone, Default)]
pub struct BearerKey(Option<MetadataValue<Ascii>>);

impl BearerKey {
    /// The header for `key`; an empty key sends nothing (local development
    /// mode).
    pub fn new(key: Option<&str>) -> Result<Self, Error> {
        let Some(key) = key.map(str::trim).filter(|k| !k.is_empty()) else {
            return Ok(Self(None));
        };
        let mut value: MetadataValue<Ascii> = format!("Bearer {key}").parse().map_err(|_| {
            Error::InvalidArgument("the API key has characters a header cannot carry".into())
        })?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

impl std::fmt::Debug for BearerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerKey(<redacted>)"
        } else {
            "BearerKey(None)"
        })
    }
}

impl Interceptor for BearerKey {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connection to a gateway. Clones share the connection.
#[derive(Clone, Debug)]
pub struct Gateway {
    client: Inner,
    admin: pb::admin_client::AdminClient<InterceptedService<Channel, BearerKey>>,
    keys: KeysClient,
    addr: Arc<str>,
}

/// The generated `gatehouse.admin.v1.Admin` client with the key interceptor.
type KeysClient =
    crate::proto::admin::v1::admin_client::AdminClient<InterceptedService<Channel, BearerKey>>;

/// Settings for [`Gateway::connect`]; `.await` it to connect.
#[derive(Debug, Clone)]
#[must_use = "a Connect does nothing until it is awaited"]
pub struct Connect {
    addr: String,
    key: Option<String>,
    connect_timeout: Duration,
    max_message_bytes: usize,
    lazy: bool,
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Connect {
    /// Sends `authorization: Bearer KEY` on every call. An empty key sends
    /// nothing.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// How long to wait for the TCP connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The largest response accepted (default 64 MiB).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Does not dial until the first call (default: dial now, so a wrong
    /// address fails at once).
    pub fn lazy(mut self) -> Self {
        self.lazy = true;
        self
    }

    /// Trusts only the CA certificates of this PEM for `https://`
    /// addresses (default: the system's roots). Implies TLS for an address
    /// without a scheme.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents this client certificate chain and key (PEM) for mutual
    /// TLS. Implies TLS for an address without a scheme.
    pub fn client_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Whether any TLS setting is given.
    fn wants_tls(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some()
    }

    /// The TLS settings: the given CA (else the system's roots) and
    /// client identity.
    fn tls_config(&self) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_pem {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
    }

    async fn establish(self) -> Result<Gateway, Error> {
        let bearer = BearerKey::new(self.key.as_deref())?;
        let uri = if self.addr.contains("://") {
            self.addr.clone()
        } else if self.wants_tls() {
            format!("https://{}", self.addr)
        } else {
            format!("http://{}", self.addr)
        };
        let mut endpoint = Channel::from_shared(uri.clone())
            .map_err(|e| Error::InvalidArgument(format!("bad address {:?}: {e}", self.addr)))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        let https = uri.starts_with("https://");
        if self.wants_tls() && !https {
            return Err(Error::InvalidArgument(format!(
                "a CA or client certificate needs an https:// address, not {uri:?}"
            )));
        }
        if https {
            endpoint = endpoint.tls_config(self.tls_config()).map_err(|e| {
                Error::InvalidArgument(format!("TLS settings: {}", source_chain(&e)))
            })?;
        }
        let channel = if self.lazy {
            endpoint.connect_lazy()
        } else {
            endpoint.connect().await.map_err(|e| Error::Connect {
                addr: uri.clone(),
                message: source_chain(&e),
            })?
        };
        Ok(Gateway {
            admin: pb::admin_client::AdminClient::with_interceptor(channel.clone(), bearer.clone()),
            keys: crate::proto::admin::v1::admin_client::AdminClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            client: GatewayClient::with_interceptor(channel, bearer)
                .max_decoding_message_size(self.max_message_bytes)
                .max_encoding_message_size(self.max_message_bytes),
            addr: uri.into(),
        })
    }
}

impl IntoFuture for Connect {
    type Output = Result<Gateway, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.establish())
    }
}

impl Gateway {
    /// Connects to `addr` (`http://host:port`, `https://host:port` or
    /// `host:port`). Returns a [`Connect`] to set a key, TLS settings or
    /// timeouts on before awaiting it.
    pub fn connect(addr: impl Into<String>) -> Connect {
        Connect {
            addr: addr.into(),
            key: None,
            connect_timeout: Duration::from_secs(5),
            max_message_bytes: 64 << 20,
            lazy: false,
            ca_pem: None,
            identity: None,
        }
    }

    /// The address connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The generated tonic client, for anything this API does not wrap.
    pub fn raw(&self) -> RawClient {
        self.client.clone()
    }

    /// Re-reads the gateway's config file and applies it (the Admin
    /// `Reload` RPC; needs an `admin` key). An error means nothing changed.
    pub async fn reload(&self) -> Result<pb::ReloadResponse, Error> {
        self.reload_with(pb::ReloadRequest::default()).await
    }

    /// The Admin `Reload` RPC as given: with `promote` or `rollback` set it
    /// ends that backend's canary rollout instead of re-reading the config.
    pub async fn reload_with(
        &self,
        request: pb::ReloadRequest,
    ) -> Result<pb::ReloadResponse, Error> {
        let mut admin = self.admin.clone();
        Ok(admin.reload(request).await?.into_inner())
    }

    /// Drains the gateway (`Drain`, admin scope): NOT_SERVING, sessions go
    /// on for `timeout` (else `[cluster] drain_timeout`), then the rest are
    /// closed. Returns once the drain has begun.
    pub async fn drain(&self, timeout: Option<Duration>) -> Result<pb::DrainResponse, Error> {
        let mut admin = self.admin.clone();
        let request = pb::DrainRequest {
            timeout: timeout.and_then(|t| prost_types::Duration::try_from(t).ok()),
        };
        Ok(admin.drain(request).await?.into_inner())
    }

    /// The backends sessions can be opened on.
    pub async fn backends(&self) -> Result<Vec<BackendInfo>, Error> {
        Ok(self
            .raw()
            .list_backends(pb::ListBackendsRequest {})
            .await?
            .into_inner()
            .backends)
    }

    /// The caller's sessions (every session for an admin).
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, Error> {
        Ok(self
            .raw()
            .list_sessions(pb::ListSessionsRequest {})
            .await?
            .into_inner()
            .sessions)
    }

    /// Opens a session on `backend` with the backend's defaults; returns
    /// once it is `READY`.
    pub async fn open(&self, backend: impl Into<String>) -> Result<Session, Error> {
        self.open_with(OpenOptions::new(backend)).await
    }

    /// Opens a session with options; returns once it is `READY`.
    ///
    /// ```no_run
    /// # use gatehouse::client::{Gateway, OpenOptions};
    /// # async fn demo(gateway: Gateway) -> Result<(), gatehouse::client::Error> {
    /// let session = gateway
    ///     .open_with(OpenOptions::new("echo").config("greeting", "hi").correlation_id("order-17"))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn open_with(&self, options: OpenOptions) -> Result<Session, Error> {
        let request = pb::OpenSessionRequest {
            backend: options.backend,
            client_session_name: options.name,
            client_correlation_id: options.correlation_id,
            command_timeout: options.command_timeout.map(crate::api_duration),
            lease: options.lease.map(crate::api_duration),
            config: options.config.into_iter().collect(),
        };
        let info = self
            .raw()
            .open_session(request)
            .await?
            .into_inner()
            .session
            .unwrap_or_default();
        let session = Session::new(self.clone(), info);
        if let Some(every) = options.keep_alive {
            session.keep_alive(every);
        }
        Ok(session)
    }

    /// A handle on an existing session, without a call: use it to invoke,
    /// stream, renew or close a session opened elsewhere. Its
    /// [`info`](Session::info) holds only the id until
    /// [`refresh`](Session::refresh) or [`renew`](Session::renew).
    pub fn session(&self, id: impl Into<String>) -> Session {
        Session::new(
            self.clone(),
            SessionInfo {
                session_id: id.into(),
                ..SessionInfo::default()
            },
        )
    }
}

/// How to open a session: [`Gateway::open_with`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Backend name.
    pub backend: String,
    /// A name for the session, echoed in [`SessionInfo`].
    pub name: String,
    /// The client's own id for the session, echoed in [`SessionInfo`] and
    /// the gateway's logs.
    pub correlation_id: String,
    /// Lease; the backend's default when `None`.
    pub lease: Option<Duration>,
    /// Per-command timeout; the backend's default when `None`.
    pub command_timeout: Option<Duration>,
    /// Merged over the backend's config and handed to the plugin's `open`.
    pub config: BTreeMap<String, String>,
    /// Renew the lease in the background this often
    /// ([`Session::keep_alive`]).
    pub keep_alive: Option<Duration>,
}

impl OpenOptions {
    /// Options for `backend`, everything else default.
    pub fn new(backend: impl Into<String>) -> Self {
        Self {
            backend: backend.into(),
            ..Self::default()
        }
    }

    /// Names the session.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the client correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = id.into();
        self
    }

    /// Asks for a lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Asks for a per-command timeout.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = Some(timeout);
        self
    }

    /// Adds one session config entry.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Renews the lease in the background every `interval`.
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = Some(interval);
        self
    }
}

/// An error and its sources, joined with `: `. A source that says what
/// the text already ends with is left out: hyper wraps its connect errors
/// in another error of the same text ("tcp connect error: tcp connect
/// error: ...").
pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests;
