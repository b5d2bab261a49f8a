//! A plugin built against `tests/fixtures/wit-0.1.0` (the WIT of the 0.1.0
//! release, frozen) with raw `wit-bindgen`, not the SDK, which follows the
//! current WIT. It stands for a plugin an author built for 0.1.0 and never
//! rebuilt: the current gateway must keep running it (`compat.rs`).
//!
//! Commands: `echo` returns its payload, `emit N` emits N `tick` events.

use std::cell::RefCell;

wit_bindgen::generate!({
    path: "../../tests/fixtures/wit-0.1.0",
    world: "backend",
});

use exports::gatehouse::backend::session::Guest;
use gatehouse::backend::host;
use gatehouse::backend::types::{Command, CommandError, Event, SessionContext};

struct Compat;

thread_local! {
    static OPENED: RefCell<bool> = const { RefCell::new(false) };
}

impl Guest for Compat {
    fn open(_ctx: SessionContext) -> Result<(), String> {
        OPENED.with(|o| *o.borrow_mut() = true);
        Ok(())
    }

    fn handle(cmd: Command) -> Result<Vec<u8>, CommandError> {
        match cmd.name.as_str() {
            "echo" => Ok(cmd.payload),
            "emit" => {
                let n: u32 = std::str::from_utf8(&cmd.payload)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| CommandError::InvalidPayload("a count".into()))?;
                for i in 1..=n {
                    host::emit(&Event {
                        name: "tick".into(),
                        payload: i.to_string().into_bytes(),
                    });
                }
                Ok(Vec::new())
            }
            other => Err(CommandError::UnknownCommand(other.into())),
        }
    }

    fn tick() {}

    fn close() {}
}

export!(Compat);
