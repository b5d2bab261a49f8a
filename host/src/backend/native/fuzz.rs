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
