//! What a peer is and what each peer needs in the kernel. A peer that registered its
//! VTEP MAC (our agents) gets a neighbour entry (its gateway -> its VTEP MAC), an FDB
//! entry (its VTEP MAC -> its host address) and a route via its gateway over the VXLAN
//! device. A peer without one (the original agents) gets a flood FDB entry toward its
//! host address and a route with no gateway: its containers are found by ARP over the
//! device, answered by its runtime's proxy ARP. Peers are parsed from the control
//! plane's answers in [`crate::control`].

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use quilt_common::mac::Mac;
use quilt_kernel::overlay::{FdbEntry, Neighbour};

/// A node this node must reach over the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node_id: String,
    pub hostname: String,
    pub subnet: Ipv4Net,
    pub host_ip: Ipv4Addr,
    /// `None` for a node that registered no VTEP MAC: reached by flooding.
    pub vtep_mac: Option<Mac>,
    /// The peer's VXLAN port where it differs from this node's.
    pub port: Option<u16>,
}

impl Peer {
    /// The peer's gateway on the overlay (its subnet's `.0`, held by its VXLAN device),
    /// when its VTEP MAC is known; `None` for a gateway-less route.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.vtep_mac.map(|_| self.subnet.network())
    }

    /// The neighbour entry for the gateway, when there is one.
    pub fn neighbour(&self) -> Option<Neighbour> {
        Some(Neighbour {
            ip: self.gateway()?,
            mac: self.vtep_mac?,
        })
    }

    /// Its VTEP MAC toward its host, or a flood entry toward its host.
    pub fn fdb(&self) -> FdbEntry {
        FdbEntry {
            mac: self.vtep_mac.unwrap_or(Mac([0; 6])),
            destination: self.host_ip,
            port: self.port,
        }
    }
}
