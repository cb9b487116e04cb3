//! The agent's loop: register, build the device, configure the runtime, then list and
//! watch the control plane, applying every peer change as it arrives and comparing the
//! whole picture with the kernel at every resync.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use ipnet::Ipv4Net;
use quilt_api::types::{EventType, NodeInfo, RegisterRequest, WatchEvent};
use quilt_kernel::overlay::{Overlay, VxlanSpec};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::Config;
use crate::control::{self, ControlClient, ControlError};
use crate::device::{self, DeviceChange};
use crate::metrics::Metrics;
use crate::peers::{self, Peer};
use crate::plan::{self, EntryOp};
use crate::runtime::{Runtime, RuntimeCallError};
use crate::state::{self, AgentState};

/// VXLAN over IPv4 adds 50 bytes (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// How often the agent checks that its device still exists, and retries failed changes.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long after a reconcile with failures (a refused route, say) it is tried again.
const FAILED_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the agent until `shutdown` completes. Kernel state and the registration stay
/// in place on exit unless `--leave-on-exit` is set.
pub async fn run<O: Overlay>(
    config: Config,
    kernel: O,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = state::load_or_create(&config.state_dir).with_context(|| {
        format!(
            "cannot load agent state from {}",
            config.state_dir.display()
        )
    })?;
    let underlay = match &config.underlay_interface {
        Some(name) => kernel
            .interface(name)
            .await?
            .with_context(|| format!("underlay interface {name} does not exist"))?,
        None => kernel
            .link_with_address(config.host_ip)
            .await?
            .with_context(|| {
                format!(
                    "no interface holds host ip {} (set --underlay-interface)",
                    config.host_ip
                )
            })?,
    };
    let (stop_tx, stop) = watch::channel(false);
    let shutdown_task = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let metrics = Arc::new(Metrics::new());
    let metrics_task = match config.metrics_addr {
        Some(addr) => {
            let listener = quilt_common::metrics_endpoint::bind(addr).await?;
            info!(metrics_addr = %addr, "serving metrics at /metrics");
            let mut rx = stop.clone();
            Some(tokio::spawn(quilt_common::metrics_endpoint::serve(
                listener,
                metrics.registry.clone(),
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };
    info!(
        host_ip = %config.host_ip, underlay = %underlay.name, vtep_mac = %state.vtep_mac,
        control_planes = ?config.control_planes, runtime = %config.runtime_addr,
        "quilt-mesh-agent starting"
    );
    let mut agent = Agent {
        control: control::client(&config)?,
        runtime: Runtime::new(&config.runtime_addr)?,
        spec_template: VxlanSpec {
            name: config.vxlan_interface.clone(),
            vni: config.vni,
            port: config.vxlan_port,
            local: config.host_ip,
            underlay: underlay.name.clone(),
            mtu: underlay.mtu.saturating_sub(VXLAN_OVERHEAD),
            mac: state.mac(),
        },
        underlay_index: underlay.index,
        config,
        kernel,
        metrics,
        state,
        nodes: BTreeMap::new(),
        applied: BTreeMap::new(),
        dirty: false,
        synced: false,
        retry_at: Instant::now(),
    };
    let result = agent.main_loop(stop).await;
    if result.is_ok() && agent.config.leave_on_exit {
        agent.leave().await;
    }
    shutdown_task.abort();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    if result.is_ok() {
        info!("quilt-mesh-agent stopped");
    }
    result
}

/// What woke the session loop.
enum Wake {
    Stop,
    Event(Option<Result<WatchEvent, ControlError>>),
    Heartbeat,
    Resync,
    Check,
}

/// Why a session ended.
enum SessionEnd {
    Stop,
    Reregister,
}

struct Agent<O> {
    config: Config,
    kernel: O,
    control: ControlClient,
    runtime: Runtime,
    metrics: Arc<Metrics>,
    state: AgentState,
    spec_template: VxlanSpec,
    underlay_index: u32,
    /// Every node as last seen on the control plane.
    nodes: BTreeMap<String, NodeInfo>,
    /// The peers whose entries and route are in place.
    applied: BTreeMap<String, Peer>,
    /// A change failed and the next check retries a full reconcile.
    dirty: bool,
    /// A reconcile has succeeded since start: later differences are repairs, not setup.
    synced: bool,
    /// When a reconcile that had failures may be tried again.
    retry_at: Instant,
}

impl<O: Overlay> Agent<O> {
    fn node_id(&self) -> &str {
        self.state.node_id.as_deref().unwrap_or_default()
    }

    fn subnet(&self) -> Option<Ipv4Net> {
        self.state.subnet
    }

    async fn main_loop(&mut self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        loop {
            if !self.register(&mut stop).await? {
                return Ok(());
            }
            if !self.prepare_node(&mut stop).await {
                return Ok(());
            }
            match self.session(&mut stop).await {
                SessionEnd::Stop => return Ok(()),
                SessionEnd::Reregister => continue,
            }
        }
    }

    /// Registers until a control plane accepts; answers false when stopped first.
    async fn register(&mut self, stop: &mut watch::Receiver<bool>) -> anyhow::Result<bool> {
        let request = RegisterRequest {
            hostname: self.config.hostname(),
            host_ip: self.config.host_ip.to_string(),
            cpu_cores: std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as u32),
            ram_mb: memory_mb(),
            vtep_mac: Some(self.state.vtep_mac.clone()),
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.control.register(&request).await {
                Ok(answer) => {
                    let node = answer.node;
                    if let Some(old) = self.state.subnet
                        && old != node.subnet
                    {
                        warn!(%old, new = %node.subnet, "the control plane leased this node another subnet");
                    }
                    info!(node_id = %node.node_id, subnet = %node.subnet, renewed = !answer.created, "registered with the control plane");
                    self.state.node_id = Some(node.node_id);
                    self.state.node_token = Some(answer.node_token);
                    self.state.subnet = Some(node.subnet);
                    state::save(&self.config.state_dir, &self.state)?;
                    return Ok(true);
                }
                Err(ControlError::Refused {
                    status, message, ..
                }) if status.is_client_error() => {
                    // A refusal will not change by retrying fast: say it loudly and wait.
                    warn!(%status, %message, "the control plane refused the registration");
                    backoff = Duration::from_secs(5);
                }
                Err(e) => debug!(error = %e, "registration failed; retrying"),
            }
            if sleep_or_stop(stop, backoff).await {
                return Ok(false);
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Builds the device and configures the runtime, retrying until both are done;
    /// answers false when stopped first.
    async fn prepare_node(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let Some(subnet) = self.subnet() else {
            return false;
        };
        loop {
            match self.ensure_device().await {
                Ok(_) => break,
                Err(e) => warn!(error = %e, "cannot set up the vxlan device; retrying"),
            }
            if sleep_or_stop(stop, Duration::from_secs(1)).await {
                return false;
            }
        }
        let mut warned = false;
        loop {
            let pause = match self.runtime.configure_subnet(subnet).await {
                Ok(()) => {
                    info!(%subnet, "runtime configured with the node subnet");
                    return true;
                }
                // The runtime answered no: retrying fast will not change that; say it
                // every time so the operator sees why the node does not join.
                Err(e @ RuntimeCallError::Refused { .. }) => {
                    warn!(error = %e, "the runtime refused the node subnet; retrying in 5 s");
                    Duration::from_secs(5)
                }
                Err(e) => {
                    if !warned {
                        warn!(error = %e, "cannot configure the runtime yet; retrying");
                        warned = true;
                    } else {
                        debug!(error = %e, "runtime still not configured");
                    }
                    Duration::from_millis(250)
                }
            };
            if sleep_or_stop(stop, pause).await {
                return false;
            }
        }
    }

    async fn ensure_device(&self) -> anyhow::Result<DeviceChange> {
        let subnet = self.subnet().context("no subnet leased yet")?;
        let address = Ipv4Net::new(subnet.network(), 32)?;
        Ok(device::ensure(
            &self.kernel,
            &self.spec_template,
            self.underlay_index,
            address,
        )
        .await?)
    }

    /// Lists, reconciles, then applies watch events until something ends the session.
    async fn session(&mut self, stop: &mut watch::Receiver<bool>) -> SessionEnd {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(CHECK_INTERVAL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let revision = match self.resync().await {
                Ok(revision) => revision,
                Err(e) => {
                    debug!(error = %e, "resync failed; retrying");
                    if sleep_or_stop(stop, Duration::from_millis(500)).await {
                        return SessionEnd::Stop;
                    }
                    continue;
                }
            };
            let events = match self.control.watch(revision).await {
                Ok(events) => events,
                Err(e) => {
                    self.metrics.watch_reconnects.inc();
                    debug!(error = %e, "cannot open the watch stream; listing again");
                    if sleep_or_stop(stop, Duration::from_millis(500)).await {
                        return SessionEnd::Stop;
                    }
                    continue;
                }
            };
            let mut events = std::pin::pin!(events);
            let resync_at = tokio::time::sleep(self.config.resync_interval);
            let mut resync_at = std::pin::pin!(resync_at);
            loop {
                let wake = tokio::select! {
                    _ = stop.wait_for(|s| *s) => Wake::Stop,
                    event = events.next() => Wake::Event(event),
                    _ = heartbeat.tick() => Wake::Heartbeat,
                    _ = &mut resync_at => Wake::Resync,
                    _ = check.tick() => Wake::Check,
                };
                match wake {
                    Wake::Stop => return SessionEnd::Stop,
                    Wake::Event(Some(Ok(event))) => {
                        if self.on_event(event).await {
                            return SessionEnd::Reregister;
                        }
                    }
                    Wake::Event(Some(Err(e))) => {
                        info!(error = %e, "watch stream broke; listing again");
                        self.metrics.watch_reconnects.inc();
                        break;
                    }
                    Wake::Event(None) => {
                        info!("watch stream ended; listing again");
                        self.metrics.watch_reconnects.inc();
                        break;
                    }
                    Wake::Heartbeat => {
                        if self.heartbeat().await {
                            return SessionEnd::Reregister;
                        }
                    }
                    Wake::Resync => break,
                    Wake::Check => self.check().await,
                }
            }
        }
    }

    /// Sends a heartbeat; answers true when the control plane no longer knows this node.
    async fn heartbeat(&self) -> bool {
        let token = self.state.node_token.clone().unwrap_or_default();
        match self.control.heartbeat(self.node_id(), &token).await {
            Ok(()) => false,
            Err(ControlError::UnknownNode(id)) => {
                warn!(node_id = %id, "the control plane no longer knows this node; registering again");
                true
            }
            Err(e @ ControlError::StaleToken(_)) => {
                warn!(error = %e, "registering again");
                true
            }
            Err(e) => {
                warn!(error = %e, "heartbeat failed");
                false
            }
        }
    }

    /// The periodic check: the device must exist, and failed changes are retried.
    async fn check(&mut self) {
        let gone = matches!(self.kernel.vxlan(&self.spec_template.name).await, Ok(None));
        if gone {
            warn!(device = %self.spec_template.name, "vxlan device is gone; rebuilding it and every peer on it");
        }
        if (gone || (self.dirty && Instant::now() >= self.retry_at))
            && let Err(e) = self.reconcile().await
        {
            debug!(error = %e, "reconcile failed; retrying");
        }
    }

    /// Lists every node and reconciles with the list; answers the revision to watch from.
    async fn resync(&mut self) -> Result<u64, ControlError> {
        let list = self.control.list().await?;
        self.nodes = list
            .nodes
            .into_iter()
            .map(|n| (n.node_id.clone(), n))
            .collect();
        if let Err(e) = self.reconcile().await {
            warn!(error = %e, "reconcile failed; retrying shortly");
        }
        Ok(list.revision)
    }

    /// Makes the kernel and the runtime match the node list: device, entries, routes.
    async fn reconcile(&mut self) -> anyhow::Result<()> {
        self.dirty = true;
        let mut repairs = 0u64;
        let change = self.ensure_device().await?;
        if change != DeviceChange::Adopted {
            repairs += 1;
            // The kernel dropped the runtime's routes with the old device.
            self.applied.clear();
        }
        let desired = peers::desired(self.nodes.values(), self.node_id());
        let device = &self.spec_template.name;
        let neighbours = self.kernel.neighbours(device).await?;
        let fdb = self.kernel.fdb(device).await?;
        let managed = self.runtime.managed_routes().await?;
        let entry_plan = plan::plan(&desired, &neighbours, &fdb);

        // Removals: routes first, then neighbours, then FDB entries. One failure (a route
        // the runtime refuses, say) is reported and retried later; it does not hold up
        // the other peers.
        let mut failures = 0u64;
        for destination in plan::stale_routes(&managed, &desired) {
            match self.runtime.remove_route(destination).await {
                Ok(()) => {
                    info!(%destination, "repair: removed the route of a node that is no longer a peer");
                    repairs += 1;
                }
                Err(e) => {
                    warn!(%destination, error = %e, "could not remove a stale route");
                    failures += 1;
                }
            }
        }
        for op in &entry_plan.removals {
            match self.apply_entry(op).await {
                Ok(()) => {
                    info!(operation = ?op, "repair: removed a stale entry");
                    repairs += 1;
                }
                Err(e) => {
                    warn!(operation = ?op, error = %e, "could not remove a stale entry");
                    failures += 1;
                }
            }
        }
        self.applied.retain(|id, _| desired.contains_key(id));

        // Additions: entries, then the route, for each peer.
        for op in &entry_plan.additions {
            match self.apply_entry(op).await {
                Ok(()) => repairs += 1,
                Err(e) => {
                    warn!(operation = ?op, error = %e, "could not add an entry");
                    failures += 1;
                }
            }
        }
        for peer in desired.values() {
            if let Err(e) = self
                .runtime
                .inject_route(peer.subnet, device, peer.gateway())
                .await
            {
                warn!(node_id = %peer.node_id, subnet = %peer.subnet, error = %e, "could not get the route to a peer");
                failures += 1;
                continue;
            }
            if !managed.contains(&peer.subnet) {
                repairs += 1;
            }
            if self
                .applied
                .insert(peer.node_id.clone(), peer.clone())
                .is_none()
            {
                log_peer_added(peer);
            }
        }
        self.metrics.peers.set(self.applied.len() as i64);
        if !self.synced {
            info!(peers = desired.len(), failures, "initial sync done");
        } else if repairs > 0 {
            self.metrics.repairs.inc_by(repairs);
            info!(
                repairs,
                failures,
                peers = desired.len(),
                "reconcile repaired differences"
            );
        }
        self.synced = true;
        self.dirty = failures > 0;
        if self.dirty {
            self.retry_at = Instant::now() + FAILED_RETRY_INTERVAL;
        }
        Ok(())
    }

    async fn apply_entry(&self, op: &EntryOp) -> Result<(), quilt_kernel::KernelError> {
        let device = &self.spec_template.name;
        match op {
            EntryOp::SetNeighbour(n) => self.kernel.replace_neighbour(device, *n).await,
            EntryOp::SetFdb(f) => self.kernel.replace_fdb(device, *f).await,
            EntryOp::DeleteNeighbour(ip) => self.kernel.delete_neighbour(device, *ip).await,
            EntryOp::DeleteFdb(f) => self.kernel.delete_fdb(device, *f).await,
        }
    }

    /// Applies one watch event; answers true when this node itself was deleted.
    async fn on_event(&mut self, event: WatchEvent) -> bool {
        let started = Instant::now();
        let node = event.node;
        if node.node_id == self.node_id() {
            if event.kind == EventType::Deleted {
                warn!(node_id = %node.node_id, "this node was deleted from the control plane; registering again");
                return true;
            }
            self.nodes.insert(node.node_id.clone(), node);
            return false;
        }
        let id = node.node_id.clone();
        let wanted = match event.kind {
            EventType::Deleted => None,
            _ => peers::peer_of(&node, self.node_id()),
        };
        if event.kind == EventType::Deleted {
            self.nodes.remove(&id);
        } else {
            self.nodes.insert(id.clone(), node);
        }
        let previous = self.applied.get(&id).cloned();
        let result = match (&previous, &wanted) {
            (Some(old), Some(new)) if old == new => Ok(()),
            (old, Some(new)) => {
                let mut result = Ok(());
                if let Some(old) = old {
                    result = self.remove_peer(old).await;
                }
                if result.is_ok() {
                    result = self.add_peer(new).await;
                }
                result
            }
            (Some(old), None) => self.remove_peer(old).await,
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => {
                if previous.as_ref() != wanted.as_ref() {
                    self.metrics
                        .peer_convergence_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
            }
            Err(e) => {
                warn!(node_id = %id, error = %e, "could not apply a peer change; retrying with a full reconcile");
                self.dirty = true;
            }
        }
        self.metrics.peers.set(self.applied.len() as i64);
        false
    }

    /// Neighbour, FDB entry, then route.
    async fn add_peer(&mut self, peer: &Peer) -> anyhow::Result<()> {
        let device = &self.spec_template.name;
        self.kernel
            .replace_neighbour(device, peer.neighbour())
            .await?;
        self.kernel.replace_fdb(device, peer.fdb()).await?;
        self.runtime
            .inject_route(peer.subnet, device, peer.gateway())
            .await?;
        self.applied.insert(peer.node_id.clone(), peer.clone());
        log_peer_added(peer);
        Ok(())
    }

    /// Route, neighbour, then FDB entry.
    async fn remove_peer(&mut self, peer: &Peer) -> anyhow::Result<()> {
        let device = &self.spec_template.name;
        self.runtime.remove_route(peer.subnet).await?;
        self.kernel.delete_neighbour(device, peer.gateway()).await?;
        self.kernel.delete_fdb(device, peer.fdb()).await?;
        self.applied.remove(&peer.node_id);
        info!(node_id = %peer.node_id, hostname = %peer.hostname, subnet = %peer.subnet, "peer removed");
        Ok(())
    }

    /// `--leave-on-exit`: routes, device (and every entry on it), then the registration.
    async fn leave(&mut self) {
        let peers: Vec<Peer> = self.applied.values().cloned().collect();
        for peer in peers {
            if let Err(e) = self.runtime.remove_route(peer.subnet).await {
                warn!(subnet = %peer.subnet, error = %e, "could not remove route while leaving");
            }
        }
        let name = &self.spec_template.name;
        match self.kernel.vxlan(name).await {
            Ok(Some(device)) if device::is_ours(&device, &self.spec_template) => {
                match self.kernel.delete_vxlan(name).await {
                    Ok(_) => info!(device = %name, "vxlan device removed"),
                    Err(e) => warn!(error = %e, "could not remove the vxlan device while leaving"),
                }
            }
            Ok(Some(_)) => warn!(device = %name, "not removing a link this agent did not make"),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "could not look at the vxlan device while leaving"),
        }
        if let (Some(id), Some(token)) = (self.state.node_id.clone(), self.state.node_token.clone())
        {
            match self.control.leave(&id, &token).await {
                Ok(()) => info!(node_id = %id, "left the mesh"),
                Err(e) => warn!(error = %e, "could not deregister while leaving"),
            }
        }
    }
}

fn log_peer_added(peer: &Peer) {
    info!(
        node_id = %peer.node_id, hostname = %peer.hostname, subnet = %peer.subnet,
        host_ip = %peer.host_ip, vtep_mac = %peer.vtep_mac, "peer added"
    );
}

/// Sleeps for `duration`; answers true if asked to stop meanwhile.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    let stopped = tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    stopped
}

/// Total memory in MiB, from /proc/meminfo.
fn memory_mb() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024)
}
