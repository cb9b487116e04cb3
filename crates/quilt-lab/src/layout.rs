//! The pure address and naming plan of a lab: namespace names, the underlay /24 and each
//! host's address. Nothing here touches the system.

use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;

use crate::LabError;

/// The most hosts a lab may have (addresses .11 to .210 of the underlay /24).
pub const MAX_NODES: u16 = 200;
/// The most containers per host.
pub const MAX_CONTAINERS_PER_NODE: u16 = 50;
/// Port the control plane listens on, on host 1's underlay address (and each other
/// replica's host).
pub const CONTROL_PORT: u16 = 8080;
/// etcd's client and peer ports on each replica host, with several replicas.
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
/// Where each host's runtime also listens on TCP, inside the host's namespace (for
/// clients of the original documents; the lab's own clients use the socket).
pub use quilt_common::defaults::RUNTIME_ADDR;
/// The name of each host's runtime socket in its runtime folder
/// ([`crate::state::LabState::runtime_socket`]).
pub const RUNTIME_SOCKET_NAME: &str = "runtime.sock";
/// The underlay interface inside each host namespace.
pub const UNDERLAY_IF: &str = "underlay0";
/// The bridge playing the underlay switch, inside the switch namespace.
pub const SWITCH_BRIDGE: &str = "br0";
/// The interface name of every container's network.
pub const CONTAINER_IF: &str = "eth0";

/// The outside network, beyond the lab's router: TEST-NET-3, never in a cluster CIDR.
pub const OUTSIDE_NET: &str = "203.0.113.0/24";
/// The router's address on the outside network.
pub const OUTSIDE_GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(203, 0, 113, 1);
/// The outside namespace's address: what containers reach through masquerade.
pub const OUTSIDE_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(203, 0, 113, 2);
/// The router's interfaces: on the switch, and toward the outside namespace.
pub const ROUTER_UPLINK_IF: &str = "uplink0";
pub const ROUTER_OUTSIDE_IF: &str = "out0";
/// The outside namespace's interface.
pub const OUTSIDE_IF: &str = "eth0";

/// Checks a lab name: 1-24 of `[a-z0-9-]`, not starting with a hyphen.
pub fn check_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(LabError::InvalidName(name.to_string()))
    }
}

/// The third octet of a lab's preferred underlay `192.168.X.0/24`, from its name, so two
/// labs of different names usually get different subnets (each lab has its own switch,
/// so a collision is harmless; it only makes logs confusing). Range 100..=239: never
/// 10/8, which the cluster uses, and away from the 192.168.0-99 of home networks.
pub fn preferred_octet(name: &str) -> u8 {
    // FNV-1a, stable across releases (std's hasher is not).
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    100 + (h % 140) as u8
}

/// Picks the underlay octet for `name`: the preferred one, or the next one no other lab
/// in `taken` uses.
pub fn pick_octet(name: &str, taken: &[u8]) -> u8 {
    let first = preferred_octet(name);
    (0..140u16)
        .map(|i| 100 + ((u16::from(first - 100) + i) % 140) as u8)
        .find(|o| !taken.contains(o))
        .unwrap_or(first)
}

/// The names and addresses of one lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub name: String,
    pub octet: u8,
    pub nodes: u16,
    pub containers_per_node: u16,
}

impl Layout {
    pub fn new(
        name: &str,
        octet: u8,
        nodes: u16,
        containers_per_node: u16,
    ) -> Result<Self, LabError> {
        check_name(name)?;
        if !(1..=MAX_NODES).contains(&nodes) {
            return Err(LabError::OutOfRange {
                what: "nodes",
                value: nodes.into(),
                range: "1..=200",
            });
        }
        if containers_per_node > MAX_CONTAINERS_PER_NODE {
            return Err(LabError::OutOfRange {
                what: "containers per node",
                value: containers_per_node.into(),
                range: "0..=50",
            });
        }
        Ok(Self {
            name: name.to_string(),
            octet,
            nodes,
            containers_per_node,
        })
    }

    pub fn underlay(&self) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::new(192, 168, self.octet, 0), 24).expect("/24 is valid")
    }

    pub fn switch_ns(&self) -> String {
        format!("qlab-{}-sw", self.name)
    }

    /// Host `i`, counted from 1.
    pub fn host_ns(&self, i: u16) -> String {
        format!("qlab-{}-h{i}", self.name)
    }

    /// The short name of container `j` of host `i` (both from 1): `c2-1`.
    pub fn container_name(i: u16, j: u16) -> String {
        format!("c{i}-{j}")
    }

    pub fn container_ns(&self, i: u16, j: u16) -> String {
        format!("qlab-{}-{}", self.name, Self::container_name(i, j))
    }

    /// The switch port of host `i` (inside the switch namespace).
    pub fn switch_port(i: u16) -> String {
        format!("p{i}")
    }

    pub fn host_ip(&self, i: u16) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, self.octet, (10 + i) as u8)
    }

    pub fn hostname(&self, i: u16) -> String {
        format!("{}-h{i}", self.name)
    }

    /// The router between the underlay and the outside network.
    pub fn router_ns(&self) -> String {
        format!("qlab-{}-rt", self.name)
    }

    /// The outside network's one machine.
    pub fn outside_ns(&self) -> String {
        format!("qlab-{}-out", self.name)
    }

    /// The router's address on the underlay (.254): the hosts' default gateway.
    pub fn router_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, self.octet, 254)
    }

    pub fn control_addr(&self) -> SocketAddr {
        SocketAddr::from((self.host_ip(1), CONTROL_PORT))
    }

    pub fn control_url(&self) -> String {
        format!("http://{}", self.control_addr())
    }

    /// The control plane's URL when it serves TLS.
    pub fn control_https_url(&self) -> String {
        format!("https://{}", self.control_addr())
    }

    /// Every namespace of the lab, in teardown order: containers, hosts, switch.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = Vec::new();
        for i in 1..=self.nodes {
            for j in 1..=self.containers_per_node {
                all.push(self.container_ns(i, j));
            }
        }
        all.extend((1..=self.nodes).map(|i| self.host_ns(i)));
        all.push(self.switch_ns());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        let l = Layout::new("demo", 150, 3, 2).unwrap();
        assert_eq!(l.host_ns(2), "qlab-demo-h2");
        assert_eq!(l.container_ns(3, 1), "qlab-demo-c3-1");
        assert_eq!(l.host_ip(1), Ipv4Addr::new(192, 168, 150, 11));
        assert_eq!(l.control_url(), "http://192.168.150.11:8080");
        assert_eq!(l.underlay().to_string(), "192.168.150.0/24");
        let ns = l.namespaces();
        assert_eq!(ns.len(), 3 * 2 + 3 + 1);
        assert_eq!(ns.last().unwrap(), "qlab-demo-sw");
    }

    #[test]
    fn names_are_checked() {
        for good in ["demo", "a", "lab-2", "0x"] {
            check_name(good).unwrap();
        }
        for bad in ["", "-a", "Demo", "a b", "a/b", "a_b", &"x".repeat(25)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(Layout::new("d", 100, 0, 1).is_err());
        assert!(Layout::new("d", 100, 201, 1).is_err());
        assert!(Layout::new("d", 100, 1, 51).is_err());
    }

    #[test]
    fn octets_stay_in_range_and_avoid_taken_ones() {
        for name in ["demo", "a", "zzz", "lab-123"] {
            let o = preferred_octet(name);
            assert!((100..=239).contains(&o), "{name}: {o}");
        }
        let first = preferred_octet("demo");
        let next = pick_octet("demo", &[first]);
        assert_ne!(next, first);
        assert!((100..=239).contains(&next));
        let all: Vec<u8> = (100..=239).collect();
        assert_eq!(pick_octet("demo", &all), first);
    }
}
