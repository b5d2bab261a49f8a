//! A session handle: invoke, events, renew, keep-alive and close, and
//! the values they return.

use super::*;

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
    /// The renewal task, if one runs (tests look at it).
    pub(super) keep_alive: Mutex<Option<JoinHandle<()>>>,
}

impl Session {
    pub(super) fn new(gateway: Gateway, info: SessionInfo) -> Self {
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
            .get_session(super::for_session(pb::GetSessionRequest {
                session_id: self.id.clone(),
            }))
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
        let mut request = super::for_session(pb::InvokeRequest {
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
            .invoke_batch(super::for_session(pb::InvokeBatchRequest {
                session_id: self.id.clone(),
                commands,
            }))
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

    /// Replaces the session's instance with a fresh one (`RestartSession`),
    /// restored from its last state snapshot when `from_snapshot` and the
    /// backend keeps state. The id, lease and event sequence stay.
    pub async fn restart(&self, from_snapshot: bool) -> Result<SessionInfo, Error> {
        Ok(self
            .gateway
            .raw()
            .restart_session(super::for_session(pb::RestartSessionRequest {
                session_id: self.id.clone(),
                from_snapshot: Some(from_snapshot),
            }))
            .await?
            .into_inner())
    }

    /// Moves the session to another loaded version of its backend
    /// (`UpgradeSession`): "1.4.0", "sha256:<prefix>", or "" for the
    /// current one. A refused upgrade leaves it on its version.
    pub async fn upgrade(&self, version: impl Into<String>) -> Result<SessionInfo, Error> {
        Ok(self
            .gateway
            .raw()
            .upgrade_session(super::for_session(pb::UpgradeSessionRequest {
                session_id: self.id.clone(),
                version: version.into(),
            }))
            .await?
            .into_inner())
    }

    /// Closes the session (idempotent while the gateway still knows it) and
    /// stops the background renewal.
    pub async fn close(&self) -> Result<Closed, Error> {
        self.stop_keep_alive();
        let r = self
            .gateway
            .raw()
            .close_session(super::for_session(pb::CloseSessionRequest {
                session_id: self.id.clone(),
            }))
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
        .renew_lease(super::for_session(pb::RenewLeaseRequest {
            session_id: id.to_string(),
        }))
        .await?
        .into_inner())
}
