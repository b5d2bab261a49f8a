//! Fuzz targets for what a native worker sends before it is trusted: its
//! frames, read from the socket in whatever pieces arrive, and the hello
//! that must carry the gateway's nonce and protocol version.

use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::prelude::*;
use prost::Message;

use super::protocol::{self, PROTOCOL_VERSION, check_hello, decode, encode, pb};
use crate::fuzzing::config;

/// Hands out its bytes in the given chunk sizes (cycled), returning
/// `Pending` (after waking itself) between chunks: a socket that delivers
/// a frame in pieces.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    turn: usize,
    stall: bool,
}

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        me.stall = !me.stall;
        if me.stall {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let size = me.sizes[me.turn % me.sizes.len()].max(1);
        me.turn += 1;
        let n = size.min(buf.remaining()).min(me.data.len() - me.at);
        buf.put_slice(&me.data[me.at..me.at + n]);
        me.at += n;
        Poll::Ready(Ok(()))
    }
}

fn nonce() -> String {
    "0123456789abcdef".repeat(4)
}

fn hello(nonce: String, protocol_version: u32, pid: u32) -> pb::FromWorker {
    pb::FromWorker {
        msg: Some(pb::from_worker::Msg::Hello(pb::Hello {
            nonce,
            protocol_version,
            pid,
            stateful: false,
        })),
    }
}

/// A first frame: mostly hellos, right and wrong, and other messages.
fn first_frame() -> impl Strategy<Value = pb::FromWorker> {
    use pb::from_worker::Msg;
    let nonces = prop_oneof![
        Just(nonce()),
        "[0-9a-f]{64}",
        ".{0,80}",
        Just(format!("{}\0", nonce())),
        Just(nonce()[..63].to_string()),
    ];
    prop_oneof![
        4 => (nonces, prop_oneof![Just(PROTOCOL_VERSION), any::<u32>()], any::<u32>())
            .prop_map(|(n, v, pid)| hello(n, v, pid)),
        1 => any::<u64>().prop_map(|sequence| pb::FromWorker {
            msg: Some(Msg::Heartbeat(pb::Heartbeat { sequence })),
        }),
        1 => (".{0,20}", ".{0,20}").prop_map(|(code, detail)| pb::FromWorker {
            msg: Some(Msg::Fault(pb::Fault { code, detail })),
        }),
        1 => Just(pb::FromWorker { msg: None }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes as a first frame: refused with a fault code, never
    /// accepted (they cannot carry the nonce by chance) and never a panic.
    #[test]
    fn arbitrary_first_frames_are_refused(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(msg) = decode::<pb::FromWorker>(&body) {
            let fault = check_hello(msg, &nonce()).unwrap_err();
            prop_assert!(
                ["protocol-violation", "bad-nonce", "bad-version"].contains(&fault.code.as_str()),
                "{}", fault.code.as_str()
            );
        }
    }

    /// Only a hello with exactly the nonce and the protocol version passes.
    #[test]
    fn only_the_right_hello_passes(msg in first_frame()) {
        let expected = match &msg.msg {
            Some(pb::from_worker::Msg::Hello(h)) => {
                if h.nonce != nonce() {
                    "bad-nonce"
                } else if h.protocol_version != PROTOCOL_VERSION {
                    "bad-version"
                } else {
                    "ok"
                }
            }
            _ => "protocol-violation",
        };
        let got = match check_hello(msg, &nonce()) {
            Ok(_) => "ok",
            Err(f) => f.code.as_str(),
        };
        prop_assert_eq!(got, expected);
    }

    /// Frames arriving in arbitrary pieces, with stalls between them, read
    /// back whole; whatever trails them is an error or a clean end, never
    /// a panic or a frame over the cap.
    #[test]
    fn frames_in_pieces_then_garbage(
        msgs in proptest::collection::vec(first_frame(), 1..5),
        sizes in proptest::collection::vec(1usize..7, 1..6),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
        limit in 64usize..512,
    ) {
        let mut data = Vec::new();
        for m in &msgs {
            data.extend(encode(m, 1 << 16).unwrap());
        }
        data.extend(&tail);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut r = Trickle { data, at: 0, sizes, turn: 0, stall: false };
            for m in &msgs {
                let got = protocol::read::<pb::FromWorker, _>(&mut r, limit).await;
                if m.encoded_len() > limit {
                    let refused = matches!(got, Err(protocol::FrameError::TooLarge { .. }));
                    prop_assert!(refused);
                    return Ok(());
                }
                let got = got.unwrap();
                prop_assert_eq!(got.as_ref(), Some(m));
            }
            for _ in 0..=tail.len() {
                match protocol::read::<pb::FromWorker, _>(&mut r, limit).await {
                    Ok(Some(m)) => prop_assert!(m.encoded_len() <= limit),
                    Ok(None) | Err(_) => break,
                }
            }
            Ok(())
        })?;
    }
}

// ---- after the hello: a real worker process sending arbitrary frames -------

mod conversation {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Once};
    use std::time::Duration;

    use proptest::prelude::*;
    use prost::Message;
    use tokio::sync::mpsc;

    use super::super::NativeRuntime;
    use super::super::protocol::pb;
    use crate::backend::{Backend, Command, FaultReporter, StartRequest};
    use crate::config::{
        BackendKind, BackendSpec, Grants, NativeSpec, OverflowPolicy, Runner, SessionPolicy,
    };
    use crate::events::{EventLimits, EventLog, NoObserver};
    use crate::fuzzing::config_with;

    /// A worker that passes the handshake, then answers each frame the
    /// gateway sends (the open, commands, heartbeats) with the next of the
    /// byte strings in its `FUZZ` variable (hex, comma-separated), and
    /// reads until its socket is closed.
    const WORKER: &str = r#"
import binascii, os, socket
s = socket.socket(fileno=int(os.environ["GATEHOUSE_WORKER_FD"]))
nonce = os.environ["GATEHOUSE_NONCE"].encode()
hello = b"\x0a" + bytes([len(nonce)]) + nonce + b"\x10\x01"
msg = b"\x0a" + bytes([len(hello)]) + hello
s.sendall(len(msg).to_bytes(4, "big") + msg)
chunks = [binascii.unhexlify(c) for c in os.environ["FUZZ"].split(",") if c]
def exactly(n):
    data = b""
    while len(data) < n:
        more = s.recv(n - len(data))
        if not more:
            raise SystemExit(0)
        data += more
    return data
while True:
    exactly(int.from_bytes(exactly(4), "big"))
    if chunks:
        s.sendall(chunks.pop(0))
"#;

    /// Set when a thread of these tests panics (the gateway's tasks run on
    /// the test's thread; a panic there would otherwise only be logged).
    static PANICKED: AtomicBool = AtomicBool::new(false);
    const THREAD: &str = "conversation-fuzz";

    fn watch_panics() {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if std::thread::current().name() == Some(THREAD) {
                    PANICKED.store(true, Ordering::SeqCst);
                }
                previous(info);
            }));
        });
    }

    fn frame() -> impl Strategy<Value = Vec<u8>> {
        use pb::from_worker::Msg;
        let bytes = proptest::collection::vec(any::<u8>(), 0..64);
        let msg = prop_oneof![
            3 => (any::<bool>(), ".{0,10}").prop_map(|(ok, error)| Some(Msg::Opened(pb::Opened { ok, error, restore_failed: false }))),
            3 => (0u64..4, bytes.clone()).prop_map(|(id, p)| Some(Msg::Reply(pb::Reply {
                id,
                result: Some(pb::reply::Result::Payload(p)),
            }))),
            2 => (".{0,10}", bytes.clone()).prop_map(|(name, payload)| Some(Msg::Event(pb::Event { name, payload }))),
            2 => any::<u64>().prop_map(|sequence| Some(Msg::Heartbeat(pb::Heartbeat { sequence }))),
            1 => Just(Some(Msg::Hello(pb::Hello::default()))),
            1 => Just(Some(Msg::Fault(pb::Fault { code: "x".into(), detail: "y".into() }))),
            1 => Just(None),
        ];
        prop_oneof![
            6 => msg.prop_map(|msg| {
                let body = pb::FromWorker { msg }.encode_to_vec();
                let mut f = (body.len() as u32).to_be_bytes().to_vec();
                f.extend(body);
                f
            }),
            1 => bytes,
        ]
    }

    fn spec(fuzz: &[Vec<u8>]) -> BackendSpec {
        let mut native = NativeSpec::new(vec!["python3".into(), "-c".into(), WORKER.into()]);
        native.startup_timeout = Duration::from_secs(5);
        native.heartbeat_interval = Duration::from_millis(100);
        native.heartbeat_grace = Duration::from_millis(500);
        native.max_frame_bytes = 1 << 10;
        let mut grants = Grants::default();
        let hex: Vec<String> = fuzz.iter().map(hex::encode).collect();
        grants.env.insert("FUZZ".into(), hex.join(","));
        BackendSpec {
            name: "fuzz".into(),
            kind: BackendKind::Native,
            runner: Runner::Native(native),
            description: String::new(),
            version: "0".into(),
            config: BTreeMap::new(),
            grants,
            policy: SessionPolicy::default(),
            retire_after: None,
            rollout: None,
            recovery: Default::default(),
        }
    }

    fn request() -> StartRequest {
        let (tx, _rx) = mpsc::unbounded_channel();
        let id: Arc<str> = "fuzz".into();
        StartRequest {
            session_id: Arc::clone(&id),
            tenant: "t".into(),
            backend: "fuzz".into(),
            config: BTreeMap::new(),
            events: Arc::new(EventLog::new(
                EventLimits {
                    queue: 4,
                    replay: 4,
                    overflow: OverflowPolicy::DropOldest,
                    max_subscribers: 1,
                },
                Arc::new(NoObserver),
            )),
            policy: SessionPolicy::default(),
            open_timeout: Duration::from_millis(500),
            faults: FaultReporter::new(id, tx),
            memory: crate::memory_budget::MemoryAccount::unlimited(),
            cpu: crate::backend::cpu::CpuAccount::unlimited(),
            restore: None,
        }
    }

    /// One session against a worker that sends `fuzz` after its hello: the
    /// open, a command and the close all end (in a result or a fault) and
    /// the worker process is gone afterwards.
    fn run(fuzz: Vec<Vec<u8>>) -> Result<(), TestCaseError> {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let native = NativeRuntime::new(dir.path()).unwrap();
            let backend = native.load(&spec(&fuzz)).unwrap();
            let started =
                tokio::time::timeout(Duration::from_secs(10), backend.start(request(), &|_| {}))
                    .await
                    .map_err(|_| TestCaseError::fail("the open did not end"))?;
            if let Ok(worker) = started {
                let commands = vec![Command {
                    name: "x".into(),
                    payload: b"p".to_vec(),
                }];
                tokio::time::timeout(
                    Duration::from_secs(10),
                    worker.invoke(commands, Duration::from_millis(300), None),
                )
                .await
                .map_err(|_| TestCaseError::fail("the command did not end"))?
                .ok();
                tokio::time::timeout(
                    Duration::from_secs(10),
                    worker.close(Duration::from_millis(200)),
                )
                .await
                .map_err(|_| TestCaseError::fail("the close did not end"))?;
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while native.live_workers() > 0 {
                prop_assert!(
                    std::time::Instant::now() < deadline,
                    "a worker outlived its session"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        })
    }

    /// The fuzzing worker really passes the handshake: with an `opened`
    /// as its answer to the open, the session opens.
    #[test]
    fn the_fuzzing_worker_passes_the_handshake() {
        let body = pb::FromWorker {
            msg: Some(pb::from_worker::Msg::Opened(pb::Opened {
                ok: true,
                error: String::new(),
                restore_failed: false,
            })),
        }
        .encode_to_vec();
        let mut opened = (body.len() as u32).to_be_bytes().to_vec();
        opened.extend(body);
        let fuzz = vec![opened];
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let native = NativeRuntime::new(dir.path()).unwrap();
            let backend = native.load(&spec(&fuzz)).unwrap();
            let worker = backend.start(request(), &|_| {}).await;
            let worker = worker.unwrap_or_else(|e| panic!("the open failed: {e}"));
            worker.kill();
        });
    }

    proptest! {
        #![proptest_config(config_with(16))]

        /// Any frames (and garbage) after the hello, interleaved with the
        /// gateway's open and command as the timing falls: never a panic,
        /// never a hang, never a surviving worker.
        #[test]
        fn arbitrary_frames_after_the_hello(
            chunks in proptest::collection::vec(proptest::collection::vec(frame(), 0..3), 0..6),
        ) {
            watch_panics();
            let fuzz: Vec<Vec<u8>> = chunks.into_iter().map(|c| c.concat()).collect();
            let outcome = std::thread::Builder::new()
                .name(THREAD.into())
                .spawn(move || run(fuzz))
                .unwrap()
                .join();
            prop_assert!(!PANICKED.swap(false, Ordering::SeqCst), "the gateway panicked");
            match outcome {
                Ok(result) => result?,
                Err(_) => prop_assert!(false, "the test thread panicked"),
            }
        }
    }
}
