//! [`Lab`]: bringing a lab up stage by stage, inspecting it, and tearing it down, from
//! the same process (dropping a `Lab` tears it down, also on panic) or from another one
//! through the state file ([`down`], [`status`]).

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use quilt_kernel::netns::{self, OwnedNetns};
use serde::{Deserialize, Serialize};

use crate::LabError;
use crate::cni;
use crate::layout::{CONTROL_PORT, Layout, RUNTIME_ADDR, SWITCH_BRIDGE, UNDERLAY_IF, pick_octet};
use crate::probe::{Endpoint, Matrix};
use crate::process::{self, Output};
use crate::remote;
use crate::state::{self, ContainerState, HostState, LabState};
use crate::tables::{HostTables, TableWatch};

/// The daemon binaries, by the names the project builds them under.
pub const CONTROL_BIN: &str = "quilt-mesh-control";
pub const RUNTIME_BIN: &str = "quilt-runtime";
pub const AGENT_BIN: &str = "quilt-mesh-agent";
pub const CNI_BIN: &str = "quilt-cni";

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

/// Checks what `up` needs before anything is made: root, ip and ping, the binaries.
pub fn preflight(binaries_dir: &Path, with_agents: bool) -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    for (program, package) in [("ip", "iproute2"), ("ping", "iputils-ping")] {
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
    /// Builds the lab: underlay, control plane, runtimes, then (with agents) agents,
    /// containers and the full mesh, calling `progress` at each stage. Answers the lab
    /// even when the mesh did not become full in time; see [`Lab::full_mesh_after`].
    pub fn up(spec: LabSpec, progress: &mut dyn FnMut(&Progress)) -> Result<Lab, LabError> {
        let started = Instant::now();
        preflight(&spec.binaries_dir, spec.start_agents)?;
        crate::layout::check_name(&spec.name)?;
        let state_path = LabState::path(&spec.root, &spec.name);
        if state_path.exists() {
            return Err(LabError::AlreadyExists {
                name: spec.name.clone(),
                state: state_path,
            });
        }
        let octet = pick_octet(&spec.name, &state::taken_octets(&spec.root));
        let containers_per_node = if spec.start_agents {
            spec.containers_per_node
        } else {
            0
        };
        let layout = Layout::new(&spec.name, octet, spec.nodes, containers_per_node)?;
        if let Some(namespace) = layout
            .namespaces()
            .into_iter()
            .find(|ns| netns::path(ns).exists())
        {
            return Err(LabError::NameClash {
                name: spec.name.clone(),
                namespace,
            });
        }

        let dir = spec.root.join(&spec.name);
        let log_dir = spec.log_dir.clone().unwrap_or_else(|| dir.join("logs"));
        for d in [&dir, &log_dir, &dir.join("data")] {
            std::fs::create_dir_all(d)
                .map_err(|e| LabError::setup(format!("create {}", d.display()), e))?;
        }
        let state = LabState {
            name: spec.name.clone(),
            dir,
            log_dir,
            binaries_dir: spec.binaries_dir.clone(),
            underlay: layout.underlay(),
            nodes: layout.nodes,
            containers_per_node: layout.containers_per_node,
            control_url: layout.control_url(),
            join_token: random_token(),
            heartbeat_timeout_ms: spec.heartbeat_timeout.as_millis() as u64,
            heartbeat_interval_ms: spec.heartbeat_interval.as_millis() as u64,
            resync_interval_ms: spec.resync_interval.as_millis() as u64,
            reconcile_interval_ms: spec.reconcile_interval.as_millis() as u64,
            log_level: spec.log_level.clone(),
            namespaces: layout.namespaces(),
            switch_netns: layout.switch_ns(),
            control_pid: None,
            hosts: (1..=layout.nodes)
                .map(|i| HostState {
                    index: i,
                    netns: layout.host_ns(i),
                    hostname: layout.hostname(i),
                    host_ip: layout.host_ip(i),
                    runtime_pid: None,
                    agent_pid: None,
                })
                .collect(),
            containers: (1..=layout.nodes)
                .flat_map(|i| (1..=layout.containers_per_node).map(move |j| (i, j)))
                .map(|(i, j)| ContainerState {
                    name: Layout::container_name(i, j),
                    netns: layout.container_ns(i, j),
                    host: i,
                    container_id: layout.container_ns(i, j),
                    address: None,
                })
                .collect(),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            owner_pid: std::process::id(),
        };
        // The record exists before the first namespace does.
        state.save()?;
        let mut lab = Lab {
            state,
            namespaces: Vec::new(),
            children: Vec::new(),
            started,
            cancel: spec.cancel.clone(),
            converge_timeout: spec.converge_timeout,
            matrix: None,
            full_mesh_after: None,
            keep: false,
        };
        // From here on an error drops `lab`, which tears down what exists.
        lab.build_underlay(&layout, progress)?;
        lab.start_control(progress)?;
        lab.start_runtimes(progress)?;
        if spec.start_agents {
            lab.start_agents(progress)?;
            lab.wait_registered(progress)?;
            if layout.containers_per_node > 0 {
                lab.attach_containers(progress)?;
                lab.wait_full_mesh(progress)?;
            }
        }
        Ok(lab)
    }

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
        let h = host_of(&self.state, host)?;
        if let Some(pid) = h.agent_pid
            && !process::kill_now(pid, &h.netns, &mut |p| reap(&mut self.children, p))
        {
            return Err(LabError::setup(
                format!("kill quilt-mesh-agent of h{host}"),
                format!("pid {pid} did not exit"),
            ));
        }
        self.state.hosts[usize::from(host - 1)].agent_pid = None;
        self.save()
    }

    /// Stops the control plane (SIGTERM) and starts it again on the same database and
    /// URL; answers once it serves `/health` again.
    pub fn restart_control(&mut self) -> Result<(), LabError> {
        if let Some(pid) = self.state.control_pid {
            let h1 = self.state.hosts[0].netns.clone();
            stop_process(pid, &h1, CONTROL_BIN, &mut self.children)?;
        }
        self.state.control_pid = None;
        self.save()?;
        self.launch_control().map(|_| ())
    }

    /// Stops host `host`'s runtime (SIGTERM, then SIGKILL after 5 s).
    pub fn stop_runtime(&mut self, host: u16) -> Result<(), LabError> {
        let h = host_of(&self.state, host)?;
        if let Some(pid) = h.runtime_pid {
            stop_process(pid, &h.netns, RUNTIME_BIN, &mut self.children)?;
        }
        self.state.hosts[usize::from(host - 1)].runtime_pid = None;
        self.save()
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

    fn report(&self, progress: &mut dyn FnMut(&Progress), stage: &'static str, message: String) {
        tracing::info!(lab = %self.state.name, stage, %message);
        progress(&Progress {
            elapsed: self.started.elapsed(),
            stage,
            message,
        });
    }

    fn check_cancel(&self) -> Result<(), LabError> {
        match &self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(LabError::Interrupted),
            _ => Ok(()),
        }
    }

    fn save(&self) -> Result<(), LabError> {
        self.state.save()
    }

    fn build_underlay(
        &mut self,
        layout: &Layout,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<(), LabError> {
        self.report(
            progress,
            "underlay",
            format!(
                "switch {} and {} hosts on {}",
                layout.switch_ns(),
                layout.nodes,
                layout.underlay()
            ),
        );
        let sw = OwnedNetns::create(&layout.switch_ns())?;
        sw.ip(&["link", "add", SWITCH_BRIDGE, "type", "bridge"])?;
        sw.ip(&["link", "set", SWITCH_BRIDGE, "up"])?;
        self.namespaces.push(sw);
        for i in 1..=layout.nodes {
            self.check_cancel()?;
            self.join_underlay(layout, i)?;
        }
        // Every host answers host 1 on the underlay before any daemon starts.
        let hosts: Vec<Endpoint> = self
            .state
            .hosts
            .iter()
            .map(|h| Endpoint {
                name: format!("h{}", h.index),
                netns: h.netns.clone(),
                address: h.host_ip,
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pairs: Vec<(usize, usize)> = (1..hosts.len()).map(|j| (0, j)).collect();
        while !pairs.is_empty() {
            self.check_cancel()?;
            let results = crate::probe::ping_pairs(&hosts, &pairs);
            pairs = pairs
                .into_iter()
                .zip(results)
                .filter(|(_, ok)| !ok)
                .map(|(p, _)| p)
                .collect();
            if !pairs.is_empty() && Instant::now() >= deadline {
                let missing: Vec<String> = pairs
                    .iter()
                    .map(|(_, j)| hosts[*j].address.to_string())
                    .collect();
                return Err(LabError::Timeout {
                    what: "underlay ping from h1".into(),
                    seconds: 10.0,
                    detail: format!("no answer from {}", missing.join(", ")),
                });
            }
        }
        self.report(
            progress,
            "underlay",
            format!("h1 reaches all {} hosts over the switch", layout.nodes),
        );
        Ok(())
    }

    /// Makes host `i`'s namespace and joins it to the switch, with forwarding on.
    fn join_underlay(&mut self, layout: &Layout, i: u16) -> Result<(), LabError> {
        let switch_ns = layout.switch_ns();
        let host = OwnedNetns::create(&layout.host_ns(i))?;
        let port = Layout::switch_port(i);
        let addr = format!("{}/24", layout.host_ip(i));
        host.ip(&[
            "link",
            "add",
            UNDERLAY_IF,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &switch_ns,
        ])?;
        self.namespaces.push(host);
        let sw = self
            .namespaces
            .iter()
            .find(|n| n.name() == switch_ns)
            .ok_or_else(|| LabError::setup(format!("join h{i}"), "the switch is not ours"))?;
        sw.ip(&["link", "set", &port, "master", SWITCH_BRIDGE, "up"])?;
        let host = self.namespaces.last().expect("just pushed");
        host.ip(&["addr", "add", &addr, "dev", UNDERLAY_IF])?;
        host.ip(&["link", "set", UNDERLAY_IF, "up"])?;
        // Hosts route container traffic; forwarding is per namespace, never the root's.
        // A thread inside the namespace sees that namespace's /proc/sys/net.
        let name = host.name().to_string();
        quilt_kernel::netns::run_in(&name, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        })
        .map_err(|e| LabError::setup(format!("enter {name}"), e))?
        .map_err(|e| LabError::setup(format!("turn on ip_forward in {name}"), e))?;
        Ok(())
    }

    fn log_path(&self, file: &str) -> PathBuf {
        self.state.log_dir.join(file)
    }

    /// Fails with the end of `log` when the child `pid` has exited.
    fn check_alive(&mut self, pid: u32, what: &str, log: &str) -> Result<(), LabError> {
        if let Some(child) = self.children.iter_mut().find(|c| c.id() == pid)
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(LabError::setup(
                format!("{what} exited ({status})"),
                format!(
                    "log {}:\n{}",
                    self.log_path(log).display(),
                    log_tail(&self.log_path(log), 15)
                ),
            ));
        }
        Ok(())
    }

    fn start_control(&mut self, progress: &mut dyn FnMut(&Progress)) -> Result<(), LabError> {
        self.check_cancel()?;
        let _ = std::fs::remove_file(self.log_path("control.log"));
        let pid = self.launch_control()?;
        self.report(
            progress,
            "control",
            format!(
                "quilt-mesh-control on {} in {} (pid {pid})",
                self.state.control_url, self.state.hosts[0].netns
            ),
        );
        Ok(())
    }

    /// Starts the control plane (same database, same URL every time) and waits until
    /// it answers `/health`; answers its pid.
    fn launch_control(&mut self) -> Result<u32, LabError> {
        let child = start_control_of(&mut self.state)?;
        let pid = child.id();
        self.children.push(child);
        let h1 = self.state.hosts[0].netns.clone();
        let url = self.state.control_url.clone();
        self.wait_for("control plane /health", Duration::from_secs(20), |lab| {
            lab.check_alive(pid, CONTROL_BIN, "control.log")?;
            Ok(remote::control_health(&h1, &url).err())
        })?;
        Ok(pid)
    }

    fn start_runtimes(&mut self, progress: &mut dyn FnMut(&Progress)) -> Result<(), LabError> {
        self.check_cancel()?;
        for index in 1..=self.state.nodes {
            let _ = std::fs::remove_file(self.log_path(&format!("h{index}-runtime.log")));
            let child = start_runtime_of(&mut self.state, index)?;
            self.children.push(child);
        }
        for index in 1..=self.state.nodes {
            self.wait_runtime(index)?;
        }
        self.report(
            progress,
            "runtimes",
            format!(
                "{} quilt-runtime answer on {RUNTIME_ADDR} in their hosts",
                self.state.nodes
            ),
        );
        Ok(())
    }

    /// Waits until host `host`'s runtime accepts connections.
    fn wait_runtime(&mut self, host: u16) -> Result<(), LabError> {
        let h = host_of(&self.state, host)?;
        let pid = h.runtime_pid.unwrap_or(0);
        let log = format!("h{host}-runtime.log");
        let addr: SocketAddr = RUNTIME_ADDR.parse().expect("valid address");
        self.wait_for(
            &format!("quilt-runtime in {}", h.netns),
            Duration::from_secs(20),
            |lab| {
                lab.check_alive(pid, RUNTIME_BIN, &log)?;
                Ok((!remote::tcp_open(&h.netns, addr))
                    .then(|| format!("nothing listens on {addr}")))
            },
        )
    }

    fn start_agents(&mut self, progress: &mut dyn FnMut(&Progress)) -> Result<(), LabError> {
        self.check_cancel()?;
        for index in 1..=self.state.nodes {
            let log = format!("h{index}-agent.log");
            let _ = std::fs::remove_file(self.log_path(&log));
            let child = start_agent_of(&mut self.state, index)?;
            self.children.push(child);
        }
        self.report(
            progress,
            "agents",
            format!(
                "{} quilt-mesh-agent started; waiting for registration with {}",
                self.state.nodes, self.state.control_url
            ),
        );
        Ok(())
    }

    fn wait_registered(&mut self, progress: &mut dyn FnMut(&Progress)) -> Result<(), LabError> {
        let h1 = self.state.hosts[0].netns.clone();
        let url = self.state.control_url.clone();
        let hosts = self.state.hosts.clone();
        let timeout = self.converge_timeout;
        self.wait_for("registration of every node", timeout, |lab| {
            for h in &hosts {
                let pid = h_pid(&lab.state, h.index, |h| h.agent_pid);
                lab.check_alive(pid, AGENT_BIN, &format!("h{}-agent.log", h.index))?;
            }
            let list = match remote::list_nodes(&h1, &url) {
                Ok(l) => l,
                Err(e) => return Ok(Some(e)),
            };
            let up = hosts
                .iter()
                .filter(|h| {
                    list.nodes
                        .iter()
                        .any(|n| n.host_ip == h.host_ip && n.status == quilt_api::types::Status::Up)
                })
                .count();
            if up < hosts.len() {
                return Ok(Some(format!(
                    "{up} of {} nodes registered and up",
                    hosts.len()
                )));
            }
            for h in &hosts {
                match remote::runtime_subnet(&h.netns) {
                    Ok(s) if !s.is_empty() => {}
                    Ok(_) => {
                        return Ok(Some(format!(
                            "runtime of h{} has no node subnet yet",
                            h.index
                        )));
                    }
                    Err(e) => return Ok(Some(e)),
                }
            }
            Ok(None)
        })?;
        self.report(
            progress,
            "nodes",
            format!(
                "{} nodes registered, subnets leased and configured in every runtime",
                hosts.len()
            ),
        );
        Ok(())
    }

    fn attach_containers(&mut self, progress: &mut dyn FnMut(&Progress)) -> Result<(), LabError> {
        for k in 0..self.state.containers.len() {
            self.check_cancel()?;
            self.attach_container(k)?;
        }
        self.report(
            progress,
            "containers",
            format!(
                "{} containers attached with quilt-cni ({} per host)",
                self.state.containers.len(),
                self.state.containers_per_node
            ),
        );
        Ok(())
    }

    /// Makes container `k`'s namespace and attaches it with quilt-cni ADD inside its
    /// host, retrying while the runtime answers "try again later".
    fn attach_container(&mut self, k: usize) -> Result<(), LabError> {
        let cni_binary = self.state.binaries_dir.join(CNI_BIN);
        let c = self.state.containers[k].clone();
        let host_ns = self.state.hosts[usize::from(c.host - 1)].netns.clone();
        self.namespaces.push(OwnedNetns::create(&c.netns)?);
        let deadline = Instant::now() + Duration::from_secs(20);
        let result = loop {
            match cni::invoke(&cni_binary, "ADD", &host_ns, &c.container_id, &c.netns) {
                Ok(r) => break r,
                Err(f) if f.try_again() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(f) => {
                    return Err(LabError::setup(
                        format!("attach {} on h{}", c.name, c.host),
                        f.message,
                    ));
                }
            }
        };
        let address = cni::result_address(&result).ok_or_else(|| {
            LabError::setup(
                format!("attach {} on h{}", c.name, c.host),
                format!("quilt-cni answered no IPv4 address: {result}"),
            )
        })?;
        self.state.containers[k].address = Some(address);
        self.save()
    }

    fn wait_full_mesh(&mut self, progress: &mut dyn FnMut(&Progress)) -> Result<(), LabError> {
        let mut matrix = Matrix::empty(endpoints(&self.state));
        self.report(
            progress,
            "mesh",
            format!(
                "pinging {} container pairs until all answer (up to {:.0} s)",
                matrix.pairs(),
                self.converge_timeout.as_secs_f64()
            ),
        );
        let deadline = Instant::now() + self.converge_timeout;
        let mut last_note = Instant::now();
        loop {
            self.check_cancel()?;
            matrix.retry_failed();
            if matrix.full() {
                self.full_mesh_after = Some(self.started.elapsed());
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            if last_note.elapsed() >= Duration::from_secs(5) {
                last_note = Instant::now();
                self.report(
                    progress,
                    "mesh",
                    format!("{} of {} pairs answer", matrix.reached(), matrix.pairs()),
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.report(
            progress,
            "mesh",
            match self.full_mesh_after {
                Some(t) => format!(
                    "full mesh: all {} pairs answer, {:.2} s after start",
                    matrix.pairs(),
                    t.as_secs_f64()
                ),
                None => format!(
                    "not fully connected after {:.0} s: {} of {} pairs answer",
                    self.converge_timeout.as_secs_f64(),
                    matrix.reached(),
                    matrix.pairs()
                ),
            },
        );
        self.matrix = Some(matrix);
        Ok(())
    }

    /// Polls `check` every 100 ms until it answers `None` (done), or fails with the last
    /// reason it gave after `timeout`.
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&mut Self) -> Result<Option<String>, LabError>,
    ) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_cancel()?;
            let reason = match check(self)? {
                None => return Ok(()),
                Some(reason) => reason,
            };
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: what.to_string(),
                    seconds: timeout.as_secs_f64(),
                    detail: reason,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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

fn h_pid(state: &LabState, index: u16, f: impl Fn(&HostState) -> Option<u32>) -> u32 {
    state.host(index).and_then(f).unwrap_or(0)
}

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

fn host_of(state: &LabState, host: u16) -> Result<HostState, LabError> {
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

/// Stops host `host`'s agent and records that it no longer runs.
pub fn stop_agent_of(
    state: &mut LabState,
    host: u16,
    children: &mut [Child],
) -> Result<(), LabError> {
    let h = host_of(state, host)?;
    if let Some(pid) = h.agent_pid {
        stop_process(pid, &h.netns, AGENT_BIN, children)?;
    }
    state.hosts[usize::from(host - 1)].agent_pid = None;
    state.save()
}

/// SIGTERM to `pid` if it still runs in `netns`, SIGKILL after 5 s.
fn stop_process(pid: u32, netns: &str, what: &str, children: &mut [Child]) -> Result<(), LabError> {
    let left = process::stop_all(
        &[(pid, netns.to_string())],
        Duration::from_secs(5),
        &mut |p| reap(children, p),
    );
    if left.is_empty() {
        Ok(())
    } else {
        Err(LabError::setup(
            format!("stop {what} in {netns}"),
            format!("pid {pid} did not exit"),
        ))
    }
}

/// Starts the control plane on host 1 (its log is appended to) and records its pid.
fn start_control_of(state: &mut LabState) -> Result<Child, LabError> {
    let h1 = state.hosts[0].clone();
    let listen = SocketAddr::from((h1.host_ip, CONTROL_PORT));
    let dir = state.dir.join("data").join("control");
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::setup(format!("create {}", dir.display()), e))?;
    let args: Vec<OsString> = vec![
        "--listen".into(),
        listen.to_string().into(),
        "--db-path".into(),
        dir.join("control.db").into(),
        "--heartbeat-timeout".into(),
        format!("{}ms", state.heartbeat_timeout_ms).into(),
        "--join-token".into(),
        state.join_token.clone().into(),
        "--log-level".into(),
        state.log_level.clone().into(),
    ];
    let log = state.log_dir.join("control.log");
    let child = process::spawn_daemon(
        &h1.netns,
        &state.binaries_dir.join(CONTROL_BIN),
        &args,
        &log,
    )?;
    state.control_pid = Some(child.id());
    state.save()?;
    Ok(child)
}

/// Starts host `host`'s runtime (its log is appended to) and records its pid.
fn start_runtime_of(state: &mut LabState, host: u16) -> Result<Child, LabError> {
    let h = host_of(state, host)?;
    let state_dir = state.dir.join("data").join(format!("h{host}/runtime"));
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| LabError::setup(format!("create {}", state_dir.display()), e))?;
    let args: Vec<OsString> = vec![
        "--grpc-addr".into(),
        RUNTIME_ADDR.into(),
        "--state-dir".into(),
        state_dir.into(),
        "--reconcile-interval".into(),
        format!("{}ms", state.reconcile_interval_ms).into(),
        "--log-level".into(),
        state.log_level.clone().into(),
    ];
    let log = state.log_dir.join(format!("h{host}-runtime.log"));
    let child =
        process::spawn_daemon(&h.netns, &state.binaries_dir.join(RUNTIME_BIN), &args, &log)?;
    state.hosts[usize::from(host - 1)].runtime_pid = Some(child.id());
    state.save()?;
    Ok(child)
}

/// Starts host `host`'s agent (its log is appended to) and records its pid.
pub fn start_agent_of(state: &mut LabState, host: u16) -> Result<Child, LabError> {
    let h = host_of(state, host)?;
    if let Some(pid) = h.agent_pid
        && process::runs_in(pid, &h.netns)
    {
        return Err(LabError::setup(
            format!("start quilt-mesh-agent of h{host}"),
            format!("it already runs (pid {pid})"),
        ));
    }
    let state_dir = state.dir.join("data").join(format!("h{host}/agent"));
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| LabError::setup(format!("create {}", state_dir.display()), e))?;
    let args: Vec<OsString> = vec![
        "--control-plane".into(),
        state.control_url.clone().into(),
        "--host-ip".into(),
        h.host_ip.to_string().into(),
        "--hostname".into(),
        h.hostname.clone().into(),
        "--runtime-addr".into(),
        format!("http://{RUNTIME_ADDR}").into(),
        "--underlay-interface".into(),
        UNDERLAY_IF.into(),
        "--state-dir".into(),
        state_dir.into(),
        "--join-token".into(),
        state.join_token.clone().into(),
        "--heartbeat-interval".into(),
        format!("{}ms", state.heartbeat_interval_ms).into(),
        "--resync-interval".into(),
        format!("{}ms", state.resync_interval_ms).into(),
        "--log-level".into(),
        state.log_level.clone().into(),
    ];
    let log = state.log_dir.join(format!("h{host}-agent.log"));
    let child = process::spawn_daemon(&h.netns, &state.binaries_dir.join(AGENT_BIN), &args, &log)?;
    state.hosts[usize::from(host - 1)].agent_pid = Some(child.id());
    state.save()?;
    Ok(child)
}

fn reap(children: &mut [Child], pid: u32) -> bool {
    children
        .iter_mut()
        .find(|c| c.id() == pid)
        .map(|c| matches!(c.try_wait(), Ok(Some(_))))
        .unwrap_or(false)
}

/// Stops every process and removes every namespace and file of the lab; answers what
/// could not be removed. Best effort: one failure does not stop the rest.
fn teardown(
    state: &LabState,
    mut namespaces: Vec<OwnedNetns>,
    children: &mut [Child],
    remove_logs: bool,
) -> Vec<String> {
    let mut errors = Vec::new();
    // Agents first (they would otherwise repair what goes away), then runtimes, then
    // the control plane.
    let mut targets: Vec<(u32, String)> = Vec::new();
    targets.extend(
        state
            .hosts
            .iter()
            .filter_map(|h| Some((h.agent_pid?, h.netns.clone()))),
    );
    targets.extend(
        state
            .hosts
            .iter()
            .filter_map(|h| Some((h.runtime_pid?, h.netns.clone()))),
    );
    if let (Some(pid), Some(h1)) = (state.control_pid, state.hosts.first()) {
        targets.push((pid, h1.netns.clone()));
    }
    let left = process::stop_all(&targets, Duration::from_secs(3), &mut |p| reap(children, p));
    errors.extend(left.iter().map(|p| format!("process {p} did not exit")));

    // Namespaces this process holds, in reverse creation order, then any other the
    // record names (a crashed `up`, or `down` from another process). Dropping an
    // OwnedNetns kills what still runs inside and deletes it.
    while let Some(ns) = namespaces.pop() {
        drop(ns);
    }
    for name in &state.namespaces {
        if netns::path(name).exists() {
            drop(OwnedNetns::adopt(name));
        }
    }
    for name in &state.namespaces {
        if netns::path(name).exists() {
            errors.push(format!("network namespace {name} is still there"));
        }
    }
    for child in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }

    let data = state.dir.join("data");
    if data.exists()
        && let Err(e) = std::fs::remove_dir_all(&data)
    {
        errors.push(format!("cannot remove {}: {e}", data.display()));
    }
    if remove_logs
        && state.log_dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&state.log_dir)
    {
        errors.push(format!("cannot remove {}: {e}", state.log_dir.display()));
    }
    if errors.is_empty() {
        // The record goes last, so a failed teardown can be retried.
        let _ = std::fs::remove_file(state.state_path());
        // Removes the lab folder when nothing else (kept logs) is in it.
        let _ = std::fs::remove_dir(&state.dir);
    }
    errors
}

/// Tears down lab `name` under `root` from its state file (another process ran `up`,
/// or `up` crashed).
pub fn down(root: &Path, name: &str, remove_logs: bool) -> Result<LabState, LabError> {
    let state = LabState::load(root, name)?;
    let errors = teardown(&state, Vec::new(), &mut [], remove_logs);
    if errors.is_empty() {
        Ok(state)
    } else {
        Err(LabError::Teardown(errors))
    }
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

/// The whole lab as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabStatus {
    pub name: String,
    pub underlay: Ipv4Net,
    pub control_url: String,
    pub control: ProcessStatus,
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
    let (list, control_error) = match remote::list_nodes(&h1, &state.control_url) {
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
        control: ProcessStatus::of(state.control_pid, &h1),
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

/// 32 hex characters from the kernel's random source.
fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
