//! What a peer is and what each peer needs in the kernel: a neighbour entry (its
//! gateway -> its VTEP MAC), an FDB entry (its VTEP MAC -> its host address) and a
//! route (its subnet via its gateway over the VXLAN device). Peers are parsed from the
//! control plane's answers in [`crate::control`].

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
