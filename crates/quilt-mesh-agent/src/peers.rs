//! Which nodes are this node's peers, and what each peer needs in the kernel: a
//! neighbour entry (its gateway -> its VTEP MAC), an FDB entry (its VTEP MAC -> its host
//! address) and a route (its subnet via its gateway over the VXLAN device).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use quilt_api::types::{NodeInfo, Status};
use quilt_kernel::overlay::{FdbEntry, Mac, Neighbour};

/// A node this node must reach over the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node_id: String,
    pub hostname: String,
    pub subnet: Ipv4Net,
    pub host_ip: Ipv4Addr,
    pub vtep_mac: Mac,
}

impl Peer {
    /// The peer's gateway on the overlay: its subnet's `.0`, held by its VXLAN device.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.network()
    }

    pub fn neighbour(&self) -> Neighbour {
        Neighbour {
            ip: self.gateway(),
            mac: self.vtep_mac,
        }
    }

    pub fn fdb(&self) -> FdbEntry {
        FdbEntry {
            mac: self.vtep_mac,
            destination: self.host_ip,
        }
    }
}

/// The peer a node is, if it is one: up, not this node, with a VTEP MAC.
pub fn peer_of(node: &NodeInfo, self_id: &str) -> Option<Peer> {
    if node.node_id == self_id || node.status != Status::Up {
        return None;
    }
    let vtep_mac = node.vtep_mac.as_deref()?.parse().ok()?;
    Some(Peer {
        node_id: node.node_id.clone(),
        hostname: node.hostname.clone(),
        subnet: node.subnet,
        host_ip: node.host_ip,
        vtep_mac,
    })
}

/// Every peer among `nodes`, by node id.
pub fn desired<'a>(
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
        let peers = desired(&nodes, "node-1");
        assert_eq!(peers.keys().collect::<Vec<_>>(), vec!["node-2"]);
        let p = &peers["node-2"];
        assert_eq!(p.gateway(), Ipv4Addr::new(10, 42, 2, 0));
        assert_eq!(p.fdb().destination, Ipv4Addr::new(192, 168, 77, 12));
    }
}
