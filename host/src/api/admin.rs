//! The `gatehouse.v1.Admin` service: operating the gateway. Every call
//! needs the `admin` scope (the auth layer's default for RPCs outside the
//! Gateway table). The work itself is the server's, behind [`Reload`](super::Reload) and
//! [`Drain`](super::Drain): this layer only authenticates, maps and reports.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{Authenticated, Authenticator, caller};
use super::control::{Drain, Reload, ReloadFailure};
use super::keys_admin::{KeyAdmin, Via};
use super::live::LiveCell;
use super::throttle::FailureThrottle;
use crate::keystore::AuditEntry;
use crate::proto::v1 as pb;
use crate::proto::v1::admin_server::{Admin, AdminServer};

/// The Admin service; its reloader and drainer come with the gateway's
/// live parts, once the backends are loaded.
#[derive(Clone)]
pub struct AdminService {
    live: LiveCell,
    audit: Option<KeyAdmin>,
}

impl AdminService {
    /// The service over `live`'s reloader and drainer.
    pub fn new(live: LiveCell) -> Self {
        Self { live, audit: None }
    }

    /// The reloader, once the backends are loaded.
    pub fn reloader(&self) -> Option<Arc<dyn Reload>> {
        self.live.get().map(|l| Arc::clone(&l.reloader))
    }

    fn drainer(&self) -> Option<Arc<dyn Drain>> {
        self.live.get().map(|l| Arc::clone(&l.drainer))
    }

    /// Records each reload requested over the API in `keys`' audit log.
    pub fn with_audit(mut self, keys: KeyAdmin) -> Self {
        self.audit = Some(keys);
        self
    }
}

/// The Admin service behind authentication.
pub fn admin_server(
    admin: AdminService,
    auth: Authenticator,
    throttle: Option<Arc<FailureThrottle>>,
) -> Authenticated<AdminServer<AdminService>> {
    Authenticated::new(AdminServer::new(admin), auth).with_throttle(throttle)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let caller = caller(&request)?;
        let drainer = self
            .drainer()
            .ok_or_else(|| Status::unavailable(ReloadFailure::Starting.to_string()))?;
        let timeout = super::convert::from_duration(request.into_inner().timeout)
            .map_err(Status::invalid_argument)?;
        let outcome = drainer.drain(timeout).await;
        tracing::info!(
            tenant = caller.tenant_name(),
            key = caller.key.as_deref().unwrap_or("-"),
            sessions = outcome.sessions,
            timeout = ?outcome.timeout,
            already = outcome.already_draining,
            "drain requested"
        );
        if let Some(audit) = &self.audit {
            let entry = AuditEntry {
                action: "gateway.drain",
                target: String::new(),
                detail: format!(
                    "sessions={} timeout={:?} already_draining={}",
                    outcome.sessions, outcome.timeout, outcome.already_draining
                ),
            };
            audit.record(&caller, Via::Api, entry).await;
        }
        Ok(Response::new(pb::DrainResponse {
            sessions: u32::try_from(outcome.sessions).unwrap_or(u32::MAX),
            timeout: prost_types::Duration::try_from(outcome.timeout).ok(),
            already_draining: outcome.already_draining,
        }))
    }

    async fn reload(
        &self,
        request: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        let caller = caller(&request)?;
        let reloader = self
            .reloader()
            .ok_or_else(|| Status::unavailable(ReloadFailure::Starting.to_string()))?;
        tracing::info!(
            tenant = caller.tenant_name(),
            key = caller.key.as_deref().unwrap_or("-"),
            "reload requested"
        );
        // `promote` / `rollback` end a canary rollout instead of re-reading
        // the config.
        let r = request.get_ref();
        let (result, action, target) = match (r.promote.as_str(), r.rollback.as_str()) {
            ("", "") => (reloader.reload().await, "config.reload", String::new()),
            (name, "") => (
                reloader.end_rollout(name, true).await,
                "rollout.promote",
                name.to_string(),
            ),
            ("", name) => (
                reloader.end_rollout(name, false).await,
                "rollout.rollback",
                name.to_string(),
            ),
            _ => {
                return Err(Status::invalid_argument(
                    "set promote or rollback, not both",
                ));
            }
        };
        if let Some(audit) = &self.audit {
            let detail = match &result {
                Ok(o) => format!(
                    "added={} updated={} removed={} tenants={}",
                    o.changes.added.len(),
                    o.changes.updated.len(),
                    o.changes.removed.len(),
                    o.tenants
                ),
                Err(e) => format!("failed: {e}"),
            };
            let entry = AuditEntry {
                action,
                target,
                detail,
            };
            audit.record(&caller, Via::Api, entry).await;
        }
        match result {
            Ok(outcome) => Ok(Response::new(pb::ReloadResponse {
                added: outcome.changes.added,
                updated: outcome.changes.updated,
                removed: outcome.changes.removed,
                unchanged: outcome.changes.unchanged,
                tenants: u32::try_from(outcome.tenants).unwrap_or(u32::MAX),
                restart_required: outcome.restart_required,
            })),
            Err(e @ ReloadFailure::Starting) => Err(Status::unavailable(e.to_string())),
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        }
    }
}
