//! The output of `gatehouse plugin check`: the report as lines for people
//! or one JSON object, and the exit code.

use std::path::Path;

use crate::backend::wasm::check::{CheckOptions, ImportStatus, check_component_with};
use crate::config::Config;

/// Where the check compiles: the serving engine's settings and compile
/// cache of `config` (the built-in defaults without one), unless
/// `no_cache`.
pub struct CheckSettings<'a> {
    /// The gateway config to take `[server]` settings from.
    pub config: Option<&'a Path>,
    /// Compile afresh, leaving the cache alone.
    pub no_cache: bool,
    /// One JSON object instead of lines.
    pub json: bool,
}

/// Runs `plugin check FILE`; returns the process exit code (0: the
/// gateway can run it).
pub fn run(file: &Path, settings: &CheckSettings<'_>) -> i32 {
    let config = match settings.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return 1;
            }
        },
        None => Config::builtin(),
    };
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return 1;
        }
    };
    let options = CheckOptions {
        runtime: crate::server::loader::runtime_options(&config),
        cache_dir: if settings.no_cache {
            None
        } else {
            config.server.cache_dir.as_deref()
        },
    };
    let report = match check_component_with(&bytes, &options) {
        Ok(r) => r,
        Err(e) => {
            if settings.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "error": e.to_string() })
                );
            } else {
                eprintln!("{}: {e}", file.display());
            }
            return 1;
        }
    };
    if settings.json {
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        value["ok"] = report.ok().into();
        println!("{value}");
        return if report.ok() { 0 } else { 1 };
    }
    let how = if report.cached {
        "loaded from the compile cache in"
    } else {
        "compiled in"
    };
    println!(
        "{}: gatehouse:backend@{} component, {} bytes, {how} {:.0} ms",
        file.display(),
        report.world_version,
        report.size,
        report.compile_time.as_secs_f64() * 1000.0
    );
    if report.stateful {
        println!(
            "state: exports gatehouse:backend/state; sessions keep their state across restarts and upgrades"
        );
    } else {
        println!(
            "state: none (no gatehouse:backend/state export); a restarted session starts fresh"
        );
    }
    // `emit` during a one-shot Call has nowhere to go: say so where a
    // plugin author looks.
    println!(
        "calls: a one-shot Call (gatehouse call) runs open, one command and close on a fresh instance; events emitted meanwhile are counted (gatehouse_call_events_dropped_total) and dropped"
    );
    println!("imports:");
    for i in &report.imports {
        let mark = match i.status {
            ImportStatus::Provided => "ok    ",
            ImportStatus::NeedsGrant => "denied",
            ImportStatus::Unsupported => "NO    ",
        };
        println!("  {mark} {:<44} {}", i.name, i.note);
    }
    if report
        .imports
        .iter()
        .any(|i| i.status == ImportStatus::NeedsGrant)
    {
        println!("(\"denied\": the component loads and runs; those calls fail unless granted)");
    }
    let missing: Vec<_> = report
        .imports
        .iter()
        .filter(|i| i.status == ImportStatus::Unsupported)
        .collect();
    if !report.ok() {
        for i in &missing {
            println!(
                "cannot run here: it imports {}, which gatehouse never provides",
                i.name
            );
        }
        // One line per distinct fix: wasi:http comes as several interfaces.
        let mut fixes: Vec<&str> = missing.iter().filter_map(|i| i.fix.as_deref()).collect();
        fixes.dedup();
        for fix in fixes {
            println!("fix: {fix}");
        }
        // The linker's own words, for imports not named above.
        if missing.is_empty() {
            for e in &report.link_errors {
                println!("cannot run here: {e}");
            }
        }
    }
    if report.ok() { 0 } else { 1 }
}
