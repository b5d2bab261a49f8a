//! The session policy and its one patch type.
//!
//! A session's [`SessionPolicy`] is built in layers, each a [`SessionPatch`]
//! (the same keys, all optional, in every layer):
//!
//! ```text
//! SessionPolicy::default() <- [sessions] <- [backends.sessions] <- [tenants.sessions]
//! ```
//!
//! `[sessions]` and `[backends.sessions]` replace the values below them
//! ([`Layer::Sessions`]); `[tenants.sessions]` can only lower a limit, never
//! raise it, and may not set `event_overflow`, which is a backend setting and
//! not a limit ([`Layer::Tenant`]). A patch is checked by one function,
//! [`SessionPatch::check`], and laid over a policy by one,
//! [`SessionPatch::merge`].

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, nonzero, units};

/// `memory_limit` when none is configured: linear memory per wasm session.
pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;

/// The smallest `memory_limit` a config may set.
pub const MIN_MEMORY_LIMIT: usize = 1 << 20;

/// `log_lines_per_sec` when none is configured: guest log lines per session
/// and second, after a burst of [`DEFAULT_LOG_BURST`].
pub const DEFAULT_LOG_LINES_PER_SEC: u32 = 50;

/// `log_burst` when none is configured.
pub const DEFAULT_LOG_BURST: u32 = 200;

/// What a session may do and how long it may live (`[sessions]`, and
/// `[backends.sessions]` per backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Command timeout when the client asks for none.
    pub command_timeout: Duration,
    /// Largest command timeout a client may ask for.
    pub max_command_timeout: Duration,
    /// Lease when the client asks for none.
    pub lease: Duration,
    /// Largest lease a client may ask for.
    pub max_lease: Duration,
    /// Close after this long without a client call.
    pub idle_timeout: Option<Duration>,
    /// Close this long after open, whatever happens.
    pub max_lifetime: Option<Duration>,
    /// Time for a graceful close before the worker is killed.
    pub close_timeout: Duration,
    /// Linear memory a wasm session may grow to, in bytes.
    pub memory_limit: usize,
    /// Largest reply payload a command may return.
    pub max_reply_bytes: usize,
    /// Largest event payload a worker may emit.
    pub max_event_bytes: usize,
    /// Undelivered events kept per session.
    pub event_queue: usize,
    /// Delivered events kept for resuming a stream.
    pub replay_buffer: usize,
    /// What happens when the event queue is full.
    pub event_overflow: OverflowPolicy,
    /// Event streams attached to one session at a time.
    pub max_event_subscribers: usize,
    /// Ticks a plugin may have scheduled at once.
    pub max_pending_ticks: usize,
    /// Guest log lines (stdout, stderr, `host.log`) a session may write per
    /// second, after a burst of `log_burst`; the rest are dropped and counted.
    pub log_lines_per_sec: u32,
    /// Guest log lines a session may write at once.
    pub log_burst: u32,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(30),
            max_command_timeout: Duration::from_secs(300),
            lease: Duration::from_secs(60),
            max_lease: Duration::from_secs(3600),
            idle_timeout: None,
            max_lifetime: None,
            close_timeout: Duration::from_secs(5),
            memory_limit: DEFAULT_MEMORY_LIMIT,
            max_reply_bytes: 1 << 20,
            max_event_bytes: 64 << 10,
            event_queue: 1024,
            replay_buffer: 256,
            event_overflow: OverflowPolicy::DropOldest,
            max_event_subscribers: 1,
            max_pending_ticks: 64,
            log_lines_per_sec: DEFAULT_LOG_LINES_PER_SEC,
            log_burst: DEFAULT_LOG_BURST,
        }
    }
}

/// What to do when a session's event queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    /// Drop the oldest undelivered event and count it.
    DropOldest,
    /// Fault the session.
    Fault,
}

/// One layer of session settings, as written in `[sessions]`,
/// `[backends.sessions]` or `[tenants.sessions]`: the keys of
/// [`SessionPolicy`], each optional. A key that is not set leaves the layer
/// below alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionPatch {
    /// [`SessionPolicy::command_timeout`].
    #[serde(deserialize_with = "units::duration")]
    pub command_timeout: Option<Duration>,
    /// [`SessionPolicy::max_command_timeout`].
    #[serde(deserialize_with = "units::duration")]
    pub max_command_timeout: Option<Duration>,
    /// [`SessionPolicy::lease`].
    #[serde(deserialize_with = "units::duration")]
    pub lease: Option<Duration>,
    /// [`SessionPolicy::max_lease`].
    #[serde(deserialize_with = "units::duration")]
    pub max_lease: Option<Duration>,
    /// [`SessionPolicy::idle_timeout`]; `Some(None)` is `"off"`.
    #[serde(deserialize_with = "units::duration_or_off")]
    pub idle_timeout: Option<Option<Duration>>,
    /// [`SessionPolicy::max_lifetime`]; `Some(None)` is `"off"`.
    #[serde(deserialize_with = "units::duration_or_off")]
    pub max_lifetime: Option<Option<Duration>>,
    /// [`SessionPolicy::close_timeout`].
    #[serde(deserialize_with = "units::duration")]
    pub close_timeout: Option<Duration>,
    /// [`SessionPolicy::memory_limit`].
    #[serde(deserialize_with = "units::size")]
    pub memory_limit: Option<usize>,
    /// [`SessionPolicy::max_reply_bytes`].
    #[serde(deserialize_with = "units::size")]
    pub max_reply_bytes: Option<usize>,
    /// [`SessionPolicy::max_event_bytes`].
    #[serde(deserialize_with = "units::size")]
    pub max_event_bytes: Option<usize>,
    /// [`SessionPolicy::event_queue`].
    pub event_queue: Option<usize>,
    /// [`SessionPolicy::replay_buffer`].
    pub replay_buffer: Option<usize>,
    /// [`SessionPolicy::event_overflow`]; never set in a tenant's patch.
    pub event_overflow: Option<OverflowPolicy>,
    /// [`SessionPolicy::max_event_subscribers`].
    pub max_event_subscribers: Option<usize>,
    /// [`SessionPolicy::max_pending_ticks`].
    pub max_pending_ticks: Option<usize>,
    /// [`SessionPolicy::log_lines_per_sec`].
    pub log_lines_per_sec: Option<u32>,
    /// [`SessionPolicy::log_burst`].
    pub log_burst: Option<u32>,
}

/// A tenant's `[tenants.sessions]`: a [`SessionPatch`] that only ever
/// lowers a backend's limits ([`SessionPatch::apply`]).
pub type LimitOverrides = SessionPatch;

/// Where a patch is written, which decides how it goes over the policy
/// below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layer {
    /// `[sessions]` over the defaults, `[backends.sessions]` over
    /// `[sessions]`: a set value replaces the one below.
    Sessions,
    /// `[tenants.sessions]` over the policy of whichever backend a session
    /// is opened on: a set value can only lower a limit, never raise it, and
    /// `event_overflow` may not be set.
    Tenant,
}

impl SessionPatch {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// A tenant's limits over a backend's policy: every limit is the smaller
    /// of the two, and defaults stay within their maximums. Settings that
    /// are not limits (`event_overflow`) are the backend's.
    pub fn apply(&self, backend: &SessionPolicy) -> SessionPolicy {
        self.merge(backend, Layer::Tenant)
    }

    /// `[sessions]` or `[backends.sessions]`, written at `key`, checked and
    /// laid over `below`.
    pub(super) fn over(
        &self,
        below: &SessionPolicy,
        key: &str,
    ) -> Result<SessionPolicy, ConfigError> {
        self.check(key, Layer::Sessions, Some(below))?;
        Ok(self.merge(below, Layer::Sessions))
    }

    /// `[tenants.sessions]`, written at `key`, checked on its own (the
    /// backends it will go over are combined with it at open). `"off"` is
    /// no limit, which never lowers anything, so it is dropped.
    pub(super) fn tenant_limits(self, key: &str) -> Result<LimitOverrides, ConfigError> {
        self.check(key, Layer::Tenant, None)?;
        Ok(Self {
            idle_timeout: self.idle_timeout.filter(Option::is_some),
            max_lifetime: self.max_lifetime.filter(Option::is_some),
            ..self
        })
    }

    /// The one check of a patch, in any layer; errors name `key.<name>`.
    ///
    /// Each set value is checked on its own, then the pairs that must agree
    /// (a default within its maximum). With the policy `below` known, an
    /// unset side of a pair is the value below; without it (a tenant's
    /// patch, which goes over backends not known here) only a pair set on
    /// both sides is checked, and [`SessionPatch::merge`] keeps the rest in
    /// order.
    fn check(
        &self,
        key: &str,
        layer: Layer,
        below: Option<&SessionPolicy>,
    ) -> Result<(), ConfigError> {
        let k = |name: &str| format!("{key}.{name}");
        // Destructured in full, so a key added to the patch cannot be
        // silently left unchecked: it fails to compile until it is either
        // checked here or named as needing no check.
        let Self {
            command_timeout,
            max_command_timeout,
            lease,
            max_lease,
            idle_timeout,
            max_lifetime,
            close_timeout: _,
            memory_limit,
            max_reply_bytes: _,
            max_event_bytes: _,
            event_queue,
            replay_buffer: _,
            event_overflow,
            max_event_subscribers,
            max_pending_ticks: _,
            log_lines_per_sec: _,
            log_burst: _,
        } = *self;
        if layer == Layer::Tenant && event_overflow.is_some() {
            return Err(invalid(
                k("event_overflow"),
                "is a backend setting, not a limit a tenant can lower",
            ));
        }
        for (name, value) in [
            ("command_timeout", command_timeout),
            ("max_command_timeout", max_command_timeout),
            ("lease", lease),
            ("max_lease", max_lease),
            // "off" is no limit, which is always allowed.
            ("idle_timeout", idle_timeout.flatten()),
            ("max_lifetime", max_lifetime.flatten()),
        ] {
            if let Some(d) = value {
                nonzero(d, &k(name))?;
            }
        }
        let or_below = |set: Option<Duration>, get: fn(&SessionPolicy) -> Duration| {
            set.or_else(|| below.map(get))
        };
        if let (Some(t), Some(max)) = (
            or_below(command_timeout, |p| p.command_timeout),
            or_below(max_command_timeout, |p| p.max_command_timeout),
        ) && t > max
        {
            return Err(invalid(
                k("command_timeout"),
                "is larger than max_command_timeout",
            ));
        }
        if let (Some(t), Some(max)) = (
            or_below(lease, |p| p.lease),
            or_below(max_lease, |p| p.max_lease),
        ) && t > max
        {
            return Err(invalid(k("lease"), "is larger than max_lease"));
        }
        if memory_limit.is_some_and(|m| m < MIN_MEMORY_LIMIT) {
            return Err(invalid(k("memory_limit"), "must be at least 1MiB"));
        }
        if event_queue == Some(0) {
            return Err(invalid(k("event_queue"), "must be at least 1"));
        }
        if max_event_subscribers == Some(0) {
            return Err(invalid(k("max_event_subscribers"), "must be at least 1"));
        }
        Ok(())
    }

    /// The one way a patch goes over a policy: in [`Layer::Sessions`] a set
    /// value replaces the one below, in [`Layer::Tenant`] it is the smaller
    /// of the two and `event_overflow` stays the backend's. Either way the
    /// default command timeout and lease end within their maximums.
    fn merge(&self, below: &SessionPolicy, layer: Layer) -> SessionPolicy {
        let lower = layer == Layer::Tenant;
        let Self {
            command_timeout,
            max_command_timeout,
            lease,
            max_lease,
            idle_timeout,
            max_lifetime,
            close_timeout,
            memory_limit,
            max_reply_bytes,
            max_event_bytes,
            event_queue,
            replay_buffer,
            event_overflow,
            max_event_subscribers,
            max_pending_ticks,
            log_lines_per_sec,
            log_burst,
        } = *self;
        let mut p = SessionPolicy {
            command_timeout: take(below.command_timeout, command_timeout, lower),
            max_command_timeout: take(below.max_command_timeout, max_command_timeout, lower),
            lease: take(below.lease, lease, lower),
            max_lease: take(below.max_lease, max_lease, lower),
            idle_timeout: take_opt(below.idle_timeout, idle_timeout, lower),
            max_lifetime: take_opt(below.max_lifetime, max_lifetime, lower),
            close_timeout: take(below.close_timeout, close_timeout, lower),
            memory_limit: take(below.memory_limit, memory_limit, lower),
            max_reply_bytes: take(below.max_reply_bytes, max_reply_bytes, lower),
            max_event_bytes: take(below.max_event_bytes, max_event_bytes, lower),
            event_queue: take(below.event_queue, event_queue, lower),
            replay_buffer: take(below.replay_buffer, replay_buffer, lower),
            event_overflow: match event_overflow {
                Some(o) if !lower => o,
                _ => below.event_overflow,
            },
            max_event_subscribers: take(below.max_event_subscribers, max_event_subscribers, lower),
            max_pending_ticks: take(below.max_pending_ticks, max_pending_ticks, lower),
            log_lines_per_sec: take(below.log_lines_per_sec, log_lines_per_sec, lower),
            log_burst: take(below.log_burst, log_burst, lower),
        };
        p.command_timeout = p.command_timeout.min(p.max_command_timeout);
        p.lease = p.lease.min(p.max_lease);
        p
    }
}

/// A value below and the patch's: the patch's if set (when lowering, the
/// smaller of the two).
fn take<T: Ord>(below: T, set: Option<T>, lower: bool) -> T {
    match set {
        None => below,
        Some(v) if lower => v.min(below),
        Some(v) => v,
    }
}

/// [`take`] for limits where `None` is no limit (`"off"`); when lowering,
/// `"off"` lowers nothing.
fn take_opt(
    below: Option<Duration>,
    set: Option<Option<Duration>>,
    lower: bool,
) -> Option<Duration> {
    match set {
        None => below,
        Some(v) if !lower => v,
        Some(None) => below,
        Some(Some(t)) => Some(below.map_or(t, |b| b.min(t))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::parse;

    #[test]
    fn backend_policy_overrides_global_defaults() {
        let c = parse(
            "[sessions]\nlease = \"5s\"\nidle_timeout = \"1m\"\n[[backends]]\nname = \"a\"\nmodule = \"builtin:echo\"\n[backends.sessions]\ncommand_timeout = \"200ms\"\nmemory_limit = \"8MiB\"\nidle_timeout = \"off\"\n",
        )
        .unwrap();
        let p = &c.backends[0].policy;
        assert_eq!(p.lease, Duration::from_secs(5));
        assert_eq!(p.command_timeout, Duration::from_millis(200));
        assert_eq!(p.memory_limit, 8 << 20);
        assert_eq!(p.idle_timeout, None);
    }

    #[test]
    fn overrides_only_lower_the_backends_limits() {
        let backend = SessionPolicy {
            command_timeout: Duration::from_secs(2),
            max_command_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(60),
            idle_timeout: None,
            max_lifetime: Some(Duration::from_secs(100)),
            memory_limit: 8 << 20,
            ..SessionPolicy::default()
        };
        let o = LimitOverrides {
            // Above the backend's: clamped to it.
            command_timeout: Some(Duration::from_secs(5)),
            memory_limit: Some(64 << 20),
            max_lifetime: Some(Some(Duration::from_secs(500))),
            // Below the backend's: taken.
            idle_timeout: Some(Some(Duration::from_secs(30))),
            max_lease: Some(Duration::from_secs(20)),
            event_queue: Some(8),
            ..LimitOverrides::default()
        };
        let p = o.apply(&backend);
        assert_eq!(p.command_timeout, Duration::from_secs(2));
        assert_eq!(p.memory_limit, 8 << 20);
        assert_eq!(p.max_lifetime, Some(Duration::from_secs(100)));
        assert_eq!(p.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(p.max_lease, Duration::from_secs(20));
        assert_eq!(
            p.lease,
            Duration::from_secs(20),
            "the default lease follows its max"
        );
        assert_eq!(p.event_queue, 8);
        assert_eq!(p.event_overflow, backend.event_overflow);
        assert_eq!(LimitOverrides::default().apply(&backend), backend);
        assert!(LimitOverrides::default().is_empty());
    }

    #[test]
    fn a_tenant_cannot_raise_a_limit_or_set_event_overflow() {
        let backend = SessionPolicy::default();
        // Every key set far above the default: nothing moves.
        let above = SessionPatch {
            command_timeout: Some(Duration::from_secs(3600)),
            max_command_timeout: Some(Duration::from_secs(7200)),
            lease: Some(Duration::from_secs(36_000)),
            max_lease: Some(Duration::from_secs(72_000)),
            idle_timeout: Some(None),
            max_lifetime: Some(None),
            close_timeout: Some(Duration::from_secs(600)),
            memory_limit: Some(1 << 30),
            max_reply_bytes: Some(1 << 30),
            max_event_bytes: Some(1 << 30),
            event_queue: Some(1 << 20),
            replay_buffer: Some(1 << 20),
            event_overflow: Some(OverflowPolicy::Fault),
            max_event_subscribers: Some(100),
            max_pending_ticks: Some(1 << 20),
            log_lines_per_sec: Some(1 << 20),
            log_burst: Some(1 << 20),
        };
        assert_eq!(above.apply(&backend), backend);
        // The same patch in [sessions] replaces every value.
        let replaced = above.merge(&backend, Layer::Sessions);
        assert_eq!(replaced.memory_limit, 1 << 30);
        assert_eq!(replaced.event_overflow, OverflowPolicy::Fault);
        assert_eq!(replaced.idle_timeout, None);
        // "off" in a tenant's patch is dropped: it lowers nothing.
        let c = parse(
            "[[tenants]]\nname = \"a\"\n[tenants.sessions]\nidle_timeout = \"off\"\nmax_lifetime = \"off\"\n",
        )
        .unwrap();
        assert!(c.tenants[0].limits.is_empty());
    }

    #[test]
    fn every_layer_is_checked_by_the_same_rules() {
        let layers = [
            ("[sessions]\n", "sessions"),
            (
                "[[backends]]\nname = \"a\"\nmodule = \"builtin:echo\"\n[backends.sessions]\n",
                "backends[0].sessions",
            ),
            (
                "[[tenants]]\nname = \"a\"\n[tenants.sessions]\n",
                "tenants[0].sessions",
            ),
        ];
        let cases = [
            ("command_timeout = \"0s\"", "command_timeout"),
            ("max_lease = \"0s\"", "max_lease"),
            ("idle_timeout = \"0s\"", "idle_timeout"),
            ("max_lifetime = \"0ms\"", "max_lifetime"),
            (
                "command_timeout = \"2s\"\nmax_command_timeout = \"1s\"",
                "command_timeout",
            ),
            ("lease = \"2s\"\nmax_lease = \"1s\"", "lease"),
            ("memory_limit = \"1KiB\"", "memory_limit"),
            ("event_queue = 0", "event_queue"),
            ("max_event_subscribers = 0", "max_event_subscribers"),
        ];
        for (head, prefix) in layers {
            for (body, name) in cases {
                let text = format!("{head}{body}\n");
                let e = parse(&text).unwrap_err().to_string();
                assert!(e.starts_with(&format!("{prefix}.{name}:")), "{e}\n{text}");
            }
            let e = parse(&format!("{head}memory = 1\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("memory"), "{e}");
        }
        // Over a known layer, an unset side of a pair is the value below.
        let e = parse("[sessions]\nmax_command_timeout = \"10s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("sessions.command_timeout:"), "{e}");
        // A tenant's pair is checked only when it sets both sides: its
        // values are combined with each backend's at open.
        let c =
            parse("[[tenants]]\nname = \"a\"\n[tenants.sessions]\nmax_command_timeout = \"10s\"\n")
                .unwrap();
        let p = c.tenants[0].limits.apply(&SessionPolicy::default());
        assert_eq!(p.command_timeout, Duration::from_secs(10));
        // event_overflow is refused only in a tenant's patch.
        assert!(parse("[sessions]\nevent_overflow = \"fault\"\n").is_ok());
    }
}
