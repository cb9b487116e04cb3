//! The one way Quilt Mesh reaches the Linux kernel.
//!
//! Daemons are generic over two traits, each with a real implementation over netlink
//! and an in-memory fake that records every operation (for unit tests without root):
//!
//! | trait | who uses it | real | fake |
//! |---|---|---|---|
//! | [`Kernel`] ([`kernel`]): routes toward node subnets, the bridge `quilt0`, veth pairs, the container side of them | the runtime | [`kernel::netlink::NetlinkKernel`] | [`kernel::fake::FakeKernel`] |
//! | [`overlay::Overlay`]: the VXLAN device, its address, neighbour and FDB entries | the agent | `NetlinkKernel` too | [`overlay::fake::FakeOverlay`] |
//! | [`firewall::Firewall`]: the agent's nftables table `inet quilt` and its marked accept rules in iptables' FORWARD chain | the agent | [`firewall::nft::NftFirewall`] (the `nft` program) | [`firewall::fake::FakeFirewall`] |
//!
//! Beside them:
//! - [`nexthop`]: the raw, blocking netlink socket for nexthop objects and route batches,
//!   which rtnetlink does not cover; gateway routes point at nexthops so that thousands
//!   of peers stay fast.
//! - [`sock_diag`]: who owns a local TCP socket (NETLINK_SOCK_DIAG), to identify
//!   loopback callers.
//! - [`netns`]: running code inside a network namespace (by name or path) on a dedicated
//!   thread, and the namespace fixtures tests and the lab build on.
//! - [`types`] and [`error`]: the objects the traits speak of and their one error type.

pub mod blocking;
pub mod error;
pub mod firewall;
pub mod kernel;
pub mod netns;
pub mod nexthop;
pub mod overlay;
pub mod sock_diag;
pub mod types;

pub use error::KernelError;
pub use kernel::Kernel;
pub use types::{ContainerInterface, ContainerView, Link, LinkKind, Route, VethSpec};

// Kept for dependents: the paths these modules had before the crate was laid out by
// trait (`quilt_kernel::netlink::NetlinkKernel`, `quilt_kernel::fake::FakeKernel`,
// `quilt_kernel::fake_overlay::FakeOverlay`).
pub use kernel::{fake, netlink};
pub use overlay::fake as fake_overlay;
