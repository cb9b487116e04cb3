//! The JSON shapes of the HTTP API (docs/http-api.md).
//!
//! Requests refuse unknown fields; clients ignore answer fields they do not know, since new
//! ones may be added.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A position in the control plane's change history; the watch stream resumes after one.
pub type Revision = u64;

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
    /// The subnet the node's runtime already holds (containers have addresses of it):
    /// a wish the control plane grants when that subnet is free. Sent only then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
}

impl RegisterRequest {
    /// The body's field names, in the order the documents list them (then additions).
    pub const FIELDS: &'static [&'static str] = &[
        "hostname",
        "host_ip",
        "cpu_cores",
        "ram_mb",
        "vtep_mac",
        "subnet",
    ];
}

/// Why a node that is up cannot do its work, as its agent reports it on heartbeats
/// (for example `SubnetInUse`). A heartbeat without one says the node is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCondition {
    /// A short CamelCase word a program can match on.
    pub reason: String,
    /// What an operator reads: what is wrong and what would fix it.
    pub message: String,
}

/// The optional body of `POST /api/nodes/{id}/heartbeat` (an addition: an empty body,
/// as the original agents send, is a healthy node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<NodeCondition>,
}

/// `"up"` or `"down"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Up,
    Down,
}

impl Status {
    /// The word the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Down => "down",
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
    /// What the node's agent last reported as wrong; absent when nothing is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<NodeCondition>,
}

/// The answer to a registration: the node, its credential and the cluster plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    #[serde(flatten)]
    pub node: NodeInfo,
    /// Present as `Authorization: Bearer <node_token>` on heartbeats and to leave.
    pub node_token: String,
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

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or `degraded` (see `reason`).
    pub status: String,
    /// Why the server is degraded, such as database writes failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_fields_are_the_serialized_fields() {
        let full = RegisterRequest {
            hostname: "a".into(),
            host_ip: "10.0.0.1".into(),
            cpu_cores: Some(1),
            ram_mb: Some(2),
            vtep_mac: Some("02:00:00:00:00:01".into()),
            subnet: Some("10.42.3.0/24".into()),
        };
        let value = serde_json::to_value(&full).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut fields = RegisterRequest::FIELDS.to_vec();
        keys.sort_unstable();
        fields.sort_unstable();
        assert_eq!(keys, fields);
    }

    #[test]
    fn a_register_response_is_a_node_with_credentials_on_the_wire() {
        let body = r#"{"node_id":"node-1","subnet":"10.42.1.0/24","node_token":"t",
            "hostname":"h","host_ip":"192.168.1.10","cpu_cores":4,"ram_mb":8,"status":"up",
            "registered_at":1,"last_heartbeat":2,"vtep_mac":null,"cluster_cidr":"10.42.0.0/16",
            "heartbeat_timeout_ms":30000,"created":true,"a_later_field":1}"#;
        let r: RegisterResponse = serde_json::from_str(body).unwrap();
        assert_eq!(r.node.node_id, "node-1");
        assert_eq!(r.node.subnet.to_string(), "10.42.1.0/24");
        assert_eq!((r.node_token.as_str(), r.created), ("t", true));
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["node_id"], "node-1");
        assert_eq!(back["node_token"], "t");
        assert!(back.get("node").is_none(), "flattened, not nested: {back}");
    }
}
