//! The runtime's flags; each can also be set from a `QUILT_RUNTIME_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::Ipv4Net;
use quilt_common::defaults;
use quilt_common::flags::runtime as flags;

/// quilt-runtime: owns this node's container addresses and the kernel routes toward
/// other nodes' subnets, and serves them over gRPC (package quilt, service QuiltRuntime).
#[derive(Debug, Clone, Parser)]
#[command(name = "quilt-runtime", version, about, long_about = None)]
pub struct Config {
    /// Address the gRPC server listens on. Keep it on loopback unless protected.
    #[arg(
        long = flags::GRPC_ADDR,
        env = "QUILT_RUNTIME_GRPC_ADDR",
        default_value = defaults::RUNTIME_ADDR
    )]
    pub grpc_addr: SocketAddr,

    /// Folder for desired state (runtime.db: node subnet, routes, container addresses).
    #[arg(
        long = flags::STATE_DIR,
        env = "QUILT_RUNTIME_STATE_DIR",
        default_value = "/var/lib/quilt/runtime"
    )]
    pub state_dir: PathBuf,

    /// The cluster CIDR; every route destination must lie inside it.
    #[arg(
        long,
        env = "QUILT_RUNTIME_CLUSTER_CIDR",
        default_value = defaults::CLUSTER_CIDR
    )]
    pub cluster_cidr: Ipv4Net,

    /// Prefix length of each node's subnet.
    #[arg(long, env = "QUILT_RUNTIME_NODE_PREFIX_LEN", default_value_t = 24)]
    pub node_prefix_len: u8,

    /// Interface routes may use (the overlay device); repeat the flag to allow several.
    #[arg(
        long = "overlay-interface",
        env = "QUILT_RUNTIME_OVERLAY_INTERFACE",
        value_delimiter = ',',
        default_value = defaults::OVERLAY_DEVICE
    )]
    pub overlay_interfaces: Vec<String>,

    /// MTU of bridge quilt0 and container interfaces when the overlay interface (the
    /// first --overlay-interface) does not exist; when it exists its MTU is used.
    #[arg(long, env = "QUILT_RUNTIME_CONTAINER_MTU", default_value_t = 1450, value_parser = clap::value_parser!(u32).range(576..=65535))]
    pub container_mtu: u32,

    /// Address for Prometheus metrics at /metrics (off when not set).
    #[arg(long, env = "QUILT_RUNTIME_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// How often the kernel is compared with desired state and repaired.
    #[arg(long = flags::RECONCILE_INTERVAL, env = "QUILT_RUNTIME_RECONCILE_INTERVAL", default_value = "5s", value_parser = quilt_common::duration::parse)]
    pub reconcile_interval: Duration,

    /// Log level (error, warn, info, debug, trace) or a tracing filter directive.
    #[arg(long = flags::LOG_LEVEL, env = "QUILT_RUNTIME_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}
