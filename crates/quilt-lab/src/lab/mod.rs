//! [`Lab`]: bringing a lab up stage by stage, inspecting it, and tearing it down, from
//! the same process (dropping a `Lab` tears it down, also on panic) or from another one
//! through the state file ([`down`], [`status`]).
//!
//! - `spec`: what to build ([`LabSpec`]) and the checks before anything is made.
//! - `up`: the bring-up stages.
//! - `daemons`: starting and stopping each daemon, written once over a [`LabState`];
//!   the [`Lab`] methods below are thin wrappers that also keep the child handles.
//! - `migrate`: moving a running lab from SQLite to replicas over etcd.
//! - `teardown`: removing everything a lab made, best effort.
//! - `status`: what runs, what the control plane says, pings and commands in members.

mod daemons;
mod migrate;
mod spec;
mod status;
mod teardown;
mod up;

use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use quilt_kernel::netns::OwnedNetns;

use crate::LabError;
use crate::layout::Layout;
use crate::probe::Matrix;
use crate::process::Output;
use crate::state::{ContainerState, HostState, LabState};
use crate::tables::{HostTables, TableWatch};
use daemons::{
    kill_agent_of, kill_control_of, kill_etcd_of, start_etcd_of, start_runtime_of, stop_control_of,
    stop_runtime_of,
};
use teardown::teardown;

pub use daemons::{start_agent_of, stop_agent_of};
pub use spec::{AGENT_BIN, CNI_BIN, CONTROL_BIN, LabSpec, Progress, RUNTIME_BIN, preflight};
pub use status::{
    LabStatus, NodeStatus, ProcessStatus, endpoints, exec, log_tail, ping_matrix, status,
};
pub use teardown::down;

/// A running lab this process owns. Dropping it tears everything down.
pub struct Lab {
    state: LabState,
    /// In creation order: switch, hosts, containers; torn down in reverse.
    namespaces: Vec<OwnedNetns>,
    children: Vec<Child>,
    started: Instant,
    cancel: Option<Arc<AtomicBool>>,
    converge_timeout: Duration,
    matrix: Option<Matrix>,
    full_mesh_after: Option<Duration>,
    keep: bool,
}

impl Lab {
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// The matrix `up` ended with.
    pub fn matrix(&self) -> Option<&Matrix> {
        self.matrix.as_ref()
    }

    /// Time from the start of `up` to the first full connectivity matrix.
    pub fn full_mesh_after(&self) -> Option<Duration> {
        self.full_mesh_after
    }

    /// Nodes, processes and containers as they are now.
    pub fn status(&self) -> LabStatus {
        status(&self.state)
    }

    /// Pings every container from every container, now.
    pub fn ping_matrix(&self) -> Matrix {
        ping_matrix(&self.state)
    }

    /// Runs `args` inside lab member `member` (`c1-1`, `h2`, `sw`), bounded by `timeout`.
    pub fn exec(&self, member: &str, args: &[&str], timeout: Duration) -> Result<Output, LabError> {
        exec(&self.state, member, args, timeout)
    }

    /// Stops host `host`'s agent (SIGTERM, then SIGKILL after 5 s).
    pub fn stop_agent(&mut self, host: u16) -> Result<(), LabError> {
        stop_agent_of(&mut self.state, host, &mut self.children)
    }

    /// Starts host `host`'s agent again, with the same flags.
    pub fn start_agent(&mut self, host: u16) -> Result<(), LabError> {
        let child = start_agent_of(&mut self.state, host)?;
        self.children.push(child);
        Ok(())
    }

    /// Kills host `host`'s agent with SIGKILL (a crash: nothing runs on its way out).
    pub fn kill_agent(&mut self, host: u16) -> Result<(), LabError> {
        kill_agent_of(&mut self.state, host, &mut self.children)
    }

    /// Stops the control plane on host 1 (SIGTERM) and starts it again on the same
    /// database (or etcd) and URL; answers once it serves `/health` again.
    pub fn restart_control(&mut self) -> Result<(), LabError> {
        stop_control_of(&mut self.state, 1, &mut self.children)?;
        self.launch_control(1).map(|_| ())
    }

    /// Kills host `host`'s control-plane replica with SIGKILL.
    pub fn kill_control(&mut self, host: u16) -> Result<(), LabError> {
        kill_control_of(&mut self.state, host, &mut self.children)
    }

    /// Starts host `host`'s control-plane replica again; answers once it serves `/health`.
    pub fn start_control(&mut self, host: u16) -> Result<(), LabError> {
        self.launch_control(host).map(|_| ())
    }

    /// Kills host `host`'s etcd member with SIGKILL (its data stays).
    pub fn kill_etcd(&mut self, host: u16) -> Result<(), LabError> {
        kill_etcd_of(&mut self.state, host, &mut self.children)
    }

    /// Starts host `host`'s etcd member again over its data.
    pub fn start_etcd(&mut self, host: u16) -> Result<(), LabError> {
        let child = start_etcd_of(&mut self.state, host)?;
        self.children.push(child);
        Ok(())
    }

    /// Stops host `host`'s runtime (SIGTERM, then SIGKILL after 5 s).
    pub fn stop_runtime(&mut self, host: u16) -> Result<(), LabError> {
        stop_runtime_of(&mut self.state, host, &mut self.children)
    }

    /// Starts host `host`'s runtime again on the same state folder; answers once it
    /// accepts connections.
    pub fn start_runtime(&mut self, host: u16) -> Result<(), LabError> {
        let child = start_runtime_of(&mut self.state, host)?;
        self.children.push(child);
        self.wait_runtime(host)
    }

    /// Grows the lab by one host: its namespace on the switch and its runtime, but no
    /// agent yet ([`Lab::start_agent`]) and no container ([`Lab::attach_containers_of`]).
    /// Answers the new host's index.
    pub fn add_host(&mut self) -> Result<u16, LabError> {
        let current = self.state.layout();
        let index = current.nodes + 1;
        let layout = Layout::new(
            &current.name,
            current.octet,
            index,
            current.containers_per_node,
        )?;
        // The record names the new namespaces before they exist.
        self.state.nodes = index;
        self.state.namespaces = layout.namespaces();
        self.state.hosts.push(HostState {
            index,
            netns: layout.host_ns(index),
            hostname: layout.hostname(index),
            host_ip: layout.host_ip(index),
            runtime_pid: None,
            agent_pid: None,
            control_pid: None,
            etcd_pid: None,
        });
        self.state
            .containers
            .extend((1..=layout.containers_per_node).map(|j| ContainerState {
                name: Layout::container_name(index, j),
                netns: layout.container_ns(index, j),
                host: index,
                container_id: layout.container_ns(index, j),
                address: None,
            }));
        self.save()?;
        daemons::issue_host_certificate(&self.state, index)?;
        self.join_underlay(&layout, index)?;
        let h1 = layout.host_ip(1);
        let netns = layout.host_ns(index);
        self.wait_for("underlay ping to h1", Duration::from_secs(10), |_| {
            Ok((!crate::probe::ping(&netns, h1)).then(|| format!("no answer from {h1}")))
        })?;
        let child = start_runtime_of(&mut self.state, index)?;
        self.children.push(child);
        self.wait_runtime(index)?;
        Ok(index)
    }

    /// Attaches every container of host `host` that has no address yet (its runtime
    /// must have a node subnet, that is its agent registered).
    pub fn attach_containers_of(&mut self, host: u16) -> Result<(), LabError> {
        for k in 0..self.state.containers.len() {
            let c = &self.state.containers[k];
            if c.host == host && c.address.is_none() {
                self.attach_container(k)?;
            }
        }
        Ok(())
    }

    /// Host `host`'s kernel tables as they are now.
    pub fn tables(&self, host: u16) -> Result<HostTables, LabError> {
        HostTables::read(&host_of(&self.state, host)?.netns)
    }

    /// Starts recording every change to host `host`'s tables.
    pub fn watch_tables(&self, host: u16) -> Result<TableWatch, LabError> {
        TableWatch::start(&host_of(&self.state, host)?.netns, &self.state.log_dir)
    }

    /// Leaves the lab running after this value is gone; `down` by name removes it.
    pub fn keep_running(mut self) -> LabState {
        self.keep = true;
        // The namespaces must outlive this value; their names are in the state file.
        std::mem::forget(std::mem::take(&mut self.namespaces));
        self.state.clone()
    }

    /// Tears the lab down, reporting everything that could not be removed.
    pub fn down(mut self, remove_logs: bool) -> Result<(), LabError> {
        self.keep = true;
        let namespaces = std::mem::take(&mut self.namespaces);
        let errors = teardown(&self.state, namespaces, &mut self.children, remove_logs);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(LabError::Teardown(errors))
        }
    }

    fn save(&self) -> Result<(), LabError> {
        self.state.save()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let namespaces = std::mem::take(&mut self.namespaces);
        for e in teardown(&self.state, namespaces, &mut self.children, true) {
            tracing::warn!(lab = %self.state.name, error = %e, "teardown");
        }
    }
}

pub(super) fn host_of(state: &LabState, host: u16) -> Result<HostState, LabError> {
    state
        .host(host)
        .cloned()
        .ok_or_else(|| LabError::UnknownMember {
            lab: state.name.clone(),
            what: "host",
            name: host.to_string(),
            known: format!("1..={}", state.nodes),
        })
}
