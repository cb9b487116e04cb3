//! The [`Kernel`] trait (the runtime's routes, bridge, veths and containers) with its
//! two implementations: [`netlink::NetlinkKernel`] on the real kernel and
//! [`fake::FakeKernel`] in memory.

pub mod fake;
pub mod netlink;

use std::future::Future;
use std::path::Path;

use ipnet::Ipv4Net;

use crate::{ContainerInterface, ContainerView, KernelError, Link, Route, VethSpec};

/// What the daemons ask of the kernel. Every method works on the IPv4 main routing table
/// of the network namespace the implementation was opened in.
pub trait Kernel: Send + Sync + 'static {
    /// The link called `name`, if it exists.
    fn link(&self, name: &str) -> impl Future<Output = Result<Option<Link>, KernelError>> + Send;

    /// Every route in the main table that carries route protocol `protocol`.
    fn routes(&self, protocol: u8) -> impl Future<Output = Result<Vec<Route>, KernelError>> + Send;

    /// The route for exactly `destination` (any protocol), if there is one.
    fn route(
        &self,
        destination: Ipv4Net,
    ) -> impl Future<Output = Result<Option<Route>, KernelError>> + Send;

    /// Adds `route`; fails with [`KernelError::RouteExists`] when a route for its
    /// destination is already there, whoever made it.
    fn add_route(&self, route: &Route) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// [`Kernel::add_route`] for many routes, answered in order. Implementations may send
    /// them together; this default adds one at a time.
    fn add_routes(
        &self,
        routes: &[Route],
    ) -> impl Future<Output = Vec<Result<(), KernelError>>> + Send {
        async move {
            let mut results = Vec::with_capacity(routes.len());
            for route in routes {
                results.push(self.add_route(route).await);
            }
            results
        }
    }

    /// Replaces the route for `route.destination` with `route`. Callers check first that
    /// the route being replaced is theirs.
    fn replace_route(&self, route: &Route) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// Deletes the route for `destination` only if it carries `protocol`; answers whether
    /// a route was deleted.
    fn delete_route(
        &self,
        destination: Ipv4Net,
        protocol: u8,
    ) -> impl Future<Output = Result<bool, KernelError>> + Send;

    /// Makes `name` a bridge that is up, holds exactly `address` (IPv4), has `mtu` and
    /// forwards IPv4; creates it when missing. Answers whether anything had to change.
    fn ensure_bridge(
        &self,
        name: &str,
        address: Ipv4Net,
        mtu: u32,
    ) -> impl Future<Output = Result<bool, KernelError>> + Send;

    /// Makes link `port` (up) a port of bridge `bridge`.
    fn set_bridge_port(
        &self,
        port: &str,
        bridge: &str,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// Checks that `netns` names a container's network namespace, without ever waiting on
    /// what the path names (a FIFO, a hung file system) for longer than a bounded time;
    /// callers run it before they hold anything others wait for.
    fn check_netns(&self, netns: &Path) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// Creates the veth pair `veth` in one step: the host side up on its bridge, the peer
    /// already inside the container namespace under its final name (down, unconfigured).
    /// Fails without leaving anything behind when the namespace is not one or a name is taken.
    fn create_veth_into(
        &self,
        veth: &VethSpec,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// Inside the namespace at `netns`: gives `interface.ifname` its address and MTU,
    /// brings it and `lo` up and points the default route at the gateway (replace
    /// semantics, so a retry is harmless). Answers the configured link (with its MAC).
    fn configure_container(
        &self,
        netns: &Path,
        interface: &ContainerInterface,
    ) -> impl Future<Output = Result<Link, KernelError>> + Send;

    /// What `ifname` inside the namespace at `netns` looks like; `None` when it does not
    /// exist. Fails when the namespace itself cannot be entered.
    fn inspect_container(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> impl Future<Output = Result<Option<ContainerView>, KernelError>> + Send;

    /// Deletes link `name` (for a veth, its peer goes too); answers whether it existed.
    fn delete_link(&self, name: &str) -> impl Future<Output = Result<bool, KernelError>> + Send;

    /// Turns on proxy ARP and IPv4 forwarding on interface `name` (the overlay device),
    /// so a peer that ARPs over it for an address this host routes elsewhere (a local
    /// container) gets an answer.
    fn ensure_proxy_arp(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<ProxyArp, KernelError>> + Send;
}

/// What [`Kernel::ensure_proxy_arp`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyArp {
    /// There is no such interface (yet).
    Missing,
    /// Both were on already.
    AlreadyOn,
    /// At least one was off and is on now.
    TurnedOn,
}
