//! The shared slot ledger in Redis: the cluster's cap and the tenants'
//! quotas counted across nodes, each node's part held under a lease.
//!
//! One task per node talks to Redis for slots, in order: takes, releases,
//! record writes and lease renewals go through it one at a time, so the
//! node's own books (what it holds) and what Redis holds for it never
//! disagree for long — a renewal writes the books over whatever Redis has,
//! healing a release that failed while Redis was away. The task ends once
//! the [`Ledger`] and every [`SharedClaim`] are gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};

use super::SessionRecord;
use super::scripts;
use crate::config::ClusterSettings;
use crate::metrics::{ClusterMetrics, OpLabel, ResultLabel};

/// How long one Redis operation may take before the open waiting for it
/// fails `UNAVAILABLE`.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the ledger gave no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The cluster's session cap is reached.
    #[error("the cluster's session cap ({0}) is reached")]
    Cap(usize),
    /// The tenant's cluster-wide quota is reached.
    #[error("the tenant's cluster-wide quota ({0}) is reached")]
    Quota(usize),
    /// Redis did not answer in time, or failed.
    #[error("{0}")]
    Unavailable(String),
}

/// One request to the ledger task.
enum Op {
    Take {
        tenant: Arc<str>,
        quota: Option<usize>,
        reply: oneshot::Sender<Result<(), LedgerError>>,
    },
    Release {
        tenant: Arc<str>,
        session: Option<Arc<str>>,
    },
    Publish(SessionRecord),
    Leave(oneshot::Sender<()>),
}

/// A node's handle on the shared slots.
pub struct Ledger {
    node: Arc<str>,
    ops: mpsc::UnboundedSender<Op>,
    redis: ConnectionManager,
    metrics: ClusterMetrics,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("node", &self.node).finish()
    }
}

/// A slot held in Redis; dropping it gives it back, once.
#[derive(Debug)]
pub struct SharedClaim {
    tenant: Arc<str>,
    session: Option<Arc<str>>,
    ops: mpsc::UnboundedSender<Op>,
}

impl Drop for SharedClaim {
    fn drop(&mut self) {
        let _ = self.ops.send(Op::Release {
            tenant: Arc::clone(&self.tenant),
            session: self.session.take(),
        });
    }
}

impl Ledger {
    /// The ledger of `settings.redis` for `settings.node_id`, or `None`
    /// outside a cluster with Redis. Connects lazily: a Redis that is down
    /// at start only fails opens until it is back. Must be called inside a
    /// tokio runtime.
    pub fn start(
        settings: &ClusterSettings,
        metrics: ClusterMetrics,
    ) -> Result<Option<Arc<Self>>, LedgerError> {
        let (Some(url), Some(node)) = (&settings.redis, &settings.node_id) else {
            return Ok(None);
        };
        let client = redis::Client::open(url.as_str())
            .map_err(|e| LedgerError::Unavailable(format!("cluster.redis: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT / 2))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| LedgerError::Unavailable(format!("cluster.redis: {e}")))?;
        let (ops, rx) = mpsc::unbounded_channel();
        let node: Arc<str> = Arc::from(node.as_str());
        metrics
            .node_lease_seconds
            .set(settings.node_lease.as_secs_f64());
        metrics
            .max_sessions
            .set(settings.max_sessions.map_or(0, |n| n as i64));
        let task = Task {
            node: Arc::clone(&node),
            redis: redis.clone(),
            lease: settings.node_lease,
            cap: settings.max_sessions,
            books: Books::default(),
            metrics: metrics.clone(),
            scripts: Scripts::default(),
        };
        tokio::spawn(task.run(rx));
        Ok(Some(Arc::new(Self {
            node,
            ops,
            redis,
            metrics,
        })))
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Takes a slot of the cluster's cap and of `tenant`'s `quota` (both or
    /// neither), for `session` if it is one (a call is not).
    pub async fn take(
        &self,
        tenant: &str,
        quota: Option<usize>,
        session: Option<Arc<str>>,
    ) -> Result<SharedClaim, LedgerError> {
        let tenant: Arc<str> = Arc::from(tenant);
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Op::Take {
                tenant: Arc::clone(&tenant),
                quota,
                reply,
            })
            .map_err(|_| LedgerError::Unavailable("the ledger has stopped".into()))?;
        // If this wait gives up, the task sees the reply closed: a take it
        // has not run yet is skipped, one it has run is given back.
        match tokio::time::timeout(REDIS_TIMEOUT, answer).await {
            Ok(Ok(Ok(()))) => Ok(SharedClaim {
                tenant,
                session,
                ops: self.ops.clone(),
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(LedgerError::Unavailable("the ledger has stopped".into())),
            Err(_) => Err(LedgerError::Unavailable(format!(
                "Redis did not answer within {REDIS_TIMEOUT:?}"
            ))),
        }
    }

    /// Shows a READY session to the other nodes; its record goes when its
    /// slot is given back.
    pub fn publish(&self, record: SessionRecord) {
        let _ = self.ops.send(Op::Publish(record));
    }

    /// A clean stop: gives back whatever this node still holds in Redis at
    /// once (instead of after `node_lease`) and stops renewing.
    pub async fn leave(&self) {
        let (done, left) = oneshot::channel();
        if self.ops.send(Op::Leave(done)).is_ok() {
            let _ = tokio::time::timeout(REDIS_TIMEOUT, left).await;
        }
    }

    /// The live sessions of every other node, as of their open.
    pub async fn others(&self) -> Result<Vec<SessionRecord>, LedgerError> {
        let read = async {
            let mut redis = self.redis.clone();
            let nodes: Vec<String> = redis.smembers(scripts::NODES).await?;
            let mut out = Vec::new();
            for node in nodes.iter().filter(|n| **n != *self.node) {
                let values: Vec<String> = redis.hvals(scripts::sessions_key(node)).await?;
                out.extend(
                    values
                        .iter()
                        .filter_map(|v| serde_json::from_str::<SessionRecord>(v).ok()),
                );
            }
            Ok::<_, redis::RedisError>(out)
        };
        self.view(read).await
    }

    /// Another node's live session `id`, if Redis has it.
    pub async fn other(&self, id: &str) -> Result<Option<SessionRecord>, LedgerError> {
        let Some(node) = super::node_of(id).filter(|n| *n != &*self.node) else {
            return Ok(None);
        };
        let read = async {
            let mut redis = self.redis.clone();
            let value: Option<String> = redis.hget(scripts::sessions_key(node), id).await?;
            Ok::<_, redis::RedisError>(value.and_then(|v| serde_json::from_str(&v).ok()))
        };
        self.view(read).await
    }

    async fn view<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, LedgerError> {
        let result = match tokio::time::timeout(REDIS_TIMEOUT, read).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("Redis did not answer within {REDIS_TIMEOUT:?}"),
        };
        failed(&self.metrics, "view");
        Err(LedgerError::Unavailable(result))
    }
}

fn failed(metrics: &ClusterMetrics, op: &str) {
    metrics
        .redis_errors
        .get_or_create(&OpLabel { op: op.into() })
        .inc();
}

/// What this node holds, as it knows it.
#[derive(Default)]
struct Books {
    all: usize,
    tenants: HashMap<Arc<str>, usize>,
    records: HashMap<String, String>,
    /// A write failed since the last renewal: rewrite the records too.
    dirty: bool,
    /// The node has left (a clean stop): nothing is renewed any more.
    left: bool,
}

/// The task that owns the node's Redis state.
struct Task {
    node: Arc<str>,
    redis: ConnectionManager,
    lease: Duration,
    cap: Option<usize>,
    books: Books,
    metrics: ClusterMetrics,
    /// The scripts, hashed once (each call is an EVALSHA).
    scripts: Scripts,
}

/// The ledger's Lua scripts.
struct Scripts {
    take: redis::Script,
    release: redis::Script,
    renew: redis::Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            take: redis::Script::new(scripts::TAKE),
            release: redis::Script::new(scripts::RELEASE),
            renew: redis::Script::new(scripts::RENEW),
        }
    }
}

/// A limit as the scripts take it: -1 for none.
fn limit(n: Option<usize>) -> i64 {
    n.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
}

impl Task {
    async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>) {
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                op = ops.recv() => match op {
                    Some(op) => self.handle(op).await,
                    // The ledger and every claim are gone.
                    None => return,
                },
                _ = renew.tick() => self.renew().await,
            }
        }
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)
    }

    async fn handle(&mut self, op: Op) {
        match op {
            Op::Take {
                tenant,
                quota,
                reply,
            } => {
                // The open gave up waiting: take nothing for it.
                if reply.is_closed() {
                    return;
                }
                // After a failure Redis may have lost what this node holds
                // (a restart without persistence): write it back before
                // taking more, or the take would not count it.
                if self.books.dirty {
                    self.renew().await;
                }
                let taken = if self.books.dirty {
                    Err(LedgerError::Unavailable(
                        "Redis is unreachable: this node's slots could not be written back".into(),
                    ))
                } else {
                    self.take(&tenant, quota).await
                };
                if taken.is_ok() {
                    self.held(&tenant, 1);
                }
                if reply.send(taken.clone()).is_err() && taken.is_ok() {
                    // Taken for an open that gave up meanwhile: back at once.
                    self.release(&tenant, None).await;
                }
            }
            Op::Release { tenant, session } => self.release(&tenant, session).await,
            Op::Leave(done) => {
                self.books.left = true;
                let node = self.node.to_string();
                let mut redis = self.redis.clone();
                let leave = async move {
                    redis::pipe()
                        .atomic()
                        .del(scripts::slots_key(&node))
                        .del(scripts::sessions_key(&node))
                        .srem(scripts::NODES, &node)
                        .query_async::<()>(&mut redis)
                        .await
                };
                self.ok(leave, "leave").await;
                let _ = done.send(());
            }
            Op::Publish(record) => {
                let json = serde_json::to_string(&record).unwrap_or_default();
                self.books.records.insert(record.id.clone(), json.clone());
                let key = scripts::sessions_key(&self.node);
                let mut redis = self.redis.clone();
                let lease = self.lease_ms() as i64;
                let write = async move {
                    redis::pipe()
                        .hset(&key, &record.id, &json)
                        .pexpire(&key, lease)
                        .query_async::<()>(&mut redis)
                        .await
                };
                if !self.ok(write, "publish").await {
                    self.books.dirty = true;
                }
            }
        }
    }

    async fn take(&mut self, tenant: &str, quota: Option<usize>) -> Result<(), LedgerError> {
        let mut redis = self.redis.clone();
        let mut invocation = self.scripts.take.prepare_invoke();
        invocation
            .arg(&*self.node)
            .arg(tenant)
            .arg(limit(self.cap))
            .arg(limit(quota))
            .arg(self.lease_ms());
        let run = invocation.invoke_async::<Vec<i64>>(&mut redis);
        match tokio::time::timeout(REDIS_TIMEOUT, run).await {
            Ok(Ok(answer)) => match answer.first() {
                Some(0) => Ok(()),
                Some(1) => Err(LedgerError::Quota(quota.unwrap_or(0))),
                _ => Err(LedgerError::Cap(self.cap.unwrap_or(0))),
            },
            Ok(Err(e)) => {
                failed(&self.metrics, "take");
                self.books.dirty = true;
                Err(LedgerError::Unavailable(e.to_string()))
            }
            Err(_) => {
                failed(&self.metrics, "take");
                self.books.dirty = true;
                Err(LedgerError::Unavailable(format!(
                    "Redis did not answer within {REDIS_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Counts `n` more (or fewer) slots in the books.
    fn held(&mut self, tenant: &Arc<str>, n: isize) {
        let count = self.books.tenants.entry(Arc::clone(tenant)).or_default();
        *count = count.saturating_add_signed(n);
        if *count == 0 {
            self.books.tenants.remove(tenant);
        }
        self.books.all = self.books.all.saturating_add_signed(n);
        self.metrics
            .slots_held
            .set(i64::try_from(self.books.all).unwrap_or(i64::MAX));
    }

    async fn release(&mut self, tenant: &Arc<str>, session: Option<Arc<str>>) {
        self.held(tenant, -1);
        if let Some(id) = &session {
            self.books.records.remove(&**id);
        }
        let mut redis = self.redis.clone();
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .arg(&*self.node)
            .arg(&**tenant)
            .arg(session.as_deref().unwrap_or(""));
        let run = invocation.invoke_async::<()>(&mut redis);
        if !self.ok(run, "release").await {
            // The next renewal writes the books over Redis's counts.
            self.books.dirty = true;
        }
    }

    async fn renew(&mut self) {
        if self.books.left {
            return;
        }
        let mut redis = self.redis.clone();
        let mut invocation = self.scripts.renew.prepare_invoke();
        invocation
            .arg(&*self.node)
            .arg(self.lease_ms())
            .arg(self.books.all);
        for (tenant, n) in &self.books.tenants {
            invocation.arg(&**tenant).arg(*n);
        }
        let run = invocation.invoke_async::<()>(&mut redis);
        let mut ok = self.ok(run, "renew").await;
        if ok && self.books.dirty {
            ok = self.rewrite_records().await;
        }
        self.books.dirty = !ok;
        let result = if ok { "ok" } else { "error" };
        self.metrics
            .renewals
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// Writes the records over Redis's after writes failed.
    async fn rewrite_records(&mut self) -> bool {
        let key = scripts::sessions_key(&self.node);
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key);
        if !self.books.records.is_empty() {
            let items: Vec<(&String, &String)> = self.books.records.iter().collect();
            pipe.hset_multiple(&key, &items)
                .pexpire(&key, self.lease_ms() as i64);
        }
        let mut redis = self.redis.clone();
        let write = pipe.query_async::<()>(&mut redis);
        let done = tokio::time::timeout(REDIS_TIMEOUT, write).await;
        match done {
            Ok(Ok(())) => true,
            _ => {
                failed(&self.metrics, "renew");
                false
            }
        }
    }

    async fn ok(
        &self,
        run: impl std::future::Future<Output = Result<(), redis::RedisError>>,
        op: &str,
    ) -> bool {
        match tokio::time::timeout(REDIS_TIMEOUT, run).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(op, "cluster redis: {e}");
                failed(&self.metrics, op);
                false
            }
            Err(_) => {
                failed(&self.metrics, op);
                false
            }
        }
    }
}
