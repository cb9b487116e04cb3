//! The runtime's flags; each can also be set from a `QUILT_RUNTIME_*` environment variable.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
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
    /// Unix socket the gRPC server listens on (`off` for none): mode 0660, owned by root
    /// and --grpc-socket-group. Its folder is made (0755) when missing; a stale socket of
    /// a killed run is replaced, a live one is refused.
    #[arg(
        long = flags::GRPC_SOCKET,
        env = "QUILT_RUNTIME_GRPC_SOCKET",
        default_value = defaults::RUNTIME_SOCKET
    )]
    pub grpc_socket: Switch<PathBuf>,

    /// Group (name or number) of the unix socket; its members may call the runtime.
    #[arg(
        long = flags::GRPC_SOCKET_GROUP,
        env = "QUILT_RUNTIME_GRPC_SOCKET_GROUP",
        default_value = "root"
    )]
    pub grpc_socket_group: String,

    /// TCP address the gRPC server also listens on (`off` for none). Beyond loopback only
    /// with --tls-cert and --tls-key.
    #[arg(
        long = flags::GRPC_ADDR,
        env = "QUILT_RUNTIME_GRPC_ADDR",
        default_value = defaults::RUNTIME_ADDR
    )]
    pub grpc_addr: Switch<SocketAddr>,

    /// PEM certificate (chain) for TLS on the TCP listener; needs --tls-key.
    #[arg(long = flags::TLS_CERT, env = "QUILT_RUNTIME_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long = flags::TLS_KEY, env = "QUILT_RUNTIME_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): TCP clients must then present a certificate it issued, and
    /// such a client is trusted.
    #[arg(long = flags::TLS_CA, env = "QUILT_RUNTIME_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

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

impl Config {
    /// The TLS files of the TCP listener, when `--tls-cert` and `--tls-key` are given.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            ca: self.tls_ca.clone(),
        })
    }
}

/// A listener setting that may be turned off: a value, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch<T> {
    On(T),
    Off,
}

impl<T> Switch<T> {
    /// The value, unless off.
    pub fn as_on(&self) -> Option<&T> {
        match self {
            Switch::On(value) => Some(value),
            Switch::Off => None,
        }
    }
}

impl<T: FromStr> FromStr for Switch<T>
where
    T::Err: fmt::Display,
{
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "off" {
            return Ok(Switch::Off);
        }
        s.trim()
            .parse()
            .map(Switch::On)
            .map_err(|e| format!("{s:?} is neither off nor a valid value: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_default_to_the_socket_and_loopback_and_turn_off() {
        let c = Config::parse_from(["quilt-runtime"]);
        assert_eq!(
            c.grpc_socket,
            Switch::On(PathBuf::from(defaults::RUNTIME_SOCKET))
        );
        assert_eq!(c.grpc_addr, Switch::On("127.0.0.1:50051".parse().unwrap()));
        assert_eq!(c.grpc_socket_group, "root");
        let c = Config::parse_from([
            "quilt-runtime",
            "--grpc-addr",
            "off",
            "--grpc-socket",
            "off",
        ]);
        assert_eq!((c.grpc_addr, c.grpc_socket), (Switch::Off, Switch::Off));
        assert!(Config::try_parse_from(["quilt-runtime", "--grpc-addr", "nowhere"]).is_err());
        assert!(Config::try_parse_from(["quilt-runtime", "--tls-cert", "c.pem"]).is_err());
    }
}
