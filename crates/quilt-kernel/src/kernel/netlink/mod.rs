//! The real [`Kernel`]: rtnetlink for links and routes, [`RawBatchSocket`] for the
//! nexthop objects that gateway routes point at and for route batches.
//!
//! One file per verb: `routes.rs` (one route at a time), `batch.rs` (many routes in one
//! write), `links.rs` (bridge, veth, delete), `container.rs` (the container's side,
//! inside its namespace) and `messages.rs` (pure message building and parsing). This
//! file holds the connection, its interface-index cache and the [`Kernel`] impl that
//! maps each trait method onto them.

mod batch;
mod container;
mod links;
mod messages;
mod routes;
mod sysctl;

use std::collections::HashMap;
use std::path::Path;

use ipnet::Ipv4Net;
use nix::errno::Errno;
use rtnetlink::Handle;
use tokio::task::JoinHandle;

use crate::kernel::ProxyArp;
use crate::nexthop::RawBatchSocket;
use crate::{ContainerInterface, ContainerView, Kernel, KernelError, Link, Route, VethSpec};

pub(crate) use messages::{errno_of, link_from_message};

/// A connection to the kernel of the network namespace it was opened in.
pub struct NetlinkKernel {
    handle: Handle,
    nexthops: RawBatchSocket,
    connection: JoinHandle<()>,
    /// Interface name -> index for route programming, so adding a route costs two
    /// round trips instead of three. An entry is dropped when the kernel refuses the
    /// index (the device went away, maybe to come back under a new index), and the
    /// lookup is done again: see [`stale_index`].
    route_interfaces: std::sync::Mutex<HashMap<String, u32>>,
}

impl Drop for NetlinkKernel {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Whether `e` may come from a cached interface index that no longer exists: a route
/// over it fails with ENODEV, but a nexthop over it with EINVAL ("invalid device
/// index"), which is what a gateway route meets first. Looking the index up again
/// once is cheap, and right for any other EINVAL too (the retry fails the same way).
fn stale_index(e: &KernelError) -> bool {
    matches!(
        e.errno().map(Errno::from_raw),
        Some(Errno::ENODEV | Errno::EINVAL)
    )
}

/// Runs `f` with a kernel connection opened inside the named network namespace, on a
/// thread of its own with a single-threaded tokio runtime, and answers its result: how
/// tests, tools and benchmarks drive a namespace from outside it.
pub fn with_kernel_in<T: Send>(
    netns_name: &str,
    f: impl AsyncFnOnce(&NetlinkKernel) -> T + Send,
) -> Result<T, KernelError> {
    crate::netns::run_in(netns_name, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| KernelError::io("start a runtime inside the namespace", e))?;
        runtime.block_on(async {
            let kernel = NetlinkKernel::open()?;
            Ok(f(&kernel).await)
        })
    })?
}

impl NetlinkKernel {
    /// Opens netlink sockets in the calling thread's network namespace. Needs a tokio
    /// runtime: the rtnetlink connection runs as a task owned by the returned value.
    pub fn open() -> Result<Self, KernelError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| KernelError::io("open netlink socket", e))?;
        let connection = tokio::spawn(connection);
        let nexthops = RawBatchSocket::open()?;
        Ok(Self {
            handle,
            nexthops,
            connection,
            route_interfaces: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The rtnetlink handle, for operations this crate does not wrap yet.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The index of interface `name` for a route, from the cache when it is there.
    async fn route_interface(&self, name: &str) -> Result<u32, KernelError> {
        let cached = self
            .route_interfaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied();
        if let Some(index) = cached {
            return Ok(index);
        }
        let index = self.require_link(name).await?.index;
        self.route_interfaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), index);
        Ok(index)
    }

    fn forget_route_interface(&self, name: &str) {
        self.route_interfaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Runs `attempt`; when the kernel says the remembered interface index is stale,
    /// looks the interface up again and runs it once more.
    async fn retry_on_stale_index<F, Fut>(
        &self,
        route: &Route,
        attempt: F,
    ) -> Result<(), KernelError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), KernelError>>,
    {
        match attempt().await {
            Err(e) if stale_index(&e) => {
                self.forget_route_interface(&route.interface);
                attempt().await
            }
            other => other,
        }
    }
}

impl Kernel for NetlinkKernel {
    async fn link(&self, name: &str) -> Result<Option<Link>, KernelError> {
        self.link_named(name).await
    }

    async fn routes(&self, protocol: u8) -> Result<Vec<Route>, KernelError> {
        self.list_routes(protocol).await
    }

    async fn route(&self, destination: Ipv4Net) -> Result<Option<Route>, KernelError> {
        self.find_route(destination).await
    }

    async fn add_routes(&self, routes: &[Route]) -> Vec<Result<(), KernelError>> {
        let mut results = Vec::with_capacity(routes.len());
        for chunk in routes.chunks(batch::ROUTES_PER_WRITE) {
            results.extend(self.add_route_chunk(chunk).await);
        }
        results
    }

    async fn add_route(&self, route: &Route) -> Result<(), KernelError> {
        self.retry_on_stale_index(route, || self.add_route_once(route))
            .await
    }

    async fn replace_route(&self, route: &Route) -> Result<(), KernelError> {
        self.retry_on_stale_index(route, || self.replace_route_once(route))
            .await
    }

    async fn delete_route(&self, destination: Ipv4Net, protocol: u8) -> Result<bool, KernelError> {
        self.delete_route_of(destination, protocol).await
    }

    async fn ensure_bridge(
        &self,
        name: &str,
        address: Ipv4Net,
        mtu: u32,
    ) -> Result<bool, KernelError> {
        self.set_up_bridge(name, address, mtu).await
    }

    async fn set_bridge_port(&self, port: &str, bridge: &str) -> Result<(), KernelError> {
        self.attach_port(port, bridge).await
    }

    async fn check_netns(&self, netns: &Path) -> Result<(), KernelError> {
        crate::netns::check_path(netns).await
    }

    async fn create_veth_into(&self, veth: &VethSpec) -> Result<(), KernelError> {
        self.create_veth(veth).await
    }

    async fn configure_container(
        &self,
        netns: &Path,
        interface: &ContainerInterface,
    ) -> Result<Link, KernelError> {
        container::configure(netns, interface).await
    }

    async fn inspect_container(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> Result<Option<ContainerView>, KernelError> {
        container::inspect(netns, ifname).await
    }

    async fn delete_link(&self, name: &str) -> Result<bool, KernelError> {
        self.remove_link(name).await
    }

    async fn ensure_proxy_arp(&self, name: &str) -> Result<ProxyArp, KernelError> {
        // /proc/sys/net is the calling thread's network namespace: the daemon's, since
        // the whole process runs in the host's namespace. Two small writes, no socket.
        sysctl::ensure_proxy_arp(name)
    }
}
