//! A multi-host Quilt Mesh lab on one machine, built from network namespaces: one
//! namespace holds a bridge that plays the underlay switch, one per host is joined to it
//! by a veth and runs the project's real daemons, one per container is attached with
//! `quilt-cni` inside its host. Nothing is added to the machine's own namespace.
//!
//! - [`layout`]: the pure naming and address plan (namespace names, underlay /24).
//! - [`state`]: the record on disk that lets `down` and `status` work from any process.
//! - [`lab`]: [`Lab::up`], inspection, daemons stopped, killed and restarted, hosts
//!   added, teardown.
//! - [`process`]: daemons and bounded commands inside namespaces.
//! - [`remote`]: the control plane and runtimes, asked from inside their namespaces.
//! - [`cni`]: attaching containers through the `quilt-cni` binary.
//! - [`probe`]: pings between containers and the connectivity matrix.
//! - [`tables`]: a host's routes, neighbours and FDB entries, read and watched.
//! - [`mod@bench`]: convergence and data-plane measurements on a lab.
//! - [`pki`]: a certificate authority for a cluster (`quiltctl certs`).
//! - [`error`]: the error type, [`LabError`].

pub mod bench;
pub mod cni;
pub mod error;
pub mod lab;
pub mod layout;
pub mod pki;
pub mod probe;
pub mod process;
pub mod remote;
pub mod state;
pub mod tables;

pub use error::LabError;
pub use lab::{Lab, LabSpec, LabStatus, Progress};
pub use probe::Matrix;
pub use state::LabState;
