//! The client against a scripted in-process gateway: resume decisions,
//! error mapping, the key header, keep-alive.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

use super::*;
use crate::proto::v1::gateway_server::{Gateway as GatewayApi, GatewayServer};

/// What the fake does with the next `StreamEvents` call.
enum Plan {
    /// Stream `count` events after the resume point, then end with the
    /// status (or cleanly).
    Deliver(u64, Option<Status>),
    /// Refuse the subscription.
    Refuse(Status),
}

#[derive(Default)]
struct Fake {
    plans: Mutex<VecDeque<Plan>>,
    /// `resume_after_sequence` of every StreamEvents call.
    subscriptions: Mutex<Vec<Option<u64>>>,
    /// The authorization header of every call.
    keys: Mutex<Vec<Option<String>>>,
    renewals: AtomicU32,
}

#[derive(Clone)]
struct Api(Arc<Fake>);

impl Api {
    fn seen<T>(&self, r: &Request<T>) {
        let key = r
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        self.0.keys.lock().unwrap().push(key);
    }
}

fn info(id: &str) -> pb::SessionInfo {
    pb::SessionInfo {
        session_id: id.into(),
        backend: "fake".into(),
        state: pb::SessionState::Ready as i32,
        ..Default::default()
    }
}

fn event(sequence: u64) -> pb::Event {
    pb::Event {
        sequence,
        name: "tick".into(),
        payload: sequence.to_string().into_bytes(),
        emitted_at: None,
        dropped_before: 0,
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl GatewayApi for Api {
    async fn list_backends(
        &self,
        r: Request<pb::ListBackendsRequest>,
    ) -> Result<Response<pb::ListBackendsResponse>, Status> {
        self.seen(&r);
        Ok(Response::new(pb::ListBackendsResponse {
            backends: vec![pb::BackendInfo {
                name: "fake".into(),
                ..Default::default()
            }],
        }))
    }

    async fn open_session(
        &self,
        r: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        self.seen(&r);
        let r = r.into_inner();
        let mut s = info("s1");
        s.client_session_name = r.client_session_name;
        s.client_correlation_id = r.client_correlation_id;
        s.lease = r.lease;
        Ok(Response::new(pb::OpenSessionResponse { session: Some(s) }))
    }

    async fn invoke(
        &self,
        r: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        self.seen(&r);
        let timeout = r.metadata().get("grpc-timeout").is_some();
        let r = r.into_inner();
        let command = r.command.unwrap_or_default();
        let (payload, error) = match command.name.as_str() {
            "echo" => (command.payload, None),
            "timeout?" => (timeout.to_string().into_bytes(), None),
            "gone" => return Err(Status::not_found("no session \"s1\"")),
            _ => (
                Vec::new(),
                Some(pb::CommandError {
                    kind: pb::command_error::Kind::UnknownCommand as i32,
                    message: format!("no command {:?}", command.name),
                }),
            ),
        };
        Ok(Response::new(pb::InvokeResponse {
            payload,
            error,
            correlation_id: r.correlation_id,
        }))
    }

    async fn invoke_batch(
        &self,
        r: Request<pb::InvokeBatchRequest>,
    ) -> Result<Response<pb::InvokeBatchResponse>, Status> {
        let results = r
            .into_inner()
            .commands
            .into_iter()
            .map(|c| match c.name.as_str() {
                "echo" => pb::InvokeResult {
                    payload: c.payload,
                    error: None,
                },
                _ => pb::InvokeResult {
                    payload: Vec::new(),
                    error: Some(pb::CommandError {
                        kind: pb::command_error::Kind::Failed as i32,
                        message: "nope".into(),
                    }),
                },
            })
            .collect();
        Ok(Response::new(pb::InvokeBatchResponse { results }))
    }

    type StreamEventsStream = Events;

    async fn stream_events(
        &self,
        r: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Events>, Status> {
        let after = r.into_inner().resume_after_sequence;
        self.0.subscriptions.lock().unwrap().push(after);
        let plan = self.0.plans.lock().unwrap().pop_front();
        match plan {
            None => Err(Status::not_found("no more plans")),
            Some(Plan::Refuse(status)) => Err(status),
            Some(Plan::Deliver(count, end)) => {
                let from = after.unwrap_or(0) + 1;
                let events = (from..from + count).map(|s| Ok(event(s)));
                let tail = end.map(Err);
                Ok(Response::new(Box::pin(futures::stream::iter(
                    events.chain(tail),
                ))))
            }
        }
    }

    async fn renew_lease(
        &self,
        r: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        let id = r.into_inner().session_id;
        if id == "gone" {
            return Err(Status::not_found("no session"));
        }
        self.0.renewals.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(info(&id)))
    }

    async fn get_session(
        &self,
        r: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        Ok(Response::new(info(&r.into_inner().session_id)))
    }

    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: vec![info("s1")],
        }))
    }

    async fn close_session(
        &self,
        r: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        Ok(Response::new(pb::CloseSessionResponse {
            session_id: r.into_inner().session_id,
            final_state: pb::SessionState::Closed as i32,
            already_closed: false,
        }))
    }

    async fn restart_session(
        &self,
        r: Request<pb::RestartSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        Ok(Response::new(info(&r.into_inner().session_id)))
    }

    async fn upgrade_session(
        &self,
        r: Request<pb::UpgradeSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        Ok(Response::new(info(&r.into_inner().session_id)))
    }

    async fn call(
        &self,
        r: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let payload = r
            .into_inner()
            .command
            .map(|c| c.payload)
            .unwrap_or_default();
        Ok(Response::new(pb::CallResponse {
            payload,
            error: None,
        }))
    }
}

async fn fake(plans: Vec<Plan>) -> (Arc<Fake>, String) {
    let state = Arc::new(Fake::default());
    state.plans.lock().unwrap().extend(plans);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let api = Api(Arc::clone(&state));
    tokio::spawn(
        Server::builder()
            .add_service(GatewayServer::new(api))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (state, addr)
}

fn quick() -> ResumePolicy {
    ResumePolicy {
        max_retries: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

async fn collect(stream: EventStream) -> Vec<Result<u64, Code>> {
    stream
        .map(|r| r.map(|e| e.sequence).map_err(|e| e.code().unwrap()))
        .collect()
        .await
}

#[tokio::test]
async fn events_resume_after_the_last_sequence_across_breaks() {
    let (fake, addr) = fake(vec![
        Plan::Deliver(3, Some(Status::unavailable("stream age limit"))),
        // The server has not noticed the old stream is gone yet.
        Plan::Refuse(Status::already_exists("one subscriber")),
        Plan::Deliver(2, Some(Status::unknown("connection reset"))),
        Plan::Deliver(2, None),
    ])
    .await;
    let gateway = Gateway::connect(addr).await.unwrap();
    let session = gateway.session("s1");
    let stream = session.events().resume_policy(quick());
    let seen = collect(stream).await;
    assert_eq!(seen, (1..=7).map(Ok).collect::<Vec<_>>());
    assert_eq!(
        *fake.subscriptions.lock().unwrap(),
        vec![None, Some(3), Some(3), Some(5)]
    );
}

#[tokio::test]
async fn a_resume_that_finds_the_session_gone_ends_cleanly() {
    let (_, addr) = fake(vec![
        Plan::Deliver(2, Some(Status::unavailable("dropped"))),
        Plan::Refuse(Status::not_found("no session")),
    ])
    .await;
    let gateway = Gateway::connect(addr).await.unwrap();
    let mut stream = gateway.session("s1").events().resume_policy(quick());
    assert_eq!(stream.next().await.unwrap().unwrap().sequence, 1);
    assert_eq!(stream.next().await.unwrap().unwrap().sequence, 2);
    assert!(stream.next().await.is_none());
    assert_eq!(stream.last_sequence(), 2);
}

#[tokio::test]
async fn the_first_subscription_reports_errors() {
    let (_, addr) = fake(vec![Plan::Refuse(Status::not_found("no session \"x\""))]).await;
    let gateway = Gateway::connect(addr).await.unwrap();
    let seen = collect(gateway.session("x").events().resume_policy(quick())).await;
    assert_eq!(seen, vec![Err(Code::NotFound)]);
}

#[tokio::test]
async fn breaks_past_the_policy_end_with_the_error() {
    let (fake, addr) = fake(vec![
        Plan::Deliver(1, Some(Status::unavailable("a"))),
        Plan::Refuse(Status::unavailable("b")),
        Plan::Refuse(Status::unavailable("c")),
        Plan::Refuse(Status::unavailable("d")),
        Plan::Refuse(Status::unavailable("e")),
    ])
    .await;
    let gateway = Gateway::connect(addr).await.unwrap();
    let seen = collect(gateway.session("s1").events().resume_policy(quick())).await;
    assert_eq!(seen, vec![Ok(1), Err(Code::Unavailable)]);
    // The first subscription and three retries.
    assert_eq!(fake.subscriptions.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn events_from_starts_after_the_given_sequence() {
    let (fake, addr) = fake(vec![Plan::Deliver(2, None)]).await;
    let gateway = Gateway::connect(addr).await.unwrap();
    let seen = collect(gateway.session("s1").events_from(5)).await;
    assert_eq!(seen, vec![Ok(6), Ok(7)]);
    assert_eq!(*fake.subscriptions.lock().unwrap(), vec![Some(5)]);
}

#[tokio::test]
async fn invoke_maps_replies_command_errors_and_statuses() {
    let (fake, addr) = fake(vec![]).await;
    let gateway = Gateway::connect(&addr).with_key("k-123").await.unwrap();
    let session = gateway
        .open_with(
            OpenOptions::new("fake")
                .name("n")
                .correlation_id("c")
                .lease(Duration::from_secs(7)),
        )
        .await
        .unwrap();
    assert_eq!(session.id(), "s1");
    assert_eq!(session.info().client_session_name, "n");
    assert_eq!(session.info().lease.map(|d| d.seconds), Some(7));

    let reply = session
        .invoke_with(
            "echo",
            "hi",
            &CallOptions {
                correlation_id: Some("c-9".into()),
                timeout: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(reply.text(), Some("hi"));
    assert_eq!(reply.correlation_id, "c-9");

    let with_deadline = CallOptions {
        timeout: Some(Duration::from_secs(3)),
        ..CallOptions::default()
    };
    let r = session
        .invoke_with("timeout?", "", &with_deadline)
        .await
        .unwrap();
    assert_eq!(r.text(), Some("true"));

    let e = session.invoke("nope", "").await.unwrap_err();
    assert_eq!(
        e.command_error().map(|c| c.kind),
        Some(CommandErrorKind::UnknownCommand)
    );
    let e = session.invoke("gone", "").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));

    let v: serde_json::Value = session
        .invoke_json("echo", &serde_json::json!({"a": [1, 2]}))
        .await
        .unwrap();
    assert_eq!(v, serde_json::json!({"a": [1, 2]}));
    let unit: () = session.invoke_json("echo", &()).await.unwrap();
    assert_eq!(unit, ());

    let results = session
        .batch([("echo", "x"), ("bad", ""), ("echo", "y")])
        .await
        .unwrap();
    assert_eq!(results[0], Ok(b"x".to_vec()));
    assert_eq!(
        results[1].as_ref().unwrap_err().kind,
        CommandErrorKind::Failed
    );
    assert_eq!(results[2], Ok(b"y".to_vec()));

    // Every call carried the key.
    let keys = fake.keys.lock().unwrap();
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| k.as_deref() == Some("Bearer k-123")));
}

#[tokio::test]
async fn no_key_sends_no_header() {
    let (fake, addr) = fake(vec![]).await;
    let gateway = Gateway::connect(&addr).with_key("  ").await.unwrap();
    assert_eq!(gateway.backends().await.unwrap()[0].name, "fake");
    assert_eq!(*fake.keys.lock().unwrap(), vec![None]);
    assert!(matches!(
        Gateway::connect(&addr).with_key("bad\nkey").await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn connect_errors_name_the_address() {
    // A port nothing listens on: bind one, then free it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = Gateway::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("cannot connect to http://127.0.0.1:{port}")),
        "{e}"
    );
    // A lazy connection only fails on use.
    let lazy = Gateway::connect(format!("127.0.0.1:{port}"))
        .lazy()
        .await
        .unwrap();
    assert_eq!(
        lazy.backends().await.unwrap_err().code(),
        Some(Code::Unavailable)
    );
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn keep_alive_renews_until_close() {
    let (fake, addr) = fake(vec![]).await;
    let gateway = Gateway::connect(addr).await.unwrap();
    let session = gateway
        .open_with(OpenOptions::new("fake").keep_alive(Duration::from_millis(10)))
        .await
        .unwrap();
    assert!(session.is_kept_alive());
    until("two renewals", || fake.renewals.load(Ordering::SeqCst) >= 2).await;
    let closed = session.close().await.unwrap();
    assert_eq!(closed.final_state, SessionState::Closed);
    assert!(!session.is_kept_alive());
}

#[tokio::test]
async fn keep_alive_stops_when_the_session_is_gone_or_the_handle_dropped() {
    let (fake, addr) = fake(vec![]).await;
    let gateway = Gateway::connect(addr).await.unwrap();
    let gone = gateway.session("gone");
    gone.keep_alive(Duration::from_millis(5));
    until("the renewal task to stop", || !gone.is_kept_alive()).await;

    let s = gateway.session("s1");
    s.keep_alive(Duration::from_millis(5));
    until("a renewal", || fake.renewals.load(Ordering::SeqCst) >= 1).await;
    let handle = s
        .keep_alive
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .abort_handle();
    assert!(!handle.is_finished());
    drop(s);
    until("the dropped handle's task to end", || handle.is_finished()).await;
}

#[tokio::test]
async fn a_refused_connection_names_each_cause_once() {
    // A port nothing listens on: bound, then released.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = Gateway::connect(format!("http://{addr}"))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("cannot connect to http://{addr}: ")),
        "{text}"
    );
    assert_eq!(text.matches("tcp connect error").count(), 1, "{text}");
    assert!(text.contains("Connection refused"), "{text}");
}
