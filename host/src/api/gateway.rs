//! The `gatehouse.v1.Gateway` service: decode, authenticate, call the
//! registry, encode.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tonic::{Request, Response, Status};

use super::ApiLimits;
use super::auth::Authenticator;
use super::convert;
use super::status::to_status;
use crate::proto::v1 as pb;
use crate::proto::v1::gateway_server::Gateway;
use crate::registry::{OpenRequest, Registry};

/// The Gateway service implementation.
pub struct GatewayService {
    registry: Arc<Registry>,
    auth: Authenticator,
    limits: ApiLimits,
}

impl GatewayService {
    /// A service over `registry`.
    pub fn new(registry: Arc<Registry>, auth: Authenticator, limits: ApiLimits) -> Self {
        Self {
            registry,
            auth,
            limits,
        }
    }

    fn info(&self, s: &crate::registry::Session) -> pb::SessionInfo {
        convert::session_info(s, |t| self.registry.wall(t))
    }
}

/// The client's gRPC deadline, from the `grpc-timeout` header, moved
/// `margin` earlier (see [`ApiLimits::deadline_margin`]).
fn grpc_deadline<T>(request: &Request<T>, margin: Duration) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(timeout.saturating_sub(margin))
}

/// Refuses a response that would be over the message limit; tonic would
/// otherwise fail it mid-stream with OUT_OF_RANGE.
fn fits<M: prost::Message>(response: M, limit: usize) -> Result<Response<M>, Status> {
    let size = response.encoded_len();
    if size > limit {
        return Err(Status::resource_exhausted(format!(
            "the response of {size} bytes is over the message limit of {limit}"
        )));
    }
    Ok(Response::new(response))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn list_backends(
        &self,
        request: Request<pb::ListBackendsRequest>,
    ) -> Result<Response<pb::ListBackendsResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        // Only the backends the caller's tenant may open.
        let backends = self
            .registry
            .backends_for(&caller)
            .map(|b| convert::backend_info(b.backend.info()))
            .collect();
        Ok(Response::new(pb::ListBackendsResponse { backends }))
    }

    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        let r = request.into_inner();
        let open = OpenRequest {
            backend: r.backend,
            client_session_name: r.client_session_name,
            client_correlation_id: r.client_correlation_id,
            command_timeout: convert::from_duration(r.command_timeout)
                .map_err(Status::invalid_argument)?,
            lease: convert::from_duration(r.lease).map_err(Status::invalid_argument)?,
            config: r.config.into_iter().collect(),
        };
        let session = self.registry.open(&caller, open).await.map_err(to_status)?;
        Ok(Response::new(pb::OpenSessionResponse {
            session: Some(self.info(&session)),
        }))
    }

    async fn invoke(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        let deadline = grpc_deadline(&request, self.limits.deadline_margin);
        let r = request.into_inner();
        let command = r
            .command
            .ok_or_else(|| Status::invalid_argument("command is required"))?;
        let outcomes = self
            .registry
            .invoke(
                &caller,
                &r.session_id,
                vec![convert::command(command)],
                deadline,
            )
            .await
            .map_err(to_status)?;
        let (payload, error) = outcomes
            .into_iter()
            .next()
            .map(convert::outcome)
            .ok_or_else(|| Status::internal("the worker returned no result"))?;
        fits(
            pb::InvokeResponse {
                payload,
                error,
                correlation_id: r.correlation_id,
            },
            self.limits.max_message_bytes,
        )
    }

    async fn invoke_batch(
        &self,
        request: Request<pb::InvokeBatchRequest>,
    ) -> Result<Response<pb::InvokeBatchResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        let deadline = grpc_deadline(&request, self.limits.deadline_margin);
        let r = request.into_inner();
        if r.commands.len() > self.limits.max_batch_commands {
            return Err(Status::invalid_argument(format!(
                "a batch may hold at most {} commands, this one has {}",
                self.limits.max_batch_commands,
                r.commands.len()
            )));
        }
        let commands = r.commands.into_iter().map(convert::command).collect();
        let outcomes = self
            .registry
            .invoke(&caller, &r.session_id, commands, deadline)
            .await
            .map_err(to_status)?;
        let results = outcomes
            .into_iter()
            .map(|o| {
                let (payload, error) = convert::outcome(o);
                pb::InvokeResult { payload, error }
            })
            .collect();
        fits(
            pb::InvokeBatchResponse { results },
            self.limits.max_message_bytes,
        )
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        request: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let caller = self.auth.caller(&request)?;
        let r = request.into_inner();
        let subscription = self
            .registry
            .subscribe(&caller, &r.session_id, r.resume_after_sequence)
            .await
            .map_err(to_status)?;
        let stream = futures::stream::unfold(subscription, |mut sub| async move {
            let delivery = sub.next().await?;
            Some((Ok(convert::event(delivery)), sub))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        let caller = self.auth.caller(&request)?;
        let session = self
            .registry
            .renew(&caller, &request.get_ref().session_id)
            .map_err(to_status)?;
        Ok(Response::new(self.info(&session)))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        let caller = self.auth.caller(&request)?;
        let session = self
            .registry
            .get(&caller, &request.get_ref().session_id)
            .map_err(to_status)?;
        Ok(Response::new(self.info(&session)))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        let sessions = self
            .registry
            .list(&caller)
            .iter()
            .map(|s| self.info(s))
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        let id = request.into_inner().session_id;
        let result = self.registry.close(&caller, &id).await.map_err(to_status)?;
        Ok(Response::new(pb::CloseSessionResponse {
            session_id: id,
            final_state: convert::state(result.final_state) as i32,
            already_closed: result.already_closed,
        }))
    }
}
