//! The kernel objects daemons reason about, in the mesh's own terms.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
}

/// An IPv4 route in the main table: `destination via gateway dev interface onlink`
/// when there is a gateway, `destination dev interface` otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Net,
    pub interface: String,
    pub gateway: Option<Ipv4Addr>,
    pub protocol: u8,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.destination)?;
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        write!(f, " dev {}", self.interface)?;
        if self.gateway.is_some() {
            write!(f, " onlink")?;
        }
        write!(f, " proto {}", self.protocol)
    }
}
