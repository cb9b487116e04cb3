//! A lab as it is now: its daemons from /proc, its nodes from the control plane, pings
//! between its containers, commands run in its members.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use quilt_kernel::netns::{self};
use serde::{Deserialize, Serialize};

use crate::LabError;
use crate::probe::{Endpoint, Matrix};
use crate::process::{self, Output};
use crate::remote;
use crate::state::{ContainerState, LabState};

/// The containers that have addresses, as matrix endpoints.
pub fn endpoints(state: &LabState) -> Vec<Endpoint> {
    state
        .containers
        .iter()
        .filter_map(|c| {
            Some(Endpoint {
                name: c.name.clone(),
                netns: c.netns.clone(),
                address: c.address?.addr(),
            })
        })
        .collect()
}

/// Pings every container of `state` from every container.
pub fn ping_matrix(state: &LabState) -> Matrix {
    let mut m = Matrix::empty(endpoints(state));
    m.retry_failed();
    m
}

/// Runs `args` inside lab member `member`, bounded by `timeout`.
pub fn exec(
    state: &LabState,
    member: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<Output, LabError> {
    let netns = state.resolve_netns(member)?;
    let Some((program, rest)) = args.split_first() else {
        return Err(LabError::setup(
            format!("exec in {member}"),
            "no command given",
        ));
    };
    let mut command = process::command_in(&netns, program);
    command.args(rest);
    process::run_bounded(command, None, timeout)
        .map_err(|e| LabError::setup(format!("exec {program} in {netns}"), e))
}

/// A daemon of the lab as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub pid: Option<u32>,
    pub running: bool,
    pub rss_kib: Option<u64>,
}

impl ProcessStatus {
    fn of(pid: Option<u32>, netns: &str) -> Self {
        let running = pid.is_some_and(|p| process::runs_in(p, netns));
        Self {
            pid,
            running,
            rss_kib: if running {
                pid.and_then(process::rss_kib)
            } else {
                None
            },
        }
    }
}

/// A host of the lab with what the control plane says of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub host: String,
    pub netns: String,
    pub hostname: String,
    pub host_ip: Ipv4Addr,
    pub node_id: Option<String>,
    pub subnet: Option<Ipv4Net>,
    /// The VXLAN device MAC the agent registered.
    pub vtep_mac: Option<String>,
    /// `up` or `down` as the control plane sees it; `None` when not registered.
    pub status: Option<String>,
    pub runtime: ProcessStatus,
    pub agent: ProcessStatus,
}

/// One control-plane replica as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub host: String,
    pub url: String,
    pub control: ProcessStatus,
    /// The etcd member on the same host (none over SQLite).
    pub etcd: Option<ProcessStatus>,
    pub etcd_url: Option<String>,
}

/// The whole lab as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabStatus {
    pub name: String,
    pub underlay: Ipv4Net,
    pub control_url: String,
    /// Replica 1's process (host 1).
    pub control: ProcessStatus,
    /// Every control-plane replica, and its etcd member when they share etcd.
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
    /// Why the control plane could not be asked, when it could not.
    pub control_error: Option<String>,
    pub nodes: Vec<NodeStatus>,
    pub containers: Vec<ContainerState>,
    pub log_dir: PathBuf,
    pub namespaces_present: usize,
    pub namespaces_planned: usize,
}

/// Reads the lab's status: processes from /proc, nodes from the control plane.
pub fn status(state: &LabState) -> LabStatus {
    let h1 = state
        .hosts
        .first()
        .map(|h| h.netns.clone())
        .unwrap_or_default();
    let (list, control_error) =
        match remote::list_nodes(&h1, &state.control_urls(), state.control_tls()) {
            Ok(l) => (Some(l), None),
            Err(e) => (None, Some(e)),
        };
    let nodes = state
        .hosts
        .iter()
        .map(|h| {
            let node = list
                .as_ref()
                .and_then(|l| l.nodes.iter().find(|n| n.host_ip == h.host_ip));
            NodeStatus {
                host: format!("h{}", h.index),
                netns: h.netns.clone(),
                hostname: h.hostname.clone(),
                host_ip: h.host_ip,
                node_id: node.map(|n| n.node_id.clone()),
                subnet: node.map(|n| n.subnet),
                vtep_mac: node.and_then(|n| n.vtep_mac.clone()),
                status: node.map(|n| {
                    match n.status {
                        quilt_api::types::Status::Up => "up",
                        quilt_api::types::Status::Down => "down",
                    }
                    .to_string()
                }),
                runtime: ProcessStatus::of(h.runtime_pid, &h.netns),
                agent: ProcessStatus::of(h.agent_pid, &h.netns),
            }
        })
        .collect();
    LabStatus {
        name: state.name.clone(),
        underlay: state.underlay,
        control_url: state.control_url.clone(),
        control: ProcessStatus::of(state.hosts.first().and_then(|h| h.control_pid), &h1),
        replicas: state
            .replica_hosts()
            .zip(state.control_urls())
            .zip(state.etcd_endpoints())
            .map(|((h, url), etcd_url)| ReplicaStatus {
                host: format!("h{}", h.index),
                url,
                control: ProcessStatus::of(h.control_pid, &h.netns),
                etcd: state
                    .uses_etcd()
                    .then(|| ProcessStatus::of(h.etcd_pid, &h.netns)),
                etcd_url: state.uses_etcd().then_some(etcd_url),
            })
            .collect(),
        control_error,
        nodes,
        containers: state.containers.clone(),
        log_dir: state.log_dir.clone(),
        namespaces_present: state
            .namespaces
            .iter()
            .filter(|n| netns::path(n).exists())
            .count(),
        namespaces_planned: state.namespaces.len(),
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
