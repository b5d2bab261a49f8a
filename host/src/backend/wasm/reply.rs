//! Lifting a command's reply (or a state snapshot) without copying an
//! oversized one out of the instance.
//!
//! The generated bindings lift `list<u8>` into a `Vec<u8>`, copying whatever
//! the guest returns (up to its whole memory) into the gateway before anyone
//! can check its size. [`Reply`] lifts the same `list<u8>` but reads only the
//! pointer and length first, and copies the bytes only when they fit under
//! [`set_reply_cap`]. It is lifted while the guest's memory is still valid
//! (before post-return frees the list).
//!
//! This implements wasmtime's `ComponentType`/`Lift` through its
//! `__internal` re-exports, so it is tied to the wasmtime major in use.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::ValRaw;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift, WasmList};

/// The largest reply any backend allows; larger replies are never copied.
static REPLY_CAP: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The largest snapshot any backend allows.
static SNAPSHOT_CAP: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Sets the largest reply that is copied out of an instance (the largest
/// `max_reply_bytes` of any backend).
pub(super) fn set_reply_cap(bytes: usize) {
    REPLY_CAP.store(bytes, Ordering::Relaxed);
}

/// Sets the largest snapshot that is copied out of an instance (the
/// largest `[backends.snapshot] max_bytes` of any backend).
pub(super) fn set_snapshot_cap(bytes: usize) {
    SNAPSHOT_CAP.store(bytes, Ordering::Relaxed);
}

/// Which process-wide cap a [`Capped`] list is lifted under.
pub trait Cap: Send + Sync + 'static {
    /// The cap now.
    fn bytes() -> usize;
}

/// Replies: `max_reply_bytes`.
pub struct ReplyCap;
impl Cap for ReplyCap {
    fn bytes() -> usize {
        REPLY_CAP.load(Ordering::Relaxed)
    }
}

/// Snapshots: `[backends.snapshot] max_bytes`.
pub struct SnapshotCap;
impl Cap for SnapshotCap {
    fn bytes() -> usize {
        SNAPSHOT_CAP.load(Ordering::Relaxed)
    }
}

/// A `list<u8>` lifted under cap `C`: the bytes, or only the length when it
/// was over the cap.
pub struct Capped<C> {
    /// What was lifted.
    pub value: Reply,
    cap: PhantomData<C>,
}

/// A command's reply.
pub type ReplyBytes = Capped<ReplyCap>;
/// A state snapshot.
pub type SnapshotBytes = Capped<SnapshotCap>;

/// A lifted `list<u8>`: the bytes, or only the length when it was over the cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The list fit and was copied.
    Bytes(Vec<u8>),
    /// The list was this long and stayed in the instance.
    TooLarge(usize),
}

impl<C: Cap> Capped<C> {
    fn read(cx: &LiftContext<'_>, ptr: u32, len: u32) -> wasmtime::Result<Self> {
        let value = Self::bytes(cx, ptr, len)?;
        Ok(Self {
            value,
            cap: PhantomData,
        })
    }

    fn bytes(cx: &LiftContext<'_>, ptr: u32, len: u32) -> wasmtime::Result<Reply> {
        let len = len as usize;
        if len > C::bytes() {
            return Ok(Reply::TooLarge(len));
        }
        let start = ptr as usize;
        let bytes = cx
            .memory()
            .get(start..start.saturating_add(len))
            .ok_or_else(|| wasmtime::format_err!("reply list out of bounds of memory"))?;
        Ok(Reply::Bytes(bytes.to_vec()))
    }
}

// SAFETY: `Capped` has exactly the ABI of `list<u8>` (it delegates the type
// check and layout to `WasmList<u8>`) and is only ever lifted.
unsafe impl<C: Cap> ComponentType for Capped<C> {
    type Lower = <WasmList<u8> as ComponentType>::Lower;

    const ABI: CanonicalAbiInfo = <WasmList<u8> as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <WasmList<u8> as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: lifting only reads the (pointer, length) pair the canonical ABI
// defines for lists and bounds-checks the bytes against guest memory.
unsafe impl<C: Cap> Lift for Capped<C> {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        _ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        let raw: &[ValRaw; 2] = src;
        Self::read(cx, raw[0].get_u32(), raw[1].get_u32())
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        _ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        let word = |i: usize| -> wasmtime::Result<u32> {
            bytes
                .get(i..i + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| wasmtime::format_err!("truncated list pointer pair"))
        };
        Self::read(cx, word(0)?, word(4)?)
    }
}
