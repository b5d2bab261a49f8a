//! The backends a config without `[[backends]]` serves: the built-in wasm
//! examples and the `sim-device` native worker, which runs from this very
//! binary.

use std::collections::BTreeMap;

use super::{BackendKind, BackendSpec, Grants, ModuleSource, NativeSpec, Runner, SessionPolicy};
use crate::builtin;

/// `echo`, `kv` and `sim-device`, each under `policy`.
pub(super) fn builtin_backends(policy: &SessionPolicy) -> Vec<BackendSpec> {
    let describe = |name: &str| match name {
        "echo" => "Example: echo, a per-session counter, events and timer ticks",
        "kv" => "Example: a per-session key/value store",
        _ => "Example backend",
    };
    let spec = |name: &str, kind, runner, description: &str| BackendSpec {
        name: name.to_string(),
        kind,
        runner,
        description: description.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        config: BTreeMap::new(),
        grants: Grants::default(),
        policy: policy.clone(),
        retire_after: None,
        rollout: None,
        recovery: Default::default(),
    };
    let mut backends: Vec<BackendSpec> = builtin::DEFAULT_BACKENDS
        .iter()
        .map(|name| {
            spec(
                name,
                BackendKind::Wasm,
                Runner::Wasm(ModuleSource::Builtin((*name).to_string())),
                describe(name),
            )
        })
        .collect();
    // The native example runs from this very binary (`gatehouse worker
    // sim-device`), so it needs no build step of its own.
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "gatehouse".into());
    backends.push(spec(
        builtin::SIM_DEVICE,
        BackendKind::Native,
        Runner::Native(NativeSpec::new(vec![
            exe,
            "worker".into(),
            builtin::SIM_DEVICE.into(),
        ])),
        "Example native worker: a simulated industrial tag server",
    ));
    backends
}

#[cfg(test)]
mod tests {
    use crate::config::tests::parse;
    use crate::config::{Config, Runner};

    #[test]
    fn empty_file_gets_defaults_and_builtin_backends() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:50051");
        let names: Vec<&str> = c.backends.iter().map(|b| b.name.as_str()).collect();
        assert!(names.contains(&"echo") && names.contains(&"kv"));
    }

    #[test]
    fn the_builtin_config_serves_sim_device_from_this_binary() {
        let c = Config::builtin();
        let sim = c.backends.iter().find(|b| b.name == "sim-device").unwrap();
        let Runner::Native(n) = &sim.runner else {
            panic!("sim-device is native")
        };
        assert_eq!(&n.command[1..], ["worker", "sim-device"]);
        assert!(c.server.state_dir.is_absolute());
    }
}
