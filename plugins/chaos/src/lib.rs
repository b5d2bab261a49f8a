//! `chaos`: a backend that misbehaves on command, for the sandbox tests.
//! Served only when a config names `builtin:chaos`.
//!
//! Commands: `spin`, `busy MS` (computes for MS ms, reading the clock as it
//! goes), `work N` (N million rounds of pure arithmetic, no host call at
//! all: CPU that is wasm time only), `grow MIB`, `recurse`, `trap`, `panic`,
//! `flood N`, `big-reply BYTES`, `read-file PATH`, `env`, `connect HOST:PORT`,
//! `log-spam N`, `tick-trap MS` (traps in a timer tick), `spin-on-close`
//! (its `close` then never returns), `echo`.
//! With session config `fail_open = "yes"`, `open` refuses the session.
//! `close` emits a `closed` event, so tests can see that it ran.
//!
//! It keeps state, for the restart and upgrade tests: `put KEY VALUE` and
//! `get KEY` use a small map that `state.snapshot` saves and
//! `state.restore` brings back; `restored-from` answers the version the
//! last restore came from ("" if none). With session config
//! `fail_restore = "yes"`, `restore` refuses; with `snapshot_trap = "yes"`,
//! `snapshot` traps.

wit_bindgen::generate!({
    path: "../../wit",
    world: "stateful-backend",
});

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;

use exports::gatehouse::backend::session::Guest;
use exports::gatehouse::backend::state::Guest as StateGuest;
use gatehouse::backend::host;
use gatehouse::backend::types::{Command, CommandError, Event, SessionContext};

thread_local! {
    /// Memory kept alive by `grow`.
    static HOARD: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static TRAP_ON_TICK: RefCell<bool> = const { RefCell::new(false) };
    static SPIN_ON_CLOSE: RefCell<bool> = const { RefCell::new(false) };
    static STATE: RefCell<BTreeMap<String, String>> = const { RefCell::new(BTreeMap::new()) };
    static RESTORED_FROM: RefCell<String> = const { RefCell::new(String::new()) };
    static CONFIG: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
}

fn config_is(key: &str, value: &str) -> bool {
    CONFIG.with_borrow(|c| c.iter().any(|(k, v)| k == key && v == value))
}

struct Chaos;

impl Guest for Chaos {
    fn open(ctx: SessionContext) -> Result<(), String> {
        if ctx
            .config
            .iter()
            .any(|(k, v)| k == "fail_open" && v == "yes")
        {
            return Err("refused: fail_open is set".into());
        }
        CONFIG.with_borrow_mut(|c| *c = ctx.config);
        Ok(())
    }

    fn handle(cmd: Command) -> Result<Vec<u8>, CommandError> {
        let arg = String::from_utf8_lossy(&cmd.payload).trim().to_string();
        match cmd.name.as_str() {
            "echo" => Ok(cmd.payload),
            "spin" => {
                let mut x = 0u64;
                loop {
                    x = black_box(x.wrapping_add(1));
                }
            }
            "busy" => {
                let ms: u64 = number(&arg)?;
                let start = now_ms();
                let mut x = 0u64;
                while now_ms() < start + ms {
                    x = black_box(x.wrapping_add(1));
                }
                Ok(ms.to_string().into_bytes())
            }
            "work" => {
                let millions: u64 = number(&arg)?;
                let mut x = 1u64;
                for _ in 0..millions.saturating_mul(1_000_000) {
                    x = black_box(
                        x.wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407),
                    );
                }
                Ok((x % 1000).to_string().into_bytes())
            }
            "grow" => {
                let mib: usize = number(&arg)?;
                for _ in 0..mib {
                    let mut block = vec![0u8; 1 << 20];
                    // Touch every page so the memory is real.
                    for i in (0..block.len()).step_by(4096) {
                        block[i] = 1;
                    }
                    HOARD.with_borrow_mut(|h| h.push(block));
                }
                Ok(mib.to_string().into_bytes())
            }
            "recurse" => Ok(recurse(black_box(1)).to_string().into_bytes()),
            "trap" => {
                #[cfg(target_arch = "wasm32")]
                core::arch::wasm32::unreachable();
                #[cfg(not(target_arch = "wasm32"))]
                std::process::abort();
            }
            "panic" => panic!("chaos panic on request"),
            "flood" => {
                let n: u64 = number(&arg)?;
                for i in 1..=n {
                    host::emit(&Event {
                        name: "flood".into(),
                        payload: i.to_string().into_bytes(),
                    });
                }
                Ok(n.to_string().into_bytes())
            }
            "big-reply" => {
                let n: usize = number(&arg)?;
                Ok(vec![b'x'; n])
            }
            "read-file" => std::fs::read(&arg).map_err(|e| CommandError::Failed(e.to_string())),
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                Ok(vars.join("\n").into_bytes())
            }
            "connect" => match std::net::TcpStream::connect(&arg) {
                Ok(_) => Ok(b"connected".to_vec()),
                Err(e) => Err(CommandError::Failed(e.to_string())),
            },
            "log-spam" => {
                let n: u64 = number(&arg)?;
                for i in 0..n {
                    println!("log line {i}");
                }
                Ok(n.to_string().into_bytes())
            }
            "tick-trap" => {
                let ms: u64 = number(&arg)?;
                TRAP_ON_TICK.with_borrow_mut(|t| *t = true);
                host::schedule_tick(ms);
                Ok(Vec::new())
            }
            "spin-on-close" => {
                SPIN_ON_CLOSE.with_borrow_mut(|s| *s = true);
                Ok(Vec::new())
            }
            "put" => {
                let (k, v) = arg
                    .split_once(' ')
                    .ok_or_else(|| CommandError::InvalidPayload("usage: put KEY VALUE".into()))?;
                STATE.with_borrow_mut(|s| s.insert(k.to_string(), v.to_string()));
                Ok(Vec::new())
            }
            "get" => STATE
                .with_borrow(|s| s.get(&arg).cloned())
                .map(String::into_bytes)
                .ok_or_else(|| CommandError::Failed(format!("no key {arg:?}"))),
            "restored-from" => Ok(RESTORED_FROM.with_borrow(|r| r.clone()).into_bytes()),
            other => Err(CommandError::UnknownCommand(format!(
                "chaos has no command {other:?}"
            ))),
        }
    }

    fn tick() {
        if TRAP_ON_TICK.with_borrow(|t| *t) {
            panic!("chaos trap in a tick");
        }
    }

    fn close() {
        if SPIN_ON_CLOSE.with_borrow(|s| *s) {
            #[allow(clippy::empty_loop)]
            loop {}
        }
        host::emit(&Event {
            name: "closed".into(),
            payload: Vec::new(),
        });
    }
}

impl StateGuest for Chaos {
    fn snapshot() -> Vec<u8> {
        if config_is("snapshot_trap", "yes") {
            panic!("chaos trap in a snapshot");
        }
        // Lines of KEY VALUE: keys have no spaces (`put` splits on one).
        STATE.with_borrow(|s| {
            s.iter()
                .map(|(k, v)| format!("{k} {v}\n"))
                .collect::<String>()
                .into_bytes()
        })
    }

    fn restore(state: Vec<u8>, from_version: String) -> Result<(), String> {
        if config_is("fail_restore", "yes") {
            return Err(format!(
                "refused: fail_restore is set (state of {from_version})"
            ));
        }
        let text = String::from_utf8(state).map_err(|_| "the state is not UTF-8".to_string())?;
        let map = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        STATE.with_borrow_mut(|s| *s = map);
        RESTORED_FROM.with_borrow_mut(|r| *r = from_version);
        Ok(())
    }
}

/// Unbounded recursion with small frames, so the wasm call stack (not the
/// shadow stack in linear memory) overflows.
fn recurse(n: u64) -> u64 {
    if black_box(n) == 0 {
        return 0;
    }
    recurse(black_box(n + 1)).wrapping_add(1)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, CommandError> {
    s.parse()
        .map_err(|_| CommandError::InvalidPayload(format!("expected a number, got {s:?}")))
}

export!(Chaos);
