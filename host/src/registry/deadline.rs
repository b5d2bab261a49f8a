//! Answering on the client's deadline.
//!
//! A worker stops itself at a deadline too, but only at its next epoch
//! tick; answering from here on the dot keeps the client's status
//! DEADLINE_EXCEEDED even on a loaded machine, ahead of tonic's own timer.
//! Dropping `work` at the deadline is the caller's way to stop it.

use std::future::Future;
use std::time::Instant;

use crate::backend::Fault;

/// Runs `work` until the client's `deadline` (none: to its end). At the
/// deadline the answer is a deadline fault saying that `what` ran past it,
/// counted from `began`.
pub(super) async fn by_deadline<T, E: From<Fault>>(
    work: impl Future<Output = Result<T, E>>,
    deadline: Option<Instant>,
    began: Instant,
    what: &str,
) -> Result<T, E> {
    let Some(at) = deadline else {
        return work.await;
    };
    tokio::select! {
        r = work => r,
        _ = tokio::time::sleep_until(at.into()) => {
            let ms = at.saturating_duration_since(began).as_millis();
            Err(E::from(Fault::deadline(format!(
                "the {what} ran past the client's gRPC deadline, its {ms} ms deadline"
            ))))
        }
    }
}
