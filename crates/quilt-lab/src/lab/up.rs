//! Bringing a lab up: underlay, control plane, runtimes, agents, containers, then the
//! full mesh, each stage reported and each bounded in time.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quilt_kernel::netns::{self, OwnedNetns};

use super::daemons::{
    control_log, start_agent_of, start_control_of, start_etcd_of, start_runtime_of,
};
use super::spec::{
    AGENT_BIN, CNI_BIN, CONTROL_BIN, ETCD_BIN, LabSpec, Progress, RUNTIME_BIN, preflight,
};
use super::status::{endpoints, log_tail};
use super::{Lab, host_of};
use crate::LabError;
use crate::cni;
use crate::layout::{Layout, RUNTIME_ADDR, SWITCH_BRIDGE, UNDERLAY_IF, pick_octet};
use crate::probe::{Endpoint, Matrix};
use crate::remote;
use crate::state::{self, ContainerState, HostState, LabState};

impl Lab {
    /// Builds the lab: underlay, control plane, runtimes, then (with agents) agents,
    /// containers and the full mesh, calling `progress` at each stage. Answers the lab
    /// even when the mesh did not become full in time; see [`Lab::full_mesh_after`].
    pub fn up(spec: LabSpec, progress: &mut dyn FnMut(&Progress)) -> Result<Lab, LabError> {
        let started = Instant::now();
        preflight(
            &spec.binaries_dir,
            spec.start_agents,
            spec.control_replicas > 1,
        )?;
        crate::layout::check_name(&spec.name)?;
        if spec.control_replicas == 0
            || spec.control_replicas > spec.nodes
            || spec.control_replicas > super::spec::MAX_CONTROL_REPLICAS
        {
            return Err(LabError::setup(
                format!("run {} control-plane replicas", spec.control_replicas),
                format!(
                    "replicas run one per host: between 1 and the lab's {} hosts (at most {})",
                    spec.nodes,
                    super::spec::MAX_CONTROL_REPLICAS
                ),
            ));
        }
        if spec.control_replicas > 1 && spec.control_program.is_some() {
            return Err(LabError::setup(
                "run several control-plane replicas",
                "a stand-in control program runs alone",
            ));
        }
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
        let pki_dir = (!spec.insecure).then(|| dir.join("data").join("pki"));
        let state = LabState {
            name: spec.name.clone(),
            dir,
            log_dir,
            binaries_dir: spec.binaries_dir.clone(),
            underlay: layout.underlay(),
            nodes: layout.nodes,
            containers_per_node: layout.containers_per_node,
            control_url: if spec.insecure {
                layout.control_url()
            } else {
                layout.control_https_url()
            },
            control_replicas: spec.control_replicas,
            join_token: random_token()?,
            pki_dir,
            control_program: spec.control_program.clone(),
            agent_args: spec.agent_args.clone(),
            outside: spec.outside,
            forward_drop_hosts: spec.forward_drop_hosts.clone(),
            underlay_mtu: spec.underlay_mtu,
            heartbeat_timeout_ms: spec.heartbeat_timeout.as_millis() as u64,
            heartbeat_interval_ms: spec.heartbeat_interval.as_millis() as u64,
            resync_interval_ms: spec.resync_interval.as_millis() as u64,
            reconcile_interval_ms: spec.reconcile_interval.as_millis() as u64,
            log_level: spec.log_level.clone(),
            namespaces: {
                let mut all = layout.namespaces();
                if spec.outside {
                    // Before the switch, which is last: torn down before it.
                    let at = all.len() - 1;
                    all.insert(at, layout.router_ns());
                    all.insert(at, layout.outside_ns());
                }
                all
            },
            switch_netns: layout.switch_ns(),
            legacy_control_pid: None,
            hosts: (1..=layout.nodes)
                .map(|i| HostState {
                    index: i,
                    netns: layout.host_ns(i),
                    hostname: layout.hostname(i),
                    host_ip: layout.host_ip(i),
                    runtime_pid: None,
                    agent_pid: None,
                    control_pid: None,
                    etcd_pid: None,
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
        super::daemons::make_certificates(&state)?;
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
        lab.start_control_plane(progress)?;
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
        if self.state.outside {
            self.build_outside(layout)?;
        }
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

    /// Makes the router on the switch and the outside namespace behind it. The outside
    /// routes only to the router's own networks, so an unmasqueraded container address
    /// gets no answer from it.
    fn build_outside(&mut self, layout: &Layout) -> Result<(), LabError> {
        use crate::layout::{
            OUTSIDE_GATEWAY, OUTSIDE_IF, OUTSIDE_IP, ROUTER_OUTSIDE_IF, ROUTER_UPLINK_IF,
        };
        let switch_ns = layout.switch_ns();
        let router = OwnedNetns::create(&layout.router_ns())?;
        router.ip(&[
            "link",
            "add",
            ROUTER_UPLINK_IF,
            "type",
            "veth",
            "peer",
            "name",
            "prt",
            "netns",
            &switch_ns,
        ])?;
        self.namespaces.push(router);
        let outside = OwnedNetns::create(&layout.outside_ns())?;
        self.namespaces.push(outside);
        let find = |lab: &Lab, name: &str| -> Result<usize, LabError> {
            lab.namespaces
                .iter()
                .position(|n| n.name() == name)
                .ok_or_else(|| LabError::setup("build the outside", format!("{name} is not ours")))
        };
        let sw = find(self, &switch_ns)?;
        self.namespaces[sw].ip(&["link", "set", "prt", "master", SWITCH_BRIDGE, "up"])?;
        if let Some(mtu) = self.state.underlay_mtu {
            let mtu = mtu.to_string();
            self.namespaces[sw].ip(&["link", "set", "prt", "mtu", &mtu])?;
            let rt = find(self, &layout.router_ns())?;
            self.namespaces[rt].ip(&["link", "set", ROUTER_UPLINK_IF, "mtu", &mtu])?;
        }
        let rt = find(self, &layout.router_ns())?;
        let router = &self.namespaces[rt];
        router.ip(&[
            "link",
            "add",
            ROUTER_OUTSIDE_IF,
            "type",
            "veth",
            "peer",
            "name",
            OUTSIDE_IF,
            "netns",
            &layout.outside_ns(),
        ])?;
        router.ip(&[
            "addr",
            "add",
            &format!("{}/24", layout.router_ip()),
            "dev",
            ROUTER_UPLINK_IF,
        ])?;
        router.ip(&[
            "addr",
            "add",
            &format!("{OUTSIDE_GATEWAY}/24"),
            "dev",
            ROUTER_OUTSIDE_IF,
        ])?;
        router.ip(&["link", "set", ROUTER_UPLINK_IF, "up"])?;
        router.ip(&["link", "set", ROUTER_OUTSIDE_IF, "up"])?;
        let name = router.name().to_string();
        quilt_kernel::netns::run_in(&name, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        })
        .map_err(|e| LabError::setup(format!("enter {name}"), e))?
        .map_err(|e| LabError::setup(format!("turn on ip_forward in {name}"), e))?;
        let out = &self.namespaces[find(self, &layout.outside_ns())?];
        out.ip(&[
            "addr",
            "add",
            &format!("{OUTSIDE_IP}/24"),
            "dev",
            OUTSIDE_IF,
        ])?;
        out.ip(&["link", "set", OUTSIDE_IF, "up"])?;
        out.ip(&["link", "set", "lo", "up"])?;
        out.ip(&[
            "route",
            "add",
            "default",
            "via",
            &OUTSIDE_GATEWAY.to_string(),
        ])?;
        Ok(())
    }

    /// Makes host `i`'s namespace and joins it to the switch, with forwarding on (and,
    /// as the lab says, a default route through the router, iptables' FORWARD dropping).
    pub(super) fn join_underlay(&mut self, layout: &Layout, i: u16) -> Result<(), LabError> {
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
        if let Some(mtu) = self.state.underlay_mtu {
            let mtu = mtu.to_string();
            sw.ip(&["link", "set", &port, "mtu", &mtu])?;
            host.ip(&["link", "set", UNDERLAY_IF, "mtu", &mtu])?;
        }
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
        if self.state.outside {
            host.ip(&[
                "route",
                "add",
                "default",
                "via",
                &layout.router_ip().to_string(),
            ])?;
        }
        if self.state.forward_drop_hosts.contains(&i) {
            crate::remote::nft(
                &name,
                &[
                    "add table ip filter",
                    "add chain ip filter FORWARD { type filter hook forward priority 0 ; policy drop ; }",
                ],
            )?;
        }
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

    fn start_control_plane(&mut self, progress: &mut dyn FnMut(&Progress)) -> Result<(), LabError> {
        self.check_cancel()?;
        let hosts: Vec<u16> = self.state.replica_hosts().map(|h| h.index).collect();
        if self.state.uses_etcd() {
            for &host in &hosts {
                let _ = std::fs::remove_file(self.log_path(&format!("h{host}-etcd.log")));
                let child = start_etcd_of(&mut self.state, host)?;
                self.children.push(child);
            }
            self.wait_etcd_serving(Duration::from_secs(30))?;
            self.report(
                progress,
                "etcd",
                format!(
                    "{} etcd members serve writes at {}",
                    hosts.len(),
                    self.state.etcd_endpoints().join(",")
                ),
            );
        }
        for &host in &hosts {
            let _ = std::fs::remove_file(self.log_path(&control_log(host)));
            let pid = self.launch_control(host)?;
            let h = &self.state.hosts[usize::from(host - 1)];
            self.report(
                progress,
                "control",
                format!(
                    "quilt-mesh-control on {}:{} in {} (pid {pid}){}",
                    h.host_ip,
                    crate::layout::CONTROL_PORT,
                    h.netns,
                    if self.state.uses_etcd() {
                        ", over etcd"
                    } else {
                        ""
                    }
                ),
            );
        }
        Ok(())
    }

    /// Waits until a write through the lab's etcd members works (from host 1).
    pub(super) fn wait_etcd_serving(&mut self, timeout: Duration) -> Result<(), LabError> {
        let h1 = self.state.hosts[0].netns.clone();
        let endpoints = self.state.etcd_endpoints();
        self.wait_for("etcd to serve writes", timeout, |lab| {
            for h in lab
                .state
                .hosts
                .clone()
                .iter()
                .filter(|h| h.etcd_pid.is_some())
            {
                let pid = h_pid(&lab.state, h.index, |h| h.etcd_pid);
                lab.check_alive(pid, ETCD_BIN, &format!("h{}-etcd.log", h.index))?;
            }
            Ok(remote::etcd_write(&h1, &endpoints).err())
        })
    }

    /// Starts host `host`'s control-plane replica (same database or etcd, same URL every
    /// time) and waits until it answers `/health`; answers its pid.
    pub(super) fn launch_control(&mut self, host: u16) -> Result<u32, LabError> {
        let child = start_control_of(&mut self.state, host)?;
        let pid = child.id();
        self.children.push(child);
        let h = &self.state.hosts[usize::from(host - 1)];
        let netns = h.netns.clone();
        let scheme = if self.state.pki_dir.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{}:{}", h.host_ip, crate::layout::CONTROL_PORT);
        let tls = self.state.control_tls();
        self.wait_for("control plane /health", Duration::from_secs(20), |lab| {
            lab.check_alive(pid, CONTROL_BIN, &control_log(host))?;
            Ok(remote::control_health(&netns, &url, tls.clone()).err())
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
                "{} quilt-runtime answer on their sockets (data/hN/runtime/runtime.sock) and on {RUNTIME_ADDR} in their hosts",
                self.state.nodes
            ),
        );
        Ok(())
    }

    /// Waits until host `host`'s runtime accepts connections.
    pub(super) fn wait_runtime(&mut self, host: u16) -> Result<(), LabError> {
        let h = host_of(&self.state, host)?;
        let pid = h.runtime_pid.unwrap_or(0);
        let log = format!("h{host}-runtime.log");
        let socket = self.state.runtime_socket(host);
        self.wait_for(
            &format!("quilt-runtime in {}", h.netns),
            Duration::from_secs(20),
            |lab| {
                lab.check_alive(pid, RUNTIME_BIN, &log)?;
                Ok((!remote::socket_open(&socket))
                    .then(|| format!("nothing listens on {}", socket.display())))
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
                self.state.nodes,
                self.state.control_urls().join(",")
            ),
        );
        Ok(())
    }

    fn wait_registered(&mut self, progress: &mut dyn FnMut(&Progress)) -> Result<(), LabError> {
        let h1 = self.state.hosts[0].netns.clone();
        let urls = self.state.control_urls();
        let tls = self.state.control_tls();
        let hosts = self.state.hosts.clone();
        let timeout = self.converge_timeout;
        self.wait_for("registration of every node", timeout, |lab| {
            for h in &hosts {
                let pid = h_pid(&lab.state, h.index, |h| h.agent_pid);
                lab.check_alive(pid, AGENT_BIN, &format!("h{}-agent.log", h.index))?;
            }
            let list = match remote::list_nodes(&h1, &urls, tls.clone()) {
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
                match remote::runtime_subnet(&h.netns, &lab.state.runtime_address(h.index)) {
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
    pub(super) fn attach_container(&mut self, k: usize) -> Result<(), LabError> {
        let cni_binary = self.state.binaries_dir.join(CNI_BIN);
        let c = self.state.containers[k].clone();
        let host_ns = self.state.hosts[usize::from(c.host - 1)].netns.clone();
        let runtime = self.state.runtime_address(c.host);
        self.namespaces.push(OwnedNetns::create(&c.netns)?);
        let deadline = Instant::now() + Duration::from_secs(20);
        let result = loop {
            match cni::invoke(
                &cni_binary,
                "ADD",
                &host_ns,
                &runtime,
                &c.container_id,
                &c.netns,
            ) {
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
    pub(super) fn wait_for(
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

fn h_pid(state: &LabState, index: u16, f: impl Fn(&HostState) -> Option<u32>) -> u32 {
    state.host(index).and_then(f).unwrap_or(0)
}

/// 32 hex characters from the kernel's random source.
fn random_token() -> Result<String, LabError> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| LabError::setup("read /dev/urandom for the join token", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
