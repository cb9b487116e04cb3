//! The control plane's HTTP contract (docs/http-api.md), the twin of `quilt-proto` for gRPC.
//!
//! - [`types`]: the JSON bodies, as the server publishes them and parses requests into.
//! - [`client`]: [`ControlClient`], the one client every caller uses (agent, quiltctl, lab):
//!   several URLs with failover, typed errors, timeouts in one place.
//!
//! Nothing here depends on the server, so a client links no database and no HTTP server.

pub mod client;
pub mod lenient;
mod lines;
pub mod types;

pub use client::{ClientTls, ControlClient, ControlError, Timeouts};
