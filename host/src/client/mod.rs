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

mod error;
mod events;

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
use tonic::transport::Channel;

pub use self::error::{CommandError, CommandErrorKind, Error, code_name};
pub use self::events::{EventStream, ResumePolicy};
use crate::proto::v1 as pb;
use crate::proto::v1::gateway_client::GatewayClient;
pub use crate::proto::v1::{
    BackendInfo, BackendKind, CloseReason, Event, SessionInfo, SessionState,
};

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
    addr: Arc<str>,
}

/// Settings for [`Gateway::connect`]; `.await` it to connect.
#[derive(Debug, Clone)]
#[must_use = "a Connect does nothing until it is awaited"]
pub struct Connect {
    addr: String,
    key: Option<String>,
    connect_timeout: Duration,
    max_message_bytes: usize,
    lazy: bool,
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

    async fn establish(self) -> Result<Gateway, Error> {
        let bearer = BearerKey::new(self.key.as_deref())?;
        let uri = if self.addr.contains("://") {
            self.addr.clone()
        } else {
            format!("http://{}", self.addr)
        };
        let endpoint = Channel::from_shared(uri.clone())
            .map_err(|e| Error::InvalidArgument(format!("bad address {:?}: {e}", self.addr)))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        let channel = if self.lazy {
            endpoint.connect_lazy()
        } else {
            endpoint.connect().await.map_err(|e| Error::Connect {
                addr: uri.clone(),
                message: source_chain(&e),
            })?
        };
        Ok(Gateway {
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
    /// Connects to `addr` (`http://host:port` or `host:port`). Returns a
    /// [`Connect`] to set a key or timeouts on before awaiting it.
    pub fn connect(addr: impl Into<String>) -> Connect {
        Connect {
            addr: addr.into(),
            key: None,
            connect_timeout: Duration::from_secs(5),
            max_message_bytes: 64 << 20,
            lazy: false,
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

/// Per-call options for [`Session::invoke_with`].
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Echoed in the reply and logged by the gateway with the call.
    pub correlation_id: Option<String>,
    /// The gRPC deadline; the gateway stops the command (and faults the
    /// session) when it runs past it.
    pub timeout: Option<Duration>,
}

/// A command's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The plugin's reply payload.
    pub payload: Vec<u8>,
    /// The correlation id of the call, echoed.
    pub correlation_id: String,
}

impl Reply {
    /// The payload as UTF-8 text, if it is.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }
}

/// What [`Session::close`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The session.
    pub session_id: String,
    /// Its state after the close (`CLOSED`).
    pub final_state: SessionState,
    /// Whether it was already closed (or closing) before this call.
    pub already_closed: bool,
}

/// A handle on one session.
///
/// Dropping the handle stops its background lease renewal but does not
/// close the session: close it with [`Session::close`], or let the lease
/// run out.
#[derive(Debug)]
pub struct Session {
    gateway: Gateway,
    id: String,
    info: Mutex<SessionInfo>,
    keep_alive: Mutex<Option<JoinHandle<()>>>,
}

impl Session {
    fn new(gateway: Gateway, info: SessionInfo) -> Self {
        Self {
            gateway,
            id: info.session_id.clone(),
            info: Mutex::new(info),
            keep_alive: Mutex::new(None),
        }
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, info: &SessionInfo) {
        *Self::lock(&self.info) = info.clone();
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The gateway this session is on.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The last known description of the session: from open,
    /// [`renew`](Self::renew) or [`refresh`](Self::refresh).
    pub fn info(&self) -> SessionInfo {
        Self::lock(&self.info).clone()
    }

    /// Fetches the session's current description (`GetSession`).
    pub async fn refresh(&self) -> Result<SessionInfo, Error> {
        let info = self
            .gateway
            .raw()
            .get_session(pb::GetSessionRequest {
                session_id: self.id.clone(),
            })
            .await?
            .into_inner();
        self.remember(&info);
        Ok(info)
    }

    /// Runs one command. A command error from the plugin is
    /// [`Error::Command`].
    pub async fn invoke(
        &self,
        command: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Result<Reply, Error> {
        self.invoke_with(command, payload, &CallOptions::default())
            .await
    }

    /// Runs one command with a correlation id or a deadline.
    pub async fn invoke_with(
        &self,
        command: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        options: &CallOptions,
    ) -> Result<Reply, Error> {
        let mut request = tonic::Request::new(pb::InvokeRequest {
            session_id: self.id.clone(),
            command: Some(pb::Command {
                name: command.into(),
                payload: payload.into(),
            }),
            correlation_id: options.correlation_id.clone().unwrap_or_default(),
        });
        if let Some(timeout) = options.timeout {
            request.set_timeout(timeout);
        }
        let r = self.gateway.raw().invoke(request).await?.into_inner();
        match r.error {
            Some(e) => Err(Error::Command(CommandError::from_wire(e))),
            None => Ok(Reply {
                payload: r.payload,
                correlation_id: r.correlation_id,
            }),
        }
    }

    /// Runs one command with a JSON payload and decodes its JSON reply.
    ///
    /// ```no_run
    /// # async fn demo(kv: gatehouse::client::Session) -> Result<(), gatehouse::client::Error> {
    /// let keys: Vec<String> = kv.invoke_json("list", &()).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// A `()` request sends an empty payload rather than `null`.
    pub async fn invoke_json<T, R>(
        &self,
        command: impl Into<String>,
        request: &T,
    ) -> Result<R, Error>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let value = serde_json::to_value(request)?;
        let payload = if value.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&value)?
        };
        let reply = self.invoke(command, payload).await?;
        let payload: &[u8] = if reply.payload.is_empty() {
            b"null"
        } else {
            &reply.payload
        };
        Ok(serde_json::from_slice(payload)?)
    }

    /// Runs many commands in order in one round trip. The outer error is a
    /// gateway failure; each command has its own result.
    ///
    /// ```no_run
    /// # async fn demo(s: gatehouse::client::Session) -> Result<(), gatehouse::client::Error> {
    /// let results = s.batch([("count", ""), ("count", ""), ("echo", "hi")]).await?;
    /// assert_eq!(results.len(), 3);
    /// # Ok(()) }
    /// ```
    pub async fn batch<N, P>(
        &self,
        commands: impl IntoIterator<Item = (N, P)>,
    ) -> Result<Vec<Result<Vec<u8>, CommandError>>, Error>
    where
        N: Into<String>,
        P: Into<Vec<u8>>,
    {
        let commands = commands
            .into_iter()
            .map(|(name, payload)| pb::Command {
                name: name.into(),
                payload: payload.into(),
            })
            .collect();
        let r = self
            .gateway
            .raw()
            .invoke_batch(pb::InvokeBatchRequest {
                session_id: self.id.clone(),
                commands,
            })
            .await?
            .into_inner();
        Ok(r.results
            .into_iter()
            .map(|r| match r.error {
                Some(e) => Err(CommandError::from_wire(e)),
                None => Ok(r.payload),
            })
            .collect())
    }

    /// The session's events from the first one not yet streamed to anyone,
    /// resuming by itself after breaks (see [`EventStream`]).
    pub fn events(&self) -> EventStream {
        EventStream::new(self.gateway.raw(), self.id.clone(), None)
    }

    /// The session's events after `sequence`, replayed from the gateway's
    /// buffer as far as it reaches back.
    pub fn events_from(&self, sequence: u64) -> EventStream {
        EventStream::new(self.gateway.raw(), self.id.clone(), Some(sequence))
    }

    /// Extends the lease by its duration from now.
    pub async fn renew(&self) -> Result<SessionInfo, Error> {
        let info = renew(&self.gateway.raw(), &self.id).await?;
        self.remember(&info);
        Ok(info)
    }

    /// Renews the lease every `interval` in a background task (replacing any
    /// earlier one) until the session is closed, the handle dropped, or the
    /// gateway says the session is gone. Must be called inside a tokio
    /// runtime.
    pub fn keep_alive(&self, interval: Duration) {
        let client = self.gateway.raw();
        let id = self.id.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match renew(&client, &id).await {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.code(),
                            Some(tonic::Code::NotFound | tonic::Code::FailedPrecondition)
                        ) =>
                    {
                        tracing::debug!(target: "gatehouse::client", session_id = %id, "keep-alive stopped: {e}");
                        return;
                    }
                    // Transient: the next tick tries again.
                    Err(e) => {
                        tracing::debug!(target: "gatehouse::client", session_id = %id, "lease renewal failed: {e}")
                    }
                }
            }
        });
        if let Some(old) = Self::lock(&self.keep_alive).replace(task) {
            old.abort();
        }
    }

    /// Whether a background renewal task is running.
    pub fn is_kept_alive(&self) -> bool {
        Self::lock(&self.keep_alive)
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    fn stop_keep_alive(&self) {
        if let Some(task) = Self::lock(&self.keep_alive).take() {
            task.abort();
        }
    }

    /// Closes the session (idempotent while the gateway still knows it) and
    /// stops the background renewal.
    pub async fn close(&self) -> Result<Closed, Error> {
        self.stop_keep_alive();
        let r = self
            .gateway
            .raw()
            .close_session(pb::CloseSessionRequest {
                session_id: self.id.clone(),
            })
            .await?
            .into_inner();
        Ok(Closed {
            session_id: r.session_id,
            final_state: SessionState::try_from(r.final_state).unwrap_or(SessionState::Unspecified),
            already_closed: r.already_closed,
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop_keep_alive();
    }
}

async fn renew(client: &Inner, id: &str) -> Result<SessionInfo, Error> {
    Ok(client
        .clone()
        .renew_lease(pb::RenewLeaseRequest {
            session_id: id.to_string(),
        })
        .await?
        .into_inner())
}

/// An error and its sources, joined with `: `.
pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests;
