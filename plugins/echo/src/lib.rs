//! `echo`: the smallest useful gatehouse backend.
//!
//! Commands:
//! - `echo`: replies with the payload.
//! - `count`: increments a per-session counter and replies with it, which shows
//!   that every session has its own instance.
//! - `emit N`: emits N events named `tick` with payloads `1`..`N`.
//! - `ticks INTERVAL_MS,COUNT`: emits COUNT `tick` events, one every
//!   INTERVAL_MS, driven by `host.schedule-tick`.
//! - `whoami`: JSON with the session id, tenant and backend.
//! - `config`: the session's config as a JSON object.

wit_bindgen::generate!({
    path: "../../wit",
    world: "backend",
});

use std::cell::RefCell;

use exports::gatehouse::backend::session::Guest;
use gatehouse::backend::host;
use gatehouse::backend::types::{Command, CommandError, Event, SessionContext};

/// Per-session state: each session has its own instance, so plain globals are
/// per session.
#[derive(Default)]
struct State {
    context: Option<SessionContext>,
    counter: u64,
    ticks: Option<Ticks>,
}

/// A running `ticks` command.
struct Ticks {
    interval_ms: u64,
    emitted: u64,
    count: u64,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::default();
}

struct Echo;

impl Guest for Echo {
    fn open(ctx: SessionContext) -> Result<(), String> {
        STATE.with_borrow_mut(|s| s.context = Some(ctx));
        Ok(())
    }

    fn handle(cmd: Command) -> Result<Vec<u8>, CommandError> {
        match cmd.name.as_str() {
            "echo" => Ok(cmd.payload),
            "count" => {
                let n = STATE.with_borrow_mut(|s| {
                    s.counter += 1;
                    s.counter
                });
                Ok(n.to_string().into_bytes())
            }
            "emit" => {
                let n: u64 = parse_number(&cmd.payload)?;
                for i in 1..=n {
                    emit_tick(i);
                }
                Ok(n.to_string().into_bytes())
            }
            "ticks" => {
                let text = text(&cmd.payload)?;
                let (interval, count) = text.split_once(',').ok_or_else(|| {
                    CommandError::InvalidPayload("expected INTERVAL_MS,COUNT".into())
                })?;
                let interval_ms = parse_number(interval.trim().as_bytes())?;
                let count = parse_number(count.trim().as_bytes())?;
                STATE.with_borrow_mut(|s| {
                    s.ticks = Some(Ticks {
                        interval_ms,
                        emitted: 0,
                        count,
                    })
                });
                if count > 0 {
                    host::schedule_tick(interval_ms);
                }
                Ok(Vec::new())
            }
            "whoami" => STATE.with_borrow(|s| {
                let ctx = s
                    .context
                    .as_ref()
                    .ok_or_else(|| CommandError::Failed("session not open".into()))?;
                Ok(serde_json::json!({
                    "session_id": ctx.session_id,
                    "tenant": ctx.tenant,
                    "backend": ctx.backend,
                })
                .to_string()
                .into_bytes())
            }),
            "config" => STATE.with_borrow(|s| {
                let map: serde_json::Map<String, serde_json::Value> = s
                    .context
                    .iter()
                    .flat_map(|ctx| ctx.config.iter())
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                Ok(serde_json::Value::Object(map).to_string().into_bytes())
            }),
            other => Err(CommandError::UnknownCommand(format!(
                "echo has no command {other:?}"
            ))),
        }
    }

    fn tick() {
        let next = STATE.with_borrow_mut(|s| {
            let t = s.ticks.as_mut()?;
            if t.emitted >= t.count {
                return None;
            }
            t.emitted += 1;
            Some((t.emitted, t.emitted < t.count, t.interval_ms))
        });
        if let Some((n, more, interval_ms)) = next {
            emit_tick(n);
            if more {
                host::schedule_tick(interval_ms);
            }
        }
    }

    fn close() {}
}

fn emit_tick(n: u64) {
    host::emit(&Event {
        name: "tick".into(),
        payload: n.to_string().into_bytes(),
    });
}

fn text(payload: &[u8]) -> Result<&str, CommandError> {
    std::str::from_utf8(payload)
        .map_err(|_| CommandError::InvalidPayload("payload is not UTF-8".into()))
}

fn parse_number(payload: &[u8]) -> Result<u64, CommandError> {
    let t = text(payload)?.trim();
    t.parse()
        .map_err(|_| CommandError::InvalidPayload(format!("expected a number, got {t:?}")))
}

export!(Echo);
