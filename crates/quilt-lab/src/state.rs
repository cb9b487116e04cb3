//! The lab's record on disk (`ROOT/NAME/state.json`): what was planned and started, so
//! `down` and `status` work from another process, and after a crash of `up`.
//!
//! The record is written before the first namespace is made and after every change, and
//! replaced atomically (write, then rename), so it never claims less than exists.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::LabError;
use crate::layout::Layout;

/// Where labs keep their state unless told otherwise.
pub const DEFAULT_ROOT: &str = "/run/quilt-lab";

/// One host of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// Counted from 1.
    pub index: u16,
    pub netns: String,
    pub hostname: String,
    pub host_ip: Ipv4Addr,
    pub runtime_pid: Option<u32>,
    pub agent_pid: Option<u32>,
    /// The control-plane replica on this host, if one runs here (host 1 always has one;
    /// hosts 2..=N with `--control-replicas N`).
    #[serde(default)]
    pub control_pid: Option<u32>,
    /// The etcd member on this host, with `--control-replicas` of 2 or more.
    #[serde(default)]
    pub etcd_pid: Option<u32>,
}

/// One container of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    /// The short name, `c2-1`.
    pub name: String,
    pub netns: String,
    /// The host it runs on, counted from 1.
    pub host: u16,
    pub container_id: String,
    /// Set once quilt-cni attached it.
    pub address: Option<Ipv4Net>,
}

/// Everything `down` needs to undo a lab, and `status` to show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    /// The folder of this lab: state.json, data of the daemons, logs (by default).
    pub dir: PathBuf,
    pub log_dir: PathBuf,
    pub binaries_dir: PathBuf,
    pub underlay: Ipv4Net,
    pub nodes: u16,
    pub containers_per_node: u16,
    /// Replica 1's URL (on host 1): where the lab's own calls go first.
    pub control_url: String,
    /// How many control-plane replicas run (on hosts 1..=N); more than one share an etcd
    /// cluster with one member on each of those hosts.
    #[serde(default = "one")]
    pub control_replicas: u16,
    pub join_token: String,
    /// The lab's CA and certificates (`ca.pem`, `control.pem`, `hN.pem`, `lab.pem`);
    /// none for a lab started with `--insecure`.
    #[serde(default)]
    pub pki_dir: Option<PathBuf>,
    /// The program run as the control plane, when not quilt-mesh-control.
    #[serde(default)]
    pub control_program: Option<PathBuf>,
    /// More flags for the agents of some hosts, by host index.
    #[serde(default)]
    pub agent_args: std::collections::BTreeMap<u16, Vec<String>>,
    /// The lab has an outside network beyond a router on the switch; hosts route to it
    /// by default through their uplinks.
    #[serde(default)]
    pub outside: bool,
    /// Hosts whose iptables FORWARD policy drops (as Docker leaves one).
    #[serde(default)]
    pub forward_drop_hosts: std::collections::BTreeSet<u16>,
    /// The MTU of the underlay's links (hosts' uplinks, switch ports); the kernel's
    /// default (1500) when not set.
    #[serde(default)]
    pub underlay_mtu: Option<u32>,
    pub heartbeat_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// The agents' `--resync-interval`.
    #[serde(default = "default_resync_interval_ms")]
    pub resync_interval_ms: u64,
    /// The runtimes' `--reconcile-interval`.
    #[serde(default = "default_reconcile_interval_ms")]
    pub reconcile_interval_ms: u64,
    pub log_level: String,
    /// Every namespace the lab may have made; none of them existed before `up`.
    pub namespaces: Vec<String>,
    pub switch_netns: String,
    /// Written by versions before per-host replicas: replica 1's pid (moved to host 1 on
    /// load).
    #[serde(default, skip_serializing, rename = "control_pid")]
    pub(crate) legacy_control_pid: Option<u32>,
    pub hosts: Vec<HostState>,
    pub containers: Vec<ContainerState>,
    /// Unix seconds.
    pub created_at: u64,
    /// The process that ran `up`.
    pub owner_pid: u32,
}

fn one() -> u16 {
    1
}

/// The agent's own default, for records written before the field existed.
fn default_resync_interval_ms() -> u64 {
    60_000
}

/// The runtime's own default, for records written before the field existed.
fn default_reconcile_interval_ms() -> u64 {
    5_000
}

impl LabState {
    pub fn path(root: &Path, name: &str) -> PathBuf {
        root.join(name).join("state.json")
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The layout this state was planned from.
    pub fn layout(&self) -> Layout {
        Layout {
            name: self.name.clone(),
            octet: self.underlay.addr().octets()[2],
            nodes: self.nodes,
            containers_per_node: self.containers_per_node,
        }
    }

    /// Reads lab `name` under `root`.
    pub fn load(root: &Path, name: &str) -> Result<Self, LabError> {
        let path = Self::path(root, name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NotFound {
                    name: name.to_string(),
                    state: path,
                });
            }
            Err(e) => {
                return Err(LabError::State {
                    path,
                    message: e.to_string(),
                });
            }
        };
        let mut state: LabState = serde_json::from_str(&text).map_err(|e| LabError::State {
            path,
            message: format!("cannot parse: {e}"),
        })?;
        if let (Some(pid), Some(h1)) = (state.legacy_control_pid.take(), state.hosts.first_mut()) {
            h1.control_pid.get_or_insert(pid);
        }
        Ok(state)
    }

    /// The hosts that run a control-plane replica (and, with more than one, an etcd
    /// member): 1..=N.
    pub fn replica_hosts(&self) -> impl Iterator<Item = &HostState> {
        self.hosts
            .iter()
            .take(usize::from(self.control_replicas.max(1)))
    }

    /// Whether the replicas share etcd (more than one of them).
    pub fn uses_etcd(&self) -> bool {
        self.control_replicas > 1
    }

    /// Every replica's URL, replica 1 first: what agents are given.
    pub fn control_urls(&self) -> Vec<String> {
        let scheme = if self.pki_dir.is_some() {
            "https"
        } else {
            "http"
        };
        self.replica_hosts()
            .map(|h| format!("{scheme}://{}:{}", h.host_ip, crate::layout::CONTROL_PORT))
            .collect()
    }

    /// The etcd members' client URLs.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.replica_hosts()
            .map(|h| format!("http://{}:{}", h.host_ip, crate::layout::ETCD_CLIENT_PORT))
            .collect()
    }

    /// The etcd member spec of each replica host, in order.
    pub fn etcd_members(&self) -> Vec<quilt_etcd::member::MemberSpec> {
        self.replica_hosts()
            .map(|h| quilt_etcd::member::MemberSpec {
                name: format!("etcd-h{}", h.index),
                data_dir: self
                    .dir
                    .join("data")
                    .join("etcd")
                    .join(format!("h{}", h.index)),
                client: (h.host_ip, crate::layout::ETCD_CLIENT_PORT).into(),
                peer: (h.host_ip, crate::layout::ETCD_PEER_PORT).into(),
            })
            .collect()
    }

    /// Writes the state atomically.
    pub fn save(&self) -> Result<(), LabError> {
        let path = self.state_path();
        let err = |e: std::io::Error| LabError::State {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let text = serde_json::to_string_pretty(self).expect("state serializes");
        // It holds the join token: readable by root only.
        quilt_common::secret_file::write(&path, text.as_bytes()).map_err(|e| LabError::State {
            path: path.clone(),
            message: e.to_string(),
        })
    }

    pub fn host(&self, index: u16) -> Option<&HostState> {
        self.hosts.iter().find(|h| h.index == index)
    }

    /// The state folder of host `index`'s runtime. Each host has its own, and so its own
    /// unix socket: paths are the machine's, not a namespace's.
    pub fn runtime_dir(&self, index: u16) -> PathBuf {
        self.dir.join("data").join(format!("h{index}/runtime"))
    }

    /// The unix socket host `index`'s runtime serves, in [`Self::runtime_dir`].
    pub fn runtime_socket(&self, index: u16) -> PathBuf {
        self.runtime_dir(index)
            .join(crate::layout::RUNTIME_SOCKET_NAME)
    }

    /// How the lab's own calls reach the control plane: trusting the lab's CA, with the
    /// lab's certificate; none in insecure mode.
    pub fn control_tls(&self) -> Option<quilt_api::ClientTls> {
        let dir = self.pki_dir.as_ref()?;
        Some(quilt_api::ClientTls {
            ca: dir.join(crate::pki::CA_CERT),
            identity: Some(self.identity("lab")),
        })
    }

    /// The certificate and key named `name` in the lab's CA folder.
    pub fn identity(&self, name: &str) -> quilt_tls::Identity {
        let dir = self.pki_dir.clone().unwrap_or_default();
        quilt_tls::Identity {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }

    /// [`Self::runtime_socket`] as a client address, `unix:/...`.
    pub fn runtime_address(&self, index: u16) -> String {
        format!("unix:{}", self.runtime_socket(index).display())
    }

    /// Finds a container by short name (`c1-1`) or namespace name.
    pub fn container(&self, name: &str) -> Option<&ContainerState> {
        self.containers
            .iter()
            .find(|c| c.name == name || c.netns == name)
    }

    /// The namespace of a lab member by short name: `c1-1`, `h2`, `sw`, or a full
    /// namespace name of the lab.
    pub fn resolve_netns(&self, member: &str) -> Result<String, LabError> {
        if let Some(c) = self.container(member) {
            return Ok(c.netns.clone());
        }
        let full = format!("qlab-{}-{member}", self.name);
        for candidate in [member, full.as_str()] {
            if self.namespaces.iter().any(|n| n == candidate) {
                return Ok(candidate.to_string());
            }
        }
        Err(LabError::UnknownMember {
            lab: self.name.clone(),
            what: "member",
            name: member.to_string(),
            known: "c<host>-<n>, h<host>, sw".to_string(),
        })
    }
}

/// The names of the labs that have state under `root`.
pub fn list(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("state.json").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// The underlay octets the labs under `root` use.
pub fn taken_octets(root: &Path) -> Vec<u8> {
    list(root)
        .iter()
        .filter_map(|n| LabState::load(root, n).ok())
        .map(|s| s.underlay.addr().octets()[2])
        .collect()
}
