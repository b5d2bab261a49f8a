//! One-shot calls: one command on a fresh instance, in one round trip.

use super::*;

/// A one-shot call: [`Gateway::call_with`].
#[derive(Debug, Clone, Default)]
pub struct OneShot {
    /// Backend name.
    pub backend: String,
    /// The command.
    pub command: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Merged over the backend's config and handed to the plugin's `open`.
    pub config: BTreeMap<String, String>,
    /// The command's (and the start's) timeout; the backend's default when
    /// `None`.
    pub command_timeout: Option<Duration>,
    /// The gRPC deadline for the whole call.
    pub timeout: Option<Duration>,
}

impl OneShot {
    /// `command` with `payload` on `backend`, everything else default.
    pub fn new(
        backend: impl Into<String>,
        command: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            backend: backend.into(),
            command: command.into(),
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// Adds one config entry.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Asks for a command timeout.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = Some(timeout);
        self
    }

    /// Sets the gRPC deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl Gateway {
    /// Runs `command` on a fresh instance of `backend` that is dropped
    /// afterwards: open, invoke and close in one round trip, with no
    /// session left behind. A command the plugin refused is
    /// [`Error::Command`], as for [`Session::invoke`].
    ///
    /// ```no_run
    /// # async fn demo(gateway: gatehouse::client::Gateway) -> Result<(), gatehouse::client::Error> {
    /// let reply = gateway.call("echo", "echo", "hi").await?;
    /// assert_eq!(reply.payload, b"hi");
    /// # Ok(()) }
    /// ```
    pub async fn call(
        &self,
        backend: impl Into<String>,
        command: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Result<Reply, Error> {
        self.call_with(OneShot::new(backend, command, payload))
            .await
    }

    /// A one-shot call with config, a command timeout or a deadline.
    pub async fn call_with(&self, call: OneShot) -> Result<Reply, Error> {
        let mut request = tonic::Request::new(pb::CallRequest {
            backend: call.backend,
            config: call.config.into_iter().collect(),
            command: Some(pb::Command {
                name: call.command,
                payload: call.payload,
            }),
            command_timeout: call.command_timeout.map(crate::api_duration),
        });
        if let Some(timeout) = call.timeout {
            request.set_timeout(timeout);
        }
        let r = self.raw().call(request).await?.into_inner();
        match r.error {
            Some(e) => Err(Error::Command(CommandError::from_wire(e))),
            None => Ok(Reply {
                payload: r.payload,
                correlation_id: String::new(),
            }),
        }
    }
}
