//! Multi-tenancy and auth through the real binary: API keys, scopes, tenant
//! isolation, quotas with the cap, admin, allowed backends, local mode and
//! the CLI's `--key` and `keys new`.
//!
//! Calls go through the generated client with an `authorization` header
//! set verbatim ([`Auth`]): what a malformed header does is part of the
//! contract.

use std::process::{Command, Stdio};
use std::time::Duration;

use gatehouse::keys;
use gatehouse::proto::v1 as pb;
use gatehouse::proto::v1::admin_client::AdminClient;
use gatehouse::proto::v1::gateway_client::GatewayClient;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::fixtures::*;

// ---- clients and gauges ----------------------------------------------------------

/// A client sending `authorization: <auth>` verbatim, or nothing.
async fn raw(gw: &Gatehouse, auth: Option<&str>) -> Client {
    let header = auth.map(|a| a.parse::<MetadataValue<Ascii>>().expect("a header value"));
    let channel = gw.channel().await;
    Client {
        gateway: GatewayClient::with_interceptor(channel.clone(), Auth(header.clone())),
        admin: AdminClient::with_interceptor(channel, Auth(header)),
    }
}

/// A client sending `authorization: Bearer <key>`.
async fn client(gw: &Gatehouse, key: &str) -> Client {
    raw(gw, Some(&format!("Bearer {key}"))).await
}

/// Polls until every open-sessions gauge (by backend and by tenant) is
/// zero, or fails after a bounded wait.
async fn assert_gauges_return_to_zero(gw: &Gatehouse) {
    eventually(
        "every open-sessions gauge to return to zero",
        Duration::from_secs(20),
        || async {
            let text = gw.metrics().await;
            let open = metric_sum(&text, "gatehouse_open_sessions", &[]);
            let tenants = metric_sum(&text, "gatehouse_tenant_open_sessions", &[]);
            (open == 0.0 && tenants == 0.0).then_some(())
        },
    )
    .await;
}

/// Sets the `authorization` header as given.
#[derive(Clone)]
struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// The generated Gateway and Admin clients with a verbatim
/// `authorization` header; Gateway calls go straight to it.
struct Client {
    gateway: GatewayClient<InterceptedService<Channel, Auth>>,
    admin: AdminClient<InterceptedService<Channel, Auth>>,
}

impl std::ops::Deref for Client {
    type Target = GatewayClient<InterceptedService<Channel, Auth>>;
    fn deref(&self) -> &Self::Target {
        &self.gateway
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.gateway
    }
}

/// A key made for a test: the secret and its config entry.
struct Key {
    secret: String,
    hash: String,
}

fn new_key() -> Key {
    let (secret, hash) = keys::generate().unwrap();
    Key {
        secret,
        hash: hash.to_string(),
    }
}

fn key_entry(key: &Key, scopes: &[&str]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "[[tenants.keys]]\nhash = \"{}\"\nscopes = [{}]\n",
        key.hash,
        scopes.join(", ")
    )
}

const ALL_SCOPES: [&str; 4] = [
    "sessions:open",
    "sessions:use",
    "sessions:read",
    "backends:read",
];

// ---- calls ---------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    ListBackends,
    OpenSession,
    Invoke,
    InvokeBatch,
    StreamEvents,
    RenewLease,
    GetSession,
    ListSessions,
    RestartSession,
    UpgradeSession,
    Call,
    Drain,
    Reload,
    CloseSession,
}

/// Every RPC of `gatehouse.v1` (`the_rpc_lists_name_every_rpc_of_the_proto`
/// checks it has no other); CloseSession last, as it ends the session the
/// others use.
const ALL_RPCS: [Rpc; 14] = [
    Rpc::ListBackends,
    Rpc::OpenSession,
    Rpc::Invoke,
    Rpc::InvokeBatch,
    Rpc::StreamEvents,
    Rpc::RenewLease,
    Rpc::GetSession,
    Rpc::ListSessions,
    Rpc::RestartSession,
    Rpc::UpgradeSession,
    Rpc::Call,
    Rpc::Drain,
    Rpc::Reload,
    Rpc::CloseSession,
];

/// The RPCs that name a session.
const SESSION_RPCS: [Rpc; 8] = [
    Rpc::Invoke,
    Rpc::InvokeBatch,
    Rpc::StreamEvents,
    Rpc::RenewLease,
    Rpc::GetSession,
    Rpc::RestartSession,
    Rpc::UpgradeSession,
    Rpc::CloseSession,
];

impl Rpc {
    /// The scopes the RPC needs, all of them.
    fn scopes(self) -> &'static [&'static str] {
        match self {
            Rpc::ListBackends => &["backends:read"],
            Rpc::OpenSession => &["sessions:open"],
            Rpc::GetSession | Rpc::ListSessions => &["sessions:read"],
            // A call opens an instance and uses it.
            Rpc::Call => &["sessions:open", "sessions:use"],
            Rpc::Drain | Rpc::Reload => &["admin"],
            _ => &["sessions:use"],
        }
    }
}

#[test]
fn the_rpc_lists_name_every_rpc_of_the_proto() {
    let proto = include_str!("../../proto/gatehouse/v1/gateway.proto");
    let mut in_proto: Vec<String> = proto
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .filter_map(|l| l.split('(').next())
        .map(|name| name.trim().to_string())
        .collect();
    in_proto.sort();
    let mut listed: Vec<String> = ALL_RPCS.iter().map(|r| format!("{r:?}")).collect();
    listed.sort();
    assert_eq!(
        listed, in_proto,
        "a new RPC belongs in ALL_RPCS (and SESSION_RPCS if it names a session)"
    );
    // The RPCs that name a session are those whose request has a session_id.
    for rpc in ALL_RPCS {
        let request = format!("message {rpc:?}Request {{\n  string session_id = 1;");
        assert_eq!(
            SESSION_RPCS.contains(&rpc),
            proto.contains(&request),
            "{rpc:?}: SESSION_RPCS disagrees with the proto"
        );
    }
}

/// Makes one call; `session` is used by the RPCs that name one. An opened
/// session's id comes back so the test can close it.
async fn call(c: &mut Client, rpc: Rpc, session: &str) -> Result<Option<String>, tonic::Status> {
    let sid = session.to_string();
    match rpc {
        Rpc::ListBackends => c
            .list_backends(pb::ListBackendsRequest {})
            .await
            .map(|_| None),
        Rpc::OpenSession => {
            let r = c.open_session(open("echo")).await?.into_inner();
            Ok(r.session.map(|s| s.session_id))
        }
        Rpc::Invoke => c
            .invoke(pb::InvokeRequest {
                session_id: sid,
                command: Some(command("echo")),
                correlation_id: String::new(),
            })
            .await
            .map(|_| None),
        Rpc::InvokeBatch => c
            .invoke_batch(pb::InvokeBatchRequest {
                session_id: sid,
                commands: vec![command("echo")],
            })
            .await
            .map(|_| None),
        Rpc::StreamEvents => c
            .stream_events(pb::StreamEventsRequest {
                session_id: sid,
                resume_after_sequence: None,
            })
            .await
            .map(|_| None),
        Rpc::RenewLease => c
            .renew_lease(pb::RenewLeaseRequest { session_id: sid })
            .await
            .map(|_| None),
        Rpc::GetSession => c
            .get_session(pb::GetSessionRequest { session_id: sid })
            .await
            .map(|_| None),
        Rpc::ListSessions => c
            .list_sessions(pb::ListSessionsRequest {})
            .await
            .map(|_| None),
        Rpc::RestartSession => c
            .restart_session(pb::RestartSessionRequest {
                session_id: sid,
                from_snapshot: None,
            })
            .await
            .map(|_| None),
        Rpc::UpgradeSession => c
            .upgrade_session(pb::UpgradeSessionRequest {
                session_id: sid,
                version: String::new(),
            })
            .await
            .map(|_| None),
        Rpc::Call => c
            .call(pb::CallRequest {
                backend: "echo".into(),
                config: Default::default(),
                command: Some(command("echo")),
                command_timeout: None,
            })
            .await
            .map(|_| None),
        Rpc::Drain => c
            .admin
            .drain(pb::DrainRequest { timeout: None })
            .await
            .map(|_| None),
        Rpc::Reload => c
            .admin
            .reload(pb::ReloadRequest::default())
            .await
            .map(|_| None),
        Rpc::CloseSession => c
            .close_session(pb::CloseSessionRequest { session_id: sid })
            .await
            .map(|_| None),
    }
}

fn open(backend: &str) -> pb::OpenSessionRequest {
    pb::OpenSessionRequest {
        backend: backend.into(),
        ..Default::default()
    }
}

fn command(name: &str) -> pb::Command {
    pb::Command {
        name: name.into(),
        payload: b"hi".to_vec(),
    }
}

async fn open_id(c: &mut Client, backend: &str) -> String {
    c.open_session(open(backend))
        .await
        .expect("open")
        .into_inner()
        .session
        .unwrap()
        .session_id
}

async fn count(c: &mut Client, sid: &str) -> String {
    let r = c
        .invoke(pb::InvokeRequest {
            session_id: sid.into(),
            command: Some(command("count")),
            correlation_id: String::new(),
        })
        .await
        .expect("count")
        .into_inner();
    String::from_utf8(r.payload).unwrap()
}

async fn info(c: &mut Client, sid: &str) -> pb::SessionInfo {
    c.get_session(pb::GetSessionRequest {
        session_id: sid.into(),
    })
    .await
    .expect("get")
    .into_inner()
}

async fn list(c: &mut Client) -> Vec<pb::SessionInfo> {
    c.list_sessions(pb::ListSessionsRequest {})
        .await
        .expect("list")
        .into_inner()
        .sessions
}

async fn close(c: &mut Client, sid: &str) -> pb::CloseSessionResponse {
    c.close_session(pb::CloseSessionRequest {
        session_id: sid.into(),
    })
    .await
    .expect("close")
    .into_inner()
}

fn state(s: i32) -> pb::SessionState {
    pb::SessionState::try_from(s).unwrap()
}

// ---- tests ---------------------------------------------------------------------

#[tokio::test]
async fn calls_without_a_valid_key_are_unauthenticated_but_health_and_reflection_are_open() {
    let key = new_key();
    // 84 failures in a row from one address, then the right key: past the
    // failed-authentication throttle's burst (tested in rates.rs).
    let config = format!(
        "[server]\nauth_failures_burst = 100\n[[tenants]]\nname = \"a\"\n{}",
        key_entry(&key, &["admin"])
    );
    let gw = Gatehouse::start(config.clone()).await;
    let (other, _) = keys::generate().unwrap();
    let cases = [
        ("no key", None),
        ("unknown key", Some(format!("Bearer {other}"))),
        ("not a key", Some("Bearer ghk_0123".to_string())),
        ("another scheme", Some(format!("Basic {}", key.secret))),
        ("no scheme", Some(key.secret.clone())),
        ("empty bearer", Some("Bearer ".to_string())),
    ];
    for (what, header) in &cases {
        let mut c = raw(&gw, header.as_deref()).await;
        for rpc in ALL_RPCS {
            let e = call(&mut c, rpc, "0123456789abcdef0123456789abcdef")
                .await
                .expect_err("refused");
            assert_eq!(e.code(), Code::Unauthenticated, "{what}, {rpc:?}: {e:?}");
        }
    }
    // The right key works (and is not a prefix match).
    let mut c = client(&gw, &key.secret).await;
    call(&mut c, Rpc::ListBackends, "").await.unwrap();
    let mut truncated = client(&gw, &key.secret[..key.secret.len() - 1]).await;
    assert_eq!(
        call(&mut truncated, Rpc::ListBackends, "")
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    // Health and reflection need no key.
    let channel = gw.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health without a key")
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    use tonic_reflection::pb::v1 as refl;
    let mut reflection = refl::server_reflection_client::ServerReflectionClient::new(channel);
    let request = refl::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            refl::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection without a key")
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(refl::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected reflection reply {reply:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "gatehouse.v1.Gateway"),
        "{list:?}"
    );
    // Nothing about the key ever reaches the log.
    assert!(!gw.stderr().contains(&key.secret));
}

#[tokio::test]
async fn every_rpc_needs_its_scope() {
    let full = new_key();
    let single: Vec<(&str, Key)> = ALL_SCOPES.iter().map(|s| (*s, new_key())).collect();
    let mut text = format!(
        "[[tenants]]\nname = \"t\"\n{}",
        key_entry(&full, &ALL_SCOPES)
    );
    for (scope, key) in &single {
        text.push_str(&key_entry(key, &[scope]));
    }
    // Each key with every scope but one.
    let all_but: Vec<(&str, Key)> = ALL_SCOPES.iter().map(|s| (*s, new_key())).collect();
    for (missing, key) in &all_but {
        let scopes: Vec<&str> = ALL_SCOPES
            .iter()
            .copied()
            .filter(|s| s != missing)
            .collect();
        text.push_str(&key_entry(key, &scopes));
    }
    let config = text;
    let gw = Gatehouse::start(config).await;
    let mut owner = client(&gw, &full.secret).await;
    let sid = open_id(&mut owner, "echo").await;
    let mut opened = Vec::new();

    // CloseSession last: it ends the session the others use. Each key is
    // refused exactly when it lacks a scope the RPC needs (every RPC here
    // but Drain and Reload, which need `admin`, is allowed to some key).
    let keys = all_but
        .iter()
        .map(|(missing, key)| {
            let scopes: Vec<&str> = ALL_SCOPES.into_iter().filter(|s| s != missing).collect();
            (format!("all but {missing}"), scopes, key)
        })
        .chain(
            single
                .iter()
                .map(|(scope, key)| (format!("only {scope}"), vec![*scope], key)),
        )
        .collect::<Vec<_>>();
    for rpc in ALL_RPCS {
        let needed = rpc.scopes();
        let mut allowed = 0;
        for (what, scopes, key) in &keys {
            let mut c = client(&gw, &key.secret).await;
            let result = call(&mut c, rpc, &sid).await;
            match needed.iter().find(|s| !scopes.contains(s)) {
                Some(lacking) => {
                    let e = result.expect_err("refused");
                    assert_eq!(e.code(), Code::PermissionDenied, "{rpc:?} with {what}");
                    assert!(e.message().contains(lacking), "{}", e.message());
                }
                None if rpc == Rpc::CloseSession => {
                    result.expect("a close with sessions:use");
                }
                None => {
                    allowed += 1;
                    // (StreamEvents may meet the previous stream still
                    // attached: that is not an auth error.)
                    match result {
                        Ok(id) => opened.extend(id),
                        Err(e) => assert_eq!(
                            (rpc, e.code()),
                            (Rpc::StreamEvents, Code::AlreadyExists),
                            "{rpc:?} with {what}: {e:?}"
                        ),
                    }
                }
            }
        }
        if !matches!(rpc, Rpc::Drain | Rpc::Reload | Rpc::CloseSession) {
            assert!(
                allowed > 0,
                "no key was allowed {rpc:?}: the test checks nothing"
            );
        }
    }
    assert_eq!(
        state(info(&mut owner, &sid).await.state),
        pb::SessionState::Closed,
        "the sessions:use key closed it"
    );
    assert_eq!(
        opened.len(),
        4,
        "3 all-but keys and the open key opened one each"
    );
    for id in &opened {
        close(&mut owner, id).await;
    }
    assert_gauges_return_to_zero(&gw).await;
}

#[tokio::test]
async fn a_tenant_cannot_see_or_touch_another_tenants_session() {
    let (a, b, admin) = (new_key(), new_key(), new_key());
    let config = format!(
        "[[tenants]]\nname = \"a\"\n{}[[tenants]]\nname = \"b\"\n{}[[tenants]]\nname = \"ops\"\n{}",
        key_entry(&a, &ALL_SCOPES),
        key_entry(&b, &ALL_SCOPES),
        key_entry(&admin, &["admin"]),
    );
    let gw = Gatehouse::start(config).await;
    let (mut ca, mut cb, mut cadmin) = (
        client(&gw, &a.secret).await,
        client(&gw, &b.secret).await,
        client(&gw, &admin.secret).await,
    );
    let sid = open_id(&mut cb, "echo").await;
    assert_eq!(count(&mut cb, &sid).await, "1");
    let lease = info(&mut cb, &sid).await.lease_expires_at;
    let unknown = "0123456789abcdef0123456789abcdef";

    for rpc in SESSION_RPCS {
        let theirs = call(&mut ca, rpc, &sid).await.expect_err("hidden");
        let nobody = call(&mut ca, rpc, unknown).await.expect_err("unknown");
        assert_eq!(theirs.code(), Code::NotFound, "{rpc:?}: {theirs:?}");
        assert_eq!(nobody.code(), Code::NotFound, "{rpc:?}");
        assert_eq!(
            theirs.message().replace(&sid, "ID"),
            nobody.message().replace(unknown, "ID"),
            "{rpc:?}: another tenant's session must look exactly like an unknown one"
        );
    }
    assert!(list(&mut ca).await.is_empty());

    // B's session is untouched: still READY, its state kept, its lease not
    // renewed by A's RenewLease or GetSession (the admin's read renews
    // nothing either).
    let seen = info(&mut cadmin, &sid).await;
    assert_eq!(state(seen.state), pb::SessionState::Ready);
    assert_eq!(seen.tenant, "b");
    assert_eq!(seen.lease_expires_at, lease, "A renewed B's lease");
    assert_eq!(count(&mut cb, &sid).await, "2");
    assert_eq!(list(&mut cb).await.len(), 1);
    assert!(!close(&mut cb, &sid).await.already_closed);
    assert_gauges_return_to_zero(&gw).await;
}

#[tokio::test]
async fn tenant_quota_and_gateway_cap_each_refuse_with_retry_info() {
    let (a, b) = (new_key(), new_key());
    let config = format!(
        "[server]\nmax_sessions = 3\n[[tenants]]\nname = \"a\"\nmax_sessions = 2\n{}[[tenants]]\nname = \"b\"\nmax_sessions = 2\n{}",
        key_entry(&a, &ALL_SCOPES),
        key_entry(&b, &ALL_SCOPES),
    );
    let gw = Gatehouse::start(config).await;
    let (mut ca, mut cb) = (client(&gw, &a.secret).await, client(&gw, &b.secret).await);
    let a1 = open_id(&mut ca, "echo").await;
    let a2 = open_id(&mut ca, "kv").await;

    // A's quota is reached while the gateway's cap is not.
    let e = ca.open_session(open("echo")).await.expect_err("quota");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("quota"), "{}", e.message());
    assert!(e.get_details_retry_info().is_some(), "RetryInfo");
    let text = gw.metrics().await;
    assert_eq!(
        metric_sum(&text, "gatehouse_tenant_open_sessions", &[("tenant", "a")]),
        2.0
    );
    assert_eq!(metric_sum(&text, "gatehouse_open_sessions", &[]), 2.0);

    // B is under its quota and gets the last gateway slot...
    let b1 = open_id(&mut cb, "echo").await;
    // ...and then the gateway's cap is reached while B's quota is not.
    let e = cb.open_session(open("echo")).await.expect_err("cap");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("cap"), "{}", e.message());
    assert!(e.get_details_retry_info().is_some(), "RetryInfo");
    let text = gw.metrics().await;
    assert_eq!(
        metric_sum(&text, "gatehouse_tenant_open_sessions", &[("tenant", "b")]),
        1.0,
        "the refused open gave B's quota slot back"
    );

    // Closing gives back both of A's slots. B may now take its second
    // quota slot (so the refusal above leaked none of B's), which fills the
    // cap again: now A, under its quota, meets the cap.
    close(&mut ca, &a1).await;
    let b2 = open_id(&mut cb, "echo").await;
    let e = ca.open_session(open("echo")).await.expect_err("cap");
    assert!(e.message().contains("cap"), "{}", e.message());
    close(&mut ca, &a2).await;
    let a3 = open_id(&mut ca, "echo").await;
    close(&mut ca, &a3).await;
    close(&mut cb, &b1).await;
    close(&mut cb, &b2).await;
    assert_gauges_return_to_zero(&gw).await;
}

#[tokio::test]
async fn admin_lists_and_closes_other_tenants_sessions() {
    let (a, b, admin) = (new_key(), new_key(), new_key());
    let config = format!(
        "[[tenants]]\nname = \"a\"\n{}[[tenants]]\nname = \"b\"\n{}[[tenants]]\nname = \"ops\"\n{}",
        key_entry(&a, &ALL_SCOPES),
        key_entry(&b, &ALL_SCOPES),
        key_entry(&admin, &["admin"]),
    );
    let gw = Gatehouse::start(config).await;
    let (mut ca, mut cb, mut cadmin) = (
        client(&gw, &a.secret).await,
        client(&gw, &b.secret).await,
        client(&gw, &admin.secret).await,
    );
    let sa = open_id(&mut ca, "echo").await;
    let sb = open_id(&mut cb, "kv").await;

    let all = list(&mut cadmin).await;
    let mut tenants: Vec<&str> = all.iter().map(|s| s.tenant.as_str()).collect();
    tenants.sort_unstable();
    assert_eq!(tenants, ["a", "b"]);
    let mine: Vec<String> = list(&mut ca)
        .await
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    assert_eq!(mine, std::slice::from_ref(&sa));

    // Admin reads and closes A's session, but does not drive B's.
    assert_eq!(info(&mut cadmin, &sa).await.tenant, "a");
    let r = close(&mut cadmin, &sa).await;
    assert_eq!(state(r.final_state), pb::SessionState::Closed);
    assert!(!r.already_closed);
    assert_eq!(
        state(info(&mut ca, &sa).await.state),
        pb::SessionState::Closed
    );
    assert!(close(&mut ca, &sa).await.already_closed);
    let e = call(&mut cadmin, Rpc::Invoke, &sb).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        state(info(&mut cb, &sb).await.state),
        pb::SessionState::Ready
    );

    close(&mut cadmin, &sb).await;
    assert_gauges_return_to_zero(&gw).await;
}

#[tokio::test]
async fn a_backend_outside_the_tenants_list_is_denied_and_hidden() {
    let (a, b) = (new_key(), new_key());
    let config = format!(
        "[[tenants]]\nname = \"a\"\nbackends = [\"echo\"]\n{}[[tenants]]\nname = \"b\"\n{}",
        key_entry(&a, &ALL_SCOPES),
        key_entry(&b, &ALL_SCOPES),
    );
    let gw = Gatehouse::start(config).await;
    let (mut ca, mut cb) = (client(&gw, &a.secret).await, client(&gw, &b.secret).await);
    let names = |r: pb::ListBackendsResponse| -> Vec<String> {
        r.backends.into_iter().map(|b| b.name).collect()
    };
    let seen = names(
        ca.list_backends(pb::ListBackendsRequest {})
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(seen, ["echo"]);
    let seen = names(
        cb.list_backends(pb::ListBackendsRequest {})
            .await
            .unwrap()
            .into_inner(),
    );
    // B has no allow-list: every built-in backend.
    assert_eq!(seen, ["echo", "kv", "sim-device"]);

    let e = ca.open_session(open("kv")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = ca.open_session(open("nope")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let sid = open_id(&mut cb, "kv").await;
    close(&mut cb, &sid).await;
    assert_gauges_return_to_zero(&gw).await;
}

#[tokio::test]
async fn a_removed_key_is_refused_after_restart() {
    let (kept, removed) = (new_key(), new_key());
    let config = format!(
        "[[tenants]]\nname = \"a\"\n{}{}",
        key_entry(&kept, &ALL_SCOPES),
        key_entry(&removed, &ALL_SCOPES),
    );
    let gw = Gatehouse::start(config).await;
    for k in [&kept, &removed] {
        let mut c = client(&gw, &k.secret).await;
        call(&mut c, Rpc::ListSessions, "").await.unwrap();
    }
    drop(gw);

    // A failure per RPC from one address, then the kept key: past the
    // failed-authentication throttle's burst (tested in rates.rs).
    let config = format!(
        "[server]\nauth_failures_burst = 100\n[[tenants]]\nname = \"a\"\n{}",
        key_entry(&kept, &ALL_SCOPES)
    );
    let gw = Gatehouse::builder(config)
        .api_key(&kept.secret)
        .start()
        .await;
    let mut c = client(&gw, &removed.secret).await;
    for rpc in ALL_RPCS {
        let e = call(&mut c, rpc, "0123456789abcdef0123456789abcdef")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{rpc:?}");
    }
    // The kept key still works (sent by the client library).
    gw.connect()
        .await
        .sessions()
        .await
        .expect("ListSessions with the kept key");
}

#[tokio::test]
async fn local_mode_is_anonymous_and_loopback_only() {
    // No keys (a [[tenants]] entry without keys does not count).
    let config = "[[tenants]]\nname = \"default\"\nmax_sessions = 1\n";
    let gw = Gatehouse::start(config).await;
    let mut c = raw(&gw, None).await;
    let sid = open_id(&mut c, "echo").await;
    assert_eq!(info(&mut c, &sid).await.tenant, "default");
    // The `default` entry's quota applies to anonymous calls.
    assert_eq!(
        c.open_session(open("echo")).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    close(&mut c, &sid).await;
    assert_gauges_return_to_zero(&gw).await;
    drop(gw);

    let e = Gatehouse::builder(config)
        .listen("0.0.0.0:0")
        .try_start()
        .await
        .err()
        .expect("local mode must refuse a non-loopback listen");
    assert!(e.stderr().contains("refusing"), "{e}");
    assert!(e.status().is_some_and(|s| !s.success()), "{e}");

    // With keys, any address may be served (in plaintext only when a
    // TLS-terminating proxy is said to be in front; see tls.rs), and
    // anonymous calls are refused.
    let key = new_key();
    let config = format!(
        "[server]\nallow_plaintext = true\n[[tenants]]\nname = \"a\"\n{}",
        key_entry(&key, &ALL_SCOPES)
    );
    let gw = Gatehouse::builder(config).listen("0.0.0.0:0").start().await;
    assert!(gw.grpc.ip().is_unspecified(), "{}", gw.grpc);
    let mut anon = raw(&gw, None).await;
    assert_eq!(
        call(&mut anon, Rpc::ListBackends, "")
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let mut c = client(&gw, &key.secret).await;
    call(&mut c, Rpc::ListBackends, "").await.unwrap();
}

/// Runs the CLI; returns (exit code, stdout, stderr).
fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("GATEHOUSE_KEY")
        .env_remove("GATEHOUSE_ADDR")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running the CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[tokio::test]
async fn the_cli_makes_keys_and_sends_them() {
    let (code, out, err) = cli(
        &[
            "--json",
            "keys",
            "new",
            "--tenant",
            "acme",
            "--scope",
            "sessions:open,sessions:use",
            "--scope",
            "sessions:read",
            "--scope",
            "backends:read",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let made: serde_json::Value = serde_json::from_str(&out).unwrap();
    let key = made["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("ghk_"));
    assert_eq!(
        made["hash"].as_str().unwrap(),
        keys::KeyHash::of(&key).to_string()
    );
    let snippet = made["toml"].as_str().unwrap();
    assert!(!snippet.contains(&key), "the config holds only the hash");

    let (code, _, err) = cli(
        &[
            "keys",
            "new",
            "--tenant",
            "acme",
            "--scope",
            "sessions:write",
        ],
        &[],
    );
    assert_eq!(code, 64);
    assert!(err.contains("sessions:write"), "{err}");

    // The text form prints the key once and the snippet.
    let (code, text, _) = cli(&["keys", "new", "--tenant", "ops", "--scope", "admin"], &[]);
    assert_eq!(code, 0);
    let admin_key = text
        .lines()
        .find(|l| l.starts_with("ghk_"))
        .unwrap()
        .to_string();
    let admin_snippet: String = text
        .lines()
        .skip_while(|l| !l.starts_with("[[tenants.keys]]"))
        .map(|l| format!("{l}\n"))
        .collect();

    let config = format!(
        "[[tenants]]\nname = \"acme\"\n{snippet}[[tenants]]\nname = \"ops\"\n{admin_snippet}"
    );
    let gw = Gatehouse::start(config.clone()).await;
    let addr = gw.dial_addr().to_string();

    let (code, _, err) = cli(&["--addr", &addr, "backends"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    let (code, out, err) = cli(&["--addr", &addr, "--key", &key, "backends"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("echo"), "{out}");
    let env = [
        ("GATEHOUSE_KEY", key.as_str()),
        ("GATEHOUSE_ADDR", addr.as_str()),
    ];
    let (code, sid, err) = cli(&["open", "echo"], &env);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(&["invoke", &sid, "count"], &env);
    assert_eq!((code, out.as_str()), (0, "1"));
    let (code, out, _) = cli(&["--addr", &addr, "--key", &admin_key, "sessions"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains(&sid) && out.contains("acme"), "{out}");
    let (code, out, err) = cli(&["close", &sid], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CLOSED"), "{out}");
    assert_gauges_return_to_zero(&gw).await;
}
