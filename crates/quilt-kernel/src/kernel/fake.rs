//! An in-memory [`Kernel`] that records every change, for unit tests of daemon logic
//! without root. It keeps the same rules as the real kernel where the daemons depend on
//! them: a route needs its interface, `add` refuses an existing destination, `delete`
//! only removes a route of the given protocol, `ensure_bridge` leaves a link of another
//! kind alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;

use crate::kernel::ProxyArp;
use crate::{
    ContainerInterface, ContainerView, Kernel, KernelError, Link, LinkKind, Route, VethSpec,
};

#[derive(Default)]
struct State {
    links: BTreeMap<String, Link>,
    routes: BTreeMap<Ipv4Net, Route>,
    operations: Vec<String>,
    route_batches: usize,
    next_index: u32,
    /// Bridge name -> its address.
    bridges: BTreeMap<String, Ipv4Net>,
    /// Port -> the bridge it belongs to.
    ports: BTreeMap<String, String>,
    /// Host side of a veth -> (namespace, peer name).
    veths: BTreeMap<String, (PathBuf, String)>,
    /// Container namespaces that exist, with their interfaces.
    namespaces: BTreeMap<PathBuf, BTreeMap<String, ContainerView>>,
    /// Namespace paths whose check waits until released (a path that would block).
    stalled: BTreeMap<PathBuf, Arc<tokio::sync::Notify>>,
    /// Route batches, once added, wait on this before answering.
    stalled_route_batches: Option<Arc<tokio::sync::Notify>>,
    /// Operations (`create_veth_into`, `configure_container`, ...) that fail once.
    failures: BTreeSet<String>,
    /// Interfaces with proxy ARP and forwarding on (forgotten when the link goes).
    proxy_arp: BTreeSet<String>,
}

impl State {
    fn new_link(&mut self, name: &str, mtu: u32, kind: LinkKind) -> Link {
        self.next_index += 1;
        Link {
            index: self.next_index,
            name: name.to_string(),
            mtu,
            mac: Some([
                0x02,
                0,
                0,
                0,
                (self.next_index >> 8) as u8,
                self.next_index as u8,
            ]),
            kind: Some(kind),
        }
    }

    fn fail(&mut self, operation: &str) -> Result<(), KernelError> {
        if self.failures.remove(operation) {
            return Err(KernelError::Other {
                operation: operation.to_string(),
                message: "injected failure".to_string(),
            });
        }
        Ok(())
    }
}

/// The fake kernel. Cheap to create; each test makes its own.
#[derive(Default)]
pub struct FakeKernel {
    state: Mutex<State>,
}

impl FakeKernel {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a link called `name` with `mtu` and no kind, as a physical device has none
    /// (not recorded as an operation: it is setup).
    pub fn add_link(&self, name: &str, mtu: u32) {
        self.insert_link(name, mtu, None);
    }

    /// Adds a link called `name` of `kind` that is someone else's (an operator's dummy
    /// or veth called `quilt0`, say), with MTU 1500; not recorded as an operation.
    pub fn add_foreign_link(&self, name: &str, kind: LinkKind) {
        self.insert_link(name, 1500, Some(kind));
    }

    fn insert_link(&self, name: &str, mtu: u32, kind: Option<LinkKind>) {
        let mut state = self.state();
        state.next_index += 1;
        let index = state.next_index;
        state.links.insert(
            name.to_string(),
            Link {
                index,
                name: name.to_string(),
                mtu,
                mac: None,
                kind,
            },
        );
    }

    /// Removes a link and, as the kernel does, every route through it.
    pub fn remove_link(&self, name: &str) {
        let mut state = self.state();
        state.links.remove(name);
        state.proxy_arp.remove(name);
        state.routes.retain(|_, r| r.interface != name);
        if state.bridges.remove(name).is_some() {
            state.ports.retain(|_, bridge| bridge != name);
        }
        state.ports.remove(name);
        if let Some((netns, ifname)) = state.veths.remove(name)
            && let Some(interfaces) = state.namespaces.get_mut(&netns)
        {
            interfaces.remove(&ifname);
        }
    }

    /// Puts a route in place as if someone else (an operator, another daemon) made it.
    pub fn insert_route(&self, route: Route) {
        self.state().routes.insert(route.destination, route);
    }

    /// Removes a route by hand, as an operator would.
    pub fn remove_route(&self, destination: Ipv4Net) {
        self.state().routes.remove(&destination);
    }

    /// Every route, whoever made it.
    pub fn all_routes(&self) -> Vec<Route> {
        self.state().routes.values().cloned().collect()
    }

    /// The changes made through the [`Kernel`] trait so far, in order, as text
    /// (`add 10.42.2.0/24 via 10.42.2.0 dev vxlan100 onlink proto 158`).
    pub fn operations(&self) -> Vec<String> {
        self.state().operations.clone()
    }

    /// Makes a container network namespace at `path` exist (empty but for `lo`).
    pub fn add_netns(&self, path: impl Into<PathBuf>) {
        self.state().namespaces.entry(path.into()).or_default();
    }

    /// Destroys the namespace at `path`; as in the kernel, veths with a peer in it go too.
    pub fn remove_netns(&self, path: &Path) {
        let mut state = self.state();
        state.namespaces.remove(path);
        let gone: Vec<String> = state
            .veths
            .iter()
            .filter(|(_, (ns, _))| ns == path)
            .map(|(host, _)| host.clone())
            .collect();
        for host in gone {
            state.veths.remove(&host);
            state.ports.remove(&host);
            state.links.remove(&host);
        }
    }

    /// Makes [`Kernel::check_netns`] of `netns` wait until the answered `Notify` is
    /// notified, as a path on a hung file system would.
    pub fn stall_netns_check(&self, netns: impl Into<PathBuf>) -> Arc<tokio::sync::Notify> {
        let release = Arc::new(tokio::sync::Notify::new());
        self.state().stalled.insert(netns.into(), release.clone());
        release
    }

    /// Makes every [`Kernel::add_routes`] wait, after changing the table and before
    /// answering, until the answered `Notify` is notified (or [`Self::unstall_route_batches`]):
    /// the moment a caller could be cancelled with the kernel changed.
    pub fn stall_route_batches(&self) -> Arc<tokio::sync::Notify> {
        let release = Arc::new(tokio::sync::Notify::new());
        self.state().stalled_route_batches = Some(release.clone());
        release
    }

    /// Ends [`Self::stall_route_batches`] for later batches.
    pub fn unstall_route_batches(&self) {
        self.state().stalled_route_batches = None;
    }

    /// The interface `ifname` inside the namespace at `netns`, as the fake holds it.
    pub fn container(&self, netns: &Path, ifname: &str) -> Option<ContainerView> {
        self.state().namespaces.get(netns)?.get(ifname).cloned()
    }

    /// Removes the addresses of `ifname` inside `netns`, as an operator would by hand.
    pub fn flush_container_addresses(&self, netns: &Path, ifname: &str) {
        if let Some(view) = self
            .state()
            .namespaces
            .get_mut(netns)
            .and_then(|n| n.get_mut(ifname))
        {
            view.addresses.clear();
        }
    }

    /// The bridge a port belongs to.
    pub fn bridge_of(&self, port: &str) -> Option<String> {
        self.state().ports.get(port).cloned()
    }

    /// The address a bridge holds.
    pub fn bridge_address(&self, bridge: &str) -> Option<Ipv4Net> {
        self.state().bridges.get(bridge).copied()
    }

    /// Makes the next call of `operation` (a [`Kernel`] method name) fail.
    pub fn fail_next(&self, operation: &str) {
        self.state().failures.insert(operation.to_string());
    }

    /// How many [`Kernel::add_routes`] calls were made (each one kernel write for real).
    pub fn route_batches(&self) -> usize {
        self.state().route_batches
    }

    /// Forgets the recorded operations.
    pub fn clear_operations(&self) {
        self.state().operations.clear();
    }
}

impl Kernel for FakeKernel {
    async fn link(&self, name: &str) -> Result<Option<Link>, KernelError> {
        Ok(self.state().links.get(name).cloned())
    }

    async fn routes(&self, protocol: u8) -> Result<Vec<Route>, KernelError> {
        Ok(self
            .state()
            .routes
            .values()
            .filter(|r| r.protocol == protocol)
            .cloned()
            .collect())
    }

    async fn route(&self, destination: Ipv4Net) -> Result<Option<Route>, KernelError> {
        Ok(self.state().routes.get(&destination).cloned())
    }

    async fn add_route(&self, route: &Route) -> Result<(), KernelError> {
        let mut state = self.state();
        if !state.links.contains_key(&route.interface) {
            return Err(KernelError::NoSuchLink(route.interface.clone()));
        }
        if let Some(existing) = state.routes.get(&route.destination) {
            return Err(KernelError::RouteExists {
                destination: route.destination,
                protocol: existing.protocol,
            });
        }
        state.operations.push(format!("add {route}"));
        state.routes.insert(route.destination, route.clone());
        Ok(())
    }

    async fn add_routes(&self, routes: &[Route]) -> Vec<Result<(), KernelError>> {
        // Counted, like the real kernel's single write per batch, so tests can see how
        // calls were grouped.
        self.state().route_batches += 1;
        let mut results = Vec::with_capacity(routes.len());
        for route in routes {
            results.push(self.add_route(route).await);
        }
        let stall = self.state().stalled_route_batches.clone();
        if let Some(release) = stall {
            release.notified().await;
        }
        results
    }

    async fn replace_route(&self, route: &Route) -> Result<(), KernelError> {
        let mut state = self.state();
        if !state.links.contains_key(&route.interface) {
            return Err(KernelError::NoSuchLink(route.interface.clone()));
        }
        state.operations.push(format!("replace {route}"));
        state.routes.insert(route.destination, route.clone());
        Ok(())
    }

    async fn delete_route(&self, destination: Ipv4Net, protocol: u8) -> Result<bool, KernelError> {
        let mut state = self.state();
        match state.routes.get(&destination) {
            Some(r) if r.protocol == protocol => {
                state.routes.remove(&destination);
                state
                    .operations
                    .push(format!("delete {destination} proto {protocol}"));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn ensure_bridge(
        &self,
        name: &str,
        address: Ipv4Net,
        mtu: u32,
    ) -> Result<bool, KernelError> {
        let mut state = self.state();
        state.fail("ensure_bridge")?;
        let mut changed = false;
        match state.links.get(name).cloned() {
            // Only a bridge is ours to adjust, as on the real kernel.
            Some(link) if link.kind != Some(LinkKind::Bridge) => {
                return Err(KernelError::not_a_bridge(name));
            }
            None => {
                let link = state.new_link(name, mtu, LinkKind::Bridge);
                state.links.insert(name.to_string(), link);
                state
                    .operations
                    .push(format!("create bridge {name} mtu {mtu}"));
                changed = true;
            }
            Some(link) if link.mtu != mtu => {
                if let Some(l) = state.links.get_mut(name) {
                    l.mtu = mtu;
                }
                state.operations.push(format!("set {name} mtu {mtu}"));
                changed = true;
            }
            Some(_) => {}
        }
        if state.bridges.get(name) != Some(&address) {
            state.bridges.insert(name.to_string(), address);
            state
                .operations
                .push(format!("address {address} on {name}"));
            changed = true;
        }
        Ok(changed)
    }

    async fn set_bridge_port(&self, port: &str, bridge: &str) -> Result<(), KernelError> {
        let mut state = self.state();
        for name in [port, bridge] {
            if !state.links.contains_key(name) {
                return Err(KernelError::NoSuchLink(name.to_string()));
            }
        }
        state.ports.insert(port.to_string(), bridge.to_string());
        state.operations.push(format!("set {port} master {bridge}"));
        Ok(())
    }

    async fn check_netns(&self, netns: &Path) -> Result<(), KernelError> {
        let stall = self.state().stalled.get(netns).cloned();
        if let Some(release) = stall {
            release.notified().await;
        }
        if self.state().namespaces.contains_key(netns) {
            Ok(())
        } else {
            Err(KernelError::Netns {
                name: netns.display().to_string(),
                message: "not a network namespace".to_string(),
            })
        }
    }

    async fn create_veth_into(&self, veth: &VethSpec) -> Result<(), KernelError> {
        let mut state = self.state();
        state.fail("create_veth_into")?;
        let Some(interfaces) = state.namespaces.get(&veth.netns) else {
            return Err(KernelError::Netns {
                name: veth.netns.display().to_string(),
                message: "cannot open: No such file or directory (os error 2)".to_string(),
            });
        };
        if state.links.contains_key(&veth.host) || interfaces.contains_key(&veth.ifname) {
            return Err(KernelError::from_errno(
                format!("create veth {}", veth.host),
                nix::errno::Errno::EEXIST as i32,
            ));
        }
        if !state.bridges.contains_key(&veth.bridge) {
            return Err(KernelError::NoSuchLink(veth.bridge.clone()));
        }
        let host = state.new_link(&veth.host, veth.mtu, LinkKind::Veth);
        let peer = state.new_link(&veth.ifname, veth.mtu, LinkKind::Veth);
        state.links.insert(veth.host.clone(), host);
        state.ports.insert(veth.host.clone(), veth.bridge.clone());
        state
            .veths
            .insert(veth.host.clone(), (veth.netns.clone(), veth.ifname.clone()));
        if let Some(interfaces) = state.namespaces.get_mut(&veth.netns) {
            interfaces.insert(
                veth.ifname.clone(),
                ContainerView {
                    link: peer,
                    up: false,
                    addresses: Vec::new(),
                    default_gateway: None,
                },
            );
        }
        state.operations.push(format!(
            "create veth {} master {} peer {} in {}",
            veth.host,
            veth.bridge,
            veth.ifname,
            veth.netns.display()
        ));
        Ok(())
    }

    async fn configure_container(
        &self,
        netns: &Path,
        interface: &ContainerInterface,
    ) -> Result<Link, KernelError> {
        let mut state = self.state();
        state.fail("configure_container")?;
        let view = state
            .namespaces
            .get_mut(netns)
            .and_then(|n| n.get_mut(&interface.ifname))
            .ok_or_else(|| KernelError::NoSuchLink(interface.ifname.clone()))?;
        if !view.addresses.contains(&interface.address) {
            view.addresses.push(interface.address);
        }
        view.link.mtu = interface.mtu;
        view.up = true;
        view.default_gateway = Some(interface.gateway);
        let link = view.link.clone();
        state.operations.push(format!(
            "configure {} in {}: {} via {} mtu {}",
            interface.ifname,
            netns.display(),
            interface.address,
            interface.gateway,
            interface.mtu
        ));
        Ok(link)
    }

    async fn inspect_container(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> Result<Option<ContainerView>, KernelError> {
        let state = self.state();
        let interfaces = state
            .namespaces
            .get(netns)
            .ok_or_else(|| KernelError::Netns {
                name: netns.display().to_string(),
                message: "cannot open: No such file or directory (os error 2)".to_string(),
            })?;
        Ok(interfaces.get(ifname).cloned())
    }

    async fn delete_link(&self, name: &str) -> Result<bool, KernelError> {
        if !self.state().links.contains_key(name) {
            return Ok(false);
        }
        self.remove_link(name);
        self.state().operations.push(format!("delete link {name}"));
        Ok(true)
    }

    async fn ensure_proxy_arp(&self, name: &str) -> Result<ProxyArp, KernelError> {
        let mut state = self.state();
        if !state.links.contains_key(name) {
            return Ok(ProxyArp::Missing);
        }
        if !state.proxy_arp.insert(name.to_string()) {
            return Ok(ProxyArp::AlreadyOn);
        }
        state
            .operations
            .push(format!("proxy_arp and forwarding on {name}"));
        Ok(ProxyArp::TurnedOn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS: &str = "10.42.1.1/24";

    #[tokio::test]
    async fn ensure_bridge_leaves_a_link_of_another_kind_alone() {
        let kernel = FakeKernel::new();
        kernel.add_foreign_link("quilt0", LinkKind::Other("dummy".into()));
        let err = kernel
            .ensure_bridge("quilt0", ADDRESS.parse().unwrap(), 1450)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "set up bridge quilt0 failed: quilt0 exists and is not a bridge; it is left alone"
        );
        assert!(kernel.operations().is_empty(), "{:?}", kernel.operations());
        assert_eq!(kernel.bridge_address("quilt0"), None);
        let link = kernel.link("quilt0").await.unwrap().unwrap();
        assert_eq!(
            (link.mtu, link.kind),
            (1500, Some(LinkKind::Other("dummy".into())))
        );
    }

    #[tokio::test]
    async fn ensure_bridge_makes_a_bridge_and_adjusts_it_later() {
        let kernel = FakeKernel::new();
        let address: Ipv4Net = ADDRESS.parse().unwrap();
        assert!(kernel.ensure_bridge("quilt0", address, 1450).await.unwrap());
        let link = kernel.link("quilt0").await.unwrap().unwrap();
        assert_eq!(link.kind, Some(LinkKind::Bridge));
        assert!(!kernel.ensure_bridge("quilt0", address, 1450).await.unwrap());
        assert!(kernel.ensure_bridge("quilt0", address, 1400).await.unwrap());
        assert_eq!(kernel.link("quilt0").await.unwrap().unwrap().mtu, 1400);
        assert_eq!(kernel.bridge_address("quilt0"), Some(address));
    }
}
