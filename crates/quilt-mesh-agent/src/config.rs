//! The agent's flags; each can also be set from a `QUILT_AGENT_*` environment variable.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use quilt_common::defaults;
use quilt_common::flags::agent as flags;
use quilt_proto::connect::TlsOptions;

/// quilt-mesh-agent: joins this node to the mesh. Registers with the control plane,
/// keeps the VXLAN device and an entry per peer, and asks quilt-runtime for the routes.
#[derive(Debug, Clone, Parser)]
#[command(name = "quilt-mesh-agent", version, about, long_about = None)]
pub struct Config {
    /// Control plane URL (http://HOST:PORT); repeat for replicas, tried in order.
    #[arg(
        long = flags::CONTROL_PLANE,
        env = "QUILT_CONTROL_PLANE",
        value_delimiter = ',',
        required = true
    )]
    pub control_planes: Vec<String>,

    /// This node's address on the underlay network (the VXLAN tunnel endpoint).
    #[arg(long = flags::HOST_IP, env = "QUILT_AGENT_HOST_IP")]
    pub host_ip: Ipv4Addr,

    /// Name to register under (default: the system's hostname).
    #[arg(long = flags::HOSTNAME, env = "QUILT_AGENT_HOSTNAME")]
    pub hostname: Option<String>,

    /// Where quilt-runtime listens, and TLS files for an https:// one.
    #[command(flatten)]
    pub runtime_addr: RuntimeAddress,

    /// Underlay interface for VXLAN (default: the interface holding --host-ip).
    #[arg(long = flags::UNDERLAY_INTERFACE, env = "QUILT_AGENT_UNDERLAY_INTERFACE")]
    pub underlay_interface: Option<String>,

    /// Name of the VXLAN device the agent owns.
    #[arg(long, env = "QUILT_AGENT_VXLAN_INTERFACE", default_value = defaults::OVERLAY_DEVICE)]
    pub vxlan_interface: String,

    /// VXLAN network identifier.
    #[arg(long, env = "QUILT_AGENT_VNI", default_value_t = defaults::VNI)]
    pub vni: u32,

    /// VXLAN UDP port.
    #[arg(long, env = "QUILT_AGENT_VXLAN_PORT", default_value_t = defaults::VXLAN_PORT)]
    pub vxlan_port: u16,

    /// Folder for agent state (agent.json: node id, node token, subnet, device MAC).
    #[arg(
        long = flags::STATE_DIR,
        env = "QUILT_AGENT_STATE_DIR",
        default_value = "/var/lib/quilt/agent"
    )]
    pub state_dir: PathBuf,

    /// Bearer token the control plane requires to register. Prefer `--join-token-file`:
    /// a command line is readable by every user of the machine.
    #[arg(long = flags::JOIN_TOKEN, env = "QUILT_JOIN_TOKEN", hide_env_values = true, conflicts_with = "join_token_file")]
    pub join_token: Option<String>,

    /// A file holding the join token (mode 0600 or stricter; refused when others can read it).
    #[arg(long = flags::JOIN_TOKEN_FILE, env = "QUILT_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,

    /// PEM CA that issued the control planes' certificates, for https:// URLs.
    #[arg(long = flags::TLS_CA, env = "QUILT_AGENT_TLS_CA")]
    pub control_tls_ca: Option<PathBuf>,

    /// PEM certificate this node presents to the control plane (one started with
    /// --tls-ca asks for it, and it must name --host-ip); needs --tls-key and --tls-ca.
    #[arg(long = flags::TLS_CERT, env = "QUILT_AGENT_TLS_CERT", requires_all = ["control_tls_key", "control_tls_ca"])]
    pub control_tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long = flags::TLS_KEY, env = "QUILT_AGENT_TLS_KEY", requires = "control_tls_cert")]
    pub control_tls_key: Option<PathBuf>,

    /// How often to send heartbeats (keep it well within the control plane's timeout).
    #[arg(long = flags::HEARTBEAT_INTERVAL, env = "QUILT_AGENT_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = quilt_common::duration::parse)]
    pub heartbeat_interval: Duration,

    /// How often to list every node again and compare the kernel with it.
    #[arg(long = flags::RESYNC_INTERVAL, env = "QUILT_AGENT_RESYNC_INTERVAL", default_value = "60s", value_parser = quilt_common::duration::parse)]
    pub resync_interval: Duration,

    /// MTU of the VXLAN device, which containers follow (default: the underlay
    /// interface's MTU - 50, so a 9000-byte underlay gives 8950).
    #[arg(long = flags::MTU, env = "QUILT_AGENT_MTU", value_parser = clap::value_parser!(u32).range(576..=65535))]
    pub mtu: Option<u32>,

    /// Masquerade traffic from this node's containers to destinations outside the
    /// cluster CIDR (in the agent's nftables table `inet quilt`). Traffic between
    /// containers and nodes keeps its source address either way.
    #[arg(
        long = flags::MASQUERADE,
        env = "QUILT_AGENT_MASQUERADE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "true|false"
    )]
    pub masquerade: bool,

    /// The cluster CIDR, for masquerading (default: what the control plane answers at
    /// registration, else 10.42.0.0/16).
    #[arg(long = flags::CLUSTER_CIDR, env = "QUILT_AGENT_CLUSTER_CIDR")]
    pub cluster_cidr: Option<ipnet::Ipv4Net>,

    /// The runtime's container bridge, whose forwarded traffic is accepted (with the
    /// VXLAN device's) on hosts whose iptables FORWARD policy drops.
    #[arg(long, env = "QUILT_AGENT_BRIDGE_INTERFACE", default_value = defaults::BRIDGE)]
    pub bridge_interface: String,

    /// On SIGTERM, delete this node from the control plane (its subnet is freed) and
    /// remove the device, entries, routes and the nftables table with its marked rules
    /// (otherwise all stay, so restarting the agent does not disturb traffic).
    #[arg(long = flags::LEAVE_ON_EXIT, env = "QUILT_AGENT_LEAVE_ON_EXIT")]
    pub leave_on_exit: bool,

    /// On SIGTERM, mark this node down on the control plane (`deregister`, as the
    /// original agents do) so peers withdraw their routes to it at once; it keeps its
    /// subnet, device and routes and comes back up with its next start. Off by default:
    /// a rolling restart keeps traffic flowing through the node.
    #[arg(
        long,
        env = "QUILT_AGENT_DEREGISTER_ON_EXIT",
        conflicts_with = "leave_on_exit"
    )]
    pub deregister_on_exit: bool,

    /// Act as the original agents do on the data plane: register no vtep_mac, and reach
    /// every peer by a flood FDB entry and a route with no gateway. For compatibility
    /// tests of mixed clusters; our agents never need it with each other.
    #[arg(long, env = "QUILT_AGENT_ORIGINAL_DATA_PLANE", hide = true)]
    pub original_data_plane: bool,

    /// Address for Prometheus metrics at /metrics (off when not set).
    #[arg(long, env = "QUILT_AGENT_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Log level (error, warn, info, debug, trace) or a tracing filter directive.
    #[arg(long = flags::LOG_LEVEL, env = "QUILT_AGENT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// quilt-runtime's address (`--runtime-addr`) and the TLS files for an `https://` one.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RuntimeAddress {
    /// quilt-runtime's gRPC address: its unix socket (unix:/PATH or /PATH), HOST:PORT,
    /// http://HOST:PORT or https://HOST:PORT (with --runtime-tls-ca).
    /// `--quilt-runtime` is the original agents' name for it.
    #[arg(
        long = flags::RUNTIME_ADDR,
        alias = flags::QUILT_RUNTIME,
        env = "QUILT_AGENT_RUNTIME_ADDR",
        default_value = defaults::RUNTIME_URL
    )]
    pub address: String,

    /// PEM CA that issued an https:// runtime's certificate.
    #[arg(long = flags::RUNTIME_TLS_CA, env = "QUILT_AGENT_RUNTIME_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate for a runtime started with --tls-ca; needs --runtime-tls-key.
    #[arg(
        long = flags::RUNTIME_TLS_CERT,
        env = "QUILT_AGENT_RUNTIME_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --runtime-tls-cert.
    #[arg(
        long = flags::RUNTIME_TLS_KEY,
        env = "QUILT_AGENT_RUNTIME_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

impl RuntimeAddress {
    /// The TLS files, as the connect helper takes them.
    pub fn tls(&self) -> TlsOptions {
        TlsOptions {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        }
    }
}

impl From<&str> for RuntimeAddress {
    fn from(address: &str) -> Self {
        Self {
            address: address.to_string(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl From<&String> for RuntimeAddress {
    fn from(address: &String) -> Self {
        Self::from(address.as_str())
    }
}

impl From<&RuntimeAddress> for RuntimeAddress {
    fn from(address: &RuntimeAddress) -> Self {
        address.clone()
    }
}

impl std::fmt::Display for RuntimeAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.address)
    }
}

impl Config {
    /// The name to register: the flag, else the system's hostname.
    pub fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".to_string())
        })
    }
}

impl Config {
    /// The runtime's address and TLS files: `--runtime-tls-*`, or else, for an
    /// `https://` runtime, the node's `--tls-ca/--tls-cert/--tls-key`, as the original
    /// agent presents one certificate to the control plane and to a TCP runtime.
    pub fn runtime_address(&self) -> RuntimeAddress {
        let mut address = self.runtime_addr.clone();
        if address.address.trim().starts_with("https://") && address.tls().is_empty() {
            address.tls_ca = self.control_tls_ca.clone();
            address.tls_cert = self.control_tls_cert.clone();
            address.tls_key = self.control_tls_key.clone();
        }
        address
    }

    /// How https:// control planes are trusted, and the certificate this node presents.
    pub fn control_tls(&self) -> Option<quilt_api::ClientTls> {
        let ca = self.control_tls_ca.clone()?;
        let identity = match (&self.control_tls_cert, &self.control_tls_key) {
            (Some(cert), Some(key)) => Some(quilt_tls::Identity {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        Some(quilt_api::ClientTls { ca, identity })
    }

    /// The join token: from `--join-token-file` (read now, so a rotated file is seen at
    /// the next start), else `--join-token`.
    pub fn join_token(&self) -> Result<Option<String>, quilt_common::secret_file::SecretFileError> {
        match &self.join_token_file {
            Some(path) => quilt_common::secret_file::read(path).map(Some),
            None => Ok(self.join_token.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        let mut args = vec![
            "quilt-mesh-agent",
            "--control-plane",
            "http://127.0.0.1:8080",
            "--host-ip",
            "192.168.1.10",
        ];
        args.extend_from_slice(extra);
        Config::try_parse_from(args)
    }

    #[test]
    fn the_mtu_is_the_underlays_unless_set() {
        assert_eq!(parse(&[]).unwrap().mtu, None);
        assert_eq!(parse(&["--mtu", "8950"]).unwrap().mtu, Some(8950));
        assert!(parse(&["--mtu", "100"]).is_err());
    }

    #[test]
    fn masquerade_is_on_unless_turned_off() {
        assert!(parse(&[]).unwrap().masquerade);
        assert!(!parse(&["--masquerade", "false"]).unwrap().masquerade);
        assert!(parse(&["--masquerade", "true"]).unwrap().masquerade);
        assert!(parse(&["--masquerade", "maybe"]).is_err());
    }

    #[test]
    fn the_runtime_is_the_unix_socket_unless_told_otherwise() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.runtime_addr.address, "unix:/run/quilt/runtime.sock");
        assert!(c.runtime_addr.tls().is_empty());
    }

    #[test]
    fn an_https_runtime_takes_a_ca_and_a_client_certificate_with_its_key() {
        let c = parse(&[
            "--runtime-addr",
            "https://10.0.0.1:50051",
            "--runtime-tls-ca",
            "/etc/quilt/ca.pem",
            "--runtime-tls-cert",
            "/etc/quilt/node.pem",
            "--runtime-tls-key",
            "/etc/quilt/node-key.pem",
        ])
        .unwrap();
        assert_eq!(c.runtime_addr.to_string(), "https://10.0.0.1:50051");
        let tls = c.runtime_addr.tls();
        assert_eq!(
            tls.ca.as_deref(),
            Some(std::path::Path::new("/etc/quilt/ca.pem"))
        );
        assert!(tls.cert.is_some() && tls.key.is_some());
        assert!(parse(&["--runtime-tls-cert", "/etc/quilt/node.pem"]).is_err());
    }

    #[test]
    fn an_https_runtime_without_its_own_tls_flags_gets_the_nodes_certificate() {
        let node_tls = [
            "--tls-ca",
            "/etc/quilt/ca.pem",
            "--tls-cert",
            "/etc/quilt/node.pem",
            "--tls-key",
            "/etc/quilt/node-key.pem",
        ];
        let mut args = vec!["--runtime-addr", "https://127.0.0.1:50051"];
        args.extend(node_tls);
        let tls = parse(&args).unwrap().runtime_address().tls();
        assert_eq!(
            tls.cert.as_deref(),
            Some(std::path::Path::new("/etc/quilt/node.pem"))
        );
        assert_eq!(
            tls.ca.as_deref(),
            Some(std::path::Path::new("/etc/quilt/ca.pem"))
        );
        // The unix socket takes no TLS files, whatever the control plane's are.
        assert!(parse(&node_tls).unwrap().runtime_address().tls().is_empty());
    }
}
