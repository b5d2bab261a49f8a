//! Saying clearly that a component's memory at start does not fit its
//! limit, at open and at load, instead of "the worker failed to start".

use super::host::LimitHit;
use crate::backend::{Fault, FaultCode};

/// Bytes as people read them: `1114112 bytes (1.1 MiB)`.
fn bytes(n: usize) -> String {
    if n < 1 << 20 {
        format!("{n} bytes ({:.1} KiB)", n as f64 / 1024.0)
    } else {
        format!("{n} bytes ({:.1} MiB)", n as f64 / (1 << 20) as f64)
    }
}

/// The fault for an instantiation the memory limit refused: the
/// component's initial memory, which it asks for before any code runs,
/// over the session's `memory_limit`. `None` for any other failure.
pub(super) fn refused_at_start(error: &wasmtime::Error) -> Option<Fault> {
    match error.downcast_ref::<LimitHit>()? {
        LimitHit::Memory { desired, limit } => Some(Fault::crashed(
            FaultCode::MemoryLimit,
            format!(
                "the component asks for {} of memory at start, over the session's \
                 memory_limit of {}: raise [backends.sessions] memory_limit (or the \
                 tenant's [tenants.sessions] memory_limit)",
                bytes(*desired),
                bytes(*limit)
            ),
        )),
        _ => None,
    }
}

/// A load the pooling allocator refused because the component's initial
/// memory is over the largest `memory_limit` of all backends, in words,
/// or `None` for any other compile error. (wasmtime says it only in text:
/// "memory has a minimum byte size of N which exceeds the limit of M
/// bytes".)
pub(super) fn refused_at_load(message: &str, limit: usize) -> Option<String> {
    let rest = message.split("minimum byte size of ").nth(1)?;
    let desired: usize = rest.split_whitespace().next()?.parse().ok()?;
    Some(format!(
        "the component asks for {} of memory at start, over its memory_limit of {}: \
         raise [backends.sessions] memory_limit",
        bytes(desired),
        bytes(limit)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_messages_name_the_limit_and_the_ask() {
        let e = wasmtime::Error::from(LimitHit::Memory {
            desired: 1_114_112,
            limit: 1 << 20,
        });
        let fault = refused_at_start(&e).unwrap();
        assert_eq!(fault.code, FaultCode::MemoryLimit);
        assert!(
            fault.detail.contains("1114112 bytes (1.1 MiB)")
                && fault
                    .detail
                    .contains("memory_limit of 1048576 bytes (1.0 MiB)"),
            "{}",
            fault.detail
        );
        assert!(refused_at_start(&wasmtime::Error::msg("other")).is_none());

        let wasmtime_words = "module memory does not fit in pooling allocator requirements: \
             memory index 0 is unsupported in this pooling allocator configuration: memory \
             has a minimum byte size of 1114112 which exceeds the limit of 0x100000 bytes";
        let said = refused_at_load(wasmtime_words, 1 << 20).unwrap();
        assert!(said.contains("1114112 bytes") && said.contains("memory_limit of 1048576"));
        assert!(refused_at_load("invalid leb128", 1 << 20).is_none());
    }
}
