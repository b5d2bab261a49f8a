//! Write a gatehouse wasm backend as one trait implementation.
//!
//! gatehouse gives every client session its own instance of your component,
//! so your [`Plugin`] value *is* the session's state: it is created with
//! `Default`, told about the session in [`Plugin::open`], and then handles
//! that session's commands until it is closed.
//!
//! ```ignore
//! use gatehouse_plugin::{Command, CommandError, Context, Plugin};
//!
//! #[derive(Default)]
//! struct Counter {
//!     n: u64,
//! }
//!
//! impl Plugin for Counter {
//!     fn handle(&mut self, cmd: Command) -> Result<Vec<u8>, CommandError> {
//!         match cmd.name.as_str() {
//!             "count" => {
//!                 self.n += 1;
//!                 Ok(self.n.to_string().into_bytes())
//!             }
//!             _ => Err(cmd.unknown()),
//!         }
//!     }
//! }
//!
//! gatehouse_plugin::export!(Counter);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component gatehouse loads.

use std::collections::BTreeMap;
use std::time::Duration;

/// The raw `wit-bindgen` bindings of the `gatehouse:backend` world.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "backend",
        pub_export_macro: true,
        export_macro_name: "__export_backend",
        default_bindings_module: "gatehouse_plugin::bindings",
    });
}

use bindings::gatehouse::backend::host;
use bindings::gatehouse::backend::types;

pub use bindings::gatehouse::backend::types::CommandError;

/// A gatehouse backend: one value per session.
pub trait Plugin: Default + 'static {
    /// Called once, right after the instance is created. An error refuses
    /// the session (the client gets `FAILED_PRECONDITION` with the message).
    fn open(&mut self, ctx: &Context) -> Result<(), String> {
        let _ = ctx;
        Ok(())
    }

    /// Handles one command and returns the reply payload. An error reaches
    /// the client inside a successful response; the session stays usable.
    fn handle(&mut self, cmd: Command) -> Result<Vec<u8>, CommandError>;

    /// Called when a tick asked for with [`schedule_tick`] is due.
    fn tick(&mut self) {}

    /// Called once when the session closes gracefully.
    fn close(&mut self) {}
}

/// Who and what the session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The session id the client sees.
    pub session_id: String,
    /// The tenant that opened the session.
    pub tenant: String,
    /// The backend name.
    pub backend: String,
    /// The open request's config merged over the backend's.
    pub config: BTreeMap<String, String>,
}

impl Context {
    /// One config value.
    pub fn config(&self, key: &str) -> Option<&str> {
        self.config.get(key).map(String::as_str)
    }
}

impl From<types::SessionContext> for Context {
    fn from(c: types::SessionContext) -> Self {
        Self {
            session_id: c.session_id,
            tenant: c.tenant,
            backend: c.backend,
            config: c.config.into_iter().collect(),
        }
    }
}

/// One client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command name.
    pub name: String,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl Command {
    /// The payload as UTF-8 text, or `invalid-payload`.
    pub fn text(&self) -> Result<&str, CommandError> {
        std::str::from_utf8(&self.payload).map_err(|_| invalid_payload("payload is not UTF-8"))
    }

    /// The payload parsed from trimmed text (a number, say), or
    /// `invalid-payload`.
    pub fn parse<T: std::str::FromStr>(&self) -> Result<T, CommandError> {
        let text = self.text()?.trim();
        text.parse()
            .map_err(|_| invalid_payload(format!("cannot parse {text:?}")))
    }

    /// The payload as JSON, or `invalid-payload` saying what is wrong.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, CommandError> {
        serde_json::from_slice(&self.payload).map_err(|e| invalid_payload(format!("bad JSON: {e}")))
    }

    /// The `unknown-command` error for this command.
    pub fn unknown(&self) -> CommandError {
        CommandError::UnknownCommand(format!("no command {:?}", self.name))
    }
}

impl From<types::Command> for Command {
    fn from(c: types::Command) -> Self {
        Self {
            name: c.name,
            payload: c.payload,
        }
    }
}

/// An `invalid-payload` error.
pub fn invalid_payload(message: impl Into<String>) -> CommandError {
    CommandError::InvalidPayload(message.into())
}

/// A `failed` error.
pub fn failed(message: impl Into<String>) -> CommandError {
    CommandError::Failed(message.into())
}

/// A JSON reply payload.
#[cfg(feature = "json")]
pub fn json_reply<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CommandError> {
    serde_json::to_vec(value).map_err(|e| failed(format!("encoding the reply: {e}")))
}

/// Appends an event to the session's event stream.
pub fn emit(name: &str, payload: impl Into<Vec<u8>>) {
    host::emit(&types::Event {
        name: name.to_string(),
        payload: payload.into(),
    });
}

/// Appends an event with a JSON payload.
#[cfg(feature = "json")]
pub fn emit_json<T: serde::Serialize + ?Sized>(name: &str, value: &T) {
    emit(name, serde_json::to_vec(value).unwrap_or_default());
}

/// Asks for one [`Plugin::tick`] call after `delay`.
pub fn schedule_tick(delay: Duration) {
    host::schedule_tick(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
}

/// Lines in the gateway's log, tagged with the session id.
pub mod log {
    use super::host;
    use super::types::LogLevel;

    /// A trace line.
    pub fn trace(message: &str) {
        host::log(LogLevel::Trace, message);
    }
    /// A debug line.
    pub fn debug(message: &str) {
        host::log(LogLevel::Debug, message);
    }
    /// An info line.
    pub fn info(message: &str) {
        host::log(LogLevel::Info, message);
    }
    /// A warning.
    pub fn warn(message: &str) {
        host::log(LogLevel::Warn, message);
    }
    /// An error line.
    pub fn error(message: &str) {
        host::log(LogLevel::Error, message);
    }
}

/// Glue used by [`export!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use super::bindings::exports::gatehouse::backend::session::Guest;
    pub use super::types::{
        Command as RawCommand, CommandError as RawCommandError, SessionContext,
    };
    use super::{Command, Context, Plugin, failed};
    use std::cell::RefCell;
    use std::thread::LocalKey;

    /// Where the session's plugin value lives.
    pub type Slot<P> = LocalKey<RefCell<Option<P>>>;

    pub fn open<P: Plugin>(slot: &'static Slot<P>, ctx: SessionContext) -> Result<(), String> {
        let mut plugin = P::default();
        plugin.open(&Context::from(ctx))?;
        slot.with_borrow_mut(|s| *s = Some(plugin));
        Ok(())
    }

    pub fn handle<P: Plugin>(
        slot: &'static Slot<P>,
        cmd: RawCommand,
    ) -> Result<Vec<u8>, RawCommandError> {
        slot.with_borrow_mut(|s| match s {
            Some(p) => p.handle(Command::from(cmd)),
            None => Err(failed("the session is not open")),
        })
    }

    pub fn tick<P: Plugin>(slot: &'static Slot<P>) {
        slot.with_borrow_mut(|s| {
            if let Some(p) = s {
                p.tick();
            }
        });
    }

    pub fn close<P: Plugin>(slot: &'static Slot<P>) {
        if let Some(mut p) = slot.with_borrow_mut(Option::take) {
            p.close();
        }
    }
}

/// Exports a [`Plugin`] type as the component's `gatehouse:backend` world.
/// Use it once, at the top level of the crate.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static SESSION: ::std::cell::RefCell<::std::option::Option<$plugin>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }
            struct Export;
            impl $crate::__private::Guest for Export {
                fn open(
                    ctx: $crate::__private::SessionContext,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::open(&SESSION, ctx)
                }
                fn handle(
                    cmd: $crate::__private::RawCommand,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::__private::RawCommandError>
                {
                    $crate::__private::handle(&SESSION, cmd)
                }
                fn tick() {
                    $crate::__private::tick(&SESSION)
                }
                fn close() {
                    $crate::__private::close(&SESSION)
                }
            }
            $crate::bindings::__export_backend!(Export);
        };
    };
}
