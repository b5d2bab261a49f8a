//! The Lua scripts the ledger runs in Redis: each is atomic there, so a
//! take counts every node's slots and adds its own in one step.
//!
//! Keys (one standalone Redis, or a primary with replicas; not Redis
//! Cluster, whose scripts may only touch the keys they declare):
//!
//! - `gatehouse:nodes`: a set of node ids that may hold slots;
//! - `gatehouse:node:<id>`: that node's slots, a hash of `all` and
//!   `t:<tenant>` counts, expiring `node_lease` after its last renewal;
//! - `gatehouse:sessions:<id>`: that node's live sessions, a hash of id to
//!   a JSON [`super::SessionRecord`], expiring with the slots.
//!
//! A node whose slot hash has expired counts nothing, and the next take
//! drops it from the set.

/// The key of the node set.
pub const NODES: &str = "gatehouse:nodes";

/// The key of a node's slot counts.
pub fn slots_key(node: &str) -> String {
    format!("gatehouse:node:{node}")
}

/// The key of a node's session records.
pub fn sessions_key(node: &str) -> String {
    format!("gatehouse:sessions:{node}")
}

/// ARGV: node, tenant, cap (-1: none), quota (-1: none), lease in ms.
/// Returns `{0}` when taken, `{1}` at the tenant's quota, `{2}` at the cap.
pub const TAKE: &str = r#"
local node, tenant = ARGV[1], ARGV[2]
local cap, quota, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local total, mine = 0, 0
for _, n in ipairs(redis.call('SMEMBERS', 'gatehouse:nodes')) do
  local key = 'gatehouse:node:' .. n
  local held = redis.call('HMGET', key, 'all', 't:' .. tenant)
  if held[1] then
    total = total + tonumber(held[1])
    mine = mine + tonumber(held[2] or '0')
  elseif n ~= node then
    redis.call('SREM', 'gatehouse:nodes', n)
  end
end
if quota >= 0 and mine >= quota then return {1} end
if cap >= 0 and total >= cap then return {2} end
local key = 'gatehouse:node:' .. node
redis.call('HINCRBY', key, 'all', 1)
redis.call('HINCRBY', key, 't:' .. tenant, 1)
redis.call('PEXPIRE', key, lease)
redis.call('SADD', 'gatehouse:nodes', node)
return {0}
"#;

/// ARGV: node, tenant, session id ("" for a call). Gives one slot back
/// (unless the node's hash expired meanwhile: then it was given back
/// already) and drops the session's record.
pub const RELEASE: &str = r#"
local key = 'gatehouse:node:' .. ARGV[1]
if redis.call('EXISTS', key) == 1 then
  redis.call('HINCRBY', key, 'all', -1)
  redis.call('HINCRBY', key, 't:' .. ARGV[2], -1)
end
if ARGV[3] ~= '' then
  redis.call('HDEL', 'gatehouse:sessions:' .. ARGV[1], ARGV[3])
end
return 0
"#;

/// ARGV: node, lease in ms, all, then tenant and count pairs. Writes the
/// node's counts as the node itself knows them (so a failed release or a
/// Redis that lost its data heals at the next renewal) and extends both
/// of its keys' lease.
pub const RENEW: &str = r#"
local node, lease = ARGV[1], tonumber(ARGV[2])
local key = 'gatehouse:node:' .. node
redis.call('DEL', key)
redis.call('HSET', key, 'all', ARGV[3])
for i = 4, #ARGV, 2 do
  redis.call('HSET', key, 't:' .. ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', key, lease)
redis.call('PEXPIRE', 'gatehouse:sessions:' .. node, lease)
redis.call('SADD', 'gatehouse:nodes', node)
return 0
"#;
