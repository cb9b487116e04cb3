//! quilt-runtime: the per-node daemon that owns the node subnet, container address
//! allocation and the kernel routes toward other nodes' subnets.
//!
//! The rooms:
//! - [`config`]: flags and their defaults.
//! - [`request`]: parsing RPC input into typed, validated values (the edge).
//! - [`store`]: desired state on disk (SQLite), so restarts lose nothing.
//! - [`ipam`]: which container address comes next.
//! - [`reconcile`]: the pure planner, desired + observed routes -> operations.
//! - [`attach`]: containers on the node subnet: bridge `quilt0`, veth pairs, attachments.
//! - [`runtime`]: the core, generic over the kernel, applying all of the above.
//! - [`grpc`]: the `quilt.QuiltRuntime` service and its error mapping.
//! - [`inject_queue`]: concurrent InjectRoute calls coalesced into batches.
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
//! - [`server`]: wiring: gRPC with health and reflection, reconcile loop, shutdown.

pub mod attach;
pub mod config;
pub mod error;
pub mod grpc;
pub mod inject_queue;
pub mod ipam;
pub mod metrics;
pub mod reconcile;
pub mod request;
pub mod runtime;
pub mod server;
pub mod store;

pub use config::Config;
pub use error::RuntimeError;
pub use runtime::Runtime;
pub use server::run;

/// The route protocol number on every route quilt-runtime makes (`ip route` shows
/// `proto 158`). The runtime never changes or deletes a route without it.
pub const ROUTE_PROTOCOL: u8 = 158;
