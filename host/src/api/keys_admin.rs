//! The `gatehouse.admin.v1.Admin` service: API keys in the key store and
//! the audit log. Every call needs the `admin` scope (the auth layer's
//! default outside the Gateway table).
//!
//! [`KeyAdmin`] is the work, shared with the web console, which calls the
//! same functions with its signed-in admin's [`Caller`]; the service only
//! takes the caller from the request and hands it over.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{Authenticated, Authenticator, caller};
use super::status::store_status;
use crate::config::tenants::valid_name;
use crate::keys::{Scope, Scopes};
use crate::keystore::{Actor, AuditEntry, KeyStore, NewKey, StoreError, StoredKey, from_unix};
use crate::proto::admin::v1 as pb;
use crate::proto::admin::v1::admin_server::{Admin, AdminServer};
use crate::registry::Caller;

/// The longest `expires_in` a key may be created with: ten years. Longer
/// would be a key that never expires in all but name, and timestamps past
/// the year 9999 break clients' date types.
pub const MAX_KEY_LIFETIME_SECS: i64 = 3650 * 86_400;

/// The audit log's default page, and its largest.
const AUDIT_PAGE: u32 = 100;
const AUDIT_PAGE_MAX: u32 = 1000;

/// Key management over the authenticator's key store: what the Admin
/// service and the console both call.
#[derive(Debug, Clone)]
pub struct KeyAdmin {
    auth: Authenticator,
}

/// Where an admin action came from, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The gRPC API (and so the CLI).
    Api,
    /// The web console.
    Console,
}

impl Via {
    /// How the audit log names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Console => "console",
        }
    }
}

/// Who `caller` is in the audit log.
pub fn actor(caller: &Caller, via: Via) -> Actor {
    Actor {
        label: caller.key.as_deref().unwrap_or("anonymous").to_string(),
        tenant: caller.tenant_name().to_string(),
        via: via.as_str(),
    }
}

impl KeyAdmin {
    /// Key management over `auth`'s key store and tenants.
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }

    fn store(&self) -> Result<&Arc<KeyStore>, Status> {
        self.auth
            .store()
            .ok_or_else(|| store_status(StoreError::Off))
    }

    /// Creates a key; the response holds its secret, once.
    pub async fn create(
        &self,
        caller: &Caller,
        via: Via,
        request: pb::CreateKeyRequest,
    ) -> Result<pb::CreateKeyResponse, Status> {
        let new = self.check(request)?;
        let (secret, key) = self
            .store()?
            .create(new, actor(caller, via))
            .await
            .map_err(store_status)?;
        Ok(pb::CreateKeyResponse {
            info: Some(stored_info(&key, crate::keystore::now())),
            key: secret,
        })
    }

    /// A create request, checked: a configured tenant, known scopes, a
    /// usable name and expiry. Errors name the field.
    fn check(&self, r: pb::CreateKeyRequest) -> Result<NewKey, Status> {
        // Messages quote the request: bounded.
        let bad = |m: String| super::input::bounded(Status::invalid_argument(m));
        let tenant = r.tenant.trim().to_string();
        if tenant.is_empty() {
            return Err(bad("tenant: give the tenant the key belongs to".into()));
        }
        if self.auth.tenant(&tenant).is_none() {
            let known: Vec<String> = self
                .auth
                .tenants()
                .iter()
                .map(|t| t.name().to_string())
                .collect();
            return Err(bad(format!(
                "tenant: {tenant:?} is not a tenant of the config (known: {})",
                known.join(", ")
            )));
        }
        let scopes: Scopes = r
            .scopes
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Scope::parse(s).map_err(|m| bad(format!("scopes: {m}"))))
            .collect::<Result<_, _>>()?;
        if scopes.is_empty() {
            return Err(bad("scopes: give at least one scope".into()));
        }
        let name = Some(r.name.trim().to_string()).filter(|n| !n.is_empty());
        if let Some(n) = &name
            && !valid_name(n)
        {
            return Err(bad(format!(
                "name: {n:?}: use 1-64 letters, digits, '-', '_' or '.'"
            )));
        }
        let expires_in = match r.expires_in {
            None => None,
            Some(d) if d.seconds > 0 && d.nanos >= 0 && d.seconds <= MAX_KEY_LIFETIME_SECS => {
                Some(d.seconds.unsigned_abs())
            }
            Some(d) if d.seconds > MAX_KEY_LIFETIME_SECS => {
                return Err(bad(format!(
                    "expires_in: at most {} days (omit it for a key that never expires)",
                    MAX_KEY_LIFETIME_SECS / 86_400
                )));
            }
            Some(_) => return Err(bad("expires_in: must be at least one second".into())),
        };
        Ok(NewKey {
            tenant,
            name,
            scopes,
            expires_in,
        })
    }

    /// The store's keys and the config file's, by tenant; never hashes.
    pub async fn list(&self, request: pb::ListKeysRequest) -> Result<pb::ListKeysResponse, Status> {
        let now = crate::keystore::now();
        let wanted = |tenant: &str| request.tenant.is_empty() || request.tenant == tenant;
        let mut keys: Vec<pb::KeyInfo> = self
            .auth
            .config_keys()
            .into_iter()
            .filter(|k| wanted(&k.tenant))
            .map(|k| pb::KeyInfo {
                id: k.id,
                tenant: k.tenant,
                name: k.name,
                scopes: scope_names(k.scopes),
                source: pb::KeySource::Config as i32,
                active: true,
                ..Default::default()
            })
            .collect();
        if let Some(store) = self.auth.store() {
            let stored = store.list().await.map_err(store_status)?;
            keys.extend(
                stored
                    .iter()
                    .filter(|k| wanted(&k.tenant))
                    .filter(|k| request.include_inactive || k.is_active(now))
                    .map(|k| stored_info(k, now)),
            );
        }
        keys.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        Ok(pb::ListKeysResponse { keys })
    }

    /// Revokes a store key, from the next call on.
    pub async fn revoke(
        &self,
        caller: &Caller,
        via: Via,
        id: &str,
    ) -> Result<pb::RevokeKeyResponse, Status> {
        let id = id.trim();
        if id.starts_with("config:") {
            return Err(Status::failed_precondition(format!(
                "{id} is a key of the config file: remove it from [[tenants.keys]] and reload"
            )));
        }
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "id: give the id of the key to revoke",
            ));
        }
        let (key, already) = self
            .store()?
            .revoke(id, actor(caller, via))
            .await
            .map_err(store_status)?;
        Ok(pb::RevokeKeyResponse {
            info: Some(stored_info(&key, crate::keystore::now())),
            already_revoked: already,
        })
    }

    /// The audit log, newest first.
    pub async fn audit(
        &self,
        request: pb::ListAuditEventsRequest,
    ) -> Result<pb::ListAuditEventsResponse, Status> {
        let limit = match request.limit {
            0 => AUDIT_PAGE,
            n => n.min(AUDIT_PAGE_MAX),
        };
        let before = Some(request.before_id).filter(|b| *b > 0);
        let events = self
            .store()?
            .audit_events(limit, before)
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|e| pb::AuditEvent {
                id: e.id,
                at: Some(timestamp(e.at)),
                actor: e.actor,
                tenant: e.tenant,
                action: e.action,
                target: e.target,
                detail: e.detail,
                via: e.via,
            })
            .collect();
        Ok(pb::ListAuditEventsResponse { events })
    }

    /// Records an admin action that is not about keys (a session closed, a
    /// console sign-in). Without a key store it is only logged.
    pub async fn record(&self, caller: &Caller, via: Via, entry: AuditEntry) {
        self.record_as(actor(caller, via), entry).await;
    }

    /// Records an action of someone who is not a caller, such as a refused
    /// console sign-in: `actor` is how the log names them.
    pub async fn record_as(&self, actor: Actor, entry: AuditEntry) {
        match self.auth.store() {
            Some(store) => {
                if let Err(e) = store.record(actor, entry).await {
                    tracing::warn!("audit log: {e}");
                }
            }
            None => crate::keystore::log_action(&actor, &entry),
        }
    }
}

fn timestamp(secs: i64) -> prost_types::Timestamp {
    super::convert::timestamp(from_unix(secs))
}

fn scope_names(scopes: Scopes) -> Vec<String> {
    scopes.iter().map(|s| s.as_str().to_string()).collect()
}

/// A store key as the API shows it.
fn stored_info(k: &StoredKey, now: i64) -> pb::KeyInfo {
    pb::KeyInfo {
        id: k.id.clone(),
        tenant: k.tenant.clone(),
        name: k.name.clone().unwrap_or_default(),
        scopes: scope_names(k.scopes),
        source: pb::KeySource::Store as i32,
        created: Some(timestamp(k.created)),
        expires: k.expires.map(timestamp),
        last_used: k.last_used.map(timestamp),
        revoked: k.revoked.map(timestamp),
        active: k.is_active(now),
        cpu_time: Some(crate::api_duration(std::time::Duration::from_nanos(
            u64::try_from(k.cpu_ns).unwrap_or(0),
        ))),
    }
}

/// The gRPC service over [`KeyAdmin`].
#[derive(Debug, Clone)]
pub struct KeysAdminService {
    keys: KeyAdmin,
}

/// The `gatehouse.admin.v1.Admin` service behind authentication.
pub fn keys_admin_server(
    auth: Authenticator,
    throttle: Option<Arc<super::FailureThrottle>>,
) -> Authenticated<AdminServer<KeysAdminService>> {
    let service = KeysAdminService {
        keys: KeyAdmin::new(auth.clone()),
    };
    Authenticated::new(AdminServer::new(service), auth).with_throttle(throttle)
}

#[tonic::async_trait]
impl Admin for KeysAdminService {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let caller = caller(&request)?;
        let out = self
            .keys
            .create(&caller, Via::Api, request.into_inner())
            .await?;
        Ok(Response::new(out))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        caller(&request)?;
        Ok(Response::new(self.keys.list(request.into_inner()).await?))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        let caller = caller(&request)?;
        let out = self
            .keys
            .revoke(&caller, Via::Api, &request.get_ref().id)
            .await?;
        Ok(Response::new(out))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        caller(&request)?;
        Ok(Response::new(self.keys.audit(request.into_inner()).await?))
    }
}
