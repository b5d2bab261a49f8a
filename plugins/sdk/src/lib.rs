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
//!
//! A plugin whose sessions should survive restarts and upgrades also
//! implements [`Stateful`] and is exported with [`export_stateful!`]
//! instead: the gateway then snapshots its state between commands and hands
//! the latest snapshot to the session's next instance.

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

/// A plugin whose session state survives restarts and upgrades. Export it
/// with [`export_stateful!`].
///
/// A snapshot holds what the plugin needs to go on: its data, not handles,
/// timers or anything the host owns (ticks asked for are not carried
/// over; schedule them again in `restore`). Put a format version in it: a
/// newer plugin restores what an older one saved, and `from_version` names
/// the backend version that saved it. The `json` feature's [`state`]
/// helpers do both for a `serde` type.
pub trait Stateful: Plugin {
    /// The session's state, taken between commands, never during one.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state [`Plugin::open`] set up with one a
    /// [`snapshot`](Self::snapshot) of backend version `from_version`
    /// produced. An `Err` keeps the session where it was: a restart faults
    /// it (`restore-failed`); an upgrade leaves the old version serving.
    fn restore(&mut self, state: &[u8], from_version: &str) -> Result<(), String>;
}

/// Versioned JSON snapshots of a `serde` type.
#[cfg(feature = "json")]
pub mod state {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// `{"format": FORMAT, "state": value}` as bytes.
    pub fn save<T: Serialize + ?Sized>(format: u32, value: &T) -> Vec<u8> {
        // Serialized straight from the value: no intermediate JSON tree.
        #[derive(Serialize)]
        struct Envelope<'a, T: ?Sized> {
            format: u32,
            state: &'a T,
        }
        serde_json::to_vec(&Envelope {
            format,
            state: value,
        })
        .unwrap_or_default()
    }

    /// The value [`save`] wrote and the format it was written in, for
    /// formats up to `newest`; a newer or unreadable one is an error that
    /// names `from_version`.
    pub fn load<T: DeserializeOwned>(
        bytes: &[u8],
        newest: u32,
        from_version: &str,
    ) -> Result<(u32, T), String> {
        #[derive(serde::Deserialize)]
        struct Envelope<T> {
            format: u32,
            state: T,
        }
        let e: Envelope<serde_json::Value> = serde_json::from_slice(bytes)
            .map_err(|e| format!("unreadable state from version {from_version}: {e}"))?;
        if e.format > newest {
            return Err(format!(
                "state format {} from version {from_version} is newer than this plugin reads ({newest})",
                e.format
            ));
        }
        let value = serde_json::from_value(e.state).map_err(|err| {
            format!(
                "state format {} from version {from_version} does not fit: {err}",
                e.format
            )
        })?;
        Ok((e.format, value))
    }
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

    /// For [`export_stateful!`](crate::export_stateful), which generates
    /// the `state` export in the plugin's own crate: a component exports
    /// only what its crate generates, so a plugin without state exports
    /// none.
    pub use wit_bindgen;

    pub fn snapshot<P: super::Stateful>(slot: &'static Slot<P>) -> Vec<u8> {
        slot.with_borrow(|s| s.as_ref().map(|p| p.snapshot()).unwrap_or_default())
    }

    pub fn restore<P: super::Stateful>(
        slot: &'static Slot<P>,
        state: Vec<u8>,
        from_version: String,
    ) -> Result<(), String> {
        slot.with_borrow_mut(|s| match s {
            Some(p) => p.restore(&state, &from_version),
            None => Err("the session is not open".into()),
        })
    }
}

/// The session half of [`export!`] and [`export_stateful!`]: the plugin
/// value's slot (`SESSION`), the `Export` type and its `session` exports.
/// Expands inside their `const _` block, so both see the same items.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_session {
    ($plugin:ty) => {
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
}

/// Exports a [`Plugin`] type as the component's `gatehouse:backend` world.
/// Use it once, at the top level of the crate.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        const _: () = {
            $crate::__export_session!($plugin);
        };
    };
}

/// Exports a [`Stateful`] plugin type as the component's
/// `gatehouse:backend` `stateful-backend` world. Use it, instead of
/// [`export!`], once at the top level of the crate.
#[macro_export]
macro_rules! export_stateful {
    ($plugin:ty) => {
        const _: () = {
            $crate::__export_session!($plugin);
            mod __gatehouse_state {
                $crate::__private::wit_bindgen::generate!({
                    // The state interface of wit/backend.wit, which the
                    // component gets beside the SDK's backend world.
                    inline: "
                        package gatehouse:backend@0.2.0;
                        interface state {
                            snapshot: func() -> list<u8>;
                            restore: func(state: list<u8>, from-version: string) -> result<_, string>;
                        }
                        world state-export {
                            export state;
                        }
                    ",
                    world: "state-export",
                    runtime_path: "::gatehouse_plugin::__private::wit_bindgen::rt",
                });
                pub(super) use self::export as export_state;
                pub(super) use self::exports::gatehouse::backend::state::Guest;
            }
            impl __gatehouse_state::Guest for Export {
                fn snapshot() -> ::std::vec::Vec<u8> {
                    $crate::__private::snapshot(&SESSION)
                }
                fn restore(
                    state: ::std::vec::Vec<u8>,
                    from_version: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::restore(&SESSION, state, from_version)
                }
            }
            __gatehouse_state::export_state!(Export with_types_in __gatehouse_state);
        };
    };
}
