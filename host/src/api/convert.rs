//! Conversions between registry types and the wire types.

use std::time::{Duration, SystemTime};

use crate::backend::{self, BackendInfo, CommandError, Outcome};
use crate::config::BackendKind;
use crate::events::Delivery;
use crate::proto::v1 as pb;
use crate::registry::{CloseReason, Session, SessionState, Version, VersionState};

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// A wire duration as a `Duration`; `None` for unset, an error for negative.
pub fn from_duration(d: Option<prost_types::Duration>) -> Result<Option<Duration>, String> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 {
        return Err("durations must not be negative".into());
    }
    Ok(Some(
        Duration::from_secs(d.seconds as u64) + Duration::from_nanos(d.nanos as u64),
    ))
}

pub fn kind(k: BackendKind) -> pb::BackendKind {
    match k {
        BackendKind::Wasm => pb::BackendKind::Wasm,
        BackendKind::Native => pb::BackendKind::Native,
    }
}

pub fn state(s: SessionState) -> pb::SessionState {
    use SessionState::*;
    match s {
        Creating => pb::SessionState::Creating,
        StartingWorker => pb::SessionState::StartingWorker,
        WaitingForWorker => pb::SessionState::WaitingForWorker,
        Handshaking => pb::SessionState::Handshaking,
        InitializingWorker => pb::SessionState::InitializingWorker,
        Ready => pb::SessionState::Ready,
        Restarting => pb::SessionState::Restarting,
        Closing => pb::SessionState::Closing,
        Closed => pb::SessionState::Closed,
        Faulted => pb::SessionState::Faulted,
    }
}

fn close_reason(r: CloseReason) -> pb::CloseReason {
    match r {
        CloseReason::ClientClose => pb::CloseReason::ClientClose,
        CloseReason::LeaseExpired => pb::CloseReason::LeaseExpired,
        CloseReason::IdleTimeout => pb::CloseReason::IdleTimeout,
        CloseReason::MaxLifetime => pb::CloseReason::MaxLifetime,
        CloseReason::GatewayShutdown => pb::CloseReason::GatewayShutdown,
        CloseReason::Fault => pb::CloseReason::Fault,
        CloseReason::BackendRetired => pb::CloseReason::BackendRetired,
    }
}

pub fn backend_info(b: &BackendInfo) -> pb::BackendInfo {
    pb::BackendInfo {
        name: b.name.clone(),
        kind: kind(b.kind) as i32,
        version: b.version.clone(),
        digest: b.digest.clone(),
        description: b.description.clone(),
        state: pb::BackendVersionState::Current as i32,
        live_sessions: 0,
    }
}

/// A loaded version as `ListBackends` shows it.
pub fn backend_version(v: &Version, state: VersionState) -> pb::BackendInfo {
    pb::BackendInfo {
        state: match state {
            VersionState::Current => pb::BackendVersionState::Current,
            VersionState::Retiring => pb::BackendVersionState::Retiring,
            VersionState::Canary => pb::BackendVersionState::Canary,
        } as i32,
        live_sessions: u32::try_from(v.live_sessions()).unwrap_or(u32::MAX),
        ..backend_info(&v.info)
    }
}

/// A session as the API (and the console) shows it; `wall` turns the
/// registry's instants into wall-clock times.
/// Another node's session, from the cluster view: what was fixed at its
/// open, as READY (it is listed while it holds its slot); the times and
/// counters that change are only on its own node.
pub fn remote_session_info(r: &crate::cluster::SessionRecord) -> pb::SessionInfo {
    let ms = std::time::Duration::from_millis;
    pb::SessionInfo {
        session_id: r.id.clone(),
        backend: r.backend.clone(),
        backend_kind: if r.kind == "native" {
            pb::BackendKind::Native
        } else {
            pb::BackendKind::Wasm
        } as i32,
        backend_version: r.version.clone(),
        backend_digest: r.digest.clone(),
        tenant: r.tenant.clone(),
        state: pb::SessionState::Ready as i32,
        client_session_name: r.client_session_name.clone(),
        client_correlation_id: r.client_correlation_id.clone(),
        opened_at: Some(timestamp(SystemTime::UNIX_EPOCH + ms(r.opened_at_ms))),
        command_timeout: Some(crate::api_duration(ms(r.command_timeout_ms))),
        lease: Some(crate::api_duration(ms(r.lease_ms))),
        ..Default::default()
    }
}

/// A session of this node as the API describes it.
pub fn session_info(
    s: &Session,
    wall: impl Fn(std::time::Instant) -> SystemTime,
) -> pb::SessionInfo {
    let snap = s.snapshot();
    let info = s.backend();
    pb::SessionInfo {
        session_id: s.id.to_string(),
        backend: info.name.clone(),
        backend_kind: kind(info.kind) as i32,
        backend_version: info.version.clone(),
        backend_digest: info.digest.clone(),
        tenant: s.tenant.clone(),
        state: state(snap.state) as i32,
        client_session_name: s.client_session_name.clone(),
        client_correlation_id: s.client_correlation_id.clone(),
        opened_at: Some(timestamp(wall(s.opened_at))),
        last_activity_at: Some(timestamp(wall(snap.last_activity))),
        lease_expires_at: Some(timestamp(wall(snap.lease_expires))),
        worker_pid: snap.worker_pid.unwrap_or(0),
        worker_processes: snap
            .worker_processes
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        final_fault: snap
            .fault
            .as_ref()
            .map(|f| f.code.as_str().to_string())
            .unwrap_or_default(),
        final_fault_detail: snap.fault.map(|f| f.detail).unwrap_or_default(),
        close_reason: snap
            .close_reason
            .map_or(pb::CloseReason::Unspecified, close_reason) as i32,
        command_timeout: Some(crate::api_duration(s.times.command_timeout)),
        lease: Some(crate::api_duration(s.times.lease)),
        events_emitted: snap.events_emitted,
        events_dropped: snap.events_dropped,
        cpu_time: Some(crate::api_duration(snap.cpu_time)),
        restarts: snap.restarts,
        last_fault: snap
            .last_fault
            .as_ref()
            .map(|f| f.code.as_str().to_string())
            .unwrap_or_default(),
        last_fault_detail: snap.last_fault.map(|f| f.detail).unwrap_or_default(),
        snapshot_bytes: snap.snapshot_bytes as u64,
    }
}

pub fn command(c: pb::Command) -> backend::Command {
    backend::Command {
        name: c.name,
        payload: c.payload,
    }
}

fn command_error(e: CommandError) -> pb::CommandError {
    use pb::command_error::Kind;
    let (kind, message) = match e {
        CommandError::UnknownCommand(m) => (Kind::UnknownCommand, m),
        CommandError::InvalidPayload(m) => (Kind::InvalidPayload, m),
        CommandError::Failed(m) => (Kind::Failed, m),
    };
    pb::CommandError {
        kind: kind as i32,
        message,
    }
}

/// A worker outcome as (payload, error). Oversized replies never get here:
/// the registry turns them into an error first.
pub fn outcome(o: Outcome) -> (Vec<u8>, Option<pb::CommandError>) {
    match o {
        Outcome::Reply(p) => (p, None),
        Outcome::Error(e) => (Vec::new(), Some(command_error(e))),
        Outcome::ReplyTooLarge { size, limit } => (
            Vec::new(),
            Some(pb::CommandError {
                kind: pb::command_error::Kind::Failed as i32,
                message: format!("reply of {size} bytes is over the limit of {limit}"),
            }),
        ),
    }
}

pub fn event(d: Delivery) -> pb::Event {
    pb::Event {
        sequence: d.event.sequence,
        name: d.event.name.clone(),
        payload: d.event.payload.clone(),
        emitted_at: Some(timestamp(d.event.emitted_at)),
        dropped_before: d.dropped_before,
    }
}
