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
//!
//! The store is the session's state: it survives a restart or an upgrade
//! (the plugin exports `gatehouse:backend/state`, format 1 below).

use std::collections::BTreeMap;

use gatehouse_plugin::{Command, CommandError, Plugin, Stateful, emit, failed, json_reply, state};
use serde_json::Value;

/// One session's store.
#[derive(Default)]
struct Kv {
    store: BTreeMap<String, Value>,
}

#[derive(serde::Deserialize)]
struct Key {
    key: String,
}

#[derive(serde::Deserialize)]
struct Put {
    key: String,
    value: Value,
}

impl Plugin for Kv {
    fn handle(&mut self, cmd: Command) -> Result<Vec<u8>, CommandError> {
        match cmd.name.as_str() {
            "put" => {
                let Put { key, value } = cmd.json()?;
                self.store.insert(key.clone(), value);
                emit("put", key);
                Ok(Vec::new())
            }
            "get" => {
                let Key { key } = cmd.json()?;
                let value = self.store.get(&key).ok_or_else(|| missing(&key))?;
                json_reply(value)
            }
            "delete" => {
                let Key { key } = cmd.json()?;
                self.store.remove(&key).ok_or_else(|| missing(&key))?;
                emit("delete", key);
                Ok(Vec::new())
            }
            "list" => json_reply(&self.store.keys().collect::<Vec<_>>()),
            _ => Err(cmd.unknown()),
        }
    }
}

/// The snapshot format: 1 is the store as a JSON object.
const STATE_FORMAT: u32 = 1;

impl Stateful for Kv {
    fn snapshot(&self) -> Vec<u8> {
        state::save(STATE_FORMAT, &self.store)
    }

    fn restore(&mut self, state: &[u8], from_version: &str) -> Result<(), String> {
        let (_format, store) = state::load(state, STATE_FORMAT, from_version)?;
        self.store = store;
        Ok(())
    }
}

fn missing(key: &str) -> CommandError {
    failed(format!("no such key: {key:?}"))
}

gatehouse_plugin::export_stateful!(Kv);
