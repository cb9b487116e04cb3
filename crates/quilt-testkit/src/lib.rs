//! Fixtures for the workspace's tests, used only as a dev-dependency (never published):
//! what several crates' tests need to build a namespace, a host or a server, and to check
//! that nothing was left behind.
//!
//! - [`netns`]: unique names, the privileged-or-skip gate, underlay and VXLAN fixtures,
//!   and [`netns::block_on_in`] to run async code inside a namespace.
//! - [`bins`]: finding (and building) the workspace's binaries from any crate's tests.
//! - [`runtime`]: [`runtime::RuntimeHost`], a namespace running the real `quilt-runtime`.
//! - [`control`]: the control plane in process ([`control::ControlServer`]) or as the
//!   real binary ([`control::ControlBinary`]).
//! - [`etcd`]: [`etcd::EtcdCluster`], real etcd members on loopback ports.
//! - [`replica`]: [`replica::ReplicaProxy`], a control-plane replica stand-in in front of a
//!   real one that forwards, answers 503 or goes silent on demand.
//! - [`fake_runtime`]: [`fake_runtime::FakeRuntime`], the runtime in process over a fake kernel.
//! - [`leaks`]: assertions that no namespace or process outlived a test.
//! - [`users`]: unprivileged users and groups made for one test and removed on drop.
//! - [`wait`]: [`wait::eventually`], a bounded poll.
//!
//! Its binary `quilt-rpc-probe` calls a runtime's RPCs as whatever user runs it
//! ([`bins::probe`]).

pub mod bins;
pub mod control;
pub mod etcd;
pub mod fake_runtime;
pub mod leaks;
pub mod netns;
pub mod replica;
pub mod runtime;
pub mod users;
pub mod wait;
