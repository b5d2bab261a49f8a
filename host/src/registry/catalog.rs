//! The loaded backends and their versions.
//!
//! A version is a backend's name, configured `version` and content digest.
//! Each backend name has at most one current version, which new opens get,
//! and any number of retiring ones: versions a reload replaced (or whose
//! backend it removed) that still have sessions. A session pins its version
//! from open to end ([`VersionPin`]), so its code never changes under it;
//! the catalog drops a retiring version when its last session ends, and
//! with it the compiled code and pool slots nothing else holds.
//!
//! The catalog is immutable: a reload or a sweep builds the next one and the
//! registry swaps it in whole, so an open never sees half a reload.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::backend_metrics::BackendMetrics;
use super::window::Window;
use crate::backend::BackendInfo;
use crate::config::Rollout;
use crate::metrics::Metrics;

/// A backend and the policy its sessions run under.
pub struct BackendEntry {
    /// The loaded backend.
    pub backend: Arc<dyn crate::backend::Backend>,
    /// Session limits and timeouts.
    pub policy: crate::config::SessionPolicy,
    /// Config handed to every session, under the request's.
    pub config: BTreeMap<String, String>,
    /// How long a replaced version keeps its sessions before they are
    /// closed (`backend-retired`); `None` waits for the last one.
    pub retire_after: Option<Duration>,
    /// How a new version of it rolls out (`[backends.rollout]`).
    pub rollout: Option<crate::config::Rollout>,
    /// Snapshots, restarts and session upgrades.
    pub recovery: crate::config::Recovery,
}

/// A canary's rollout: its share of opens and the faults that end it.
struct Canary {
    rollout: Rollout,
    faults: Mutex<Window>,
    /// Set once the rollout ended: rolled back (by its faults or by hand)
    /// or promoted.
    ended: AtomicBool,
    rolled_back: AtomicBool,
}

/// One loaded version of a backend.
pub struct Version {
    /// The backend, its policy and config.
    pub entry: BackendEntry,
    /// What `ListBackends` and `SessionInfo` show of it.
    pub info: Arc<BackendInfo>,
    /// The backend name's metric handles (shared by its versions).
    pub(super) metrics: Arc<BackendMetrics>,
    /// Sessions pinned to it that have not ended.
    live: AtomicUsize,
    /// When a reload stopped offering it to new opens.
    retired_at: Mutex<Option<Instant>>,
    /// Set while it is a canary (`[backends.rollout]`).
    canary: Option<Canary>,
}

impl Version {
    fn new(entry: BackendEntry, metrics: Arc<BackendMetrics>) -> Arc<Self> {
        Self::with_canary(entry, metrics, None)
    }

    fn with_canary(
        entry: BackendEntry,
        metrics: Arc<BackendMetrics>,
        rollout: Option<Rollout>,
    ) -> Arc<Self> {
        Arc::new(Self {
            info: Arc::new(entry.backend.info().clone()),
            entry,
            metrics,
            live: AtomicUsize::new(0),
            retired_at: Mutex::new(None),
            canary: rollout.map(|rollout| Canary {
                rollout,
                faults: Mutex::new(Window::default()),
                ended: AtomicBool::new(false),
                rolled_back: AtomicBool::new(false),
            }),
        })
    }

    /// Whether it is a canary still taking its share of new opens.
    fn is_live_canary(&self) -> bool {
        self.canary
            .as_ref()
            .is_some_and(|c| !c.ended.load(Ordering::Acquire))
    }

    /// Whether it was a canary and its rollout was rolled back.
    fn is_rolled_back(&self) -> bool {
        self.canary
            .as_ref()
            .is_some_and(|c| c.rolled_back.load(Ordering::Acquire))
    }

    /// Ends its rollout: rolled back (it retires) or promoted.
    fn end_rollout(&self, rolled_back: bool, now: Instant) -> bool {
        let Some(c) = &self.canary else {
            return false;
        };
        if c.ended.swap(true, Ordering::AcqRel) {
            return false;
        }
        if rolled_back {
            c.rolled_back.store(true, Ordering::Release);
            self.retire(now);
        }
        true
    }

    /// Counts a fault of one of its sessions. For a canary past its
    /// `max_faults` within the window this rolls the rollout back (new
    /// opens go to the current version again) and returns `true`, once.
    pub fn fault(&self, now: Instant) -> bool {
        let Some(c) = &self.canary else {
            return false;
        };
        if c.ended.load(Ordering::Acquire) {
            return false;
        }
        let within = c
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(c.rollout.window, now);
        within > c.rollout.max_faults as usize && self.end_rollout(true, now)
    }

    /// Sessions pinned to this version that have not ended.
    pub fn live_sessions(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// When it stopped taking new opens; `None` while it is current.
    pub fn retired_at(&self) -> Option<Instant> {
        *self
            .retired_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops offering it to new opens: from now it only serves its
    /// sessions (and pins), and its backend gives back its warm pool.
    fn retire(&self, now: Instant) {
        let mut at = self
            .retired_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if at.is_none() {
            *at = Some(now);
            self.entry.backend.retire();
        }
    }

    /// Whether `other` is the same loaded backend with the same settings:
    /// a reload keeps the loaded version rather than making a new one. The
    /// loader hands back the very same backend for an unchanged spec (code,
    /// version, grants, native settings), so identity says all of that.
    fn same_as(&self, other: &BackendEntry) -> bool {
        Arc::ptr_eq(&self.entry.backend, &other.backend)
            && self.entry.policy == other.policy
            && self.entry.config == other.config
            && self.entry.retire_after == other.retire_after
            && self.entry.rollout == other.rollout
    }

    /// `name@version` and `name@sha256:prefix`, as pins are written.
    fn answers_to(&self, pin: &str) -> bool {
        match pin.strip_prefix("sha256:") {
            Some(prefix) => {
                !prefix.is_empty()
                    && self
                        .info
                        .digest
                        .strip_prefix("sha256:")
                        .is_some_and(|d| d.starts_with(&prefix.to_ascii_lowercase()))
            }
            None => self.info.version == pin,
        }
    }
}

/// A session's hold on its version: counted while the session lives, and
/// keeping the version loaded.
pub struct VersionPin(Arc<Version>);

impl VersionPin {
    /// Pins `version`.
    pub(super) fn new(version: &Arc<Version>) -> Self {
        version.live.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(version))
    }

    /// The pinned version.
    pub fn version(&self) -> &Arc<Version> {
        &self.0
    }
}

impl Drop for VersionPin {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether a listed version takes new opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// New opens of the name get it.
    Current,
    /// Replaced or removed (or a rolled-back canary); only its sessions use
    /// it, and only a pin can open more on it.
    Retiring,
    /// A new version taking its rollout's share of new opens.
    Canary,
}

/// Every backend name's versions.
#[derive(Default, Clone)]
struct Line {
    /// `None` once a reload removed the backend.
    current: Option<Arc<Version>>,
    /// A new version on trial (`[backends.rollout]`).
    canary: Option<Arc<Version>>,
    retiring: Vec<Arc<Version>>,
}

impl Line {
    fn retire(&mut self, version: Arc<Version>, now: Instant) {
        version.retire(now);
        self.retiring.push(version);
    }
}

/// Why an open names no loaded version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// No backend of that name, or it was removed.
    NoBackend,
    /// The backend exists but no loaded version matches the pin.
    NoVersion,
}

/// What a reload changed, by backend name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// New backend names.
    pub added: Vec<String>,
    /// Names whose current version was replaced (old version retiring).
    pub updated: Vec<String>,
    /// Names no longer offered (their versions retiring).
    pub removed: Vec<String>,
    /// Names whose version stayed as it was.
    pub unchanged: Vec<String>,
}

/// The loaded backends; see the module docs.
#[derive(Default)]
pub struct Catalog {
    lines: BTreeMap<String, Line>,
}

impl Catalog {
    /// The catalog of a registry's first backends.
    pub(super) fn new(backends: BTreeMap<String, BackendEntry>, metrics: &Metrics) -> Self {
        let lines = backends
            .into_iter()
            .map(|(name, entry)| {
                let m = Arc::new(BackendMetrics::new(metrics, &name));
                let line = Line {
                    current: Some(Version::new(entry, m)),
                    canary: None,
                    retiring: Vec::new(),
                };
                (name, line)
            })
            .collect();
        Self { lines }
    }

    /// What an open of `backend` gets: `name` is the current version,
    /// `name@version` and `name@sha256:<hex prefix>` any loaded version
    /// (current or retiring) that matches.
    pub fn resolve(&self, backend: &str) -> Result<(String, Arc<Version>), Unresolved> {
        let (name, pin) = match backend.split_once('@') {
            Some((name, pin)) => (name, Some(pin)),
            None => (backend, None),
        };
        let line = self.lines.get(name).ok_or(Unresolved::NoBackend)?;
        let found = match pin {
            None => match &line.canary {
                Some(c) if c.is_live_canary() && in_share(c) => Arc::clone(c),
                _ => line.current.clone().ok_or(Unresolved::NoBackend)?,
            },
            Some(pin) => line
                .current
                .iter()
                .chain(&line.canary)
                .chain(&line.retiring)
                .find(|v| v.answers_to(pin))
                .cloned()
                .ok_or(Unresolved::NoVersion)?,
        };
        Ok((name.to_string(), found))
    }

    /// Whether `version` is still loaded (current, canary or retiring).
    pub fn holds(&self, version: &Arc<Version>) -> bool {
        self.lines.get(&version.info.name).is_some_and(|line| {
            line.current
                .iter()
                .chain(&line.canary)
                .chain(&line.retiring)
                .any(|v| Arc::ptr_eq(v, version))
        })
    }

    /// `name`'s current version (never its canary).
    pub fn current(&self, name: &str) -> Option<Arc<Version>> {
        self.lines.get(name).and_then(|l| l.current.clone())
    }

    /// Every loaded version with its state, by name, current first.
    pub fn versions(&self) -> Vec<(Arc<Version>, VersionState)> {
        let mut out = Vec::new();
        for line in self.lines.values() {
            if let Some(v) = &line.current {
                out.push((Arc::clone(v), VersionState::Current));
            }
            if let Some(v) = &line.canary {
                let state = if v.is_live_canary() {
                    VersionState::Canary
                } else {
                    VersionState::Retiring
                };
                out.push((Arc::clone(v), state));
            }
            for v in &line.retiring {
                out.push((Arc::clone(v), VersionState::Retiring));
            }
        }
        out
    }

    /// The catalog after a reload to `backends`: an entry equal to the
    /// current version keeps it; a different one becomes current and the
    /// old one retires, or, with `[backends.rollout]`, becomes a canary
    /// beside it; an entry equal to the canary keeps it, and one equal to
    /// the current version ends the rollout; a name missing from
    /// `backends` retires its versions and takes no new opens.
    pub(super) fn reloaded(
        &self,
        backends: BTreeMap<String, BackendEntry>,
        metrics: &Metrics,
        now: Instant,
    ) -> (Self, Changes) {
        let mut changes = Changes::default();
        let mut lines = self.lines.clone();
        let mut seen = std::collections::BTreeSet::new();
        for (name, entry) in backends {
            seen.insert(name.clone());
            let line = lines.entry(name.clone()).or_default();
            let m = line
                .current
                .iter()
                .chain(&line.retiring)
                .next()
                .map(|v| Arc::clone(&v.metrics))
                .unwrap_or_else(|| Arc::new(BackendMetrics::new(metrics, &name)));
            if let Some(canary) = &line.canary
                && canary.is_live_canary()
                && canary.same_as(&entry)
            {
                changes.unchanged.push(name);
                continue;
            }
            if let Some(canary) = line.canary.take() {
                line.retire(canary, now);
            }
            let rollout = entry.rollout;
            match line.current.clone() {
                Some(current) if current.same_as(&entry) => {
                    changes.unchanged.push(name);
                }
                Some(current) => {
                    changes.updated.push(name);
                    match rollout {
                        Some(r) => line.canary = Some(Version::with_canary(entry, m, Some(r))),
                        None => {
                            line.retire(current, now);
                            line.current = Some(Version::new(entry, m));
                        }
                    }
                }
                None => {
                    changes.added.push(name);
                    line.current = Some(Version::new(entry, m));
                }
            }
        }
        for (name, line) in &mut lines {
            if seen.contains(name) {
                continue;
            }
            if let Some(canary) = line.canary.take() {
                line.retire(canary, now);
            }
            if let Some(current) = line.current.take() {
                line.retire(current, now);
                changes.removed.push(name.clone());
            }
        }
        let mut next = Self { lines };
        next.drop_unused();
        (next, changes)
    }

    /// Ends `name`'s rollout by hand: `promote` makes the canary the
    /// current version (the old one retires), else the canary retires.
    pub(super) fn rollout_ended(
        &self,
        name: &str,
        promote: bool,
        now: Instant,
    ) -> Result<Self, String> {
        let mut lines = self.lines.clone();
        let line = lines
            .get_mut(name)
            .ok_or_else(|| format!("no backend {name:?}"))?;
        let canary = line
            .canary
            .take()
            .ok_or_else(|| format!("backend {name:?} has no rollout in progress"))?;
        if !canary.is_live_canary() {
            line.canary = Some(canary);
            return Err(format!(
                "backend {name:?}: the rollout was already rolled back"
            ));
        }
        if promote {
            // The canary itself becomes current: its sessions, pool and
            // code are the current version's now.
            canary.end_rollout(false, now);
            if let Some(current) = line.current.replace(canary) {
                line.retire(current, now);
            }
        } else {
            canary.end_rollout(true, now);
            line.retiring.push(canary);
        }
        let mut next = Self { lines };
        next.drop_unused();
        Ok(next)
    }

    /// Retiring versions past their backend's `retire_after`, whose
    /// remaining sessions must close.
    pub fn overdue(&self, now: Instant) -> Vec<Arc<Version>> {
        self.lines
            .values()
            .flat_map(|l| &l.retiring)
            .filter(|v| v.live_sessions() > 0)
            .filter(|v| {
                let after: Option<Duration> = v.entry.retire_after;
                match (after, v.retired_at()) {
                    (Some(after), Some(at)) => now.saturating_duration_since(at) >= after,
                    _ => false,
                }
            })
            .cloned()
            .collect()
    }

    /// Whether some retiring version has no session left to wait for.
    pub fn has_unused(&self) -> bool {
        !self.unused().is_empty()
    }

    /// The retiring versions no session uses (a rolled-back canary
    /// among them), with their names.
    pub fn unused(&self) -> Vec<(&str, &Arc<Version>)> {
        self.lines
            .iter()
            .flat_map(|(name, l)| {
                let rolled_back = l.canary.iter().filter(|c| c.is_rolled_back());
                l.retiring
                    .iter()
                    .chain(rolled_back)
                    .map(move |v| (name.as_str(), v))
            })
            .filter(|(_, v)| v.live_sessions() == 0)
            .collect()
    }

    /// This catalog without retiring versions nobody uses any more.
    pub(super) fn without_unused(&self) -> Self {
        let mut next = Self {
            lines: self.lines.clone(),
        };
        next.drop_unused();
        next
    }

    fn drop_unused(&mut self) {
        for line in self.lines.values_mut() {
            // A rolled-back canary is a retiring version like the others.
            if let Some(c) = line.canary.take_if(|c| c.is_rolled_back()) {
                line.retiring.push(c);
            }
            line.retiring.retain(|v| v.live_sessions() > 0);
        }
        self.lines
            .retain(|_, l| l.current.is_some() || l.canary.is_some() || !l.retiring.is_empty());
    }
}

/// Whether this open is in the canary's share.
fn in_share(canary: &Version) -> bool {
    let percent = canary
        .canary
        .as_ref()
        .map_or(0, |c| u32::from(c.rollout.percent));
    rand::random_range(0..100u32) < percent
}
