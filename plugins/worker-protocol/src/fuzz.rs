//! Fuzz targets for the frame codec, as property tests on stable Rust: the
//! codec reads bytes a worker (or anything on the other end of the socket)
//! chose, so no input may panic, over-allocate or be mistaken for a frame.
//!
//! 256 cases a target by default (seconds in CI); `GATEHOUSE_FUZZ_CASES`
//! sets more for a long run (docs/security.md).

use std::io::{self, Read};

use proptest::prelude::*;

use super::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("GATEHOUSE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Hands out its bytes in the given chunk sizes (cycled), with an
/// `Interrupted` error between chunks: a socket that delivers a frame in
/// pieces.
struct Chunked {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    turn: usize,
    interrupt: bool,
}

impl Read for Chunked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let size = self.sizes[self.turn % self.sizes.len()].max(1);
        self.turn += 1;
        let n = size.min(buf.len()).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn message() -> impl Strategy<Value = pb::FromWorker> {
    use pb::from_worker::Msg;
    let text = ".{0,40}";
    let bytes = proptest::collection::vec(any::<u8>(), 0..200);
    prop_oneof![
        (text, any::<u32>(), any::<u32>(), any::<bool>()).prop_map(
            |(nonce, protocol_version, pid, stateful)| {
                Msg::Hello(pb::Hello {
                    nonce,
                    protocol_version,
                    pid,
                    stateful,
                })
            }
        ),
        (any::<u64>(), bytes.clone()).prop_map(|(id, state)| Msg::State(pb::State { id, state })),
        any::<u64>().prop_map(|sequence| Msg::Heartbeat(pb::Heartbeat { sequence })),
        (text, bytes).prop_map(|(name, payload)| Msg::Event(pb::Event { name, payload })),
    ]
    .prop_map(|msg| pb::FromWorker { msg: Some(msg) })
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes: a frame, a clean end, or an error; never a panic,
    /// and never a frame over the cap.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), limit in 0usize..1024) {
        let mut r = data.as_slice();
        for _ in 0..data.len() + 1 {
            match read::<pb::FromWorker>(&mut r, limit) {
                Ok(Some(m)) => prop_assert!(m.encoded_len() <= limit),
                Ok(None) | Err(_) => break,
            }
        }
        let _ = decode::<pb::ToWorker>(&data);
    }

    /// Any length over the cap is refused from the prefix alone.
    #[test]
    fn lengths_over_the_cap_are_refused(limit in 0usize..(1 << 24), over in 1u64..(1 << 32)) {
        let size = (limit as u64 + over).min(u32::MAX as u64);
        prop_assume!(size > limit as u64);
        let mut r: &[u8] = &(size as u32).to_be_bytes();
        let refused = matches!(
            read::<pb::FromWorker>(&mut r, limit),
            Err(FrameError::TooLarge { size: s, limit: l }) if s as u64 == size && l == limit
        );
        prop_assert!(refused);
    }

    /// A stream of frames cut anywhere: the whole frames before the cut,
    /// then `Truncated` (or a clean end when the cut falls between frames).
    #[test]
    fn truncation_is_an_error(msgs in proptest::collection::vec(message(), 1..6), cut in any::<prop::sample::Index>()) {
        let mut frames = Vec::new();
        let mut ends = vec![0];
        for m in &msgs {
            write(&mut frames, m, 1 << 16).unwrap();
            ends.push(frames.len());
        }
        let cut = cut.index(frames.len());
        let mut r = &frames[..cut];
        let whole = ends.iter().filter(|&&e| e <= cut).count() - 1;
        for m in &msgs[..whole] {
            let got = read::<pb::FromWorker>(&mut r, 1 << 16).unwrap();
            prop_assert_eq!(got.as_ref(), Some(m));
        }
        let last = read::<pb::FromWorker>(&mut r, 1 << 16);
        if ends.contains(&cut) {
            prop_assert!(matches!(last, Ok(None)));
        } else {
            prop_assert!(matches!(last, Err(FrameError::Truncated)), "{:?}", last);
        }
    }

    /// Frames delivered in arbitrary pieces, with interruptions between
    /// them, read back the same as in one piece.
    #[test]
    fn split_reads_are_reassembled(msgs in proptest::collection::vec(message(), 1..6), sizes in proptest::collection::vec(1usize..9, 1..8)) {
        let mut frames = Vec::new();
        for m in &msgs {
            write(&mut frames, m, 1 << 16).unwrap();
        }
        let mut r = Chunked { data: frames, at: 0, sizes, turn: 0, interrupt: false };
        for m in &msgs {
            let got = read::<pb::FromWorker>(&mut r, 1 << 16).unwrap();
            prop_assert_eq!(got.as_ref(), Some(m));
        }
        prop_assert!(read::<pb::FromWorker>(&mut r, 1 << 16).unwrap().is_none());
    }
}
