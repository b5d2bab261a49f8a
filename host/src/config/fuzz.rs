//! Fuzz targets for the config file: any text, and random configs built
//! from the real keys with values right and wrong. Parsing never panics,
//! and every `Invalid` error names a key that is really in the file.

use proptest::prelude::*;
use toml::{Table, Value};

use super::*;
use crate::fuzzing::config;

/// Values of every shape a key may be given.
fn value() -> impl Strategy<Value = Value> {
    let text = prop_oneof![
        Just("off".to_string()),
        Just("auto".to_string()),
        "[0-9]{1,20}(ms|s|m|h|d|)",
        "[0-9]{1,20}(B|KiB|MiB|GiB|KB|MB|GB|TiB)",
        "[0-9]{0,3}\\.[0-9]{0,3}(ms|s)",
        "-[0-9]{1,3}s",
        "(127\\.0\\.0\\.1|0\\.0\\.0\\.0|\\[::1\\]|localhost):[0-9]{1,6}",
        "builtin:(echo|kv|chaos|nope|)",
        "[a-z._-]{0,12}",
        ".{0,16}",
        Just(String::new()),
    ];
    prop_oneof![
        4 => text.clone().prop_map(Value::String),
        2 => prop_oneof![Just(0i64), Just(1), Just(-1), Just(i64::MAX), Just(i64::MIN), any::<i64>()]
            .prop_map(Value::Integer),
        1 => any::<f64>().prop_map(Value::Float),
        1 => any::<bool>().prop_map(Value::Boolean),
        1 => proptest::collection::vec(text.clone().prop_map(Value::String), 0..3).prop_map(Value::Array),
        1 => proptest::collection::btree_map("[A-Za-z_]{0,6}", text.prop_map(Value::String), 0..3)
            .prop_map(|m| Value::Table(m.into_iter().collect())),
    ]
}

const SERVER_KEYS: &[&str] = &[
    "listen",
    "metrics_listen",
    "max_sessions",
    "max_message_bytes",
    "max_batch_commands",
    "sweep_interval",
    "shutdown_timeout",
    "closed_session_retention",
    "epoch_tick",
    "max_concurrent_streams",
    "max_connection_concurrency",
    "keepalive_interval",
    "keepalive_timeout",
    "max_pending_resets",
    "cache_dir",
    "max_event_stream_age",
    "allow_plaintext",
    "max_connections",
    "memory_budget",
    "max_auth_failures_per_sec",
    "auth_failures_burst",
    "guest_threads",
    "no_such_key",
];

const SESSION_KEYS: &[&str] = &[
    "command_timeout",
    "max_command_timeout",
    "lease",
    "max_lease",
    "idle_timeout",
    "max_lifetime",
    "close_timeout",
    "memory_limit",
    "max_reply_bytes",
    "max_event_bytes",
    "event_queue",
    "replay_buffer",
    "event_overflow",
    "max_event_subscribers",
    "max_pending_ticks",
    "log_lines_per_sec",
    "log_burst",
];

const BACKEND_KEYS: &[&str] = &[
    "name",
    "kind",
    "module",
    "command",
    "description",
    "version",
    "config",
];

const NATIVE_KEYS: &[&str] = &[
    "startup_timeout",
    "heartbeat_interval",
    "heartbeat_grace",
    "warm_pool",
    "max_frame_bytes",
];

const TENANT_KEYS: &[&str] = &[
    "name",
    "max_sessions",
    "max_memory",
    "backends",
    "max_requests_per_sec",
    "requests_burst",
    "max_opens_per_sec",
    "opens_burst",
    "cpu_weight",
    "max_concurrent_commands",
    "max_cpu_per_sec",
    "cpu_burst",
];

/// A table of some of `keys`, with random values.
fn table(keys: &'static [&'static str]) -> impl Strategy<Value = Table> {
    proptest::collection::vec((proptest::sample::select(keys), value()), 0..5)
        .prop_map(|pairs| pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Mostly-sensible backends: a valid name and module, then random keys.
fn backend() -> impl Strategy<Value = Table> {
    (
        table(BACKEND_KEYS),
        proptest::option::of(table(SESSION_KEYS)),
        proptest::option::of(table(NATIVE_KEYS)),
        "[a-z]{1,6}",
        proptest::sample::select(&["builtin:echo", "builtin:kv", "builtin:chaos"][..]),
    )
        .prop_map(|(mut t, sessions, native, name, module)| {
            t.entry("name").or_insert(Value::String(name));
            t.entry("module").or_insert(Value::String(module.into()));
            if let Some(s) = sessions {
                t.insert("sessions".into(), Value::Table(s));
            }
            if let Some(n) = native {
                t.insert("native".into(), Value::Table(n));
            }
            t
        })
}

fn tenant() -> impl Strategy<Value = Table> {
    (
        table(TENANT_KEYS),
        proptest::option::of(table(SESSION_KEYS)),
        "[a-z]{1,6}",
    )
        .prop_map(|(mut t, sessions, name)| {
            t.entry("name").or_insert(Value::String(name));
            if let Some(s) = sessions {
                t.insert("sessions".into(), Value::Table(s));
            }
            t
        })
}

fn config_file() -> impl Strategy<Value = Table> {
    (
        proptest::option::of(table(SERVER_KEYS)),
        proptest::option::of(table(SESSION_KEYS)),
        proptest::collection::vec(backend(), 0..3),
        proptest::collection::vec(tenant(), 0..3),
    )
        .prop_map(|(server, sessions, backends, tenants)| {
            let mut doc = Table::new();
            if let Some(s) = server {
                doc.insert("server".into(), Value::Table(s));
            }
            if let Some(s) = sessions {
                doc.insert("sessions".into(), Value::Table(s));
            }
            let array = |v: Vec<Table>| Value::Array(v.into_iter().map(Value::Table).collect());
            if !backends.is_empty() {
                doc.insert("backends".into(), array(backends));
            }
            if !tenants.is_empty() {
                doc.insert("tenants".into(), array(tenants));
            }
            doc
        })
}

/// The value at a dotted key like `backends[1].sessions.lease`, if the
/// document has it.
fn lookup<'a>(doc: &'a Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let first = parts.next()?;
    let mut at = step(doc, first)?;
    for part in parts {
        at = step(at.as_table()?, part)?;
    }
    Some(at)
}

/// One part of a dotted key: `name` or `name[i]`.
fn step<'a>(t: &'a Table, part: &str) -> Option<&'a Value> {
    match part.split_once('[') {
        None => t.get(part),
        Some((name, index)) => {
            let i: usize = index.strip_suffix(']')?.parse().ok()?;
            t.get(name)?.as_array()?.get(i)
        }
    }
}

/// The keys an `Invalid` error may name that are not in the file: checks
/// across keys, which name the section they are about.
fn names_a_real_key(doc: &Table, key: &str) -> bool {
    lookup(doc, key).is_some()
        || key
            .rsplit_once('.')
            .is_some_and(|(parent, _)| lookup(doc, parent).is_some())
}

/// Every key of the document, at any depth.
fn all_keys(t: &Table, out: &mut Vec<String>) {
    for (k, v) in t {
        out.push(k.clone());
        match v {
            Value::Table(t) => all_keys(t, out),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_table)
                .for_each(|t| all_keys(t, out)),
            _ => {}
        }
    }
}

/// Parses in an empty directory, so no path in a random config finds
/// anything.
fn parse_here(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    Config::parse(text, dir.path())
}

proptest! {
    #![proptest_config(config())]

    /// Any text: a config or an error, never a panic.
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        let _ = parse_here(&text);
    }

    /// TOML-looking lines from the real sections and keys.
    #[test]
    fn toml_ish_text_never_panics(
        lines in proptest::collection::vec(
            prop_oneof![
                "\\[(server|sessions|server\\.tls)\\]",
                "\\[\\[(backends|tenants|tenants\\.keys)\\]\\]",
                "\\[backends\\.(sessions|native|grants)\\]",
                "(name|module|lease|listen|kind|command|max_sessions) = (\"[a-z0-9:.]{0,10}\"|[0-9]{1,5}|true|\\[\\])",
                ".{0,30}",
            ],
            0..12,
        )
    ) {
        let _ = parse_here(&lines.join("\n"));
    }

    /// Random configs from the real keys: every `Invalid` error names a
    /// key of the file (or the section a cross-key check is about), and
    /// every other error quotes a key or value of the file.
    #[test]
    fn errors_name_a_real_key(doc in config_file()) {
        let text = toml::to_string(&doc).unwrap();
        match parse_here(&text) {
            Ok(_) => {}
            Err(ConfigError::Invalid { key, message }) => {
                prop_assert!(names_a_real_key(&doc, &key), "{key}: {message}\n{text}");
            }
            Err(ConfigError::Parse(message)) => {
                // toml quotes the line (with its key) it stopped at.
                let mut keys = Vec::new();
                all_keys(&doc, &mut keys);
                prop_assert!(
                    keys.iter().any(|k| message.contains(k.as_str())) || message.contains("missing field"),
                    "{message}\n{text}"
                );
            }
            Err(e @ ConfigError::Io { .. }) => prop_assert!(false, "{e}"),
        }
    }
}
