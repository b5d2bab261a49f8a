//! The wire between the gatehouse gateway and its native workers, written
//! once for both sides: the generated messages of `gatehouse.worker.v1`
//! (`proto/gatehouse/worker/v1/worker.proto`), the protocol version, the
//! environment a worker is started with, and the frame codec (a 4-byte
//! big-endian length, then the message; the length is checked against the
//! cap before anything is allocated).
//!
//! The codec is plain functions over bytes plus blocking `Read`/`Write`
//! helpers; the gateway wraps the byte functions in its async I/O.

use std::fmt;
use std::io::{self, Read, Write};

use prost::Message;

/// The generated messages.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/gatehouse.worker.v1.rs"));
}

/// The protocol version both sides speak; the hello carries it and the
/// gateway refuses any other.
pub const PROTOCOL_VERSION: u32 = 1;

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;

/// The environment variables the gateway sets for a worker.
pub mod env {
    /// The number of the inherited socket descriptor.
    pub const FD: &str = "GATEHOUSE_WORKER_FD";
    /// The nonce the hello must carry back: 64 hex digits.
    pub const NONCE: &str = "GATEHOUSE_NONCE";
    /// The protocol version the gateway speaks.
    pub const PROTOCOL_VERSION: &str = "GATEHOUSE_PROTOCOL_VERSION";
    /// The session id; empty for a pre-started (warm pool) worker, which
    /// learns it from the open message.
    pub const SESSION_ID: &str = "GATEHOUSE_SESSION_ID";
    /// The backend's name.
    pub const BACKEND: &str = "GATEHOUSE_BACKEND";
    /// How often each side heartbeats, in milliseconds.
    pub const HEARTBEAT_INTERVAL_MS: &str = "GATEHOUSE_HEARTBEAT_INTERVAL_MS";
    /// How long a side may stay silent before the other gives up, in
    /// milliseconds.
    pub const HEARTBEAT_GRACE_MS: &str = "GATEHOUSE_HEARTBEAT_GRACE_MS";
    /// The largest frame either side may send, in bytes.
    pub const MAX_FRAME_BYTES: &str = "GATEHOUSE_MAX_FRAME_BYTES";
}

/// Why a frame could not be read or written.
#[derive(Debug)]
pub enum FrameError {
    /// The frame is over the cap; nothing was allocated for it.
    TooLarge {
        /// The frame's length.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// The bytes are not a message of the protocol.
    Decode(String),
    /// The stream ended inside a frame.
    Truncated,
    /// The stream failed.
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { size, limit } => {
                write!(f, "a frame of {size} bytes is over the cap of {limit}")
            }
            FrameError::Decode(e) => write!(f, "a frame that does not decode: {e}"),
            FrameError::Truncated => f.write_str("the stream ended inside a frame"),
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Encodes one frame: the length prefix, then the message.
pub fn encode<M: Message>(msg: &M, limit: usize) -> Result<Vec<u8>, FrameError> {
    let size = msg.encoded_len();
    if size > limit || size > u32::MAX as usize {
        return Err(FrameError::TooLarge { size, limit });
    }
    let mut buf = Vec::with_capacity(LENGTH_BYTES + size);
    buf.extend_from_slice(&(size as u32).to_be_bytes());
    msg.encode(&mut buf)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    Ok(buf)
}

/// The body length a prefix announces, refused when it is over `limit`.
pub fn body_len(prefix: [u8; LENGTH_BYTES], limit: usize) -> Result<usize, FrameError> {
    let size = u32::from_be_bytes(prefix) as usize;
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    Ok(size)
}

/// Decodes a frame's body.
pub fn decode<M: Message + Default>(body: &[u8]) -> Result<M, FrameError> {
    M::decode(body).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Writes one frame to a blocking stream.
pub fn write<M: Message>(w: &mut impl Write, msg: &M, limit: usize) -> Result<(), FrameError> {
    w.write_all(&encode(msg, limit)?)?;
    Ok(())
}

/// Reads one frame from a blocking stream. `Ok(None)` is a clean end of
/// stream between frames.
pub fn read<M: Message + Default>(
    r: &mut impl Read,
    limit: usize,
) -> Result<Option<M>, FrameError> {
    let mut prefix = [0u8; LENGTH_BYTES];
    let mut got = 0;
    while got < LENGTH_BYTES {
        match r.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut body = vec![0u8; body_len(prefix, limit)?];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    decode(&body).map(Some)
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(sequence: u64) -> pb::ToWorker {
        pb::ToWorker {
            msg: Some(pb::to_worker::Msg::Heartbeat(pb::Heartbeat { sequence })),
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write(&mut buf, &heartbeat(7), 1 << 10).unwrap();
        write(&mut buf, &heartbeat(8), 1 << 10).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(
            read::<pb::ToWorker>(&mut r, 1 << 10).unwrap(),
            Some(heartbeat(7))
        );
        assert_eq!(
            read::<pb::ToWorker>(&mut r, 1 << 10).unwrap(),
            Some(heartbeat(8))
        );
        assert_eq!(read::<pb::ToWorker>(&mut r, 1 << 10).unwrap(), None);
    }

    #[test]
    fn the_cap_is_checked_before_allocating() {
        // A prefix announcing 4 GiB: refused without reading further.
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        match read::<pb::ToWorker>(&mut r, 1 << 20) {
            Err(FrameError::TooLarge { size, limit }) => {
                assert_eq!((size, limit), (u32::MAX as usize, 1 << 20));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Encoding refuses too.
        let big = pb::ToWorker {
            msg: Some(pb::to_worker::Msg::Command(pb::Command {
                id: 1,
                name: "x".into(),
                payload: vec![0; 100],
            })),
        };
        assert!(matches!(encode(&big, 10), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        // A prefix cut short, a body cut short, a body that is no message.
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read::<pb::ToWorker>(&mut r, 64),
            Err(FrameError::Truncated)
        ));
        let mut r: &[u8] = &[0, 0, 0, 9, 1, 2];
        assert!(matches!(
            read::<pb::ToWorker>(&mut r, 64),
            Err(FrameError::Truncated)
        ));
        let mut r: &[u8] = &[0, 0, 0, 3, 0xff, 0xff, 0xff];
        assert!(matches!(
            read::<pb::ToWorker>(&mut r, 64),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn every_environment_variable_is_documented() {
        // Workers in other languages are written from the protocol doc.
        let doc = include_str!("../../../docs/native-workers.md");
        for name in [
            env::FD,
            env::NONCE,
            env::PROTOCOL_VERSION,
            env::SESSION_ID,
            env::BACKEND,
            env::HEARTBEAT_INTERVAL_MS,
            env::HEARTBEAT_GRACE_MS,
            env::MAX_FRAME_BYTES,
        ] {
            assert!(
                doc.contains(name),
                "{name} is not in docs/native-workers.md"
            );
        }
    }
}
