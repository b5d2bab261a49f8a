//! `kv`: a per-session key/value store.
//!
//! Commands (payloads are JSON):
//! - `put {"key": K, "value": V}`: stores any JSON value V under the string K
//!   and emits a `put` event with the key.
//! - `get {"key": K}`: replies with the stored value as JSON.
//! - `delete {"key": K}`: removes K and emits a `delete` event with the key.
//! - `list`: replies with the keys as a sorted JSON array.
//!
//! A missing key is a `failed` command error; a payload that is not the
//! expected JSON is `invalid-payload`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "backend",
});

use std::cell::RefCell;
use std::collections::BTreeMap;

use exports::gatehouse::backend::session::Guest;
use gatehouse::backend::host;
use gatehouse::backend::types::{Command, CommandError, Event, SessionContext};
use serde_json::Value;

thread_local! {
    static STORE: RefCell<BTreeMap<String, Value>> = RefCell::default();
}

struct Kv;

impl Guest for Kv {
    fn open(_ctx: SessionContext) -> Result<(), String> {
        Ok(())
    }

    fn handle(cmd: Command) -> Result<Vec<u8>, CommandError> {
        match cmd.name.as_str() {
            "put" => {
                let mut body = object(&cmd.payload)?;
                let key = key(&body)?;
                let value = body
                    .remove("value")
                    .ok_or_else(|| CommandError::InvalidPayload("missing \"value\"".into()))?;
                STORE.with_borrow_mut(|s| s.insert(key.clone(), value));
                changed("put", &key);
                Ok(Vec::new())
            }
            "get" => {
                let key = key(&object(&cmd.payload)?)?;
                STORE.with_borrow(|s| match s.get(&key) {
                    Some(v) => Ok(v.to_string().into_bytes()),
                    None => Err(missing(&key)),
                })
            }
            "delete" => {
                let key = key(&object(&cmd.payload)?)?;
                STORE
                    .with_borrow_mut(|s| s.remove(&key))
                    .ok_or_else(|| missing(&key))?;
                changed("delete", &key);
                Ok(Vec::new())
            }
            "list" => STORE.with_borrow(|s| {
                let keys: Vec<&String> = s.keys().collect();
                Ok(serde_json::to_vec(&keys).unwrap_or_default())
            }),
            other => Err(CommandError::UnknownCommand(format!(
                "kv has no command {other:?}"
            ))),
        }
    }

    fn tick() {}

    fn close() {}
}

fn object(payload: &[u8]) -> Result<serde_json::Map<String, Value>, CommandError> {
    match serde_json::from_slice(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(CommandError::InvalidPayload(
            "expected a JSON object".into(),
        )),
        Err(e) => Err(CommandError::InvalidPayload(format!("bad JSON: {e}"))),
    }
}

fn key(body: &serde_json::Map<String, Value>) -> Result<String, CommandError> {
    match body.get("key") {
        Some(Value::String(k)) => Ok(k.clone()),
        _ => Err(CommandError::InvalidPayload(
            "expected a string \"key\"".into(),
        )),
    }
}

fn missing(key: &str) -> CommandError {
    CommandError::Failed(format!("no such key: {key:?}"))
}

fn changed(name: &str, key: &str) {
    host::emit(&Event {
        name: name.into(),
        payload: key.as_bytes().to_vec(),
    });
}

export!(Kv);
