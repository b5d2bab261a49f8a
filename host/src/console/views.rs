//! What the templates show, made from the same protobuf messages the gRPC
//! API answers with: the console is one more client of those functions.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::keystore::format_utc;
use crate::proto::admin::v1 as admin;
use crate::proto::v1 as pb;
use crate::registry::Tenant;

/// One row of the sessions table.
#[derive(Debug, Serialize)]
pub struct SessionRow {
    pub id: String,
    pub backend: String,
    pub version: String,
    pub tenant: String,
    pub name: String,
    /// `ready`, `starting-worker`, ...
    pub state: String,
    /// `ok`, `starting`, `ending` or `bad`: the badge's colour.
    pub tone: &'static str,
    pub live: bool,
    pub age: String,
    pub lease: String,
    pub events: u64,
    pub dropped: u64,
    pub fault: String,
    pub fault_detail: String,
    /// Times the instance was replaced.
    pub restarts: u32,
    /// The fault behind the last restart: after a restart that gave up,
    /// the cause, while `fault` is the failed recovery.
    pub last_fault: String,
    pub last_fault_detail: String,
    pub close_reason: String,
    pub opened: String,
    pub last_activity: String,
    pub pid: u32,
    pub correlation: String,
    /// The guest's CPU time, as `gatehouse sessions` shows it.
    pub cpu: String,
}

fn secs(t: Option<&prost_types::Timestamp>) -> Option<i64> {
    t.map(|t| t.seconds)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `3h 05m`, `4m 10s`, `12s`.
pub fn span(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn when(t: Option<i64>) -> String {
    t.map(format_utc).unwrap_or_default()
}

/// The state's short name, e.g. `starting-worker`.
pub fn state_name(state: i32) -> String {
    pb::SessionState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("SESSION_STATE_")
                .to_ascii_lowercase()
                .replace('_', "-")
        })
        .unwrap_or_else(|_| "unknown".into())
}

fn tone(state: i32) -> &'static str {
    use pb::SessionState as S;
    match pb::SessionState::try_from(state) {
        Ok(S::Ready) => "ok",
        Ok(S::Closing | S::Closed) => "ending",
        Ok(S::Faulted) => "bad",
        _ => "starting",
    }
}

fn close_reason(r: i32) -> String {
    match pb::CloseReason::try_from(r) {
        Ok(pb::CloseReason::Unspecified) | Err(_) => String::new(),
        Ok(r) => r
            .as_str_name()
            .trim_start_matches("CLOSE_REASON_")
            .to_ascii_lowercase()
            .replace('_', "-"),
    }
}

impl SessionRow {
    /// The row for a session.
    pub fn new(s: &pb::SessionInfo) -> Self {
        let now = now_secs();
        let live = !matches!(
            pb::SessionState::try_from(s.state),
            Ok(pb::SessionState::Closed | pb::SessionState::Faulted)
        );
        let lease = match secs(s.lease_expires_at.as_ref()) {
            Some(t) if live => span(t - now),
            _ => "-".into(),
        };
        SessionRow {
            id: s.session_id.clone(),
            backend: s.backend.clone(),
            version: s.backend_version.clone(),
            tenant: s.tenant.clone(),
            name: s.client_session_name.clone(),
            state: state_name(s.state),
            tone: tone(s.state),
            live,
            age: secs(s.opened_at.as_ref()).map_or_else(String::new, |t| span(now - t)),
            lease,
            events: s.events_emitted,
            dropped: s.events_dropped,
            fault: s.final_fault.clone(),
            fault_detail: s.final_fault_detail.clone(),
            restarts: s.restarts,
            last_fault: s.last_fault.clone(),
            last_fault_detail: s.last_fault_detail.clone(),
            close_reason: close_reason(s.close_reason),
            opened: when(secs(s.opened_at.as_ref())),
            last_activity: when(secs(s.last_activity_at.as_ref())),
            pid: s.worker_pid,
            correlation: s.client_correlation_id.clone(),
            cpu: crate::cli::cpu_text(&s.cpu_time),
        }
    }
}

/// One backend version.
#[derive(Debug, Serialize)]
pub struct BackendRow {
    pub name: String,
    pub kind: String,
    pub version: String,
    pub digest: String,
    pub state: String,
    pub live_sessions: u32,
    pub description: String,
}

impl BackendRow {
    /// The row for a listed backend version.
    pub fn new(b: &pb::BackendInfo) -> Self {
        let lower = |s: &str, prefix: &str| s.trim_start_matches(prefix).to_ascii_lowercase();
        BackendRow {
            name: b.name.clone(),
            kind: lower(
                pb::BackendKind::try_from(b.kind).map_or("", |k| k.as_str_name()),
                "BACKEND_KIND_",
            ),
            version: b.version.clone(),
            digest: b.digest.chars().take(19).collect(),
            state: lower(
                pb::BackendVersionState::try_from(b.state).map_or("", |s| s.as_str_name()),
                "BACKEND_VERSION_STATE_",
            ),
            live_sessions: b.live_sessions,
            description: b.description.clone(),
        }
    }
}

/// `12.5 MiB`.
pub fn mib(bytes: usize) -> String {
    // Display only: f64 is exact far beyond any memory size shown here.
    #[allow(clippy::cast_precision_loss)]
    let m = bytes as f64 / f64::from(1u32 << 20);
    format!("{m:.1} MiB")
}

/// `used` as a share of `of`, 0..=100, for a bar.
pub fn percent(used: usize, of: usize) -> usize {
    if of == 0 || of == usize::MAX {
        return 0;
    }
    (used.saturating_mul(100) / of).min(100)
}

/// A tenant's use of its quotas.
#[derive(Debug, Serialize)]
pub struct TenantRow {
    pub name: String,
    pub sessions: usize,
    pub max_sessions: Option<usize>,
    /// 0..=100 of the session quota, for the bar.
    pub percent: usize,
    pub memory: String,
    pub max_memory: Option<String>,
    /// 0..=100 of `max_memory`.
    pub memory_percent: usize,
    pub keys: usize,
}

impl TenantRow {
    /// The row for a tenant with `keys` keys whose sessions reserve
    /// `memory` bytes.
    pub fn new(t: &Tenant, keys: usize, memory: usize) -> Self {
        let sessions = t.open_sessions();
        TenantRow {
            name: t.name().to_string(),
            sessions,
            max_sessions: t.max_sessions(),
            percent: t.max_sessions().map_or(0, |m| percent(sessions, m)),
            memory: mib(memory),
            max_memory: t.max_memory().map(mib),
            memory_percent: t.max_memory().map_or(0, |m| percent(memory, m)),
            keys,
        }
    }
}

/// A key, without its secret.
#[derive(Debug, Serialize)]
pub struct KeyRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub scopes: String,
    pub config: bool,
    pub created: String,
    pub expires: String,
    pub last_used: String,
    pub revoked: String,
    pub active: bool,
    /// Guest CPU of what the key opened; `-` for config keys.
    pub cpu: String,
}

impl KeyRow {
    /// The row for a listed key.
    pub fn new(k: &admin::KeyInfo) -> Self {
        KeyRow {
            id: k.id.clone(),
            tenant: k.tenant.clone(),
            name: k.name.clone(),
            scopes: k.scopes.join(", "),
            config: k.source == admin::KeySource::Config as i32,
            created: when(secs(k.created.as_ref())),
            expires: when(secs(k.expires.as_ref())),
            last_used: when(secs(k.last_used.as_ref())),
            revoked: when(secs(k.revoked.as_ref())),
            active: k.active,
            cpu: crate::cli::cpu_text(&k.cpu_time),
        }
    }
}

/// One audit event.
#[derive(Debug, Serialize)]
pub struct AuditRow {
    pub at: String,
    pub actor: String,
    pub tenant: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub via: String,
}

impl AuditRow {
    /// The row for an event.
    pub fn new(e: &admin::AuditEvent) -> Self {
        AuditRow {
            at: when(secs(e.at.as_ref())),
            actor: e.actor.clone(),
            tenant: e.tenant.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            detail: e.detail.clone(),
            via: e.via.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_at_a_glance() {
        assert_eq!(span(-3), "0s");
        assert_eq!(span(59), "59s");
        assert_eq!(span(61), "1m 01s");
        assert_eq!(span(3 * 3600 + 5 * 60), "3h 05m");
        assert_eq!(span(2 * 86_400 + 3600), "2d 01h");
        assert_eq!(
            state_name(pb::SessionState::StartingWorker as i32),
            "starting-worker"
        );
    }
}
