//! The defaults every component agrees on, in one place: where the runtime listens (its
//! unix socket and TCP address), the
//! overlay device and its VXLAN numbers, the container bridge, the route protocol.

/// The unix socket quilt-runtime serves gRPC on, and where its clients (the agent, the
/// CNI plugin, quiltctl) find it unless told otherwise.
pub const RUNTIME_SOCKET: &str = "/run/quilt/runtime.sock";
/// [`RUNTIME_SOCKET`] as a client address.
pub const RUNTIME_URL: &str = "unix:/run/quilt/runtime.sock";
/// Where quilt-runtime also serves gRPC over TCP, as `HOST:PORT` (the original
/// documents' address, for clients written against them).
pub const RUNTIME_ADDR: &str = "127.0.0.1:50051";
/// Where quilt-mesh-control serves HTTP.
pub const CONTROL_LISTEN: &str = "127.0.0.1:8080";
/// [`CONTROL_LISTEN`] as the URL clients are configured with.
pub const CONTROL_URL: &str = "http://127.0.0.1:8080";
/// The agent's VXLAN device, which the runtime routes peer subnets over.
pub const OVERLAY_DEVICE: &str = "vxlan100";
/// The VXLAN network identifier of the overlay.
pub const VNI: u32 = 100;
/// The VXLAN UDP port (IANA's).
pub const VXLAN_PORT: u16 = 4789;
/// The runtime's container bridge.
pub const BRIDGE: &str = "quilt0";
/// The route protocol number the runtime marks its routes with, so that it recognises
/// them (and only them) as its own.
pub const ROUTE_PROTOCOL: u8 = 158;
/// The cluster's address range unless configured otherwise.
pub const CLUSTER_CIDR: &str = "10.42.0.0/16";
