//! The functions a component exports, found once at load for whichever
//! version of the `gatehouse:backend` world it implements.
//!
//! The gateway speaks 0.2.0 and still loads 0.1.0 components: both export
//! the same `session` interface (structurally identical types, so one set
//! of typed functions serves both), and 0.2.0 components may also export
//! `state`. Looking the functions up by export index, rather than through a
//! generated world, is what lets one backend type serve every version.

use wasmtime::Store;
use wasmtime::component::{Component, ComponentExportIndex, Instance, TypedFunc};

use super::bindings::gatehouse::backend::types;
use super::host::SessionData;
use super::reply::{ReplyBytes, SnapshotBytes};

/// The world versions the gateway loads, newest first.
pub(super) const VERSIONS: [&str; 2] = ["0.2.0", "0.1.0"];

/// `session.handle`, lifting its reply under the reply cap so an oversized one is
/// never copied out of the instance.
pub(super) type HandleFunc =
    TypedFunc<(types::Command,), (Result<ReplyBytes, types::CommandError>,)>;
type OpenFunc = TypedFunc<(types::SessionContext,), (Result<(), String>,)>;
type UnitFunc = TypedFunc<(), ()>;
/// `state.snapshot`, lifted under the snapshot cap.
pub(super) type SnapshotFunc = TypedFunc<(), (SnapshotBytes,)>;
/// `state.restore`.
pub(super) type RestoreFunc = TypedFunc<(Vec<u8>, String), (Result<(), String>,)>;

/// Where a component's functions are, resolved at load.
#[derive(Clone)]
pub(super) struct ExportIndices {
    /// The world version the component implements, e.g. "0.2.0".
    pub version: &'static str,
    open: ComponentExportIndex,
    handle: ComponentExportIndex,
    tick: ComponentExportIndex,
    close: ComponentExportIndex,
    state: Option<(ComponentExportIndex, ComponentExportIndex)>,
}

impl ExportIndices {
    /// Finds the `session` interface of the newest version the component
    /// exports, and `state` when it exports that too (0.2.0 on).
    pub fn find(component: &Component) -> Result<Self, String> {
        let (version, session) = VERSIONS
            .iter()
            .find_map(|v| {
                component
                    .get_export_index(None, format!("gatehouse:backend/session@{v}").as_str())
                    .map(|i| (*v, i))
            })
            .ok_or_else(|| {
                format!(
                    "no gatehouse:backend/session export (of version {})",
                    VERSIONS.join(" or ")
                )
            })?;
        let func = |iface: &ComponentExportIndex, name: &str| {
            component
                .get_export_index(Some(iface), name)
                .ok_or_else(|| format!("no gatehouse:backend/session@{version}#{name} export"))
        };
        let state = match component
            .get_export_index(None, format!("gatehouse:backend/state@{version}").as_str())
        {
            None => None,
            Some(iface) => {
                let f = |name: &str| {
                    component
                        .get_export_index(Some(&iface), name)
                        .ok_or_else(|| {
                            format!("no gatehouse:backend/state@{version}#{name} export")
                        })
                };
                Some((f("snapshot")?, f("restore")?))
            }
        };
        Ok(Self {
            version,
            open: func(&session, "open")?,
            handle: func(&session, "handle")?,
            tick: func(&session, "tick")?,
            close: func(&session, "close")?,
            state,
        })
    }

    /// Whether the component exports `state`.
    pub fn stateful(&self) -> bool {
        self.state.is_some()
    }

    /// The typed functions of one instance.
    pub fn load(
        &self,
        store: &mut Store<SessionData>,
        instance: &Instance,
    ) -> wasmtime::Result<Exports> {
        let state = match &self.state {
            None => None,
            Some((snapshot, restore)) => Some(StateFuncs {
                snapshot: instance.get_typed_func(&mut *store, snapshot)?,
                restore: instance.get_typed_func(&mut *store, restore)?,
            }),
        };
        Ok(Exports {
            open: instance.get_typed_func(&mut *store, self.open)?,
            handle: instance.get_typed_func(&mut *store, self.handle)?,
            tick: instance.get_typed_func(&mut *store, self.tick)?,
            close: instance.get_typed_func(&mut *store, self.close)?,
            state,
        })
    }
}

/// One instance's exported functions.
pub(super) struct Exports {
    pub open: OpenFunc,
    pub handle: HandleFunc,
    pub tick: UnitFunc,
    pub close: UnitFunc,
    pub state: Option<StateFuncs>,
}

/// The optional `state` interface.
pub(super) struct StateFuncs {
    pub snapshot: SnapshotFunc,
    pub restore: RestoreFunc,
}
