//! SIGKILL of the gateway under load: 70 wasm and 30 native sessions, some
//! with open event streams, then a restart on the same state directory.
//! Nothing survives the gateway, clients learn it is gone (UNAVAILABLE),
//! the new gateway knows none of the old sessions (NOT_FOUND) and starts
//! counting from zero.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use tonic::Code;

use crate::fixtures::*;

const WASM_SESSIONS: usize = 70;
const NATIVE_SESSIONS: usize = 30;
/// Workers are processes, started and reaped under the whole suite's load.
const WORKER_PATIENCE: Duration = Duration::from_secs(30);

fn config(state: &Path) -> String {
    format!(
        "[server]\nstate_dir = {state:?}\nmax_sessions = 200\nsweep_interval = \"100ms\"\n\n\
         [[backends]]\nname = \"echo\"\nmodule = \"builtin:echo\"\n\n\
         [[backends]]\nname = \"sim\"\nkind = \"native\"\ncommand = [{BIN:?}, \"worker\", \"sim-device\"]\n\
         [backends.native]\nheartbeat_interval = \"200ms\"\nheartbeat_grace = \"2s\"\nstartup_timeout = \"10s\"\n"
    )
}

/// Opens `count` sessions of `backend` over four connections at once.
async fn open_many(
    gw: &Gatehouse,
    backend: &'static str,
    count: usize,
) -> Vec<gatehouse::proto::v1::SessionInfo> {
    let mut lanes = Vec::new();
    for lane in 0..4 {
        let mut c = gw.client().await;
        let n = count / 4 + usize::from(lane < count % 4);
        lanes.push(tokio::spawn(async move {
            let mut opened = Vec::new();
            for _ in 0..n {
                opened.push(open(&mut c, backend).await);
            }
            opened
        }));
    }
    let mut all = Vec::new();
    for lane in lanes {
        all.extend(lane.await.expect("an open lane"));
    }
    all
}

#[tokio::test]
async fn sigkill_with_a_hundred_sessions_then_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut gw = Gatehouse::start(config(&state)).await;
    let gw_pid = gw.pid();
    let began = std::time::Instant::now();
    let wasm = open_many(&gw, "echo", WASM_SESSIONS).await;
    let native = open_many(&gw, "sim", NATIVE_SESSIONS).await;
    assert_eq!(
        gw.metric("gatehouse_open_sessions", &[("backend", "echo")])
            .await,
        WASM_SESSIONS as f64
    );
    assert_eq!(
        gw.metric("gatehouse_open_sessions", &[("backend", "sim")])
            .await,
        NATIVE_SESSIONS as f64
    );

    // Open streams: three wasm sessions that have emitted, and three native
    // ones subscribed to a ramp.
    let mut c = gw.client().await;
    let mut streams = Vec::new();
    for s in &wasm[..3] {
        let mut events = subscribe(&mut c, &s.session_id, None)
            .await
            .expect("StreamEvents");
        invoke_ok(&mut c, &s.session_id, "emit", b"1").await;
        assert_eq!(next_event(&mut events).await.sequence, 1);
        streams.push(events);
    }
    for s in &native[..3] {
        let mut events = subscribe(&mut c, &s.session_id, None)
            .await
            .expect("StreamEvents");
        try_invoke(&mut c, &s.session_id, "subscribe", "sim.ramp 20")
            .await
            .unwrap();
        next_event(&mut events).await;
        streams.push(events);
    }
    eprintln!(
        "{WASM_SESSIONS} wasm and {NATIVE_SESSIONS} native sessions, {} streams, open in {:?}",
        streams.len(),
        began.elapsed()
    );
    let workers: HashSet<u32> = native.iter().map(|s| s.worker_pid).collect();
    assert_eq!(
        workers.len(),
        NATIVE_SESSIONS,
        "one worker per native session"
    );
    assert!(workers.is_subset(&recorded_workers(&state, gw_pid)));
    assert!(workers.iter().all(|p| alive(*p)));

    gw.kill();

    // The open streams end with an error: tonic reports a body cut off
    // mid-stream as UNKNOWN with the transport error (gatehouse::client
    // resumes on it as on UNAVAILABLE); new calls on the old connection are
    // UNAVAILABLE.
    for mut events in streams {
        let end = stream_end(&mut events).await;
        let status = end.expect_err("a stream of a killed gateway cannot end cleanly");
        assert!(
            status.code() == Code::Unavailable
                || (status.code() == Code::Unknown && status.message().contains("connection")),
            "{status:?}"
        );
    }
    let refused = try_invoke(&mut c, &wasm[0].session_id, "echo", b"x")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    eventually(
        "every native worker dies with the gateway",
        WORKER_PATIENCE,
        holds(|| workers.iter().all(|p| !alive(*p))),
    )
    .await;

    // A new gateway on the same state directory: the dead one's records are
    // cleared, none of its sessions exists, and the gauges start at zero.
    let next = Gatehouse::start(config(&state)).await;
    eventually(
        "the dead gateway's state is reaped",
        WORKER_PATIENCE,
        holds(|| !state.join(format!("gw-{gw_pid}")).exists()),
    )
    .await;
    let mut c = next.client().await;
    for s in wasm.iter().chain(&native).step_by(7) {
        let gone = try_invoke(&mut c, &s.session_id, "echo", b"x")
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound, "{}: {gone:?}", s.session_id);
    }
    for backend in ["echo", "sim"] {
        assert_eq!(
            next.metric("gatehouse_open_sessions", &[("backend", backend)])
                .await,
            0.0,
            "{backend}"
        );
    }
    assert!(
        recorded_workers(&state, next.pid()).is_empty(),
        "the new gateway started no worker"
    );
    let fresh = open(&mut c, "sim").await;
    assert_eq!(
        invoke_ok(&mut c, &fresh.session_id, "write", b"t 1").await,
        "1"
    );
}
