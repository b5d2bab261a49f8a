//! Every RPC of the Gateway service, on the happy path.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use gatehouse::proto::v1 as pb;
use pb::command_error::Kind;

use crate::fixtures::*;

#[tokio::test]
async fn list_backends_describes_every_configured_backend() {
    let config = Toml::new()
        .backend_with(
            "echo",
            "builtin:echo",
            &["description = \"the echo test\"", "version = \"1.2.3\""],
            &[],
        )
        .backend("kv", "builtin:kv")
        .backend("chaos", "builtin:chaos");
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let backends = bounded("ListBackends", c.list_backends(pb::ListBackendsRequest {}))
        .await
        .expect("ListBackends")
        .into_inner()
        .backends;
    let mut names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["chaos", "echo", "kv"]);
    for b in &backends {
        assert_eq!(b.kind, pb::BackendKind::Wasm as i32, "{b:?}");
        let hex = b
            .digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("digest without sha256: prefix: {b:?}"));
        assert_eq!(hex.len(), 64, "{b:?}");
        assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()), "{b:?}");
    }
    let echo = backends.iter().find(|b| b.name == "echo").unwrap();
    assert_eq!(echo.description, "the echo test");
    assert_eq!(echo.version, "1.2.3");
    let digests: std::collections::HashSet<&str> =
        backends.iter().map(|b| b.digest.as_str()).collect();
    assert_eq!(
        digests.len(),
        3,
        "different components have different digests"
    );
}

#[tokio::test]
async fn open_session_returns_a_ready_session() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let before = SystemTime::now();
    let s = open_with(
        &mut c,
        pb::OpenSessionRequest {
            backend: "echo".into(),
            client_session_name: "my-session".into(),
            client_correlation_id: "corr-42".into(),
            command_timeout: Some(pb_duration(Duration::from_secs(7))),
            lease: Some(pb_duration(Duration::from_secs(90))),
            config: HashMap::new(),
        },
    )
    .await;
    assert_eq!(state(&s), pb::SessionState::Ready);
    assert_eq!(s.tenant, "default");
    assert_eq!(s.backend, "echo");
    assert_eq!(s.backend_kind, pb::BackendKind::Wasm as i32);
    assert_eq!(s.client_session_name, "my-session");
    assert_eq!(s.client_correlation_id, "corr-42");
    assert_eq!(s.worker_pid, 0, "wasm sessions have no pid");
    assert!(s.final_fault.is_empty());
    assert_eq!(close_reason(&s), pb::CloseReason::Unspecified);
    assert_eq!(s.lease, Some(pb_duration(Duration::from_secs(90))));
    assert_eq!(s.command_timeout, Some(pb_duration(Duration::from_secs(7))));
    // At least 128 random bits.
    assert!(
        s.session_id.len() >= 32,
        "short session id {:?}",
        s.session_id
    );
    let expires = system_time(&s.lease_expires_at);
    assert!(
        expires > before + Duration::from_secs(60),
        "lease_expires_at {expires:?} is not ~90s in the future"
    );
    assert!(system_time(&s.opened_at) <= expires);

    // A second session gets a different id.
    let t = open(&mut c, "echo").await;
    assert_ne!(s.session_id, t.session_id);
    // The default lease is the backend's (60s).
    assert_eq!(t.lease, Some(pb_duration(Duration::from_secs(60))));
}

#[tokio::test]
async fn requested_lease_is_capped_by_the_backend() {
    let config = Toml::new()
        .sessions("lease = \"7s\"")
        .backend_with(
            "echo",
            "builtin:echo",
            &[],
            &["lease = \"5s\"", "max_lease = \"10s\""],
        )
        .backend("kv", "builtin:kv");
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let mut request = open_request("echo");
    request.lease = Some(pb_duration(Duration::from_secs(3600)));
    let s = open_with(&mut c, request).await;
    assert_eq!(s.lease, Some(pb_duration(Duration::from_secs(10))));
    let s = open(&mut c, "echo").await;
    assert_eq!(s.lease, Some(pb_duration(Duration::from_secs(5))));
    // A backend without overrides gets the global [sessions] default.
    let k = open(&mut c, "kv").await;
    assert_eq!(k.lease, Some(pb_duration(Duration::from_secs(7))));
}

#[tokio::test]
async fn invoke_echo_returns_the_payload_and_correlation_id() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    let payload: Vec<u8> = (0..=255u8).collect();
    let r = bounded(
        "Invoke",
        c.invoke(pb::InvokeRequest {
            session_id: s.session_id.clone(),
            command: Some(cmd("echo", &payload)),
            correlation_id: "call-7".into(),
        }),
    )
    .await
    .expect("Invoke")
    .into_inner();
    assert_eq!(r.payload, payload);
    assert!(r.error.is_none());
    assert_eq!(r.correlation_id, "call-7");

    // An unknown command is the plugin's error, inside an OK response.
    let r = try_invoke(&mut c, &s.session_id, "no-such-command", b"")
        .await
        .expect("an unknown command is not a gRPC error");
    let e = r.error.expect("a command error");
    assert_eq!(e.kind, Kind::UnknownCommand as i32, "{e:?}");
    assert_eq!(
        state(&get(&mut c, &s.session_id).await),
        pb::SessionState::Ready
    );

    // whoami sees the session's own context.
    let who: serde_json::Value =
        serde_json::from_str(&invoke_ok(&mut c, &s.session_id, "whoami", b"").await).unwrap();
    assert_eq!(who["session_id"], s.session_id.as_str());
    assert_eq!(who["tenant"], "default");
    assert_eq!(who["backend"], "echo");
}

#[tokio::test]
async fn request_config_is_merged_over_backend_config() {
    let config = Toml::new().backend_with(
        "echo",
        "builtin:echo",
        &["config = { greeting = \"hello\", colour = \"blue\" }"],
        &[],
    );
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let mut request = open_request("echo");
    request.config = HashMap::from([
        ("colour".to_string(), "red".to_string()),
        ("size".to_string(), "xl".to_string()),
    ]);
    let s = open_with(&mut c, request).await;
    let got: serde_json::Value =
        serde_json::from_str(&invoke_ok(&mut c, &s.session_id, "config", b"").await).unwrap();
    assert_eq!(
        got,
        serde_json::json!({"greeting": "hello", "colour": "red", "size": "xl"})
    );
    let t = open(&mut c, "echo").await;
    let got: serde_json::Value =
        serde_json::from_str(&invoke_ok(&mut c, &t.session_id, "config", b"").await).unwrap();
    assert_eq!(
        got,
        serde_json::json!({"greeting": "hello", "colour": "blue"})
    );
}

#[tokio::test]
async fn invoke_batch_runs_in_order_with_errors_inline() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    let r = bounded(
        "InvokeBatch",
        c.invoke_batch(pb::InvokeBatchRequest {
            session_id: s.session_id.clone(),
            commands: vec![
                cmd("count", b""),
                cmd("count", b""),
                cmd("nope", b""),
                cmd("echo", b"middle"),
                cmd("emit", b"not a number"),
                cmd("count", b""),
            ],
        }),
    )
    .await
    .expect("InvokeBatch")
    .into_inner();
    assert_eq!(r.results.len(), 6);
    let text = |i: usize| String::from_utf8(r.results[i].payload.clone()).unwrap();
    assert_eq!((text(0), text(1)), ("1".into(), "2".into()));
    assert!(r.results[0].error.is_none() && r.results[1].error.is_none());
    assert_eq!(
        r.results[2].error.as_ref().map(|e| e.kind),
        Some(Kind::UnknownCommand as i32)
    );
    assert_eq!(text(3), "middle");
    assert_eq!(
        r.results[4].error.as_ref().map(|e| e.kind),
        Some(Kind::InvalidPayload as i32)
    );
    assert_eq!(
        text(5),
        "3",
        "the batch continued after the errors, in order"
    );

    // kv: a failed command inline, the rest still applied.
    let k = open(&mut c, "kv").await;
    let r = c
        .invoke_batch(pb::InvokeBatchRequest {
            session_id: k.session_id.clone(),
            commands: vec![
                cmd("put", br#"{"key":"a","value":1}"#),
                cmd("get", br#"{"key":"missing"}"#),
                cmd("put", br#"{"key":"b","value":2}"#),
                cmd("list", b""),
            ],
        })
        .await
        .expect("InvokeBatch")
        .into_inner();
    assert_eq!(r.results.len(), 4);
    assert_eq!(
        r.results[1].error.as_ref().map(|e| e.kind),
        Some(Kind::Failed as i32)
    );
    assert_eq!(r.results[3].payload, br#"["a","b"]"#);

    // An empty batch is fine.
    let r = c
        .invoke_batch(pb::InvokeBatchRequest {
            session_id: k.session_id.clone(),
            commands: vec![],
        })
        .await
        .expect("empty InvokeBatch")
        .into_inner();
    assert!(r.results.is_empty());
}

#[tokio::test]
async fn renew_lease_moves_the_expiry_forward() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let mut request = open_request("echo");
    request.lease = Some(pb_duration(Duration::from_secs(30)));
    let s = open_with(&mut c, request).await;
    let first = system_time(&s.lease_expires_at);
    // Let the wall clock move on measurably.
    let started = std::time::Instant::now();
    eventually("the clock to advance", PATIENCE, || async {
        (started.elapsed() >= Duration::from_millis(50)).then_some(())
    })
    .await;
    let renewed = bounded(
        "RenewLease",
        c.renew_lease(pb::RenewLeaseRequest {
            session_id: s.session_id.clone(),
        }),
    )
    .await
    .expect("RenewLease")
    .into_inner();
    assert_eq!(renewed.session_id, s.session_id);
    assert_eq!(state(&renewed), pb::SessionState::Ready);
    let second = system_time(&renewed.lease_expires_at);
    assert!(
        second >= first + Duration::from_millis(40),
        "lease_expires_at did not move: {first:?} -> {second:?}"
    );
    assert!(second <= SystemTime::now() + Duration::from_secs(31));
    assert!(system_time(&renewed.last_activity_at) > system_time(&s.last_activity_at));
}

#[tokio::test]
async fn get_and_list_sessions_describe_open_sessions() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    assert!(list(&mut c).await.is_empty());
    let mut request = open_request("echo");
    request.client_session_name = "first".into();
    let a = open_with(&mut c, request).await;
    let b = open(&mut c, "kv").await;

    let got = get(&mut c, &a.session_id).await;
    assert_eq!(got.session_id, a.session_id);
    assert_eq!(got.backend, "echo");
    assert_eq!(got.client_session_name, "first");
    assert_eq!(got.tenant, "default");
    assert_eq!(state(&got), pb::SessionState::Ready);
    assert_eq!(got.opened_at, a.opened_at);

    let sessions = list(&mut c).await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let ids: Vec<&str> = sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert!(ids.contains(&a.session_id.as_str()) && ids.contains(&b.session_id.as_str()));
    for s in &sessions {
        assert_eq!(s.tenant, "default");
        assert_eq!(state(s), pb::SessionState::Ready);
    }

    // events_emitted is reported.
    invoke_ok(&mut c, &a.session_id, "emit", b"4").await;
    assert_eq!(get(&mut c, &a.session_id).await.events_emitted, 4);
}

#[tokio::test]
async fn close_session_is_idempotent_and_the_session_stays_visible() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    let first = close(&mut c, &s.session_id).await;
    assert_eq!(first.session_id, s.session_id);
    assert_eq!(first.final_state, pb::SessionState::Closed as i32);
    assert!(!first.already_closed);
    let second = close(&mut c, &s.session_id).await;
    assert_eq!(second.final_state, pb::SessionState::Closed as i32);
    assert!(second.already_closed);

    let info = get(&mut c, &s.session_id).await;
    assert_eq!(state(&info), pb::SessionState::Closed);
    assert_eq!(close_reason(&info), pb::CloseReason::ClientClose);
    assert!(info.final_fault.is_empty());
}

#[tokio::test]
async fn the_health_service_reports_the_gateway_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let gw = Gatehouse::start(Toml::new().backend("echo", "builtin:echo").render()).await;
    let mut health = HealthClient::new(gw.channel().await);
    for service in ["gatehouse.v1.Gateway", ""] {
        let r = bounded(
            "Health.Check",
            health.check(HealthCheckRequest {
                service: service.into(),
            }),
        )
        .await
        .unwrap_or_else(|s| panic!("Health.Check({service:?}): {s:?}"))
        .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
}
