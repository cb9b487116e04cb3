//! The JSON shapes of the HTTP API (docs/http-api.md), shared with the agent and quiltctl.
//!
//! Requests refuse unknown fields; clients should ignore answer fields they do not know,
//! since new ones may be added.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::{Node, NodeStatus};
use crate::store::{Change, ChangeKind, Revision};

/// `POST /api/nodes/register`. `hostname` and `host_ip` are required; the original
/// clients send `{hostname, host_ip, cpu_cores, ram_mb}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub hostname: String,
    pub host_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_mb: Option<u64>,
    /// The node's VXLAN device MAC, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
}

/// `"up"` or `"down"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Up,
    Down,
}

impl From<NodeStatus> for Status {
    fn from(s: NodeStatus) -> Self {
        match s {
            NodeStatus::Up => Status::Up,
            NodeStatus::Down => Status::Down,
        }
    }
}

/// A node as `GET /api/nodes` and the watch stream show it. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub hostname: String,
    pub host_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub cpu_cores: u32,
    pub ram_mb: u64,
    pub status: Status,
    pub registered_at: u64,
    pub last_heartbeat: u64,
    /// Absent until the node registers one.
    pub vtep_mac: Option<String>,
}

impl From<&Node> for NodeInfo {
    fn from(n: &Node) -> Self {
        Self {
            node_id: n.id.to_string(),
            hostname: n.hostname.to_string(),
            host_ip: n.host_ip,
            subnet: n.subnet,
            cpu_cores: n.cpu_cores,
            ram_mb: n.ram_mb,
            status: n.status.into(),
            registered_at: n.registered_at,
            last_heartbeat: n.last_heartbeat_ms / 1000,
            vtep_mac: n.vtep_mac.map(|m| m.to_string()),
        }
    }
}

/// The answer to a registration: the node, its credential and the cluster plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub node_id: String,
    pub subnet: Ipv4Net,
    /// Present as `Authorization: Bearer <node_token>` on heartbeats and to leave.
    pub node_token: String,
    pub hostname: String,
    pub host_ip: Ipv4Addr,
    pub cpu_cores: u32,
    pub ram_mb: u64,
    pub status: Status,
    pub registered_at: u64,
    pub last_heartbeat: u64,
    pub vtep_mac: Option<String>,
    pub cluster_cidr: Ipv4Net,
    /// A node not heard from for this long is marked down; send heartbeats well within it.
    pub heartbeat_timeout_ms: u64,
    /// True when this registration made a new node, false when it renewed one.
    pub created: bool,
}

/// `GET /api/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeList {
    pub nodes: Vec<NodeInfo>,
    /// Pass as `since` to the watch stream to see every change after this list.
    pub revision: Revision,
}

/// `POST /api/nodes/{id}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub node_id: String,
    pub status: Status,
    pub last_heartbeat: u64,
}

/// The kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Added,
    Updated,
    Deleted,
}

/// One line of `GET /api/nodes/watch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub revision: Revision,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The node after the change; for `deleted`, as it was when it left.
    pub node: NodeInfo,
}

impl From<&Change> for WatchEvent {
    fn from(c: &Change) -> Self {
        Self {
            revision: c.revision,
            kind: match c.kind {
                ChangeKind::Added => EventType::Added,
                ChangeKind::Updated => EventType::Updated,
                ChangeKind::Deleted => EventType::Deleted,
            },
            node: NodeInfo::from(&c.node),
        }
    }
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
}

/// Every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
