//! The control plane as the agent calls it: the shared [`ControlClient`] with the
//! agent's timeouts, and the edge where its answers become parsed [`Peer`]s. A node
//! that cannot be a peer because of a bad value is logged here, with the value.

use std::collections::BTreeMap;
use std::time::Duration;

use quilt_api::types::{NodeInfo, Status};
pub use quilt_api::{ControlClient, ControlError};
use quilt_common::mac::Mac;
use tracing::warn;

use crate::Config;
use crate::peers::Peer;

/// A client of the control planes `config` names, registering with its join token.
/// Unary calls (register, list, heartbeat, leave) give up after 5 s, well within a
/// heartbeat timeout; the watch stream is bounded only by the server.
pub fn client(config: &Config) -> Result<ControlClient, ControlError> {
    ControlClient::builder(config.control_planes.clone())
        .join_token(config.join_token.clone())
        .timeouts(quilt_api::Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(5),
        })
        .build()
}

/// Why an up node other than this one is not a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    #[error("it has no vtep_mac")]
    NoMac,
    #[error("vtep_mac {0}")]
    BadMac(#[from] quilt_common::mac::MacParseError),
    #[error("vtep_mac {0} is not a unicast MAC")]
    NotUnicast(Mac),
}

/// The peer `node` is: `Ok(None)` for this node or a node that is not up, a refusal
/// when its values do not make a peer.
pub fn parse_peer(node: &NodeInfo, self_id: &str) -> Result<Option<Peer>, PeerRefusal> {
    if node.node_id == self_id || node.status != Status::Up {
        return Ok(None);
    }
    let vtep_mac: Mac = node
        .vtep_mac
        .as_deref()
        .ok_or(PeerRefusal::NoMac)?
        .parse()?;
    if !vtep_mac.is_unicast() || vtep_mac.is_zero() {
        return Err(PeerRefusal::NotUnicast(vtep_mac));
    }
    Ok(Some(Peer {
        node_id: node.node_id.clone(),
        hostname: node.hostname.clone(),
        subnet: node.subnet,
        host_ip: node.host_ip,
        vtep_mac,
    }))
}

/// The peer `node` is, if it is one; a refusal is logged (warn) with the value.
pub fn peer_of(node: &NodeInfo, self_id: &str) -> Option<Peer> {
    match parse_peer(node, self_id) {
        Ok(peer) => peer,
        Err(refusal) => {
            warn!(node_id = %node.node_id, hostname = %node.hostname, "peer {} refused: {refusal}", node.node_id);
            None
        }
    }
}

/// Every peer among `nodes`, by node id; each refusal is logged.
pub fn peers_of<'a>(
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
    self_id: &str,
) -> BTreeMap<String, Peer> {
    nodes
        .into_iter()
        .filter_map(|n| peer_of(n, self_id))
        .map(|p| (p.node_id.clone(), p))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    pub fn node(id: &str, n: u8, status: Status, mac: Option<&str>) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            hostname: format!("host{n}"),
            host_ip: Ipv4Addr::new(192, 168, 77, 10 + n),
            subnet: format!("10.42.{n}.0/24").parse().unwrap(),
            cpu_cores: 2,
            ram_mb: 1024,
            status,
            registered_at: 0,
            last_heartbeat: 0,
            vtep_mac: mac.map(str::to_string),
        }
    }

    #[test]
    fn peers_are_the_other_up_nodes_with_a_mac() {
        let nodes = [
            node("node-1", 1, Status::Up, Some("02:00:00:00:00:01")),
            node("node-2", 2, Status::Up, Some("02:00:00:00:00:02")),
            node("node-3", 3, Status::Down, Some("02:00:00:00:00:03")),
            node("node-4", 4, Status::Up, None),
        ];
        let peers = peers_of(&nodes, "node-1");
        assert_eq!(peers.keys().collect::<Vec<_>>(), vec!["node-2"]);
        let p = &peers["node-2"];
        assert_eq!(p.gateway(), Ipv4Addr::new(10, 42, 2, 0));
        assert_eq!(p.fdb().destination, Ipv4Addr::new(192, 168, 77, 12));
    }

    #[test]
    fn a_bad_mac_is_a_refusal_naming_the_value() {
        let bad = node("node-7", 7, Status::Up, Some("zz"));
        let refusal = parse_peer(&bad, "node-1").unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "vtep_mac \"zz\" is not a MAC address like 02:42:ac:11:00:02"
        );
        let multicast = node("node-8", 8, Status::Up, Some("01:00:5e:00:00:01"));
        assert_eq!(
            parse_peer(&multicast, "node-1").unwrap_err().to_string(),
            "vtep_mac 01:00:5e:00:00:01 is not a unicast MAC"
        );
        let missing = node("node-9", 9, Status::Up, None);
        assert_eq!(
            parse_peer(&missing, "node-1").unwrap_err(),
            PeerRefusal::NoMac
        );
        // Not up, or this node: not a peer, and no refusal either.
        let down = node("node-3", 3, Status::Down, Some("zz"));
        assert_eq!(parse_peer(&down, "node-1").unwrap(), None);
    }
}
