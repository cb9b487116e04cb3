//! What can go wrong in the runtime, each variant naming the value that failed.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use quilt_common::ClusterError;
use quilt_kernel::KernelError;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Invalid(#[from] ClusterError),
    #[error("{field} {value:?} is {reason}")]
    BadField {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "destination {0} is this node's own subnet; its addresses are local, not routed over the overlay"
    )]
    OwnSubnet(Ipv4Net),
    #[error(
        "interface {interface:?} is not an overlay interface routes may use (allowed: {allowed})"
    )]
    InterfaceNotAllowed { interface: String, allowed: String },
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("gateway {gateway} is outside destination {destination}")]
    GatewayOutside {
        gateway: Ipv4Addr,
        destination: Ipv4Net,
    },
    #[error(
        "route {destination} exists with route protocol {protocol} and was not made by quilt-runtime (protocol {}); it is left alone",
        crate::ROUTE_PROTOCOL
    )]
    NotOurs { destination: Ipv4Net, protocol: u8 },
    #[error(
        "node subnet is {current}; cannot change it to {requested} while {allocations} container addresses are allocated"
    )]
    SubnetInUse {
        current: Ipv4Net,
        requested: Ipv4Net,
        allocations: usize,
    },
    #[error("no node subnet is configured yet (call ConfigureNodeSubnet first)")]
    NoSubnet,
    #[error("node subnet {0} has no free container address left")]
    PoolExhausted(Ipv4Net),
    #[error("container {container_id} has no interface {ifname} attached")]
    NotAttached {
        container_id: String,
        ifname: String,
    },
    #[error("container {container_id} interface {ifname}: {problem}")]
    Mismatch {
        container_id: String,
        ifname: String,
        problem: String,
    },
    #[error(
        "owner {owner} is the address of a container attachment; it is released by DetachContainer, not ReleaseIp"
    )]
    OwnedByAttachment { owner: String },
    #[error(
        "owner {owner} is reserved for container attachments (prefix attach:); AttachContainer allocates their addresses"
    )]
    ReservedOwner { owner: String },
    #[error(
        "container {container_id} interface {ifname} is already attached in namespace {attached}, not {requested}; detach it first"
    )]
    AlreadyAttached {
        container_id: String,
        ifname: String,
        attached: String,
        requested: String,
    },
    #[error("mtu {mtu} is above the overlay mtu {overlay}")]
    MtuAboveOverlay { mtu: u32, overlay: u32 },
    #[error("a batch of {count} routes is more than the limit of {cap} per InjectRoutes call")]
    BatchTooLarge { count: usize, cap: usize },
    #[error("no free host veth name for container {container_id} interface {ifname}")]
    NoHostName {
        container_id: String,
        ifname: String,
    },
    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),
    #[error("{name} exists as a {kind}, not a bridge; it is left alone")]
    BridgeTaken { name: String, kind: String },
    /// A kernel change was made, the store could not record it, and it was undone. The
    /// store's error is shared because one failed transaction answers a whole batch.
    #[error("the change was undone because the state store failed: {source}")]
    NotRecorded {
        #[source]
        source: Arc<StoreError>,
    },
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// A broken invariant of the runtime itself, or a task of it that panicked.
    #[error("internal error: {0}")]
    Internal(&'static str),
}
