//! Warnings about a valid config that may not do what its author expects:
//! limits whose worst case does not fit the memory budget. `gatehouse
//! config check` prints them and `gatehouse serve` logs them; neither
//! refuses the config, since the budget is what keeps the worst case from
//! happening.

use super::{BackendKind, Config, SessionPolicy};
use crate::memory_budget::EVENT_OVERHEAD;

/// The most one session under `policy` can make the gateway hold: its wasm
/// linear memory (for a wasm backend) plus a full event queue and replay
/// buffer of the largest events. A native worker's own memory is its
/// process's, not the gateway's.
pub fn session_maximum(kind: BackendKind, policy: &SessionPolicy) -> u128 {
    let events = (policy.event_queue as u128 + policy.replay_buffer as u128)
        * (policy.max_event_bytes as u128 + EVENT_OVERHEAD as u128);
    let memory = match kind {
        BackendKind::Wasm => policy.memory_limit as u128,
        BackendKind::Native => 0,
    };
    memory + events
}

/// `512MiB`, `1.5GiB`: for people.
fn size(bytes: u128) -> String {
    let mib = bytes as f64 / f64::from(1 << 20);
    if mib >= 1024.0 {
        format!("{:.1}GiB", mib / 1024.0)
    } else {
        format!("{mib:.0}MiB")
    }
}

impl Config {
    /// Ways the configured maxima exceed `server.memory_budget`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let budget = self.server.memory_budget as u128;
        if let Some((name, each)) = self
            .backends
            .iter()
            .map(|b| (&b.name, session_maximum(b.kind, &b.policy)))
            .max_by_key(|(_, each)| *each)
        {
            let all = each * self.server.max_sessions as u128;
            if all > budget {
                out.push(format!(
                    "server.memory_budget: {} sessions (server.max_sessions) of up to {} each \
                     (backend {name:?}: memory_limit plus full event queue and replay buffer) \
                     could hold {}, over the budget of {}; past it, memory growth faults with \
                     memory-budget, events are handled by the overflow policy, and opens are \
                     refused with RESOURCE_EXHAUSTED",
                    self.server.max_sessions,
                    size(each),
                    size(all),
                    size(budget),
                ));
            }
        }
        let tenants: u128 = self
            .tenants
            .iter()
            .filter_map(|t| t.max_memory)
            .map(|m| m as u128)
            .sum();
        if tenants > budget {
            out.push(format!(
                "tenants[].max_memory: the tenants' limits add up to {}, over server.memory_budget \
                 of {}; the gateway's budget refuses first when they all use theirs",
                size(tenants),
                size(budget),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::parse;

    #[test]
    fn the_defaults_warn_only_past_the_budget() {
        // 1,024 wasm sessions of 64MiB and 1,280 events of 64KiB each are
        // far more than a small budget.
        let w = parse("[server]\nmemory_budget = \"1GiB\"\n")
            .unwrap()
            .warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("server.memory_budget"), "{w:?}");
        assert!(w[0].contains("1024 sessions"), "{w:?}");
        // Few small sessions fit.
        let w = parse(
            "[server]\nmemory_budget = \"1GiB\"\nmax_sessions = 4\n[sessions]\nmemory_limit = \"16MiB\"\nevent_queue = 16\nreplay_buffer = 0\n",
        )
        .unwrap()
        .warnings();
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn tenants_over_the_budget_are_named() {
        let w = parse(
            "[server]\nmemory_budget = \"1GiB\"\nmax_sessions = 1\n[sessions]\nmemory_limit = \"16MiB\"\nevent_queue = 16\nreplay_buffer = 0\n\
             [[tenants]]\nname = \"a\"\nmax_memory = \"600MiB\"\n[[tenants]]\nname = \"b\"\nmax_memory = \"600MiB\"\n",
        )
        .unwrap()
        .warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("tenants[].max_memory"), "{w:?}");
        assert!(w[0].contains("1.2GiB") && w[0].contains("1.0GiB"), "{w:?}");
    }
}
