//! `chaos`: a backend that misbehaves on command, for the sandbox tests.
//! Served only when a config names `builtin:chaos`.
//!
//! Commands: `spin`, `busy MS`, `grow MIB`, `recurse`, `trap`, `panic`,
//! `flood N`, `big-reply BYTES`, `read-file PATH`, `env`, `connect HOST:PORT`,
//! `log-spam N`, `tick-trap MS` (traps in a timer tick), `spin-on-close`
//! (its `close` then never returns), `echo`.
//! With session config `fail_open = "yes"`, `open` refuses the session.
//! `close` emits a `closed` event, so tests can see that it ran.

wit_bindgen::generate!({
    path: "../../wit",
    world: "backend",
});

use std::cell::RefCell;
use std::hint::black_box;

use exports::gatehouse::backend::session::Guest;
use gatehouse::backend::host;
use gatehouse::backend::types::{Command, CommandError, Event, SessionContext};

thread_local! {
    /// Memory kept alive by `grow`.
    static HOARD: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static TRAP_ON_TICK: RefCell<bool> = const { RefCell::new(false) };
    static SPIN_ON_CLOSE: RefCell<bool> = const { RefCell::new(false) };
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
