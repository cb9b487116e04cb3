//! The runtime's domain types: what it wants to be true (desired state, managed routes,
//! attachments, leases) and what its operations answer. Plain data with no behaviour
//! beyond naming; every other module builds on these.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

/// The bridge containers are attached to.
pub use quilt_common::defaults::BRIDGE;

/// Prefix of every allocation owner that belongs to an attachment.
pub const OWNER_PREFIX: &str = "attach:";

/// Everything the runtime wants to be true, as recorded in the store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DesiredState {
    pub subnet: Option<Ipv4Net>,
    pub routes: BTreeMap<Ipv4Net, ManagedRoute>,
    pub allocations: BTreeMap<String, Ipv4Addr>,
    /// Container attachments by (container id, ifname).
    pub attachments: BTreeMap<(String, String), Attachment>,
}

/// A route toward another node's subnet that the runtime keeps in the kernel, from the
/// InjectRoute that asked for it until a RemoveRoute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedRoute {
    pub destination: Ipv4Net,
    pub interface: String,
    pub gateway: Option<Ipv4Addr>,
}

/// A managed route and whether the kernel holds it as desired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStatus {
    pub route: ManagedRoute,
    pub in_kernel: bool,
}

/// What one InjectRoute did to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    Added,
    Replaced,
    Unchanged,
}

/// A container address: the address with the subnet's prefix, and the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// What a reconcile pass found and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileReport {
    pub repairs: usize,
    pub failures: usize,
    /// Addresses found used by more than one owner (reported, not changed).
    pub conflicts: usize,
}

/// A checked request to attach one container interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    /// The MTU asked for; `None` means the overlay MTU.
    pub mtu: Option<u32>,
}

/// One attached container interface, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub host_ifname: String,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mac: String,
    pub host_mac: String,
    pub mtu: u32,
}

/// Where containers are attached and with which MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSettings {
    pub bridge: String,
    /// The overlay interface whose MTU containers get, when it exists.
    pub overlay_interface: Option<String>,
    /// The MTU when the overlay interface does not exist (`--container-mtu`).
    pub default_mtu: u32,
}

impl Default for ContainerSettings {
    fn default() -> Self {
        Self {
            bridge: BRIDGE.to_string(),
            overlay_interface: Some(quilt_common::defaults::OVERLAY_DEVICE.to_string()),
            default_mtu: 1450,
        }
    }
}

/// The allocation owner of a container interface. An ifname never holds `/`, so the
/// owner names exactly one (container id, ifname).
pub fn owner(container_id: &str, ifname: &str) -> String {
    format!("{OWNER_PREFIX}{container_id}/{ifname}")
}

/// The host side name a container interface's veth is first tried under: `qv` and 12 hex
/// digits of a stable hash (FNV-1a 64) of the container id and ifname; 14 bytes, under
/// the kernel's 15. Names collide (48 bits): the name actually used is the one recorded
/// in the [`Attachment`], never derived again.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    host_ifname_candidate(container_id, ifname, 0)
}

/// How many names attach tries for one container interface before it gives up.
pub const HOST_IFNAME_CANDIDATES: u32 = 8;

/// The `attempt`-th name tried for a container interface's host veth: attempt 0 is
/// [`host_ifname`], each later one hashes the attempt number in too.
pub fn host_ifname_candidate(container_id: &str, ifname: &str, attempt: u32) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let salt = attempt.to_be_bytes();
    let salt: &[u8] = if attempt == 0 { &[] } else { &salt };
    for byte in container_id
        .bytes()
        .chain([0])
        .chain(ifname.bytes())
        .chain(salt.iter().copied())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("qv{:012x}", hash & 0xffff_ffff_ffff)
}

/// `aa:bb:cc:dd:ee:ff`, or empty when unknown: how an [`Attachment`] holds a MAC.
pub fn format_mac(mac: Option<[u8; 6]>) -> String {
    mac.map(|m| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
    .unwrap_or_default()
}
