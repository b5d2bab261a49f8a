//! Several gateways behind one proxy (`[cluster]`, docs/cluster.md).
//!
//! A node names its sessions `<node_id>.<32 hex>` ([`session_id`]), so a
//! proxy routes every later call of a session to its owner with a plain
//! map from node id to server. What the nodes must share — the cluster's
//! session cap, each tenant's quota and a view of every node's sessions —
//! is kept in Redis by the [`Ledger`]; each node's part of it is held under
//! a lease it renews, so a node that dies gives its slots back by itself.

mod ledger;
mod record;
mod scripts;

pub use self::ledger::{Ledger, LedgerError, SharedClaim};
pub use self::record::SessionRecord;

use rand::RngCore;

/// A fresh session id: 128 random bits from the OS-seeded CSPRNG as 32 hex
/// digits, after `<node>.` in a cluster.
pub fn session_id(node: Option<&str>) -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let random = hex::encode(bytes);
    match node {
        Some(node) => format!("{node}.{random}"),
        None => random,
    }
}

/// The node a session id names, if it has a prefix.
pub fn node_of(session_id: &str) -> Option<&str> {
    session_id.split_once('.').map(|(node, _)| node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_node_only_in_a_cluster() {
        let plain = session_id(None);
        assert_eq!(plain.len(), 32);
        assert!(plain.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(node_of(&plain), None);
        let id = session_id(Some("n-2"));
        assert_eq!(node_of(&id), Some("n-2"));
        assert_eq!(id.len(), "n-2.".len() + 32);
        assert_ne!(session_id(Some("n-2")), id);
    }
}
