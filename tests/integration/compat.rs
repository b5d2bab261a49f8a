//! The compatibility promise (docs/compatibility.md) held by tests: the
//! current proto is a compatible superset of the 0.1.0 one, the 0.1.0 WIT
//! world is unchanged, and a plugin compiled against it in 0.1.0 still
//! loads and runs. (The Python client generated from the 0.1.0 proto runs
//! against the current binary in .ci/run.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost_types::{DescriptorProto, FileDescriptorSet};

use crate::fixtures::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn descriptors(include: &Path) -> FileDescriptorSet {
    protox::compile(["gatehouse/v1/gateway.proto"], [include])
        .unwrap_or_else(|e| panic!("compiling {}: {e:?}", include.display()))
}

/// Every message of a set by full name, nested ones included.
fn messages(set: &FileDescriptorSet) -> BTreeMap<String, DescriptorProto> {
    fn walk(prefix: &str, msgs: &[DescriptorProto], out: &mut BTreeMap<String, DescriptorProto>) {
        for m in msgs {
            let name = format!("{prefix}.{}", m.name());
            walk(&name, &m.nested_type, out);
            out.insert(name, m.clone());
        }
    }
    let mut out = BTreeMap::new();
    for f in &set.file {
        walk(&format!(".{}", f.package()), &f.message_type, &mut out);
    }
    out
}

/// Every enum value of a set as (enum full name, value name) -> number.
fn enum_values(set: &FileDescriptorSet) -> BTreeMap<(String, String), i32> {
    let mut out = BTreeMap::new();
    let mut add = |scope: &str, enums: &[prost_types::EnumDescriptorProto]| {
        for e in enums {
            for v in &e.value {
                out.insert(
                    (format!("{scope}.{}", e.name()), v.name().to_string()),
                    v.number(),
                );
            }
        }
    };
    for f in &set.file {
        add(&format!(".{}", f.package()), &f.enum_type);
    }
    for (name, m) in messages(set) {
        add(&name, &m.enum_type);
    }
    out
}

/// What `old` has that `new` lost or changed: each entry one break.
fn breaks(old: &FileDescriptorSet, new: &FileDescriptorSet) -> Vec<String> {
    let mut found = Vec::new();
    let new_messages = messages(new);
    for (name, m) in messages(old) {
        let Some(now) = new_messages.get(&name) else {
            found.push(format!("message {name} is gone"));
            continue;
        };
        for f in &m.field {
            let same_number = now.field.iter().find(|g| g.number() == f.number());
            match same_number {
                None => found.push(format!(
                    "{name}.{} (field {}) is gone",
                    f.name(),
                    f.number()
                )),
                Some(g) => {
                    if (
                        g.name(),
                        g.r#type(),
                        g.label(),
                        g.type_name(),
                        g.oneof_index,
                    ) != (
                        f.name(),
                        f.r#type(),
                        f.label(),
                        f.type_name(),
                        f.oneof_index,
                    ) {
                        found.push(format!(
                            "{name} field {} changed: {f:?} -> {g:?}",
                            f.number()
                        ));
                    }
                }
            }
        }
    }
    let new_values = enum_values(new);
    for (key, number) in enum_values(old) {
        if new_values.get(&key) != Some(&number) {
            found.push(format!(
                "enum value {}.{} = {number} changed or is gone",
                key.0, key.1
            ));
        }
    }
    for f in &old.file {
        for s in &f.service {
            let now = new
                .file
                .iter()
                .filter(|g| g.package() == f.package())
                .flat_map(|g| &g.service)
                .find(|t| t.name() == s.name());
            let Some(now) = now else {
                found.push(format!("service {} is gone", s.name()));
                continue;
            };
            for m in &s.method {
                let kept = now.method.iter().any(|n| {
                    (
                        n.name(),
                        n.input_type(),
                        n.output_type(),
                        n.client_streaming(),
                        n.server_streaming(),
                    ) == (
                        m.name(),
                        m.input_type(),
                        m.output_type(),
                        m.client_streaming(),
                        m.server_streaming(),
                    )
                });
                if !kept {
                    found.push(format!(
                        "method {}.{} changed or is gone",
                        s.name(),
                        m.name()
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn the_proto_is_a_compatible_superset_of_0_1_0() {
    let old = descriptors(&root().join("tests/fixtures/proto-0.1.0"));
    let new = descriptors(&root().join("proto"));
    let found = breaks(&old, &new);
    assert!(
        found.is_empty(),
        "breaking changes against 0.1.0:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_superset_check_sees_breaking_changes() {
    let old = descriptors(&root().join("tests/fixtures/proto-0.1.0"));
    // A field renumbered, an enum value renumbered, a method dropped.
    let mut new = old.clone();
    let file = new
        .file
        .iter_mut()
        .find(|f| f.name() == "gatehouse/v1/gateway.proto")
        .unwrap();
    let msg = file
        .message_type
        .iter_mut()
        .find(|m| m.name() == "OpenSessionRequest")
        .unwrap();
    msg.field[0].number = Some(99);
    let e = file
        .enum_type
        .iter_mut()
        .find(|e| e.name() == "SessionState")
        .unwrap();
    e.value[1].number = Some(42);
    file.service[0].method.retain(|m| m.name() != "RenewLease");
    let found = breaks(&old, &new);
    assert_eq!(found.len(), 3, "{found:#?}");
}

/// A WIT file's declarations: its lines without comments, blank lines and
/// indentation.
fn declarations(wit: &str) -> Vec<&str> {
    wit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .collect()
}

#[test]
fn the_0_1_0_wit_world_is_frozen() {
    // Changing gatehouse:backend@0.1.0 in place would break every plugin
    // built against it: a change to the world needs a new version, and a
    // new version only adds (a 0.1.0 plugin keeps loading, see below).
    let frozen =
        std::fs::read_to_string(root().join("tests/fixtures/wit-0.1.0/backend.wit")).unwrap();
    let current = std::fs::read_to_string(root().join("wit/backend.wit")).unwrap();
    if current.contains("package gatehouse:backend@0.1.0;") {
        assert_eq!(
            current, frozen,
            "wit/backend.wit changed gatehouse:backend@0.1.0 in place"
        );
    }
    // Every declaration of 0.1.0 (but its package line) is still there, in
    // the same order, its types and signatures unchanged: later versions
    // add interfaces, worlds and functions around them.
    let mut current_lines = declarations(&current).into_iter();
    for line in declarations(&frozen)
        .into_iter()
        .filter(|l| !l.starts_with("package "))
    {
        assert!(
            current_lines.any(|c| c == line),
            "wit/backend.wit dropped or changed `{line}` of gatehouse:backend@0.1.0 (or moved it)"
        );
    }
}

#[tokio::test]
async fn a_plugin_built_against_wit_0_1_0_still_runs() {
    // Built from plugins/compat-0-1-0 against the frozen WIT, not the
    // current one (see host/build.rs).
    let plugin = std::path::PathBuf::from(env!("GATEHOUSE_COMPAT_PLUGIN"));
    let config = Toml::new().backend("old-echo", &plugin.display().to_string());
    let gw = Gatehouse::start(config.render()).await;
    let mut c = gw.client().await;
    let s = open(&mut c, "old-echo").await;
    assert_eq!(
        invoke_ok(&mut c, &s.session_id, "echo", b"still here").await,
        "still here"
    );
    let mut events = subscribe(&mut c, &s.session_id, None)
        .await
        .expect("StreamEvents");
    invoke_ok(&mut c, &s.session_id, "emit", b"1").await;
    assert_eq!(next_event(&mut events).await.sequence, 1);
    close(&mut c, &s.session_id).await;
}
