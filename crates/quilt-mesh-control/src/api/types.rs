//! The wire types (the `quilt-api` crate, shared with every client) and their making from
//! the registry's model.

use crate::model::{Node, NodeStatus};
use crate::store::{Change, ChangeKind};

pub use quilt_api::types::*;

/// The API's word for a node's status.
pub fn status(s: NodeStatus) -> Status {
    match s {
        NodeStatus::Up => Status::Up,
        NodeStatus::Down => Status::Down,
    }
}

/// A node as the API shows it.
pub fn node_info(n: &Node) -> NodeInfo {
    NodeInfo {
        node_id: n.id.to_string(),
        hostname: n.hostname.to_string(),
        host_ip: n.host_ip,
        subnet: n.subnet,
        cpu_cores: n.cpu_cores,
        ram_mb: n.ram_mb,
        status: status(n.status),
        registered_at: n.registered_at,
        last_heartbeat: n.last_heartbeat_ms / 1000,
        vtep_mac: n.vtep_mac.map(|m| m.to_string()),
        vxlan_port: n.vxlan.port,
        vni: n.vxlan.vni,
        condition: n.condition.as_ref().map(|c| NodeCondition {
            reason: c.reason().to_string(),
            message: c.message().to_string(),
        }),
    }
}

/// A stored change as one watch-stream line.
pub fn watch_event(c: &Change) -> WatchEvent {
    WatchEvent {
        revision: c.revision,
        kind: match c.kind {
            ChangeKind::Added => EventType::Added,
            ChangeKind::Updated => EventType::Updated,
            ChangeKind::Deleted => EventType::Deleted,
        },
        node: node_info(&c.node),
    }
}
