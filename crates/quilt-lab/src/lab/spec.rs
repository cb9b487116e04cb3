//! What a lab is made of ([`LabSpec`]), the progress lines of `up`, and the checks
//! made before anything is created.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::LabError;
use crate::state::{self};

/// The daemon binaries, by the names the project builds them under.
pub const CONTROL_BIN: &str = "quilt-mesh-control";
pub const RUNTIME_BIN: &str = "quilt-runtime";
pub const AGENT_BIN: &str = "quilt-mesh-agent";
pub const CNI_BIN: &str = "quilt-cni";
/// etcd, from the system (Debian's `etcd-server`), for labs with several replicas.
pub const ETCD_BIN: &str = "etcd";

/// The most control-plane replicas a lab runs (etcd clusters beyond 7 members gain nothing).
pub const MAX_CONTROL_REPLICAS: u16 = 7;

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    pub name: String,
    pub nodes: u16,
    pub containers_per_node: u16,
    /// The folder holding quilt-mesh-control, quilt-runtime, quilt-mesh-agent, quilt-cni.
    pub binaries_dir: PathBuf,
    /// Labs keep their state under `root/NAME` ([`state::DEFAULT_ROOT`] by default).
    pub root: PathBuf,
    /// Where daemon logs go; `root/NAME/logs` when not set.
    pub log_dir: Option<PathBuf>,
    /// The control plane's `--heartbeat-timeout`.
    pub heartbeat_timeout: Duration,
    /// The agents' `--heartbeat-interval`.
    pub heartbeat_interval: Duration,
    /// The agents' `--resync-interval`.
    pub resync_interval: Duration,
    /// The runtimes' `--reconcile-interval`.
    pub reconcile_interval: Duration,
    /// False builds only the underlay, the control plane and the runtimes (no agents,
    /// no containers): what can be tested without quilt-mesh-agent and quilt-cni.
    pub start_agents: bool,
    /// How long to wait for registration and for the full mesh.
    pub converge_timeout: Duration,
    pub log_level: String,
    /// Set to stop `up` between steps (ctrl-c); the lab is then torn down.
    pub cancel: Option<Arc<AtomicBool>>,
    /// The old plain mode: the control plane over HTTP with no client certificates. By
    /// default the lab makes a CA and per-host certificates, and runs the control plane
    /// with mutual TLS (and its join token), as a real cluster should.
    pub insecure: bool,
    /// A program started in place of quilt-mesh-control, with the same flags (tests run
    /// a stand-in for the original control plane this way). Needs `insecure`.
    pub control_program: Option<PathBuf>,
    /// More flags for the agents of some hosts, by host index (from 1).
    pub agent_args: std::collections::BTreeMap<u16, Vec<String>>,
    /// Control-plane replicas, on hosts 1..=N. One runs over SQLite; several share an etcd
    /// cluster with one member on each of those hosts.
    pub control_replicas: u16,
    /// An outside network (`203.0.113.0/24`, not in the cluster CIDR) beyond a router on
    /// the switch: the router's underlay address is every host's default gateway, and
    /// the outside namespace routes only back to the router.
    pub outside: bool,
    /// Hosts (by index) given iptables' FORWARD chain with policy drop before any daemon
    /// starts, as Docker leaves a host (`ip filter FORWARD`, made with `nft`).
    pub forward_drop_hosts: std::collections::BTreeSet<u16>,
    /// The MTU of every underlay link (hosts' uplinks and switch ports, the router's);
    /// 1500 when not set. The agents derive the overlay MTU from it.
    pub underlay_mtu: Option<u32>,
}

impl LabSpec {
    pub fn new(name: &str, nodes: u16, containers_per_node: u16, binaries_dir: &Path) -> Self {
        Self {
            name: name.to_string(),
            nodes,
            containers_per_node,
            binaries_dir: binaries_dir.to_path_buf(),
            root: PathBuf::from(state::DEFAULT_ROOT),
            log_dir: None,
            heartbeat_timeout: Duration::from_secs(6),
            heartbeat_interval: Duration::from_secs(2),
            resync_interval: Duration::from_secs(60),
            reconcile_interval: Duration::from_secs(5),
            start_agents: true,
            converge_timeout: Duration::from_secs(90),
            log_level: "info".to_string(),
            cancel: None,
            insecure: false,
            control_program: None,
            agent_args: Default::default(),
            control_replicas: 1,
            outside: false,
            forward_drop_hosts: Default::default(),
            underlay_mtu: None,
        }
    }
}

/// One line of progress of `up`.
#[derive(Debug, Clone)]
pub struct Progress {
    pub elapsed: Duration,
    pub stage: &'static str,
    pub message: String,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{:6.2}s] {:<10} {}",
            self.elapsed.as_secs_f64(),
            self.stage,
            self.message
        )
    }
}

/// Checks what `up` needs before anything is made: root, ip and ping (and etcd for
/// `with_etcd`), the binaries.
pub fn preflight(binaries_dir: &Path, with_agents: bool, with_etcd: bool) -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    let mut tools = vec![
        ("ip", "iproute2"),
        ("ping", "iputils-ping"),
        ("nft", "nftables"),
    ];
    if with_etcd {
        tools.push((ETCD_BIN, "etcd-server"));
    }
    for (program, package) in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
            .unwrap_or(false);
        if !found {
            return Err(LabError::MissingTool { program, package });
        }
    }
    let mut needed = vec![CONTROL_BIN, RUNTIME_BIN];
    if with_agents {
        needed.extend([AGENT_BIN, CNI_BIN]);
    }
    for binary in needed {
        let path = binaries_dir.join(binary);
        if !path.is_file() {
            return Err(LabError::MissingBinary { binary, path });
        }
    }
    Ok(())
}
