//! The agent's wiring: [`run`] builds the `Agent` from the flags and the kernel, then
//! drives it. The rooms: `session` (register, prepare the node, the session loop and
//! heartbeats), `feed` (the watch stream, polling, and reopening with backoff), `apply`
//! (observe, plan, and the one executor for resyncs and watch events alike), `firewall`
//! (the nftables table `inet quilt` and its marked rules) and `leave`
//! (`--leave-on-exit`).

mod apply;
mod feed;
mod firewall;
mod leave;
mod session;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ipnet::Ipv4Net;
use quilt_api::types::NodeCondition;
use quilt_common::metrics_endpoint::{self, Health};
use quilt_kernel::firewall::Firewall;
use quilt_kernel::overlay::{Overlay, VxlanSpec};
use tokio::sync::watch;
use tracing::info;

use crate::Config;
use crate::control::{self, ControlClient, LocalVxlan, PeerReader};
use crate::metrics::Metrics;
use crate::peers::Peer;
use crate::runtime::RuntimeClient;
use crate::state::{self, AgentState};

/// VXLAN over IPv4 adds 50 bytes (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// How often the agent checks that its device still exists, and retries failed changes.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long after a reconcile with failures (a refused route, say) it is tried again.
const FAILED_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the agent until `shutdown` completes, with `kernel` for the device and its
/// entries and `firewall` for the nftables table. Kernel state and the registration stay
/// in place on exit unless `--leave-on-exit` is set.
pub async fn run<O: Overlay, F: Firewall>(
    config: Config,
    kernel: O,
    firewall: F,
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
    let health = Health::default();
    let metrics_endpoint = metrics_endpoint::spawn_with_health(
        config.metrics_addr,
        metrics.registry.clone(),
        health.clone(),
        stop.clone(),
    )
    .await?;
    // The overlay MTU: as set, else the underlay's less the VXLAN overhead.
    let mtu = config
        .mtu
        .unwrap_or_else(|| underlay.mtu.saturating_sub(VXLAN_OVERHEAD));
    info!(
        host_ip = %config.host_ip, underlay = %underlay.name, underlay_mtu = underlay.mtu,
        overlay_mtu = mtu, mtu_set = config.mtu.is_some(), vtep_mac = %state.vtep_mac,
        control_planes = ?config.control_planes, runtime = %config.runtime_addr,
        "quilt-mesh-agent starting"
    );
    let local_vxlan = LocalVxlan {
        port: config.vxlan_port,
        vni: config.vni,
    };
    let flood_all = config.original_data_plane;
    let mut agent = Agent {
        control: control::client(&config, config.join_token()?)?,
        runtime: RuntimeClient::new(config.runtime_address())?,
        spec_template: VxlanSpec {
            name: config.vxlan_interface.clone(),
            vni: config.vni,
            port: config.vxlan_port,
            local: config.host_ip,
            underlay: underlay.name.clone(),
            mtu,
            mac: state.vtep_mac,
        },
        underlay_index: underlay.index,
        config,
        kernel,
        firewall,
        firewall_members: None,
        metrics,
        state,
        registered: None,
        peers: BTreeMap::new(),
        peer_reader: PeerReader::new(local_vxlan, flood_all),
        applied: BTreeMap::new(),
        dirty: false,
        synced: false,
        retry_at: Instant::now(),
        health,
        held: None,
        polling_said: false,
        heartbeats_failed: 0,
    };
    let result = agent.main_loop(stop).await;
    if result.is_ok() && agent.config.leave_on_exit {
        agent.leave().await;
    } else if result.is_ok() && agent.config.deregister_on_exit {
        agent.deregister().await;
    }
    shutdown_task.abort();
    metrics_endpoint.finish().await;
    if result.is_ok() {
        info!("quilt-mesh-agent stopped");
    }
    Ok(result?)
}

/// What a control plane granted this node: who it is, its token, its subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub node_id: String,
    pub token: String,
    pub subnet: Ipv4Net,
    /// The cluster CIDR: `--cluster-cidr`, else the control plane's answer, else the default.
    pub cluster_cidr: Ipv4Net,
}

struct Agent<O, F> {
    config: Config,
    kernel: O,
    firewall: F,
    /// The members set as last applied; `None` when not known (before the first
    /// reconcile, or after a change failed).
    firewall_members: Option<std::collections::BTreeSet<std::net::Ipv4Addr>>,
    control: ControlClient,
    runtime: RuntimeClient,
    metrics: Arc<Metrics>,
    state: AgentState,
    spec_template: VxlanSpec,
    underlay_index: u32,
    /// The last registration a control plane accepted.
    registered: Option<Registered>,
    /// Every peer as last seen on the control plane, parsed.
    peers: BTreeMap<String, Peer>,
    /// Reads nodes into `peers`, reporting each refused node once.
    peer_reader: PeerReader,
    /// The peers whose entries and route are in place.
    applied: BTreeMap<String, Peer>,
    /// A change failed and the next check retries a full reconcile.
    dirty: bool,
    /// A reconcile has succeeded since start: later differences are repairs, not setup.
    synced: bool,
    /// When a reconcile that had failures may be tried again.
    retry_at: Instant,
    /// What `/health` answers.
    health: Health,
    /// Why the node cannot join yet (the runtime keeps another subnet), while it is so.
    held: Option<Held>,
    /// It was said that the control plane has no watch stream (said once).
    polling_said: bool,
    /// Heartbeats failed in a row (no replica answered, or all refused).
    heartbeats_failed: u64,
}

/// A node held out of the mesh: its runtime refuses the leased subnet. The agent
/// reports `condition` on heartbeats and in `/health`, and registers again every
/// [`HELD_RETRY`] asking for `wanted_subnet` (the runtime's), until one side gives way.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    condition: NodeCondition,
    /// The subnet the runtime keeps, when it said which.
    wanted_subnet: Option<Ipv4Net>,
}

/// How often a held node registers again and retries its runtime.
const HELD_RETRY: Duration = Duration::from_secs(5);

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
