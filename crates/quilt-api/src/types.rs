//! The JSON shapes of the HTTP API (docs/http-api.md).
//!
//! Requests refuse unknown fields; clients ignore answer fields they do not know, since new
//! ones may be added, and read answers liberally (see [`crate::lenient`]): beyond
//! `node_id` and `subnet` (and a node's `host_ip`), every answer field may be missing or
//! `null` and takes a default, as the original control plane sends less.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::lenient;

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
    /// The UDP port of the node's VXLAN device (peers send to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_port: Option<u16>,
    /// The VXLAN network identifier of the node's device (peers must use the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
}

impl RegisterRequest {
    /// The original body: a hostname and a host address, nothing else.
    pub fn new(hostname: impl Into<String>, host_ip: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            host_ip: host_ip.into(),
            cpu_cores: None,
            ram_mb: None,
            vtep_mac: None,
            subnet: None,
            vxlan_port: None,
            vni: None,
        }
    }

    /// The body's field names, in the order the documents list them (then additions).
    pub const FIELDS: &'static [&'static str] = &[
        "hostname",
        "host_ip",
        "cpu_cores",
        "ram_mb",
        "vtep_mac",
        "subnet",
        "vxlan_port",
        "vni",
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
    #[serde(deserialize_with = "lenient::id")]
    pub node_id: String,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub hostname: String,
    pub host_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub cpu_cores: u32,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub ram_mb: u64,
    #[serde(default = "lenient::up", deserialize_with = "lenient::status")]
    pub status: Status,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub registered_at: u64,
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub last_heartbeat: u64,
    /// Absent until the node registers one (the original agents never do).
    #[serde(default, deserialize_with = "lenient::optional_text")]
    pub vtep_mac: Option<String>,
    /// The UDP port of the node's VXLAN device, when it registered one (an addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_port: Option<u16>,
    /// The VXLAN network identifier of the node's device, when it registered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// What the node's agent last reported as wrong; absent when nothing is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<NodeCondition>,
}

/// The answer to a registration: the node, its credential and the cluster plan. The
/// original control plane answers only `{node_id, subnet}`: the rest takes defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    #[serde(flatten)]
    pub node: NodeInfo,
    /// Present as `Authorization: Bearer <node_token>` on heartbeats and to leave; empty
    /// from a control plane that issues none (then none is presented).
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub node_token: String,
    /// Absent from a control plane that does not say.
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub cluster_cidr: Option<Ipv4Net>,
    /// A node not heard from for this long is marked down; send heartbeats well within
    /// it. Absent from a control plane that does not say.
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// True when this registration made a new node, false when it renewed one; taken
    /// as true when the control plane does not say.
    #[serde(default = "yes", deserialize_with = "lenient::or_true")]
    pub created: bool,
}

fn yes() -> bool {
    true
}

impl RegisterResponse {
    /// Reads the answer to `request`. The original control plane answers only
    /// `{node_id, subnet}`; what the request said of the node (`hostname`, `host_ip`)
    /// stands in for what the answer leaves out.
    pub fn from_answer(body: &[u8], request: &RegisterRequest) -> Result<Self, serde_json::Error> {
        let mut answer: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)?;
        for (field, said) in [
            ("hostname", &request.hostname),
            ("host_ip", &request.host_ip),
        ] {
            let value = answer.entry(field).or_insert(serde_json::Value::Null);
            if value.is_null() {
                *value = serde_json::Value::from(said.as_str());
            }
        }
        serde_json::from_value(serde_json::Value::Object(answer))
    }
}

/// `GET /api/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeList {
    #[serde(default, deserialize_with = "lenient::or_default")]
    pub nodes: Vec<NodeInfo>,
    /// Pass as `since` to the watch stream to see every change after this list; 0 from
    /// a control plane without revisions (and without a watch stream).
    #[serde(default, deserialize_with = "lenient::or_default")]
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

/// The header of a watch answer naming, in milliseconds, the longest the stream stays
/// silent: the server sends a bare newline (a keepalive line, skipped by readers) when
/// no event went out for that long.
pub const KEEPALIVE_HEADER: &str = "x-quilt-keepalive-ms";

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
            vxlan_port: Some(4789),
            vni: Some(100),
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

    #[test]
    fn the_original_control_planes_minimal_answers_parse() {
        let request = RegisterRequest::new("h1", "192.168.1.10");
        let r = RegisterResponse::from_answer(
            br#"{"node_id": "6f1c2a9e-3b7d-4e0a-9c55-1d2e3f4a5b6c", "subnet": "10.42.1.0/24"}"#,
            &request,
        )
        .unwrap();
        assert_eq!(r.node.host_ip.to_string(), "192.168.1.10");
        assert_eq!(r.node.hostname, "h1");
        assert_eq!(r.node.node_id, "6f1c2a9e-3b7d-4e0a-9c55-1d2e3f4a5b6c");
        assert_eq!(r.node.subnet.to_string(), "10.42.1.0/24");
        assert_eq!((r.node_token.as_str(), r.created), ("", true));
        assert_eq!((r.cluster_cidr, r.heartbeat_timeout_ms), (None, None));
        assert_eq!(r.node.status, Status::Up);

        let list: NodeList = serde_json::from_str(
            r#"{"nodes": [{"node_id": 7, "hostname": null, "host_ip": "192.168.1.7",
                "subnet": "10.42.7.0/24", "cpu_cores": null, "ram_mb": 512, "status": "DOWN",
                "registered_at": 1, "last_heartbeat": null, "vtep_mac": ""}]}"#,
        )
        .unwrap();
        assert_eq!(list.revision, 0);
        let n = &list.nodes[0];
        assert_eq!(n.node_id, "7");
        assert_eq!((n.hostname.as_str(), n.cpu_cores, n.ram_mb), ("", 0, 512));
        assert_eq!((n.status, n.last_heartbeat), (Status::Down, 0));
        assert_eq!(n.vtep_mac, None, "an empty MAC is no MAC");
        let empty: NodeList = serde_json::from_str(r#"{"nodes": null}"#).unwrap();
        assert!(empty.nodes.is_empty());
    }

    #[test]
    fn what_a_node_cannot_be_without_is_still_required() {
        for body in [
            r#"{"subnet": "10.42.1.0/24", "host_ip": "10.0.0.1"}"#,
            r#"{"node_id": "a", "host_ip": "10.0.0.1"}"#,
            r#"{"node_id": "a", "subnet": "10.42.1.0/24"}"#,
            r#"{"node_id": "", "subnet": "10.42.1.0/24", "host_ip": "10.0.0.1"}"#,
            r#"{"node_id": "a", "subnet": "10.42.1.0/24", "host_ip": "10.0.0.1", "status": "sleepy"}"#,
        ] {
            let e = serde_json::from_str::<NodeInfo>(body).unwrap_err();
            assert!(!e.to_string().is_empty(), "{body}");
        }
    }
}
