//! `server.max_connections` through the real binary: a port holds at most
//! that many connections; one more is closed as soon as it is accepted and
//! counted, while the connections already open (a bystander session's
//! among them) keep working, and the slot comes back when one closes.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::fixtures::*;

/// Whether the gateway closed `stream` without a word (EOF or reset) within
/// a short wait; `false` if it stayed open.
async fn closed_by_gateway(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => false,
    }
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_accept() {
    let gw = Gatehouse::builder(
        Toml::new()
            // Every connection comes from 127.0.0.1, and this test is
            // about the cap alone: no per-address cap, no health reserve.
            .server("max_connections = 3\nmax_connections_per_address = \"off\"\nhealth_connections = 0")
            .backend("echo", "builtin:echo")
            .render(),
    )
    .start()
    .await;
    // One connection for the bystander, two idle ones: the port is full.
    let mut c = gw.client().await;
    let sid = open(&mut c, "echo").await.session_id;
    assert_eq!(invoke_ok(&mut c, &sid, "count", b"").await, "1");
    let addr = gw.dial_addr();
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(addr).await.expect("a connection"));
    }
    gw.wait_metric("gatehouse_connections_open", &[("port", "grpc")], 3.0)
        .await;

    let mut extra = TcpStream::connect(addr).await.expect("the TCP connect");
    assert!(
        closed_by_gateway(&mut extra).await,
        "a fourth connection stayed open"
    );
    gw.wait_metric(
        "gatehouse_connections_refused_total",
        &[("port", "grpc")],
        1.0,
    )
    .await;
    // The open connections are untouched, and the HTTP port has its own cap
    // (the metrics above came through it).
    assert_eq!(invoke_ok(&mut c, &sid, "count", b"").await, "2");
    for s in &mut idle {
        assert!(!closed_by_gateway(s).await, "an open connection was closed");
    }

    // A closed connection gives its slot back.
    idle.pop();
    gw.wait_metric("gatehouse_connections_open", &[("port", "grpc")], 2.0)
        .await;
    let mut fresh = gw.client().await;
    let other = open(&mut fresh, "echo").await.session_id;
    assert_eq!(invoke_ok(&mut fresh, &other, "count", b"").await, "1");
    assert_eq!(invoke_ok(&mut c, &sid, "count", b"").await, "3");
}
