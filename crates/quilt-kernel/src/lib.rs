//! The one way Quilt Mesh reaches the Linux kernel.
//!
//! Daemons are generic over the [`Kernel`] trait, which speaks in the mesh's own terms
//! (a route toward a node subnet, a link by name). Two implementations:
//! - [`netlink::NetlinkKernel`]: the real one, over rtnetlink; gateway routes are built on
//!   kernel nexthop objects ([`nexthop`]) so that thousands of peers stay fast.
//! - [`fake::FakeKernel`]: in memory, recording every operation, for unit tests of daemon
//!   logic without root.
//!
//! [`netns`] runs code inside a named network namespace on a dedicated thread.

pub mod error;
pub mod fake;
pub mod netlink;
pub mod netns;
pub mod nexthop;
pub mod types;

use std::future::Future;

use ipnet::Ipv4Net;

pub use error::KernelError;
pub use types::{Link, Route};

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
}
