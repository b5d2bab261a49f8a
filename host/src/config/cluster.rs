//! `[cluster]`: several gateways behind one proxy (docs/cluster.md).
//!
//! ```toml
//! [cluster]
//! node_id = "n1"              # letters, digits, '-'; session ids become "n1.<32 hex>"
//! redis = "redis://127.0.0.1:6379/0" # shared cap, quotas, node leases, session view
//! node_lease = "10s"          # a node's Redis slots outlive it by at most this
//! max_sessions = "off"        # live sessions in the whole cluster (Redis); "off": none
//! drain_timeout = "5m"        # `gatehouse drain`: how long sessions may go on
//! ```
//!
//! Without the section nothing changes: ids have no prefix, slots are
//! counted in the process only, and nothing else needs to run.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid, nonzero, units};

/// `cluster.node_lease` when none is configured.
pub const DEFAULT_NODE_LEASE: Duration = Duration::from_secs(10);
/// `cluster.drain_timeout` when none is configured.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// The shortest `cluster.node_lease`: it is renewed every third of it, and
/// each renewal is one Redis round trip.
pub const MIN_NODE_LEASE: Duration = Duration::from_millis(300);

/// Cluster settings (`[cluster]`); the defaults are a gateway on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's id, the prefix of its session ids; `None` outside a
    /// cluster.
    pub node_id: Option<String>,
    /// The Redis that holds the shared slots (`redis://` or `rediss://`);
    /// `None` counts slots in this process only.
    pub redis: Option<String>,
    /// How long this node's slots stay taken in Redis after its last
    /// renewal (renewed every third of it).
    pub node_lease: Duration,
    /// Live sessions allowed in the whole cluster (needs `redis`); `None`:
    /// only each node's `server.max_sessions` and the tenants' quotas.
    pub max_sessions: Option<usize>,
    /// How long a drain lets sessions go on before closing the rest.
    pub drain_timeout: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            node_id: None,
            redis: None,
            node_lease: DEFAULT_NODE_LEASE,
            max_sessions: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// Whether `id` is a valid node id: 1-32 letters, digits or `-`. No `.`:
/// it ends the prefix a proxy splits session ids at.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `[cluster]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ClusterFile {
    node_id: Option<String>,
    redis: Option<String>,
    #[serde(deserialize_with = "units::duration")]
    node_lease: Option<Duration>,
    max_sessions: Option<toml::Value>,
    #[serde(deserialize_with = "units::duration")]
    drain_timeout: Option<Duration>,
}

impl ClusterFile {
    pub(super) fn resolve(self) -> Result<ClusterSettings, ConfigError> {
        let defaults = ClusterSettings::default();
        if let Some(id) = &self.node_id
            && !valid_node_id(id)
        {
            return Err(invalid(
                "cluster.node_id",
                "must be 1-32 characters of letters, digits or '-'",
            ));
        }
        if let Some(url) = &self.redis {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    "cluster.redis",
                    "must be a redis:// or rediss:// URL",
                ));
            }
            if redis::Client::open(url.as_str()).is_err() {
                return Err(invalid("cluster.redis", "is not a valid Redis URL"));
            }
            if self.node_id.is_none() {
                return Err(invalid(
                    "cluster.redis",
                    "needs cluster.node_id: each node's slots are held under its id",
                ));
            }
        }
        let node_lease = self.node_lease.unwrap_or(defaults.node_lease);
        if node_lease < MIN_NODE_LEASE {
            return Err(invalid(
                "cluster.node_lease",
                format!("must be at least {MIN_NODE_LEASE:?}"),
            ));
        }
        let drain_timeout = self.drain_timeout.unwrap_or(defaults.drain_timeout);
        nonzero(drain_timeout, "cluster.drain_timeout")?;
        let max_sessions = match self.max_sessions {
            None => None,
            Some(toml::Value::String(s)) if s == "off" => None,
            Some(toml::Value::Integer(n)) if n > 0 => {
                Some(usize::try_from(n).map_err(|_| {
                    invalid("cluster.max_sessions", "is too large for this machine")
                })?)
            }
            Some(_) => {
                return Err(invalid(
                    "cluster.max_sessions",
                    "must be a positive integer or \"off\"",
                ));
            }
        };
        if max_sessions.is_some() && self.redis.is_none() {
            return Err(invalid(
                "cluster.max_sessions",
                "needs cluster.redis: the cluster's sessions are counted there",
            ));
        }
        Ok(ClusterSettings {
            node_id: self.node_id,
            redis: self.redis,
            node_lease,
            max_sessions,
            drain_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::*;

    #[test]
    fn without_the_section_nothing_changes() {
        assert_eq!(parse("").unwrap().cluster, ClusterSettings::default());
    }

    #[test]
    fn a_node_with_redis() {
        let c = parse(
            "[cluster]\nnode_id = \"n-1\"\nredis = \"redis://127.0.0.1:7000\"\nnode_lease = \"2s\"\nmax_sessions = 7\n",
        )
        .unwrap()
        .cluster;
        assert_eq!(c.node_id.as_deref(), Some("n-1"));
        assert_eq!(c.node_lease, Duration::from_secs(2));
        assert_eq!(c.max_sessions, Some(7));
        assert_eq!(c.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("node_id = \"n.1\"", "cluster.node_id"),
            ("node_id = \"\"", "cluster.node_id"),
            ("redis = \"http://x\"\nnode_id = \"a\"", "cluster.redis"),
            ("redis = \"redis://x\"", "cluster.redis"),
            ("node_lease = \"10ms\"", "cluster.node_lease"),
            ("drain_timeout = \"0s\"", "cluster.drain_timeout"),
            ("max_sessions = 0", "cluster.max_sessions"),
            ("max_sessions = 5", "cluster.max_sessions"),
            ("nodes = 3", "nodes"),
        ] {
            let e = parse(&format!("[cluster]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
