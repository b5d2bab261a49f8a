//! `[backends.snapshot]` and `[backends.restart]`: how a backend's sessions
//! keep their state and come back after a fault.

use std::time::Duration;

use serde::Deserialize;

use super::units::parse_duration;
use super::{ConfigError, invalid};

/// Default `[backends.snapshot] max_bytes`.
pub const DEFAULT_SNAPSHOT_BYTES: usize = 1 << 20;

/// How a backend's sessions survive a fault and a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovery {
    /// `[backends.snapshot]`.
    pub snapshot: SnapshotPolicy,
    /// `[backends.restart]`.
    pub restart: RestartPolicy,
    /// `[backends.rollout] upgrade_sessions`: when this version becomes
    /// current, move the live sessions of the version it replaces to it.
    pub upgrade_sessions: bool,
}

/// When a stateful session's state is snapshotted (`every`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotEvery {
    /// After every successful invoke (the default under
    /// `[backends.restart] policy = "on-fault"`).
    Command,
    /// At most this often, when a command ran since the last one.
    Interval(Duration),
    /// Never on its own (the default without automatic restarts): an
    /// upgrade and a restart by hand of a READY session take one from the
    /// live worker when they need it.
    Off,
}

/// `[backends.snapshot]`: only for backends whose plugin exports `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// When snapshots are taken.
    pub every: SnapshotEvery,
    /// The largest snapshot kept; a larger one is refused and the previous
    /// one stays.
    pub max_bytes: usize,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            every: SnapshotEvery::Off,
            max_bytes: DEFAULT_SNAPSHOT_BYTES,
        }
    }
}

/// `[backends.restart] policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartOn {
    /// A fault ends the session (the default).
    Never,
    /// A fault restarts the session, within the budget.
    OnFault,
}

/// `[backends.restart]`: OTP-style restart intensity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Whether faults restart.
    pub on: RestartOn,
    /// Restarts allowed within `period`; one more faults the session for
    /// good (`restart-limit`).
    pub max_restarts: u32,
    /// The window restarts are counted in.
    pub period: Duration,
    /// The wait before the first restart, doubling for each further one
    /// within the period (up to 32 times it).
    pub backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            on: RestartOn::Never,
            max_restarts: 3,
            period: Duration::from_secs(60),
            backoff: Duration::from_millis(100),
        }
    }
}

impl RestartPolicy {
    /// The wait before restart number `n` (1-based) within the period.
    pub fn backoff_for(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(5);
        self.backoff.saturating_mul(1 << doublings)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SnapshotFile {
    every: Option<String>,
    #[serde(default, deserialize_with = "super::units::size")]
    max_bytes: Option<usize>,
}

impl SnapshotFile {
    /// The policy; without `every`, a snapshot after every command when a
    /// fault restarts the session (`restart`), else none: a snapshot costs
    /// the plugin's serialisation after each command (about 0.2 ms for a
    /// kv session of 1,000 keys, measured), worth it only where a restart uses it.
    pub(super) fn resolve(
        self,
        at: &str,
        restart: RestartOn,
    ) -> Result<SnapshotPolicy, ConfigError> {
        let every = match self.every.as_deref() {
            None if restart == RestartOn::OnFault => SnapshotEvery::Command,
            None => SnapshotEvery::Off,
            Some("command") => SnapshotEvery::Command,
            Some("off") => SnapshotEvery::Off,
            Some(d) => {
                let d = parse_duration(d).map_err(|e| {
                    invalid(
                        format!("{at}.every"),
                        format!("must be \"command\", \"off\" or a duration: {e}"),
                    )
                })?;
                if d.is_zero() {
                    return Err(invalid(format!("{at}.every"), "must be greater than zero"));
                }
                SnapshotEvery::Interval(d)
            }
        };
        let max_bytes = self.max_bytes.unwrap_or(DEFAULT_SNAPSHOT_BYTES);
        if max_bytes == 0 {
            return Err(invalid(
                format!("{at}.max_bytes"),
                "must be greater than zero (every = \"off\" turns snapshots off)",
            ));
        }
        Ok(SnapshotPolicy { every, max_bytes })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RestartFile {
    policy: Option<RestartOn>,
    max_restarts: Option<u32>,
    #[serde(default, deserialize_with = "super::units::duration")]
    period: Option<Duration>,
    #[serde(default, deserialize_with = "super::units::duration")]
    backoff: Option<Duration>,
}

impl RestartFile {
    pub(super) fn resolve(self, at: &str) -> Result<RestartPolicy, ConfigError> {
        let d = RestartPolicy::default();
        let period = self.period.unwrap_or(d.period);
        if period.is_zero() {
            return Err(invalid(format!("{at}.period"), "must be greater than zero"));
        }
        Ok(RestartPolicy {
            on: self.policy.unwrap_or(d.on),
            max_restarts: self.max_restarts.unwrap_or(d.max_restarts),
            period,
            backoff: self.backoff.unwrap_or(d.backoff),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_every_parses_its_three_forms() {
        let every = |s: &str| {
            SnapshotFile {
                every: Some(s.into()),
                max_bytes: None,
            }
            .resolve("backends[0].snapshot", RestartOn::Never)
            .map(|p| p.every)
            .map_err(|e| e.to_string())
        };
        assert_eq!(every("command"), Ok(SnapshotEvery::Command));
        let default = |on| SnapshotFile::default().resolve("b", on).unwrap().every;
        assert_eq!(default(RestartOn::OnFault), SnapshotEvery::Command);
        assert_eq!(default(RestartOn::Never), SnapshotEvery::Off);
        assert_eq!(every("off"), Ok(SnapshotEvery::Off));
        assert_eq!(
            every("5s"),
            Ok(SnapshotEvery::Interval(Duration::from_secs(5)))
        );
        let e = every("sometimes").unwrap_err();
        assert!(e.contains("backends[0].snapshot.every"), "{e}");
    }

    #[test]
    fn backoff_doubles_and_stops_doubling() {
        let p = RestartPolicy {
            backoff: Duration::from_millis(100),
            ..RestartPolicy::default()
        };
        assert_eq!(p.backoff_for(1), Duration::from_millis(100));
        assert_eq!(p.backoff_for(2), Duration::from_millis(200));
        assert_eq!(p.backoff_for(3), Duration::from_millis(400));
        assert_eq!(p.backoff_for(40), Duration::from_millis(3200));
    }
}
