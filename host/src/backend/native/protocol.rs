//! The worker protocol on the gateway's side: async framing over the
//! shared codec of `gatehouse-worker-protocol` (which the worker SDK uses
//! too), and the hello check.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::backend::{CommandError, Fault, FaultCode};
pub use gatehouse_worker_protocol::{
    FrameError, LENGTH_BYTES, PROTOCOL_VERSION, body_len, decode, encode, env, pb,
};

/// The fault a frame error makes: a protocol violation, or the worker
/// being gone.
impl From<&FrameError> for Fault {
    fn from(e: &FrameError) -> Self {
        match e {
            FrameError::Io(e) => {
                Fault::crashed(FaultCode::WorkerExited, format!("worker socket: {e}"))
            }
            other => Fault::crashed(FaultCode::ProtocolViolation, other.to_string()),
        }
    }
}

/// Writes one frame.
pub async fn write<M: Message, W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &M,
    limit: usize,
) -> Result<(), FrameError> {
    let frame = encode(msg, limit)?;
    w.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame. The length is checked against `limit` before any
/// buffer is allocated. `Ok(None)` is a clean end of stream between frames.
///
/// Not cancel-safe: the gateway reads each worker's frames on a task of
/// their own.
pub async fn read<M: Message + Default, R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Option<M>, FrameError> {
    let mut prefix = [0u8; LENGTH_BYTES];
    let mut got = 0;
    while got < prefix.len() {
        match r.read(&mut prefix[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => got += n,
        }
    }
    let mut body = vec![0u8; body_len(prefix, limit)?];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    decode(&body).map(Some)
}

/// Checks a worker's first frame: it must be a hello with our nonce and
/// protocol version. Each failure has its own fault code.
pub fn check_hello(first: pb::FromWorker, nonce: &str) -> Result<pb::Hello, Fault> {
    let hello = match first.msg {
        Some(pb::from_worker::Msg::Hello(h)) => h,
        Some(other) => {
            return Err(Fault::crashed(
                FaultCode::ProtocolViolation,
                format!("the first frame must be a hello, not {}", name(&other)),
            ));
        }
        None => {
            return Err(Fault::crashed(
                FaultCode::ProtocolViolation,
                "the first frame must be a hello, not an empty message",
            ));
        }
    };
    if !constant_time_eq(hello.nonce.as_bytes(), nonce.as_bytes()) {
        return Err(Fault::crashed(
            FaultCode::BadNonce,
            "the worker's hello carries the wrong nonce",
        ));
    }
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Fault::crashed(
            FaultCode::BadVersion,
            format!(
                "the worker speaks protocol {}, the gateway {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
        ));
    }
    Ok(hello)
}

/// A message's name, for errors and logs.
pub fn name(msg: &pb::from_worker::Msg) -> &'static str {
    use pb::from_worker::Msg;
    match msg {
        Msg::Hello(_) => "hello",
        Msg::Opened(_) => "opened",
        Msg::Reply(_) => "reply",
        Msg::Event(_) => "event",
        Msg::Heartbeat(_) => "heartbeat",
        Msg::Fault(_) => "fault",
        Msg::State(_) => "state",
    }
}

/// The one mapping of the wire's command error into the host's.
impl From<pb::CommandError> for CommandError {
    fn from(e: pb::CommandError) -> Self {
        use pb::command_error::Kind;
        match Kind::try_from(e.kind).unwrap_or(Kind::Failed) {
            Kind::UnknownCommand => CommandError::UnknownCommand(e.message),
            Kind::InvalidPayload => CommandError::InvalidPayload(e.message),
            Kind::Failed | Kind::Unspecified => CommandError::Failed(e.message),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    #[test]
    fn wire_command_errors_map_to_the_hosts_and_unknown_kinds_fail() {
        use pb::command_error::Kind;
        let wire = |kind: i32| pb::CommandError {
            kind,
            message: "m".into(),
        };
        assert_eq!(
            CommandError::from(wire(Kind::UnknownCommand as i32)),
            CommandError::UnknownCommand("m".into())
        );
        assert_eq!(
            CommandError::from(wire(Kind::InvalidPayload as i32)),
            CommandError::InvalidPayload("m".into())
        );
        assert_eq!(
            CommandError::from(wire(Kind::Failed as i32)),
            CommandError::Failed("m".into())
        );
        // An unspecified or future kind is a plain failure, never a panic.
        for kind in [Kind::Unspecified as i32, 99] {
            assert_eq!(
                CommandError::from(wire(kind)),
                CommandError::Failed("m".into())
            );
        }
    }

    fn hello(nonce: &str, version: u32) -> pb::FromWorker {
        pb::FromWorker {
            msg: Some(pb::from_worker::Msg::Hello(pb::Hello {
                nonce: nonce.into(),
                protocol_version: version,
                pid: 42,
                stateful: false,
            })),
        }
    }

    /// Hands out `data`, then never completes: reading past it would hang.
    struct ThenPending(Vec<u8>);

    impl AsyncRead for ThenPending {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.0.is_empty() {
                return Poll::Pending;
            }
            let n = self.0.len().min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let msg = hello("ab", 1);
        let frame = encode(&msg, 1024).unwrap();
        assert_eq!(&frame[..4], &(msg.encoded_len() as u32).to_be_bytes());
        let back: pb::FromWorker = read(&mut frame.as_slice(), 1024).await.unwrap().unwrap();
        assert_eq!(back, msg);
        // Exactly at the cap is fine.
        let back: Option<pb::FromWorker> =
            read(&mut frame.as_slice(), frame.len() - 4).await.unwrap();
        assert!(back.is_some());
        // End of stream between frames is clean.
        let none: Option<pb::FromWorker> = read(&mut &[][..], 1024).await.unwrap();
        assert!(none.is_none());
    }

    #[tokio::test]
    async fn the_cap_is_checked_before_reading_or_allocating() {
        // 4 GiB announced; the body never comes. If the reader allocated or
        // waited for the body, this would hang (or abort) instead.
        let mut r = ThenPending(vec![0xff, 0xff, 0xff, 0xff]);
        let err = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            read::<pb::FromWorker, _>(&mut r, 4 << 20),
        )
        .await
        .expect("the cap is checked at once")
        .unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { size, limit } if size == u32::MAX as usize && limit == 4 << 20)
        );
        assert_eq!(Fault::from(&err).code.as_str(), "protocol-violation");
        // One byte over the cap.
        let frame = encode(&hello("ab", 1), 1024).unwrap();
        let err = read::<pb::FromWorker, _>(&mut frame.as_slice(), frame.len() - 5)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        // Sending over the cap is refused too.
        assert!(matches!(
            encode(&hello("ab", 1), 3),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_errors() {
        let garbage = [0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
        let err = read::<pb::FromWorker, _>(&mut &garbage[..], 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
        assert_eq!(Fault::from(&err).code.as_str(), "protocol-violation");
        let short = [0, 0, 0, 9, 1, 2];
        let err = read::<pb::FromWorker, _>(&mut &short[..], 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "{err}");
        let half_header = [0, 0];
        let err = read::<pb::FromWorker, _>(&mut &half_header[..], 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "{err}");
        // Text (an HTTP request, a shell prompt) reads as a huge length.
        let err = read::<pb::FromWorker, _>(&mut &b"GET / HTTP/1.1\r\n"[..], 4 << 20)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn handshake_checks() {
        let nonce = "a".repeat(64);
        assert_eq!(check_hello(hello(&nonce, 1), &nonce).unwrap().pid, 42);
        let wrong = "b".repeat(64);
        assert_eq!(
            check_hello(hello(&wrong, 1), &nonce)
                .unwrap_err()
                .code
                .as_str(),
            "bad-nonce"
        );
        assert_eq!(
            check_hello(hello("", 1), &nonce).unwrap_err().code.as_str(),
            "bad-nonce"
        );
        assert_eq!(
            check_hello(hello(&nonce, 2), &nonce)
                .unwrap_err()
                .code
                .as_str(),
            "bad-version"
        );
        let not_hello = pb::FromWorker {
            msg: Some(pb::from_worker::Msg::Heartbeat(pb::Heartbeat {
                sequence: 1,
            })),
        };
        assert_eq!(
            check_hello(not_hello, &nonce).unwrap_err().code.as_str(),
            "protocol-violation"
        );
        assert_eq!(
            check_hello(pb::FromWorker { msg: None }, &nonce)
                .unwrap_err()
                .code
                .as_str(),
            "protocol-violation"
        );
    }
}
