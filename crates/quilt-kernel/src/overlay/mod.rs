//! The overlay side of the kernel, which the agent owns: the VXLAN device, its address,
//! and the permanent neighbour and FDB entries that point each peer's gateway at its
//! VTEP. A trait of its own, beside [`crate::Kernel`] (the runtime's routes and
//! containers), so each daemon sees only what it may touch.
//!
//! Implemented on the real kernel by [`crate::kernel::netlink::NetlinkKernel`] (in `netlink.rs`)
//! and in memory by [`fake::FakeOverlay`].

pub mod fake;
mod netlink;

use std::future::Future;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::{KernelError, Link};

/// The workspace's one MAC type; re-exported so `quilt_kernel::overlay::Mac` keeps working.
pub use quilt_common::mac::Mac;

/// How the VXLAN device must look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub underlay: String,
    pub mtu: u32,
    pub mac: Mac,
}

/// A VXLAN device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    pub index: u32,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    pub underlay_index: Option<u32>,
    pub learning: Option<bool>,
    pub mtu: u32,
    pub mac: Option<Mac>,
    pub up: bool,
}

/// A permanent neighbour entry: `ip neigh replace IP lladdr MAC dev DEV nud permanent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

/// A permanent FDB entry: `bridge fdb replace MAC dev DEV dst IP [port P] self permanent`.
/// The all-zero MAC is the flood entry, of which a device holds one per destination
/// (`bridge fdb append 00:00:00:00:00:00 ...`): frames for MACs without an entry of
/// their own go to every such destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: Mac,
    pub destination: Ipv4Addr,
    /// The destination's UDP port where it is not the device's own (`None`: the device's).
    pub port: Option<u16>,
}

impl FdbEntry {
    /// Whether this is a flood entry (the all-zero MAC).
    pub fn is_flood(&self) -> bool {
        self.mac.is_zero()
    }
}

impl std::fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fdb {} dst {}", self.mac, self.destination)?;
        match self.port {
            Some(port) => write!(f, " port {port}"),
            None => Ok(()),
        }
    }
}

/// What the agent asks of the kernel.
pub trait Overlay: Send + Sync + 'static {
    /// The VXLAN device called `name`, if a link of that name exists (its VXLAN fields
    /// are `None` when it is not a VXLAN device).
    fn vxlan(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<VxlanDevice>, KernelError>> + Send;

    /// Creates the device as `spec` says and brings it up.
    fn create_vxlan(
        &self,
        spec: &VxlanSpec,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// Deletes link `name`; answers whether it existed.
    fn delete_vxlan(&self, name: &str) -> impl Future<Output = Result<bool, KernelError>> + Send;

    /// Brings link `name` up.
    fn set_up(&self, name: &str) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// The interface called `name`, if it exists (an underlay named by the operator).
    fn interface(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Link>, KernelError>> + Send;

    /// The interface holding IPv4 address `ip`, if any (the underlay).
    fn link_with_address(
        &self,
        ip: Ipv4Addr,
    ) -> impl Future<Output = Result<Option<Link>, KernelError>> + Send;

    /// The IPv4 addresses on `name`.
    fn addresses(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<Ipv4Net>, KernelError>> + Send;

    /// Puts `address` on `name` (replace semantics).
    fn add_address(
        &self,
        name: &str,
        address: Ipv4Net,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// Removes `address` from `name`; absent is success.
    fn delete_address(
        &self,
        name: &str,
        address: Ipv4Net,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// The permanent IPv4 neighbour entries on `name`.
    fn neighbours(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<Neighbour>, KernelError>> + Send;

    fn replace_neighbour(
        &self,
        name: &str,
        entry: Neighbour,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// Deletes the neighbour entry for `ip` on `name`; absent is success.
    fn delete_neighbour(
        &self,
        name: &str,
        ip: Ipv4Addr,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// The FDB entries with a remote destination on `name`.
    fn fdb(&self, name: &str) -> impl Future<Output = Result<Vec<FdbEntry>, KernelError>> + Send;

    /// Adds or replaces the entry for `entry.mac` (a flood entry is added beside the
    /// other flood entries, not in place of them).
    fn replace_fdb(
        &self,
        name: &str,
        entry: FdbEntry,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// Deletes an FDB entry on `name`; absent is success.
    fn delete_fdb(
        &self,
        name: &str,
        entry: FdbEntry,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        let mac: Mac = "0a:1b:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(mac.to_string(), "0a:1b:2c:3d:4e:5f");
        assert!("0a:1b:2c".parse::<Mac>().is_err());
        assert!("zz:1b:2c:3d:4e:5f".parse::<Mac>().is_err());
        let random = Mac::random_local().unwrap();
        assert_eq!(random.0[0] & 0x03, 0x02, "locally administered unicast");
    }
}
