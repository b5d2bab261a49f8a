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

use std::time::Duration;

use gatehouse_plugin::{
    Command, CommandError, Context, Plugin, emit, failed, invalid_payload, json_reply,
    schedule_tick,
};

/// One session's state.
#[derive(Default)]
struct Echo {
    ctx: Option<Context>,
    counter: u64,
    ticks: Option<Ticks>,
}

/// A running `ticks` command.
struct Ticks {
    interval: Duration,
    emitted: u64,
    count: u64,
}

impl Plugin for Echo {
    fn open(&mut self, ctx: &Context) -> Result<(), String> {
        self.ctx = Some(ctx.clone());
        Ok(())
    }

    fn handle(&mut self, cmd: Command) -> Result<Vec<u8>, CommandError> {
        match cmd.name.as_str() {
            "echo" => Ok(cmd.payload),
            "count" => {
                self.counter += 1;
                Ok(self.counter.to_string().into_bytes())
            }
            "emit" => {
                let n: u64 = cmd.parse()?;
                for i in 1..=n {
                    emit("tick", i.to_string());
                }
                Ok(n.to_string().into_bytes())
            }
            "ticks" => {
                let (interval, count) = cmd
                    .text()?
                    .split_once(',')
                    .ok_or_else(|| invalid_payload("expected INTERVAL_MS,COUNT"))?;
                let number = |s: &str| {
                    s.trim()
                        .parse::<u64>()
                        .map_err(|_| invalid_payload(format!("expected a number, got {s:?}")))
                };
                let interval = Duration::from_millis(number(interval)?);
                let count = number(count)?;
                self.ticks = Some(Ticks {
                    interval,
                    emitted: 0,
                    count,
                });
                if count > 0 {
                    schedule_tick(interval);
                }
                Ok(Vec::new())
            }
            "whoami" => {
                let ctx = self
                    .ctx
                    .as_ref()
                    .ok_or_else(|| failed("session not open"))?;
                json_reply(&serde_json::json!({
                    "session_id": ctx.session_id,
                    "tenant": ctx.tenant,
                    "backend": ctx.backend,
                }))
            }
            "config" => match &self.ctx {
                Some(ctx) => json_reply(&ctx.config),
                None => json_reply(&serde_json::json!({})),
            },
            _ => Err(cmd.unknown()),
        }
    }

    fn tick(&mut self) {
        let Some(t) = self.ticks.as_mut() else { return };
        if t.emitted >= t.count {
            return;
        }
        t.emitted += 1;
        emit("tick", t.emitted.to_string());
        if t.emitted < t.count {
            schedule_tick(t.interval);
        }
    }
}

gatehouse_plugin::export!(Echo);
