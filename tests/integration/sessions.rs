//! Per-session isolation and the example plugins' commands.

use gatehouse::proto::v1 as pb;
use pb::command_error::Kind;

use crate::fixtures::*;

#[tokio::test]
async fn every_session_has_its_own_instance() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let gateway = gw.connect().await;
    let a = open_session(&gateway, "echo").await;
    let b = open_session(&gateway, "echo").await;
    for want in ["1", "2", "3"] {
        assert_eq!(reply(&a, "count", "").await, want);
    }
    assert_eq!(reply(&b, "count", "").await, "1");
    assert_eq!(reply(&a, "count", "").await, "4");
    // A new session after closing one starts from scratch too.
    a.close().await.expect("CloseSession");
    let d = open_session(&gateway, "echo").await;
    assert_eq!(reply(&d, "count", "").await, "1");
}

#[tokio::test]
async fn kv_put_get_list_delete() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let gateway = gw.connect().await;
    let s = open_session(&gateway, "kv").await;
    assert_eq!(reply(&s, "list", "").await, "[]");
    reply(&s, "put", r#"{"key":"b","value":{"x":[1,2]}}"#).await;
    reply(&s, "put", r#"{"key":"a","value":"one"}"#).await;
    let b: serde_json::Value =
        serde_json::from_str(&reply(&s, "get", r#"{"key":"b"}"#).await).expect("JSON");
    assert_eq!(b, serde_json::json!({"x": [1, 2]}));
    assert_eq!(reply(&s, "get", r#"{"key":"a"}"#).await, r#""one""#);
    assert_eq!(reply(&s, "list", "").await, r#"["a","b"]"#);
    reply(&s, "put", r#"{"key":"a","value":2}"#).await;
    assert_eq!(reply(&s, "get", r#"{"key":"a"}"#).await, "2");
    reply(&s, "delete", r#"{"key":"a"}"#).await;
    assert_eq!(reply(&s, "list", "").await, r#"["b"]"#);

    // Another kv session has its own store.
    let other = open_session(&gateway, "kv").await;
    assert_eq!(reply(&other, "list", "").await, "[]");

    // put/delete emitted events.
    let mut events = s.events();
    let mut got = Vec::new();
    for _ in 0..4 {
        let e = next(&mut events).await;
        got.push((e.name, String::from_utf8(e.payload).expect("UTF-8 payload")));
    }
    let want: Vec<(String, String)> = [("put", "b"), ("put", "a"), ("put", "a"), ("delete", "a")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn kv_missing_key_is_a_failed_command_error() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "kv").await;
    for (name, payload) in [
        ("get", r#"{"key":"nope"}"#),
        ("delete", r#"{"key":"nope"}"#),
    ] {
        let r = try_invoke(&mut c, &s.session_id, name, payload)
            .await
            .unwrap_or_else(|st| panic!("{name} of a missing key is not a gRPC error: {st:?}"));
        let e = r.error.expect("a command error");
        assert_eq!(e.kind, Kind::Failed as i32, "{name}: {e:?}");
        assert!(e.message.contains("nope"), "{e:?}");
        assert!(r.payload.is_empty());
    }
    // The session is still READY and usable.
    assert_eq!(
        state(&get(&mut c, &s.session_id).await),
        pb::SessionState::Ready
    );
    assert_eq!(invoke_ok(&mut c, &s.session_id, "list", b"").await, "[]");
}

#[tokio::test]
async fn kv_bad_json_is_invalid_payload() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "kv").await;
    for (name, payload) in [
        ("put", "{not json"),
        ("put", r#"{"key":"a"}"#),
        ("get", "[1,2]"),
        ("get", r#"{"key":7}"#),
    ] {
        let r = try_invoke(&mut c, &s.session_id, name, payload)
            .await
            .unwrap_or_else(|st| panic!("{name} {payload}: {st:?}"));
        let e = r.error.expect("a command error");
        assert_eq!(
            e.kind,
            Kind::InvalidPayload as i32,
            "{name} {payload}: {e:?}"
        );
    }
    assert_eq!(
        state(&get(&mut c, &s.session_id).await),
        pb::SessionState::Ready
    );
}
