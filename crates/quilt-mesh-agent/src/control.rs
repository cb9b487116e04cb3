//! The control plane as the agent calls it: the shared [`ControlClient`] with the
//! agent's timeouts, and the edge where its answers become parsed [`Peer`]s. A node
//! that cannot be a peer because of a bad value is logged here, with the value.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use quilt_api::types::{NodeInfo, Status};
pub use quilt_api::{ControlClient, ControlError};
use quilt_common::mac::Mac;
use tracing::{debug, warn};

use crate::Config;
use crate::peers::Peer;

/// A client of the control planes `config` names, registering with `join_token`.
/// Unary calls (register, list, heartbeat, leave) give up after 5 s, well within a
/// heartbeat timeout; the watch stream is bounded only by the server.
pub fn client(config: &Config, join_token: Option<String>) -> Result<ControlClient, ControlError> {
    ControlClient::builder(config.control_planes.clone())
        .join_token(join_token)
        .tls(config.control_tls())
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

/// Reads nodes as peers and logs each refusal (warn, with the value) once per node and
/// reason: a resync that lists the same refused node again says it at debug level only.
#[derive(Debug, Default)]
pub struct PeerReader {
    refused: HashMap<String, PeerRefusal>,
}

impl PeerReader {
    /// The peer `node` is, if it is one.
    pub fn peer_of(&mut self, node: &NodeInfo, self_id: &str) -> Option<Peer> {
        match parse_peer(node, self_id) {
            Ok(peer) => {
                self.refused.remove(&node.node_id);
                peer
            }
            Err(refusal) => {
                if self.is_news(&node.node_id, &refusal) {
                    warn!(node_id = %node.node_id, hostname = %node.hostname, "peer {} refused: {refusal}", node.node_id);
                } else {
                    debug!(node_id = %node.node_id, "peer {} still refused: {refusal}", node.node_id);
                }
                None
            }
        }
    }

    /// Every peer among the whole list `nodes`, by node id; nodes no longer listed are
    /// forgotten, so a refused node that comes back is reported again.
    pub fn peers_of<'a>(
        &mut self,
        nodes: impl IntoIterator<Item = &'a NodeInfo>,
        self_id: &str,
    ) -> BTreeMap<String, Peer> {
        let mut listed = HashSet::new();
        let peers = nodes
            .into_iter()
            .inspect(|n| {
                listed.insert(n.node_id.clone());
            })
            .filter_map(|n| self.peer_of(n, self_id))
            .map(|p| (p.node_id.clone(), p))
            .collect();
        self.refused.retain(|id, _| listed.contains(id));
        peers
    }

    /// Node `node_id` left: a later refusal of that id is news again.
    pub fn forget(&mut self, node_id: &str) {
        self.refused.remove(node_id);
    }

    /// Records `refusal` of `node_id`; answers whether it was not already the reason.
    fn is_news(&mut self, node_id: &str, refusal: &PeerRefusal) -> bool {
        self.refused.insert(node_id.to_string(), refusal.clone()) != Some(refusal.clone())
    }
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
            condition: None,
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
        let peers = PeerReader::default().peers_of(&nodes, "node-1");
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
