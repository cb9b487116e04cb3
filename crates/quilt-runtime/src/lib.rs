//! quilt-runtime: the per-node daemon that owns the node subnet, container address
//! allocation and the kernel routes toward other nodes' subnets.
//!
//! The rooms:
//! - [`config`]: flags and their defaults.
//! - [`model`]: the domain types: desired state, managed routes, attachments, leases.
//! - [`request`]: parsing RPC input into model values, checked (the edge).
//! - [`store`]: desired state on disk (SQLite), so restarts lose nothing.
//! - [`ipam`]: which container address comes next.
//! - [`reconcile`]: the pure planner, desired + observed routes -> operations.
//! - [`core`](mod@crate::core): [`Runtime`], generic over the kernel, applying all of the
//!   above: routes, addresses, containers (bridge `quilt0`, veth pairs) and reconcile.
//! - [`grpc`]: the `quilt.QuiltRuntime` service and its error mapping.
//! - [`inject_queue`]: concurrent InjectRoute calls coalesced into batches.
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
//! - [`listen`]: the unix socket (mode, group, stale files) and the TCP listener.
//! - [`caller`]: who is calling (SO_PEERCRED, socket diagnostics, client certificates)
//!   and the one check that refuses untrusted callers with PERMISSION_DENIED.
//! - [`tls`]: TLS and client certificates on TCP, every file checked at start.
//! - [`server`]: wiring: gRPC with health and reflection, reconcile loop, shutdown.

pub mod caller;
pub mod config;
pub mod core;
pub mod error;
pub mod grpc;
pub mod inject_queue;
pub mod ipam;
pub mod listen;
pub mod metrics;
pub mod model;
pub mod reconcile;
pub mod request;
pub mod server;
pub mod store;
pub mod tls;

pub use crate::core::Runtime;
pub use config::Config;
pub use error::RuntimeError;
pub use listen::Listeners;
pub use server::run;

/// The route protocol number on every route quilt-runtime makes (`ip route` shows
/// `proto 158`). The runtime never changes or deletes a route without it.
pub use quilt_common::defaults::ROUTE_PROTOCOL;
