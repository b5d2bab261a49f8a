//! What the fuzz targets share: they are proptest properties over input a
//! client, a plugin, a worker or an operator chooses, run on stable Rust
//! with `cargo test`.
//!
//! Each target runs 256 cases by default ([`DEFAULT_CASES`]; the
//! expensive ones fewer through [`config_with`]: 64 for the registry's open
//! target, 16 for the native conversation target), a few seconds in CI.
//! For a long run set `GATEHOUSE_FUZZ_CASES` (docs/security.md), e.g.
//! `GATEHOUSE_FUZZ_CASES=1000000 cargo test -p gatehouse --lib fuzz`.
//! A failure prints the smallest input found; it becomes a named
//! regression test next to the target.

use proptest::prelude::ProptestConfig;

/// The cases a target runs when `GATEHOUSE_FUZZ_CASES` is not set.
pub const DEFAULT_CASES: u32 = 256;

/// The proptest configuration of every fuzz target.
pub fn config() -> ProptestConfig {
    config_with(DEFAULT_CASES)
}

/// [`config`] for an expensive target, with its own default count.
pub fn config_with(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("GATEHOUSE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        // Regressions are written down as named tests, not as seed files.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
