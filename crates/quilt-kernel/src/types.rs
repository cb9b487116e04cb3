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
    /// What kind of link the kernel says it is; `None` for a link without a kind (a
    /// physical device, `lo`).
    pub kind: Option<LinkKind>,
}

/// The kind of a link (`ip -d link` shows it after the flags), so that a caller can tell
/// its own bridge from someone else's device of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Veth,
    Vxlan,
    /// Any other kind, by the kernel's name for it (`dummy`, `macvlan`, ...).
    Other(String),
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkKind::Bridge => f.write_str("bridge"),
            LinkKind::Veth => f.write_str("veth"),
            LinkKind::Vxlan => f.write_str("vxlan"),
            LinkKind::Other(kind) => f.write_str(kind),
        }
    }
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

/// How a container's interface is to be configured inside its network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInterface {
    /// The interface name inside the namespace (`eth0`).
    pub ifname: String,
    /// The address with the node subnet's prefix length.
    pub address: Ipv4Net,
    /// The default route's gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// A veth pair to create: `host` stays in the caller's namespace as a port of `bridge`;
/// the peer is created directly inside the namespace at `netns` and called `ifname`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    pub host: String,
    pub bridge: String,
    pub netns: std::path::PathBuf,
    pub ifname: String,
    pub mtu: u32,
}

/// What an interface inside a container's namespace looks like right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub link: Link,
    pub up: bool,
    /// Its IPv4 addresses, with their prefix lengths.
    pub addresses: Vec<Ipv4Net>,
    /// The gateway of the namespace's IPv4 default route through this interface.
    pub default_gateway: Option<Ipv4Addr>,
}
