//! `sim-device`: an example native backend that simulates the kind of tag
//! server industrial gateways front (a PLC or OPC server), written with the
//! `gatehouse-worker` SDK.
//!
//! Commands (payloads are UTF-8 text, words separated by spaces):
//!
//! | command | payload | reply |
//! |---|---|---|
//! | `write` | `TAG VALUE` | the value written |
//! | `read` | `TAG` | the tag's value; a `failed` error for an unknown tag |
//! | `subscribe` | `TAG INTERVAL_MS` | `subscribed`; then a `data-change` event every interval |
//! | `unsubscribe` | `TAG` | `unsubscribed` |
//! | `tags` | | the known tags, one a line |
//! | `info` | | `session=ID pid=PID` |
//! | `crash` | | never: the process exits at once (tests) |
//! | `hang` | | never: the process stops, heartbeats and all (tests) |
//! | `slow` | `MS` | `slept MS` after sleeping that long (tests) |
//! | `spin` | `MS` | `spun MS` after computing that long, on the CPU (tests) |
//!
//! A `data-change` event's payload is JSON:
//! `{"tag":"sim.ramp","value":"42","quality":"good","timestamp":1767225600000}`
//! (`timestamp` in milliseconds since the Unix epoch; `quality` is `good`, or
//! `bad-not-found` for a tag that does not exist). Subscriptions sample: an
//! event is emitted every interval, from a background thread, whether or not
//! a client is calling.
//!
//! Built-in simulated tags: `sim.ramp` counts up by one on every read or
//! sample, `sim.sine` follows a sine wave over one minute. Session config
//! `fail_open = "yes"` refuses the session (to test refusals).
//!
//! The worker is stateful: its written tags and the ramp survive a restart
//! or an upgrade of the session (subscriptions do not; a client subscribes
//! again when it sees `gatehouse.restarted`). The state is JSON,
//! `{"format":1,"ramp":N,"tags":{...}}`; session config
//! `fail_restore = "yes"` refuses every restore (to test that path).

#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_worker::{Command, CommandError, EventSender, SessionContext, Worker};

/// Shortest subscription interval.
const MIN_INTERVAL_MS: u64 = 10;
/// Most subscriptions one session may hold.
const MAX_SUBSCRIPTIONS: usize = 64;
/// Longest `slow`.
const MAX_SLOW_MS: u64 = 600_000;

/// Runs the sim-device worker; the whole `main` of the worker program.
pub fn main() -> ExitCode {
    gatehouse_worker::run::<SimDevice>()
}

/// The tag store, shared with the subscription threads.
#[derive(Default)]
struct Tags {
    values: Mutex<BTreeMap<String, String>>,
    ramp: AtomicU64,
}

impl Tags {
    fn read(&self, tag: &str) -> Option<String> {
        match tag {
            "sim.ramp" => Some((self.ramp.fetch_add(1, Ordering::Relaxed) + 1).to_string()),
            "sim.sine" => {
                let t = now_ms() as f64 / 60_000.0;
                Some(format!("{:.4}", (t * std::f64::consts::TAU).sin()))
            }
            _ => self
                .values
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(tag)
                .cloned(),
        }
    }

    fn write(&self, tag: &str, value: &str) {
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tag.to_string(), value.to_string());
    }
}

struct Subscription {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Subscription {
    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        let _ = self.thread.join();
    }
}

/// One session's simulated device.
pub struct SimDevice {
    session_id: String,
    fail_restore: bool,
    tags: Arc<Tags>,
    events: EventSender,
    subscriptions: HashMap<String, Subscription>,
}

impl Worker for SimDevice {
    fn open(ctx: &SessionContext, events: EventSender) -> Result<Self, String> {
        if ctx.config.get("fail_open").map(String::as_str) == Some("yes") {
            return Err("refused: fail_open = yes".into());
        }
        Ok(SimDevice {
            session_id: ctx.session_id.clone(),
            fail_restore: ctx.config.get("fail_restore").map(String::as_str) == Some("yes"),
            tags: Arc::default(),
            events,
            subscriptions: HashMap::new(),
        })
    }

    fn handle(&mut self, command: Command) -> Result<Vec<u8>, CommandError> {
        let text = String::from_utf8(command.payload)
            .map_err(|_| CommandError::InvalidPayload("the payload is not UTF-8".into()))?;
        let text = text.trim();
        let reply = match command.name.as_str() {
            "write" => {
                let (tag, value) = text
                    .split_once(char::is_whitespace)
                    .map(|(t, v)| (t, v.trim()))
                    .filter(|(t, _)| valid_tag(t))
                    .ok_or_else(|| CommandError::InvalidPayload("usage: write TAG VALUE".into()))?;
                if tag.starts_with("sim.") {
                    return Err(CommandError::Failed(format!("{tag} is read-only")));
                }
                self.tags.write(tag, value);
                value.to_string()
            }
            "read" => {
                if !valid_tag(text) {
                    return Err(CommandError::InvalidPayload("usage: read TAG".into()));
                }
                self.tags
                    .read(text)
                    .ok_or_else(|| CommandError::Failed(format!("unknown tag {text:?}")))?
            }
            "subscribe" => self.subscribe(text)?,
            "unsubscribe" => {
                let sub = self
                    .subscriptions
                    .remove(text)
                    .ok_or_else(|| CommandError::Failed(format!("not subscribed to {text:?}")))?;
                sub.stop();
                "unsubscribed".into()
            }
            "tags" => {
                let mut names = vec!["sim.ramp".to_string(), "sim.sine".to_string()];
                names.extend(
                    self.tags
                        .values
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .keys()
                        .cloned(),
                );
                names.join("\n")
            }
            "info" => format!("session={} pid={}", self.session_id, std::process::id()),
            "crash" => std::process::exit(70),
            "hang" => {
                // A wedged process: every thread stops, heartbeats included.
                // SAFETY: raising a signal has no memory-safety preconditions.
                unsafe {
                    libc::raise(libc::SIGSTOP);
                }
                "resumed".into()
            }
            "spin" => {
                let ms = millis_arg(text, "spin")?;
                let began = std::time::Instant::now();
                let mut x = 1u64;
                while began.elapsed() < Duration::from_millis(ms) {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                        );
                    }
                }
                format!("spun {ms}")
            }
            "slow" => {
                let ms = millis_arg(text, "slow")?;
                thread::sleep(Duration::from_millis(ms));
                format!("slept {ms}")
            }
            other => return Err(CommandError::UnknownCommand(other.to_string())),
        };
        Ok(reply.into_bytes())
    }

    fn close(&mut self) {
        for (_, sub) in self.subscriptions.drain() {
            sub.stop();
        }
    }

    const STATEFUL: bool = true;

    fn snapshot(&mut self) -> Vec<u8> {
        let tags = self
            .tags
            .values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let state = serde_json::json!({
            "format": STATE_FORMAT,
            "ramp": self.tags.ramp.load(Ordering::Relaxed),
            "tags": tags,
        });
        state.to_string().into_bytes()
    }

    fn restore(&mut self, state: &[u8], from_version: &str) -> Result<(), String> {
        if self.fail_restore {
            return Err(format!(
                "refused: fail_restore = yes (state of version {from_version})"
            ));
        }
        let state: serde_json::Value =
            serde_json::from_slice(state).map_err(|e| format!("unreadable state: {e}"))?;
        let format = state["format"].as_u64().unwrap_or(0);
        if format != STATE_FORMAT {
            return Err(format!(
                "state format {format} from version {from_version}; this worker reads format {STATE_FORMAT}"
            ));
        }
        let tags: BTreeMap<String, String> = serde_json::from_value(state["tags"].clone())
            .map_err(|e| format!("unreadable tags: {e}"))?;
        *self.tags.values.lock().unwrap_or_else(|e| e.into_inner()) = tags;
        self.tags
            .ramp
            .store(state["ramp"].as_u64().unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }
}

/// The version of the snapshot format; bump it when the layout changes and
/// keep reading the older ones.
const STATE_FORMAT: u64 = 1;

impl SimDevice {
    fn subscribe(&mut self, args: &str) -> Result<String, CommandError> {
        let usage = || CommandError::InvalidPayload("usage: subscribe TAG INTERVAL_MS".into());
        let mut words = args.split_whitespace();
        let tag = words.next().filter(|t| valid_tag(t)).ok_or_else(usage)?;
        let interval: u64 = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(usage)?;
        if words.next().is_some() {
            return Err(usage());
        }
        if interval < MIN_INTERVAL_MS {
            return Err(CommandError::InvalidPayload(format!(
                "the interval must be at least {MIN_INTERVAL_MS} ms"
            )));
        }
        if !self.subscriptions.contains_key(tag) && self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            return Err(CommandError::Failed(format!(
                "at most {MAX_SUBSCRIPTIONS} subscriptions"
            )));
        }
        if let Some(old) = self.subscriptions.remove(tag) {
            old.stop();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            let tags = Arc::clone(&self.tags);
            let events = self.events.clone();
            let tag = tag.to_string();
            thread::Builder::new()
                .name(format!("subscribe {tag}"))
                .spawn(move || sample(&tag, interval, &tags, &events, &stop))
                .map_err(|e| CommandError::Failed(format!("cannot start a thread: {e}")))?
        };
        self.subscriptions
            .insert(tag.to_string(), Subscription { stop, thread });
        Ok("subscribed".into())
    }
}

/// Emits a `data-change` event for `tag` every `interval_ms` until stopped.
fn sample(tag: &str, interval_ms: u64, tags: &Tags, events: &EventSender, stop: &AtomicBool) {
    let interval = Duration::from_millis(interval_ms);
    loop {
        thread::park_timeout(interval);
        if stop.load(Ordering::Acquire) || !events.is_open() {
            return;
        }
        let value = tags.read(tag);
        let quality = if value.is_some() {
            "good"
        } else {
            "bad-not-found"
        };
        let payload = serde_json::json!({
            "tag": tag,
            "value": value.unwrap_or_default(),
            "quality": quality,
            "timestamp": now_ms(),
        });
        if events.emit("data-change", payload.to_string()).is_err() {
            return;
        }
    }
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 256
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `MS` argument of `spin MS` and `slow MS`, at most [`MAX_SLOW_MS`].
fn millis_arg(text: &str, command: &str) -> Result<u64, CommandError> {
    text.parse()
        .ok()
        .filter(|ms| *ms <= MAX_SLOW_MS)
        .ok_or_else(|| {
            CommandError::InvalidPayload(format!("usage: {command} MS (at most {MAX_SLOW_MS})"))
        })
}
