//! The example backends compiled into the binary, so `gatehouse serve` works
//! with no files at all.

include!(concat!(env!("OUT_DIR"), "/builtin_components.rs"));

/// Prefix of a module path naming a built-in component, as in `builtin:echo`.
pub const BUILTIN_PREFIX: &str = "builtin:";

/// Returns the bytes of the built-in component `name`, if there is one.
pub fn component(name: &str) -> Option<&'static [u8]> {
    BUILTIN_COMPONENTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// The built-in components served when no config names any backend. The
/// others (the `chaos` test backend) must be named in a config.
pub const DEFAULT_BACKENDS: &[&str] = &["echo", "kv"];

/// The built-in native example backend, run from this binary as `gatehouse
/// worker sim-device`.
pub const SIM_DEVICE: &str = "sim-device";
