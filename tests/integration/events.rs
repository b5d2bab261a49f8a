//! StreamEvents: ordering, timer-driven events, resume, and the end of a
//! stream.

use std::time::{Duration, SystemTime};

use gatehouse::proto::v1 as pb;
use tonic::Code;

use crate::fixtures::*;

fn summary(e: &pb::Event) -> (u64, String, String) {
    (
        e.sequence,
        e.name.clone(),
        String::from_utf8(e.payload.clone()).expect("UTF-8 payload"),
    )
}

fn ticks(seqs: std::ops::RangeInclusive<u64>, payloads: &[&str]) -> Vec<(u64, String, String)> {
    seqs.zip(payloads)
        .map(|(s, p)| (s, "tick".to_string(), p.to_string()))
        .collect()
}

#[tokio::test]
async fn events_emitted_before_subscribing_are_delivered_in_order() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    let before = SystemTime::now() - Duration::from_secs(1);
    assert_eq!(invoke_ok(&mut c, &s.session_id, "emit", b"5").await, "5");
    let mut events = subscribe(&mut c, &s.session_id, None)
        .await
        .expect("StreamEvents");
    let mut got = Vec::new();
    for _ in 0..5 {
        let e = next_event(&mut events).await;
        assert_eq!(e.dropped_before, 0, "{e:?}");
        let at = system_time(&e.emitted_at);
        assert!(at >= before && at <= SystemTime::now() + Duration::from_secs(1));
        got.push(summary(&e));
    }
    assert_eq!(got, ticks(1..=5, &["1", "2", "3", "4", "5"]));
    // More events continue the sequence on the same stream.
    invoke_ok(&mut c, &s.session_id, "emit", b"2").await;
    let got: Vec<_> = [next_event(&mut events).await, next_event(&mut events).await]
        .iter()
        .map(summary)
        .collect();
    assert_eq!(got, ticks(6..=7, &["1", "2"]));
    assert_eq!(get(&mut c, &s.session_id).await.events_emitted, 7);
}

#[tokio::test]
async fn timer_ticks_deliver_events_while_the_client_only_listens() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    let mut events = subscribe(&mut c, &s.session_id, None)
        .await
        .expect("StreamEvents");
    let r = invoke_ok(&mut c, &s.session_id, "ticks", b"20,3").await;
    assert_eq!(r, "");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(summary(&next_event(&mut events).await));
    }
    assert_eq!(got, ticks(1..=3, &["1", "2", "3"]));
    // Exactly three: nothing more is emitted.
    let more = tokio::time::timeout(Duration::from_millis(200), events.message()).await;
    assert!(more.is_err(), "an unexpected fourth event: {more:?}");
    assert_eq!(peek(&mut c, &s.session_id).await.unwrap().events_emitted, 3);
}

#[tokio::test]
async fn resume_replays_from_the_buffer() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    let id = s.session_id.as_str();
    invoke_ok(&mut c, id, "emit", b"5").await;
    let mut events = subscribe(&mut c, id, None).await.expect("StreamEvents");
    for want in 1..=5 {
        assert_eq!(next_event(&mut events).await.sequence, want);
    }
    drop(events);
    invoke_ok(&mut c, id, "emit", b"3").await;
    let mut events = resubscribe(&mut c, id, Some(2)).await;
    let mut got = Vec::new();
    for _ in 0..6 {
        let e = next_event(&mut events).await;
        assert_eq!(e.dropped_before, 0, "{e:?}");
        got.push(summary(&e));
    }
    assert_eq!(got, ticks(3..=8, &["3", "4", "5", "1", "2", "3"]));
    drop(events);

    // Without a resume point a new subscriber starts after what was
    // already streamed.
    invoke_ok(&mut c, id, "emit", b"1").await;
    let mut events = resubscribe(&mut c, id, None).await;
    assert_eq!(next_event(&mut events).await.sequence, 9);
}

#[tokio::test]
async fn resume_beyond_the_replay_buffer_reports_the_gap() {
    let config = Toml::new().backend_with("echo", "builtin:echo", &[], &["replay_buffer = 3"]);
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    let id = s.session_id.as_str();
    invoke_ok(&mut c, id, "emit", b"10").await;
    let mut events = subscribe(&mut c, id, None).await.expect("StreamEvents");
    for want in 1..=10 {
        assert_eq!(next_event(&mut events).await.sequence, want);
    }
    drop(events);
    let mut events = resubscribe(&mut c, id, Some(0)).await;
    let first = next_event(&mut events).await;
    assert_eq!((first.sequence, first.dropped_before), (8, 7), "{first:?}");
    assert_eq!(next_event(&mut events).await.sequence, 9);
    assert_eq!(next_event(&mut events).await.sequence, 10);
}

#[tokio::test]
async fn a_stream_ends_when_its_session_is_closed() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "echo").await;
    let mut events = subscribe(&mut c, &s.session_id, None)
        .await
        .expect("StreamEvents");
    invoke_ok(&mut c, &s.session_id, "emit", b"2").await;
    assert_eq!(next_event(&mut events).await.sequence, 1);
    close(&mut c, &s.session_id).await;
    // What was emitted before the close still arrives, then the stream ends
    // cleanly.
    let rest = bounded("the stream to end", async {
        let mut rest = Vec::new();
        while let Some(e) = events.message().await.expect("a clean end") {
            rest.push(e.sequence);
        }
        rest
    })
    .await;
    assert_eq!(rest, [2]);
    expect_code(
        subscribe(&mut c, &s.session_id, None).await,
        Code::FailedPrecondition,
    );
}

#[tokio::test]
async fn a_stream_ends_when_its_session_faults() {
    let gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    let mut events = subscribe(&mut c, &s.session_id, None)
        .await
        .expect("StreamEvents");
    invoke_ok(&mut c, &s.session_id, "flood", b"2").await;
    assert_eq!(next_event(&mut events).await.name, "flood");
    expect_code(
        try_invoke(&mut c, &s.session_id, "trap", b"").await,
        Code::Aborted,
    );
    let end = stream_end(&mut events).await;
    assert!(end.is_ok(), "the stream ended with {end:?}");
}

#[tokio::test]
async fn drop_oldest_overflow_reports_the_gap() {
    let config = Toml::new().backend_with("chaos", "builtin:chaos", &[], &["event_queue = 4"]);
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    assert_eq!(invoke_ok(&mut c, &s.session_id, "flood", b"10").await, "10");
    let info = get(&mut c, &s.session_id).await;
    assert_eq!((info.events_emitted, info.events_dropped), (10, 6));
    let mut events = subscribe(&mut c, &s.session_id, None)
        .await
        .expect("StreamEvents");
    let first = next_event(&mut events).await;
    assert_eq!((first.sequence, first.dropped_before), (7, 6), "{first:?}");
    assert_eq!(first.payload, b"7");
    for want in 8..=10 {
        let e = next_event(&mut events).await;
        assert_eq!((e.sequence, e.dropped_before), (want, 0));
    }
    assert_eq!(
        state(&get(&mut c, &s.session_id).await),
        pb::SessionState::Ready
    );
    let text = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &text,
            "gatehouse_events_dropped_total",
            &[("backend", "chaos")]
        ),
        6.0
    );
}

#[tokio::test]
async fn fault_overflow_faults_the_session() {
    let config = Toml::new().backend_with(
        "chaos",
        "builtin:chaos",
        &[],
        &["event_queue = 4", "event_overflow = \"fault\""],
    );
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "chaos").await;
    assert_eq!(invoke_ok(&mut c, &s.session_id, "flood", b"4").await, "4");
    expect_code(
        try_invoke(&mut c, &s.session_id, "flood", b"1").await,
        Code::Aborted,
    );
    let info = get(&mut c, &s.session_id).await;
    assert_eq!(state(&info), pb::SessionState::Faulted, "{info:?}");
    assert_eq!(info.final_fault, "event-overflow", "{info:?}");
    assert_eq!(gw.metric("gatehouse_open_sessions", &[]).await, 0.0);
}
