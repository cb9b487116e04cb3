//! A node as a store keeps it: plain values (strings for addresses, MACs and the
//! condition), and their checks back into a [`Node`]; a bad value is
//! [`StoreError::Corrupt`], naming the node and the value. SQLite keeps one per row, etcd
//! one per key (as JSON).

use ipnet::Ipv4Net;

use super::StoreError;
use crate::model::{
    Condition, Node, NodeId, NodeStatus, TokenHash, Vxlan, hostname_from_stored, parse_mac,
};

/// A node as stored, before checking it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredNode {
    pub id: u64,
    pub hostname: String,
    pub host_ip: String,
    pub subnet: String,
    pub cpu_cores: u32,
    pub ram_mb: u64,
    pub vtep_mac: Option<String>,
    pub status: String,
    pub registered_at: u64,
    pub last_heartbeat_ms: u64,
    pub token_sha256: String,
    pub condition: Option<String>,
    pub vxlan_port: Option<u16>,
    pub vni: Option<u32>,
}

impl StoredNode {
    /// How `node` is stored.
    pub fn of(node: &Node) -> Self {
        StoredNode {
            id: node.id.number(),
            hostname: node.hostname.to_string(),
            host_ip: node.host_ip.to_string(),
            subnet: node.subnet.to_string(),
            cpu_cores: node.cpu_cores,
            ram_mb: node.ram_mb,
            vtep_mac: node.vtep_mac.map(|m| m.to_string()),
            status: node.status.as_str().to_string(),
            registered_at: node.registered_at,
            last_heartbeat_ms: node.last_heartbeat_ms,
            token_sha256: node.token_hash.as_str().to_string(),
            condition: node.condition.as_ref().map(Condition::to_stored),
            vxlan_port: node.vxlan.port,
            vni: node.vxlan.vni,
        }
    }

    /// The node this stands for, once every value checks.
    pub fn check(self) -> Result<Node, StoreError> {
        let id = NodeId::new(self.id);
        let bad = |what: &str, value: &str| {
            StoreError::Corrupt(format!("node {id} has {what} {value:?}"))
        };
        Ok(Node {
            id,
            host_ip: self
                .host_ip
                .parse()
                .map_err(|_| bad("host_ip", &self.host_ip))?,
            subnet: self
                .subnet
                .parse::<Ipv4Net>()
                .map_err(|_| bad("subnet", &self.subnet))?,
            vtep_mac: match &self.vtep_mac {
                Some(m) => Some(parse_mac(m).map_err(|_| bad("vtep_mac", m))?),
                None => None,
            },
            vxlan: Vxlan {
                port: self.vxlan_port,
                vni: self.vni,
            },
            status: NodeStatus::parse(&self.status).ok_or_else(|| bad("status", &self.status))?,
            hostname: hostname_from_stored(self.hostname),
            cpu_cores: self.cpu_cores,
            ram_mb: self.ram_mb,
            registered_at: self.registered_at,
            last_heartbeat_ms: self.last_heartbeat_ms,
            token_hash: TokenHash::from_stored(self.token_sha256),
            condition: match &self.condition {
                Some(c) => Some(Condition::from_stored(c).ok_or_else(|| bad("condition", c))?),
                None => None,
            },
        })
    }
}
