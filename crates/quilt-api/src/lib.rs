//! The control plane's HTTP contract (docs/http-api.md), the twin of `quilt-proto` for gRPC.
//!
//! - [`types`]: the JSON bodies, as the server publishes them and parses requests into.
//! - [`client`]: [`ControlClient`], the one client every caller uses (agent, quiltctl, lab):
//!   several URLs with failover, typed errors, timeouts in one place.
//! - `replicas` (private): which replica is tried first, and the log of each switch.
//! - `silence` (private): the end of a watch stream silent for three keepalive intervals.
//!
//! Nothing here depends on the server, so a client links no database and no HTTP server.

pub mod client;
pub mod lenient;
mod lines;
mod replicas;
mod silence;
pub mod types;

pub use client::{ClientTls, ControlClient, ControlError, Timeouts};
