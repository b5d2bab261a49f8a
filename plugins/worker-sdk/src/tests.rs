//! The SDK against a fake gateway on a socket pair.

use std::os::fd::IntoRawFd;

use super::*;

/// Echoes, and emits events from another thread on `emit N`.
struct Echo {
    events: EventSender,
    session: String,
}

impl Worker for Echo {
    fn open(ctx: &SessionContext, events: EventSender) -> Result<Self, String> {
        if ctx.config.contains_key("refuse") {
            return Err("refused".into());
        }
        events.emit("opened", ctx.session_id.clone()).unwrap();
        Ok(Echo {
            events,
            session: ctx.session_id.clone(),
        })
    }

    fn handle(&mut self, command: Command) -> Result<Vec<u8>, CommandError> {
        match command.name.as_str() {
            "echo" => Ok(command.payload),
            "emit" => {
                let n: u32 = String::from_utf8_lossy(&command.payload).parse().unwrap();
                let events = self.events.clone();
                thread::spawn(move || {
                    for i in 1..=n {
                        events.emit("tick", i.to_string()).unwrap();
                    }
                })
                .join()
                .unwrap();
                Ok(self.session.clone().into_bytes())
            }
            other => Err(CommandError::UnknownCommand(other.into())),
        }
    }
}

fn send(s: &mut UnixStream, msg: to_worker::Msg) {
    let frame = encode_frame(&proto::ToWorker { msg: Some(msg) }, 1 << 20).unwrap();
    s.write_all(&frame).unwrap();
}

/// The next frame from the worker that is not a heartbeat.
fn next(s: &mut UnixStream) -> from_worker::Msg {
    loop {
        let frame: proto::FromWorker = read_frame(s, 1 << 20).unwrap().unwrap();
        match frame.msg.unwrap() {
            from_worker::Msg::Heartbeat(_) => continue,
            msg => return msg,
        }
    }
}

fn start(nonce: &str) -> (UnixStream, thread::JoinHandle<Result<(), RunError>>) {
    let (gateway, worker) = UnixStream::pair().unwrap();
    gateway
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let settings = Settings {
        fd: worker.into_raw_fd(),
        nonce: nonce.into(),
        interval: Duration::from_millis(20),
        grace: Duration::from_secs(30),
        max_frame: 1 << 20,
    };
    (gateway, thread::spawn(move || run_with::<Echo>(settings)))
}

#[test]
fn a_session_through_the_sdk() {
    let nonce = "ab".repeat(32);
    let (mut gw, worker) = start(&nonce);
    let from_worker::Msg::Hello(hello) = next(&mut gw) else {
        panic!("the first frame is a hello")
    };
    assert_eq!(hello.nonce, nonce);
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    assert_eq!(hello.pid, std::process::id());

    send(
        &mut gw,
        to_worker::Msg::Open(proto::Open {
            session_id: "s-1".into(),
            ..Default::default()
        }),
    );
    // An event emitted during open comes before the answer to it.
    let from_worker::Msg::Event(e) = next(&mut gw) else {
        panic!("the event from open")
    };
    assert_eq!(
        (e.name.as_str(), e.payload.as_slice()),
        ("opened", &b"s-1"[..])
    );
    assert!(matches!(next(&mut gw), from_worker::Msg::Opened(o) if o.ok));

    send(
        &mut gw,
        to_worker::Msg::Command(proto::Command {
            id: 1,
            name: "echo".into(),
            payload: b"hi".to_vec(),
        }),
    );
    let from_worker::Msg::Reply(r) = next(&mut gw) else {
        panic!("a reply")
    };
    assert_eq!(r.id, 1);
    assert_eq!(
        r.result,
        Some(proto::reply::Result::Payload(b"hi".to_vec()))
    );

    // Events from another thread, then the reply.
    send(
        &mut gw,
        to_worker::Msg::Command(proto::Command {
            id: 2,
            name: "emit".into(),
            payload: b"3".to_vec(),
        }),
    );
    for i in 1..=3 {
        let from_worker::Msg::Event(e) = next(&mut gw) else {
            panic!("event {i}")
        };
        assert_eq!(e.payload, i.to_string().into_bytes());
    }
    let from_worker::Msg::Reply(r) = next(&mut gw) else {
        panic!("a reply")
    };
    assert_eq!(r.id, 2);

    send(
        &mut gw,
        to_worker::Msg::Command(proto::Command {
            id: 3,
            name: "nope".into(),
            payload: vec![],
        }),
    );
    let from_worker::Msg::Reply(r) = next(&mut gw) else {
        panic!("a reply")
    };
    let Some(proto::reply::Result::Error(e)) = r.result else {
        panic!("an error reply")
    };
    assert_eq!(e.kind, proto::command_error::Kind::UnknownCommand as i32);

    send(
        &mut gw,
        to_worker::Msg::Shutdown(proto::Shutdown::default()),
    );
    worker.join().unwrap().unwrap();
}

#[test]
fn a_refused_open_ends_the_worker() {
    let (mut gw, worker) = start("n");
    assert!(matches!(next(&mut gw), from_worker::Msg::Hello(_)));
    send(
        &mut gw,
        to_worker::Msg::Open(proto::Open {
            config: [("refuse".to_string(), String::new())].into(),
            ..Default::default()
        }),
    );
    let from_worker::Msg::Opened(o) = next(&mut gw) else {
        panic!("opened")
    };
    assert!(!o.ok);
    assert_eq!(o.error, "refused");
    worker.join().unwrap().unwrap();
}

#[test]
fn frames_round_trip_and_cap_is_checked_first() {
    let msg = proto::ToWorker {
        msg: Some(to_worker::Msg::Command(proto::Command {
            id: 7,
            name: "read".into(),
            payload: b"tag".to_vec(),
        })),
    };
    let frame = encode_frame(&msg, 1024).unwrap();
    let back: proto::ToWorker = read_frame(&mut frame.as_slice(), 1024).unwrap().unwrap();
    assert_eq!(back, msg);
    // A 4 GiB length is refused without allocating.
    let huge = [0xff, 0xff, 0xff, 0xff];
    let err = read_frame::<proto::ToWorker>(&mut huge.as_slice(), 1024).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(encode_frame(&msg, 4).is_err());
    let empty: &[u8] = &[];
    assert!(
        read_frame::<proto::ToWorker>(&mut { empty }, 1024)
            .unwrap()
            .is_none()
    );
}
