//! The epoch ticker: the clock behind every wasm deadline.

use std::thread::{self, JoinHandle};
use std::time::Duration;

use wasmtime::Engine;

/// Advances the engine's epoch every `tick` until the engine is gone.
///
/// The thread holds only a weak handle, upgraded for each tick and dropped
/// before it sleeps: a strong one would keep the engine (and the thread)
/// alive forever, while this way the last backend, store or runtime to drop
/// its engine also ends the ticker. `None` when the thread cannot start.
pub(super) fn spawn(engine: &Engine, tick: Duration) -> Option<JoinHandle<()>> {
    let engine = engine.weak();
    let spawned = thread::Builder::new()
        .name("gatehouse-epoch".into())
        .spawn(move || {
            loop {
                thread::sleep(tick);
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                engine.increment_epoch();
            }
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::error!("cannot start the epoch thread: {e}; wasm deadlines will not fire");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn the_ticker_ends_with_the_last_engine_handle() {
        let engine = Engine::default();
        let clone = engine.clone();
        let ticker = spawn(&engine, Duration::from_millis(1)).unwrap();
        drop(engine);
        // A clone (a backend's, say) keeps it ticking.
        thread::sleep(Duration::from_millis(20));
        assert!(!ticker.is_finished());
        drop(clone);
        let began = Instant::now();
        while !ticker.is_finished() {
            assert!(
                began.elapsed() < Duration::from_secs(5),
                "the ticker outlived its engine"
            );
            thread::sleep(Duration::from_millis(1));
        }
        ticker.join().unwrap();
    }
}
