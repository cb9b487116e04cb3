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
/// A replica that has not begun to answer within 2 s (or answers 502-504) is left for the
/// next; unary calls (register, list, heartbeat, leave) give up after 5 s on the last one,
/// well within a heartbeat timeout. The watch stream is bounded by its server's keepalive
/// (three silent intervals end it), or only by the server when it names none.
pub fn client(config: &Config, join_token: Option<String>) -> Result<ControlClient, ControlError> {
    ControlClient::builder(config.control_planes.clone())
        .join_token(join_token)
        .tls(config.control_tls())
        .timeouts(quilt_api::Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(5),
            failover: Duration::from_secs(2),
        })
        .build()
}

/// This node's VXLAN device as peers must match it: its port and VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalVxlan {
    pub port: u16,
    pub vni: u32,
}

/// Why an up node other than this one is not a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    #[error("vtep_mac {0}")]
    BadMac(#[from] quilt_common::mac::MacParseError),
    #[error("vtep_mac {0} is not a unicast MAC")]
    NotUnicast(Mac),
    #[error(
        "it uses vni {theirs} and this node vni {ours}: their devices cannot exchange packets (set the same --vni on every node)"
    )]
    OtherVni { theirs: u32, ours: u32 },
}

/// The peer `node` is: `Ok(None)` for this node or a node that is not up, a refusal
/// when its values do not make a peer. A node without a `vtep_mac` is a peer reached by
/// flooding; one that registered another VXLAN port is sent to at its port.
pub fn parse_peer(
    node: &NodeInfo,
    self_id: &str,
    local: LocalVxlan,
) -> Result<Option<Peer>, PeerRefusal> {
    if node.node_id == self_id || node.status != Status::Up {
        return Ok(None);
    }
    let vtep_mac = match node.vtep_mac.as_deref() {
        Some(text) => {
            let mac: Mac = text.parse()?;
            if !mac.is_unicast() || mac.is_zero() {
                return Err(PeerRefusal::NotUnicast(mac));
            }
            Some(mac)
        }
        None => None,
    };
    if let Some(theirs) = node.vni
        && theirs != local.vni
    {
        return Err(PeerRefusal::OtherVni {
            theirs,
            ours: local.vni,
        });
    }
    Ok(Some(Peer {
        node_id: node.node_id.clone(),
        hostname: node.hostname.clone(),
        subnet: node.subnet,
        host_ip: node.host_ip,
        vtep_mac,
        port: node.vxlan_port.filter(|p| *p != local.port),
    }))
}

/// Reads nodes as peers, and says what is worth saying about each (a refusal, or a
/// peer reached by flooding) at warn level with the value, once per node and reason:
/// a resync that lists the same node again says it at debug level only.
#[derive(Debug)]
pub struct PeerReader {
    local: LocalVxlan,
    /// Reach every peer by flooding, as the original agents do (`--original-data-plane`).
    flood_all: bool,
    /// What was last said of each node, if anything.
    said: HashMap<String, String>,
}

impl PeerReader {
    pub fn new(local: LocalVxlan, flood_all: bool) -> Self {
        Self {
            local,
            flood_all,
            said: HashMap::new(),
        }
    }

    /// The peer `node` is, if it is one.
    pub fn peer_of(&mut self, node: &NodeInfo, self_id: &str) -> Option<Peer> {
        let (peer, remark) = match parse_peer(node, self_id, self.local) {
            Ok(Some(peer)) if self.flood_all => (
                Some(Peer {
                    vtep_mac: None,
                    ..peer
                }),
                None,
            ),
            Ok(peer) => {
                let remark = peer.as_ref().and_then(|p| self.remark(p));
                (peer, remark)
            }
            Err(refusal) => (
                None,
                Some(format!("peer {} refused: {refusal}", node.node_id)),
            ),
        };
        match remark {
            Some(remark) => {
                if self.is_news(&node.node_id, &remark) {
                    warn!(node_id = %node.node_id, hostname = %node.hostname, host_ip = %node.host_ip, "{remark}");
                } else {
                    debug!(node_id = %node.node_id, "still: {remark}");
                }
            }
            None => {
                self.said.remove(&node.node_id);
            }
        }
        peer
    }

    /// What to say of an accepted peer, if anything.
    fn remark(&self, peer: &Peer) -> Option<String> {
        if peer.vtep_mac.is_none() {
            return Some(format!(
                "peer {} registered no vtep_mac (an agent of the original programs?): \
                 reaching it by flooding toward {} and a route with no gateway",
                peer.node_id, peer.host_ip
            ));
        }
        peer.port.map(|port| {
            format!(
                "peer {} uses vxlan port {port}, this node {}: sending to it at {port}",
                peer.node_id, self.local.port
            )
        })
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
        self.said.retain(|id, _| listed.contains(id));
        peers
    }

    /// Node `node_id` left: what is said of that id later is news again.
    pub fn forget(&mut self, node_id: &str) {
        self.said.remove(node_id);
    }

    /// Records `remark` of `node_id`; answers whether it was not already said.
    fn is_news(&mut self, node_id: &str, remark: &str) -> bool {
        self.said
            .insert(node_id.to_string(), remark.to_string())
            .as_deref()
            != Some(remark)
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
            vxlan_port: None,
            vni: None,
            condition: None,
        }
    }

    const LOCAL: LocalVxlan = LocalVxlan {
        port: 4789,
        vni: 100,
    };

    #[test]
    fn peers_are_the_other_up_nodes() {
        let nodes = [
            node("node-1", 1, Status::Up, Some("02:00:00:00:00:01")),
            node("node-2", 2, Status::Up, Some("02:00:00:00:00:02")),
            node("node-3", 3, Status::Down, Some("02:00:00:00:00:03")),
            node("node-4", 4, Status::Up, None),
        ];
        let peers = PeerReader::new(LOCAL, false).peers_of(&nodes, "node-1");
        assert_eq!(peers.keys().collect::<Vec<_>>(), vec!["node-2", "node-4"]);
        let p = &peers["node-2"];
        assert_eq!(p.gateway(), Some(Ipv4Addr::new(10, 42, 2, 0)));
        assert_eq!(p.fdb().destination, Ipv4Addr::new(192, 168, 77, 12));
        let flooded = &peers["node-4"];
        assert_eq!((flooded.vtep_mac, flooded.gateway()), (None, None));
        assert!(flooded.fdb().is_flood());
    }

    #[test]
    fn a_bad_mac_is_a_refusal_naming_the_value() {
        let bad = node("node-7", 7, Status::Up, Some("zz"));
        let refusal = parse_peer(&bad, "node-1", LOCAL).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "vtep_mac \"zz\" is not a MAC address like 02:42:ac:11:00:02"
        );
        let multicast = node("node-8", 8, Status::Up, Some("01:00:5e:00:00:01"));
        assert_eq!(
            parse_peer(&multicast, "node-1", LOCAL)
                .unwrap_err()
                .to_string(),
            "vtep_mac 01:00:5e:00:00:01 is not a unicast MAC"
        );
        let mut other_vni = node("node-9", 9, Status::Up, None);
        other_vni.vni = Some(7);
        assert_eq!(
            parse_peer(&other_vni, "node-1", LOCAL).unwrap_err(),
            PeerRefusal::OtherVni {
                theirs: 7,
                ours: 100
            }
        );
        // Not up, or this node: not a peer, and no refusal either.
        let down = node("node-3", 3, Status::Down, Some("zz"));
        assert_eq!(parse_peer(&down, "node-1", LOCAL).unwrap(), None);
    }

    #[test]
    fn a_peer_on_another_port_is_sent_to_at_its_port() {
        let mut n = node("node-5", 5, Status::Up, Some("02:00:00:00:00:05"));
        n.vxlan_port = Some(8472);
        n.vni = Some(100);
        let p = parse_peer(&n, "node-1", LOCAL).unwrap().unwrap();
        assert_eq!(p.fdb().port, Some(8472));
        n.vxlan_port = Some(4789);
        let p = parse_peer(&n, "node-1", LOCAL).unwrap().unwrap();
        assert_eq!(p.fdb().port, None, "the device's own port is not named");
    }
}
