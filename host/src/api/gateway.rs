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
use super::input;
use super::standard_status::RequestStart;
use super::status::to_status;
use super::trace::Rpc;
use crate::proto::SessionMessage;
use crate::proto::v1 as pb;
use crate::proto::v1::gateway_server::Gateway;
use crate::registry::{CallRequest, Caller, OpenRequest, Registry, Session};

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

    /// The caller the auth layer resolved, admitted under its tenant's
    /// request rate: every RPC takes a token, whatever it then answers.
    fn admit<T>(&self, rpc: &Rpc, request: &Request<T>) -> Result<Caller, Status> {
        let caller = self.auth.caller(request)?;
        rpc.tenant(caller.tenant_name());
        self.registry.admit(&caller).map_err(to_status)?;
        Ok(caller)
    }

    /// The prologue of every RPC on one session: the caller admitted (see
    /// [`admit`](Self::admit)), then the session id checked (see
    /// [`same_session`]).
    fn admit_on<T>(&self, rpc: &Rpc, request: &Request<T>, id: &str) -> Result<Caller, Status> {
        let caller = self.admit(rpc, request)?;
        same_session(request, id)?;
        Ok(caller)
    }

    /// [`admit_on`](Self::admit_on) for the commands (Invoke and
    /// InvokeBatch), then the caller's own session, looked up once for the
    /// span's backend and the call.
    fn admit_owned<T: SessionMessage>(
        &self,
        rpc: &Rpc,
        request: &Request<T>,
    ) -> Result<Arc<Session>, Status> {
        let id = request.get_ref().session_id();
        let caller = self.admit_on(rpc, request, id)?;
        let session = self.registry.owned(&caller, id).map_err(to_status)?;
        rpc.backend(&session.backend().name);
        Ok(session)
    }

    /// Records the caller's tenant and, when the request names a session
    /// the caller may see, its backend on the RPC span.
    fn note(&self, rpc: &Rpc, caller: &Caller, session_id: Option<&str>) {
        rpc.tenant(caller.tenant_name());
        if let Some(session) = session_id.and_then(|id| self.registry.lookup(caller, id).ok()) {
            rpc.backend(&session.backend().name);
        }
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
    // Count from when the request arrived: everything before the handler
    // (connection set-up, auth, the first use of a log callsite) already
    // spent part of the client's budget.
    let start = request
        .extensions()
        .get::<RequestStart>()
        .map_or_else(Instant::now, |s| s.0);
    start.checked_add(timeout.saturating_sub(margin))
}

/// Refuses a call whose session id cannot be one (before it is logged or
/// looked up), or whose `x-gatehouse-session` header (what a proxy routes
/// on) is repeated or names another session than its body: the proxy
/// would have sent it to one node and the gateway would act on another's
/// session.
fn same_session<T>(request: &Request<T>, body: &str) -> Result<(), Status> {
    input::check_id("session_id", body)?;
    let mut values = request
        .metadata()
        .get_all(crate::proto::SESSION_HEADER)
        .iter();
    let Some(value) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err(Status::invalid_argument(format!(
            "the {} header is repeated: send it once",
            crate::proto::SESSION_HEADER
        )));
    }
    match value.to_str() {
        Ok(header) if header == body => Ok(()),
        Ok(header) => Err(Status::invalid_argument(format!(
            "the {} header names session {:?} but the request names {body:?}",
            crate::proto::SESSION_HEADER,
            input::loggable(header, input::MAX_ID),
        ))),
        Err(_) => Err(Status::invalid_argument(format!(
            "the {} header is not printable ASCII",
            crate::proto::SESSION_HEADER
        ))),
    }
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
        let rpc = Rpc::start("ListBackends", &request, "", "");
        rpc.run(async {
            let caller = self.admit(&rpc, &request)?;
            // Only the backends the caller's tenant may open.
            let backends = self
                .registry
                .backends_for(&caller)
                .into_iter()
                .map(|(v, state)| convert::backend_version(&v, state))
                .collect();
            Ok(Response::new(pb::ListBackendsResponse { backends }))
        })
        .await
    }

    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let r = request.get_ref();
        let rpc = Rpc::start("OpenSession", &request, "", &r.client_correlation_id);
        rpc.backend(&r.backend);
        rpc.run(async {
            let caller = self.admit(&rpc, &request)?;
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
            rpc.session(&session.id);
            Ok(Response::new(pb::OpenSessionResponse {
                session: Some(self.info(&session)),
            }))
        })
        .await
    }

    async fn invoke(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        let r = request.get_ref();
        let rpc = Rpc::start("Invoke", &request, &r.session_id, &r.correlation_id);
        rpc.run(async {
            let session = self.admit_owned(&rpc, &request)?;
            let deadline = grpc_deadline(&request, self.limits.deadline_margin);
            let r = request.into_inner();
            let command = r
                .command
                .ok_or_else(|| Status::invalid_argument("command is required"))?;
            let outcomes = self
                .registry
                .invoke_on(&session, vec![convert::command(command)], deadline)
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
        })
        .await
    }

    async fn invoke_batch(
        &self,
        request: Request<pb::InvokeBatchRequest>,
    ) -> Result<Response<pb::InvokeBatchResponse>, Status> {
        let rpc = Rpc::start("InvokeBatch", &request, &request.get_ref().session_id, "");
        rpc.run(async {
            let session = self.admit_owned(&rpc, &request)?;
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
                .invoke_on(&session, commands, deadline)
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
        })
        .await
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        request: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let rpc = Rpc::start("StreamEvents", &request, &request.get_ref().session_id, "");
        let subscribed = async {
            let caller = self.admit_on(&rpc, &request, &request.get_ref().session_id)?;
            self.note(&rpc, &caller, Some(&request.get_ref().session_id));
            let r = request.get_ref();
            self.registry
                .subscribe(&caller, &r.session_id, r.resume_after_sequence)
                .await
                .map_err(to_status)
        };
        let subscription = match subscribed.await {
            Ok(s) => s,
            // A refused subscription completes the call at once.
            Err(status) => return rpc.run(async { Err(status) }).await,
        };
        let events = event_stream(subscription, self.limits.max_event_stream_age);
        Ok(Response::new(Box::pin(rpc.stream(events))))
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        let rpc = Rpc::start("RenewLease", &request, &request.get_ref().session_id, "");
        rpc.run(async {
            let caller = self.admit_on(&rpc, &request, &request.get_ref().session_id)?;
            let session = self
                .registry
                .renew(&caller, &request.get_ref().session_id)
                .map_err(to_status)?;
            rpc.backend(&session.backend().name);
            Ok(Response::new(self.info(&session)))
        })
        .await
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        let rpc = Rpc::start("GetSession", &request, &request.get_ref().session_id, "");
        rpc.run(async {
            let caller = self.admit_on(&rpc, &request, &request.get_ref().session_id)?;
            let id = &request.get_ref().session_id;
            let session = match self.registry.get(&caller, id) {
                Ok(session) => session,
                // An admin asking any node sees every node's sessions.
                Err(e @ crate::registry::GatewayError::SessionNotFound(_)) => {
                    let remote = self
                        .registry
                        .cluster_session(&caller, id)
                        .await
                        .map_err(to_status)?;
                    return match remote {
                        Some(r) => {
                            rpc.backend(&r.backend);
                            Ok(Response::new(convert::remote_session_info(&r)))
                        }
                        None => Err(to_status(e)),
                    };
                }
                Err(e) => return Err(to_status(e)),
            };
            rpc.backend(&session.backend().name);
            Ok(Response::new(self.info(&session)))
        })
        .await
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let rpc = Rpc::start("ListSessions", &request, "", "");
        rpc.run(async {
            let caller = self.admit(&rpc, &request)?;
            let mut sessions: Vec<pb::SessionInfo> = self
                .registry
                .list(&caller)
                .iter()
                .map(|s| self.info(s))
                .collect();
            // An admin sees every node's; without Redis, this node's, and
            // the log says why.
            match self.registry.cluster_sessions(&caller).await {
                Ok(remote) => sessions.extend(remote.iter().map(convert::remote_session_info)),
                Err(e) => tracing::warn!("ListSessions: only this node's sessions: {e}"),
            }
            Ok(Response::new(pb::ListSessionsResponse { sessions }))
        })
        .await
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let rpc = Rpc::start("CloseSession", &request, &request.get_ref().session_id, "");
        rpc.run(async {
            let caller = self.admit_on(&rpc, &request, &request.get_ref().session_id)?;
            self.note(&rpc, &caller, Some(&request.get_ref().session_id));
            let id = request.into_inner().session_id;
            let result = self.registry.close(&caller, &id).await.map_err(to_status)?;
            Ok(Response::new(pb::CloseSessionResponse {
                session_id: id,
                final_state: convert::state(result.final_state) as i32,
                already_closed: result.already_closed,
            }))
        })
        .await
    }

    async fn restart_session(
        &self,
        request: Request<pb::RestartSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        let rpc = Rpc::start(
            "RestartSession",
            &request,
            &request.get_ref().session_id,
            "",
        );
        rpc.run(async {
            let caller = self.admit_on(&rpc, &request, &request.get_ref().session_id)?;
            self.note(&rpc, &caller, Some(&request.get_ref().session_id));
            let r = request.into_inner();
            let session = to_completion("restart", &self.registry, move |registry| async move {
                registry
                    .restart(&caller, &r.session_id, r.from_snapshot.unwrap_or(true))
                    .await
            })
            .await?;
            Ok(Response::new(self.info(&session)))
        })
        .await
    }

    async fn upgrade_session(
        &self,
        request: Request<pb::UpgradeSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        let rpc = Rpc::start(
            "UpgradeSession",
            &request,
            &request.get_ref().session_id,
            "",
        );
        rpc.run(async {
            let caller = self.admit_on(&rpc, &request, &request.get_ref().session_id)?;
            self.note(&rpc, &caller, Some(&request.get_ref().session_id));
            let r = request.into_inner();
            let session = to_completion("upgrade", &self.registry, move |registry| async move {
                registry.upgrade(&caller, &r.session_id, &r.version).await
            })
            .await?;
            Ok(Response::new(self.info(&session)))
        })
        .await
    }

    async fn call(
        &self,
        request: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let rpc = Rpc::start("Call", &request, "", "");
        rpc.backend(&request.get_ref().backend);
        rpc.run(async {
            let caller = self.admit(&rpc, &request)?;
            let deadline = grpc_deadline(&request, self.limits.deadline_margin);
            let r = request.into_inner();
            let command = r
                .command
                .ok_or_else(|| Status::invalid_argument("command is required"))?;
            let call = CallRequest {
                backend: r.backend,
                config: r.config.into_iter().collect(),
                command: convert::command(command),
                command_timeout: convert::from_duration(r.command_timeout)
                    .map_err(Status::invalid_argument)?,
            };
            let outcome = self
                .registry
                .call(&caller, call, deadline)
                .await
                .map_err(to_status)?;
            let (payload, error) = convert::outcome(outcome);
            fits(
                pb::CallResponse { payload, error },
                self.limits.max_message_bytes,
            )
        })
        .await
    }
}

/// Runs `call` on a task of its own, to completion even if the caller goes
/// away: a restart or an upgrade abandoned halfway would leave the session
/// between two workers.
async fn to_completion<T, F, Fut>(
    what: &str,
    registry: &Arc<Registry>,
    call: F,
) -> Result<T, Status>
where
    F: FnOnce(Arc<Registry>) -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::registry::GatewayError>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(call(Arc::clone(registry)))
        .await
        .map_err(|e| Status::internal(format!("{what} failed: {e}")))?
        .map_err(to_status)
}

/// A subscription as a response stream. With a maximum age the stream ends
/// with `UNAVAILABLE` once it is that old, after detaching, so the client's
/// resume (with `resume_after_sequence`) is not refused as a second
/// subscriber; load balancers can then move long streams between gateways.
fn event_stream(
    subscription: crate::registry::EventStream,
    max_age: Option<Duration>,
) -> Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>> {
    let ends_at = max_age.map(|age| tokio::time::Instant::now() + age);
    Box::pin(futures::stream::unfold(
        Some(subscription),
        move |sub| async move {
            let mut sub = sub?;
            let delivery = match ends_at {
                None => sub.next().await?,
                Some(at) => tokio::select! {
                    biased;
                    delivery = sub.next() => delivery?,
                    _ = tokio::time::sleep_until(at) => {
                        drop(sub);
                        let status = Status::unavailable(
                            "the event stream reached its maximum age; resume with resume_after_sequence",
                        );
                        return Some((Err(status), None));
                    }
                },
            };
            Some((Ok(convert::event(delivery)), Some(sub)))
        },
    ))
}
