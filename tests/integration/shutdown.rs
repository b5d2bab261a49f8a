//! Graceful shutdown on SIGTERM.

use std::time::{Duration, Instant};

use crate::fixtures::*;

#[tokio::test]
async fn sigterm_closes_every_session_and_exits_zero() {
    let mut gw = Gatehouse::start(Toml::standard().render()).await;
    let mut c = gw.client().await;
    let a = open(&mut c, "echo").await;
    let _b = open(&mut c, "echo").await;
    let k = open(&mut c, "kv").await;
    let _x = open(&mut c, "chaos").await;
    invoke_ok(&mut c, &k.session_id, "put", br#"{"key":"a","value":1}"#).await;
    let mut events = subscribe(&mut c, &a.session_id, None)
        .await
        .expect("StreamEvents");
    invoke_ok(&mut c, &a.session_id, "emit", b"1").await;
    assert_eq!(next_event(&mut events).await.sequence, 1);

    let reader = tokio::spawn(async move { stream_end(&mut events).await });
    let began = Instant::now();
    let status = gw.terminate().await;
    let took = began.elapsed();
    assert!(status.success(), "exit status {status:?}\n{}", gw.stderr());
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let end = bounded("the attached stream to end", reader)
        .await
        .expect("reader task");
    // The stream ends; ideally cleanly, since the gateway closes the
    // session before it stops serving.
    assert!(end.is_ok(), "the stream ended with {end:?}");
    let log = gw.stderr();
    assert!(log.contains("gatehouse stopped"), "{log}");
}

#[tokio::test]
async fn sigterm_with_a_stuck_worker_still_exits() {
    let config = Toml::new()
        .server("shutdown_timeout = \"1s\"")
        .backend("echo", "builtin:echo")
        .backend_with(
            "chaos",
            "builtin:chaos",
            &[],
            &["command_timeout = \"60s\"", "close_timeout = \"300ms\""],
        );
    let mut gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let e = open(&mut c, "echo").await;
    let s = open(&mut c, "chaos").await;
    let spinning = start_spin(&c, &s).await;
    invoke_ok(&mut c, &e.session_id, "echo", b"x").await;
    let began = Instant::now();
    let status = gw.terminate().await;
    let took = began.elapsed();
    assert!(status.success(), "exit status {status:?}\n{}", gw.stderr());
    assert!(took < Duration::from_secs(6), "shutdown took {took:?}");
    let spun = bounded("the spinning invoke to end", spinning)
        .await
        .expect("task");
    assert!(spun.is_err(), "a spin cannot succeed: {spun:?}");
}
