//! quilt-mesh-agent: one per node. It registers the node with the control plane, owns
//! the VXLAN device and the neighbour and FDB entries that reach every peer, and asks
//! the runtime to route each peer's subnet over it.
//!
//! The rooms:
//! - [`config`]: flags and their defaults.
//! - [`state`]: what survives restarts (node id, token, subnet, the device's MAC).
//! - [`control`]: the control plane's HTTP API (register, list, watch, heartbeat,
//!   leave), and the edge where its nodes become parsed peers.
//! - [`runtime`]: the runtime's gRPC API ([`runtime::RuntimeClient`]), retried until it
//!   answers.
//! - [`peers`]: what a peer is, and what each needs in the kernel.
//! - [`plan`]: the pure planner, desired peers + observed entries and routes -> a
//!   [`plan::PeerPlan`].
//! - [`device`]: creating or adopting the VXLAN device.
//! - [`agent`]: the loop that joins all of the above, with the one executor of plans.
//! - [`error`]: the agent's error type, composed of each module's.
//! - [`metrics`]: Prometheus metrics and their endpoint.

pub mod agent;
pub mod config;
pub mod control;
pub mod device;
pub mod error;
pub mod metrics;
pub mod peers;
pub mod plan;
pub mod runtime;
pub mod state;

pub use agent::run;
pub use config::Config;
pub use error::AgentError;
