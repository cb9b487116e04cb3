//! The etcd keys of one cluster, all under one prefix (`/quilt` by default):
//!
//! | key | value |
//! |---|---|
//! | `P/plan` | the cluster CIDR and node prefix length, as JSON |
//! | `P/nodes/<id>` | the node, as JSON (its heartbeat time as of its last change) |
//! | `P/heartbeats/<id>` | the node's last heartbeat, unix ms: the one small write per heartbeat |
//! | `P/hosts/<host ip>` | the node id holding that host IP |
//! | `P/leases/<index>` | the node id holding subnet number `index` of the plan |
//! | `P/macs/<vtep mac>` | the node id holding that VTEP MAC |
//! | `P/next-node-id` | the first node id not yet handed out (replicas take ids in blocks) |
//! | `P/revision-base` | added to etcd's revision to make the API's (set by a migration) |
//!
//! Ids and lease indices are zero-padded so that keys sort as their numbers do.

use std::net::Ipv4Addr;

use crate::model::{MacAddr, NodeId};

/// What an etcd key under the prefix names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Node(NodeId),
    Lease(u64),
    Host(Ipv4Addr),
    Mac(MacAddr),
    Other,
}

/// The keys of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Without a trailing slash.
    prefix: String,
}

impl Keys {
    /// The keys under `prefix` (like `/quilt`; a trailing slash is dropped).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The start of every key of the cluster.
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub fn plan(&self) -> String {
        format!("{}/plan", self.prefix)
    }

    pub fn next_node_id(&self) -> String {
        format!("{}/next-node-id", self.prefix)
    }

    pub fn revision_base(&self) -> String {
        format!("{}/revision-base", self.prefix)
    }

    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node(&self, id: NodeId) -> String {
        format!("{}{:020}", self.nodes(), id.number())
    }

    pub fn heartbeats(&self) -> String {
        format!("{}/heartbeats/", self.prefix)
    }

    pub fn heartbeat(&self, id: NodeId) -> String {
        format!("{}{:020}", self.heartbeats(), id.number())
    }

    pub fn hosts(&self) -> String {
        format!("{}/hosts/", self.prefix)
    }

    pub fn host(&self, ip: Ipv4Addr) -> String {
        format!("{}{ip}", self.hosts())
    }

    pub fn macs(&self) -> String {
        format!("{}/macs/", self.prefix)
    }

    pub fn leases(&self) -> String {
        format!("{}/leases/", self.prefix)
    }

    pub fn lease(&self, index: u64) -> String {
        format!("{}{index:010}", self.leases())
    }

    pub fn mac(&self, mac: MacAddr) -> String {
        format!("{}{mac}", self.macs())
    }

    /// What `key` names.
    pub fn kind(&self, key: &[u8]) -> KeyKind {
        let Ok(key) = std::str::from_utf8(key) else {
            return KeyKind::Other;
        };
        let number = |rest: &str| rest.parse::<u64>().ok();
        if let Some(id) = key.strip_prefix(&self.nodes()).and_then(number) {
            return KeyKind::Node(NodeId::new(id));
        }
        if let Some(index) = key.strip_prefix(&self.leases()).and_then(number) {
            return KeyKind::Lease(index);
        }
        if let Some(ip) = key
            .strip_prefix(&self.hosts())
            .and_then(|ip| ip.parse().ok())
        {
            return KeyKind::Host(ip);
        }
        if let Some(mac) = key
            .strip_prefix(&self.macs())
            .and_then(|mac| crate::model::parse_mac(mac).ok())
        {
            return KeyKind::Mac(mac);
        }
        KeyKind::Other
    }

    /// The lease index of a lease key.
    pub fn lease_index(&self, key: &[u8]) -> Option<u64> {
        match self.kind(key) {
            KeyKind::Lease(index) => Some(index),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_as_their_numbers_and_are_read_back() {
        let k = Keys::new("/quilt/");
        assert_eq!(k.node(NodeId::new(7)), "/quilt/nodes/00000000000000000007");
        assert!(k.lease(9) < k.lease(10));
        assert_eq!(
            k.kind(k.node(NodeId::new(42)).as_bytes()),
            KeyKind::Node(NodeId::new(42))
        );
        assert_eq!(k.kind(k.lease(3).as_bytes()), KeyKind::Lease(3));
        assert_eq!(
            k.kind(k.heartbeat(NodeId::new(3)).as_bytes()),
            KeyKind::Other
        );
        let ip: Ipv4Addr = "10.0.0.7".parse().unwrap();
        assert_eq!(k.kind(k.host(ip).as_bytes()), KeyKind::Host(ip));
        let mac = crate::model::parse_mac("02:00:00:00:00:0a").unwrap();
        assert_eq!(k.kind(k.mac(mac).as_bytes()), KeyKind::Mac(mac));
        assert_eq!(k.kind(b"/quilt/nodes/x"), KeyKind::Other);
        assert_eq!(k.kind(b"/other/nodes/1"), KeyKind::Other);
    }
}
