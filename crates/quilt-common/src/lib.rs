//! Types and helpers every Quilt Mesh component shares.
//!
//! - [`cluster`]: the cluster's address plan (cluster CIDR, node prefix length) and the
//!   checks that a node subnet belongs to it.
//! - [`defaults`]: the addresses, names and numbers every component defaults to.
//! - [`duration`]: durations on the command line (`500ms`, `3s`).
//! - [`flags`]: the daemons' flag names, for their configs and for what starts them.
//! - [`logging`]: the one way binaries install a `tracing` subscriber.
//! - [`mac`]: the one MAC address type (parse, print, serde).
//! - [`metrics_endpoint`]: serving a Prometheus registry at `/metrics`, and `/health`.
//! - [`secret_file`]: tokens in owner-only files, never on a command line.
//! - [`shutdown`]: a future that completes on SIGTERM or SIGINT.

pub mod cluster;
pub mod defaults;
pub mod duration;
pub mod flags;
pub mod logging;
pub mod mac;
pub mod metrics_endpoint;
pub mod secret_file;
pub mod shutdown;

pub use cluster::{ClusterError, ClusterNetwork};
pub use mac::Mac;
