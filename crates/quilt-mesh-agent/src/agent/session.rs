//! One life of the agent against the control plane: register, prepare the node (device
//! and runtime), then list, watch and heartbeat until the session ends.

use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::Ipv4Net;
use quilt_api::types::{EventType, NodeCondition, RegisterRequest, WatchEvent};
use quilt_kernel::firewall::Firewall;
use quilt_kernel::overlay::Overlay;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::apply::Trigger;
use super::feed::{Events, Feed};
use super::{Agent, CHECK_INTERVAL, HELD_RETRY, Held, Registered, sleep_or_stop};
use crate::control::ControlError;
use crate::device::{self, DeviceChange, DeviceError};
use crate::error::AgentError;
use crate::plan;
use crate::runtime::RuntimeCallError;
use crate::state;

/// What woke the session loop.
enum Wake {
    Stop,
    Event(Option<Result<WatchEvent, ControlError>>),
    /// Time to send a heartbeat.
    Heartbeat,
    /// The heartbeat in flight was answered (or failed).
    Beaten(Result<(), ControlError>),
    Resync,
    Check,
    /// Time to list again: the control plane has no watch stream.
    Poll,
    /// Time to open the watch stream again.
    Reopen,
}

/// How soon a periodic resync that could not list is tried again.
const RESYNC_RETRY: Duration = Duration::from_secs(5);

/// How often the node list is read from a control plane that has no watch stream (the
/// original one); the watch is tried again at every full resync.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A heartbeat in flight: it runs beside the loop, so a replica that takes the failover
/// timeout to be left holds up no watch event.
type Beat = std::pin::Pin<Box<dyn Future<Output = Result<(), ControlError>> + Send>>;

/// The answer to the heartbeat in flight; never, while there is none.
async fn beaten(beat: &mut Option<Beat>) -> Result<(), ControlError> {
    match beat {
        Some(beat) => beat.await,
        None => std::future::pending().await,
    }
}

/// The next event of `events`; never, while there is no stream.
async fn next_event(events: &mut Events) -> Option<Result<WatchEvent, ControlError>> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// Why a session ended.
enum SessionEnd {
    Stop,
    Reregister,
}

/// How preparing the node ended.
enum Prepared {
    /// The device and the runtime are set for the leased subnet.
    Ready,
    /// The runtime refused the subnet: the node is held; register again.
    Held,
    Stopped,
}

impl<O: Overlay, F: Firewall> Agent<O, F> {
    pub(super) async fn main_loop(
        &mut self,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        loop {
            let Some(registered) = self.register(&mut stop).await? else {
                return Ok(());
            };
            match self.prepare_node(&registered, &mut stop).await {
                Prepared::Ready => {}
                Prepared::Held => continue,
                Prepared::Stopped => return Ok(()),
            }
            match self.session(&registered, &mut stop).await {
                SessionEnd::Stop => return Ok(()),
                SessionEnd::Reregister => continue,
            }
        }
    }

    /// Registers until a control plane accepts; answers `None` when stopped first.
    async fn register(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<Registered>, AgentError> {
        let request = RegisterRequest {
            hostname: self.config.hostname(),
            host_ip: self.config.host_ip.to_string(),
            cpu_cores: std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as u32),
            ram_mb: memory_mb(),
            vtep_mac: (!self.config.original_data_plane).then(|| self.state.vtep_mac.to_string()),
            // Only a held node asks for a subnet; otherwise the body is the original one.
            subnet: self
                .held
                .as_ref()
                .and_then(|h| h.wanted_subnet)
                .map(|s| s.to_string()),
            vxlan_port: Some(self.spec_template.port),
            vni: Some(self.spec_template.vni),
        };
        let mut backoff = Duration::from_millis(100);
        let mut failures = FailureLog::default();
        loop {
            match self.control.register(&request).await {
                Ok(answer) => {
                    let node = answer.node;
                    let same = self.state.subnet == Some(node.subnet)
                        && self.state.node_id.as_deref() == Some(node.node_id.as_str());
                    if let Some(old) = self.state.subnet
                        && old != node.subnet
                    {
                        warn!(%old, new = %node.subnet, "the control plane leased this node another subnet");
                    }
                    if same && self.held.is_some() {
                        // A held node registers every few seconds; say only what changes.
                        debug!(node_id = %node.node_id, subnet = %node.subnet, "registered again while held");
                    } else {
                        info!(node_id = %node.node_id, subnet = %node.subnet, renewed = !answer.created, "registered with the control plane");
                    }
                    let registered = Registered {
                        node_id: node.node_id,
                        token: answer.node_token,
                        subnet: node.subnet,
                        cluster_cidr: self
                            .config
                            .cluster_cidr
                            .or(answer.cluster_cidr)
                            .unwrap_or_else(|| {
                                quilt_common::defaults::CLUSTER_CIDR
                                    .parse()
                                    .expect("the default cluster cidr parses")
                            }),
                    };
                    self.state.node_id = Some(registered.node_id.clone());
                    self.state.node_token = Some(registered.token.clone());
                    self.state.subnet = Some(registered.subnet);
                    state::save(&self.config.state_dir, &self.state)?;
                    self.registered = Some(registered.clone());
                    return Ok(Some(registered));
                }
                Err(e) => {
                    // An answer that is an error (a refusal, a body that does not parse)
                    // will not change by retrying fast, and a control plane that made a
                    // node for an answer we cannot read would make another each time.
                    let answered = matches!(
                        e,
                        ControlError::Refused { .. } | ControlError::BadAnswer { .. }
                    );
                    let (floor, ceiling) = if answered { (5, 30) } else { (0, 5) };
                    backoff = backoff.max(Duration::from_secs(floor));
                    failures.record(&e.to_string(), backoff);
                    if sleep_or_stop(stop, backoff).await {
                        return Ok(None);
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(ceiling));
                }
            }
        }
    }

    /// Builds the device and configures the runtime, retrying until both are done or the
    /// runtime refuses the subnet (then the node is held: see [`Agent::hold`]).
    async fn prepare_node(
        &mut self,
        registered: &Registered,
        stop: &mut watch::Receiver<bool>,
    ) -> Prepared {
        let subnet = registered.subnet;
        loop {
            match self.ensure_device(subnet).await {
                Ok(_) => break,
                Err(e) => warn!(error = %e, "cannot set up the vxlan device; retrying"),
            }
            if sleep_or_stop(stop, Duration::from_secs(1)).await {
                return Prepared::Stopped;
            }
        }
        let mut warned = false;
        loop {
            let held = match self.runtime.configure_subnet(subnet).await {
                Ok(()) => {
                    info!(%subnet, "runtime configured with the node subnet");
                    self.release();
                    return Prepared::Ready;
                }
                Err(RuntimeCallError::SubnetInUse { current, message }) => Held {
                    condition: NodeCondition {
                        reason: "SubnetInUse".into(),
                        message: format!(
                            "the control plane leased {subnet}, but the runtime keeps {current} for the containers it runs ({message}); \
                             the runtime never re-addresses running containers: remove them, or delete the node that holds {current}, \
                             and this node joins on its own"
                        ),
                    },
                    wanted_subnet: Some(current),
                },
                // The runtime answered no: retrying fast will not change that.
                Err(e @ RuntimeCallError::Refused { .. }) => Held {
                    condition: NodeCondition {
                        reason: "RuntimeRefusedSubnet".into(),
                        message: format!("the runtime refused node subnet {subnet}: {e}"),
                    },
                    wanted_subnet: None,
                },
                Err(e) => {
                    if !warned {
                        warn!(error = %e, "cannot configure the runtime yet; retrying");
                        warned = true;
                    } else {
                        debug!(error = %e, "runtime still not configured");
                    }
                    if sleep_or_stop(stop, Duration::from_millis(250)).await {
                        return Prepared::Stopped;
                    }
                    continue;
                }
            };
            return self.hold(registered, held, stop).await;
        }
    }

    /// Holds the node out of the mesh for `held`: says so (once, loudly, and in
    /// `/health`), reports it on a heartbeat, then waits [`HELD_RETRY`] before the caller
    /// registers again (asking for the runtime's subnet) and retries the runtime.
    async fn hold(
        &mut self,
        registered: &Registered,
        held: Held,
        stop: &mut watch::Receiver<bool>,
    ) -> Prepared {
        if self.held.as_ref() != Some(&held) {
            warn!(
                reason = %held.condition.reason,
                "node held out of the mesh: {}; retrying every {} s",
                held.condition.message,
                HELD_RETRY.as_secs()
            );
        }
        self.health.degraded(format!(
            "{}: {}",
            held.condition.reason, held.condition.message
        ));
        self.held = Some(held);
        // A control plane that no longer knows the node is met by the next registration.
        let _ = self.heartbeat(registered).await;
        if sleep_or_stop(stop, HELD_RETRY).await {
            return Prepared::Stopped;
        }
        Prepared::Held
    }

    /// Ends a hold once the runtime took the subnet; the next heartbeat clears the
    /// condition on the control plane.
    fn release(&mut self) {
        if let Some(held) = self.held.take() {
            info!(reason = %held.condition.reason, "the node is no longer held; joining the mesh");
            self.health.healthy();
        }
    }

    /// Makes the device right for `subnet` (its `.0/32` on the device).
    pub(super) async fn ensure_device(&self, subnet: Ipv4Net) -> Result<DeviceChange, DeviceError> {
        let address = Ipv4Net::from(subnet.network());
        device::ensure(
            &self.kernel,
            &self.spec_template,
            self.underlay_index,
            address,
        )
        .await
    }

    /// Lists, reconciles, then applies watch events until something ends the session.
    /// Heartbeats go on whatever the watch does. A watch that breaks or goes silent is
    /// opened again (the client moves to the next replica) from the last revision seen,
    /// so nothing on the node changes; only a revision the history no longer holds (410)
    /// or the periodic resync lists again. Failures to list or watch are retried with a
    /// bounded backoff and change nothing in the kernel.
    async fn session(
        &mut self,
        registered: &Registered,
        stop: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(CHECK_INTERVAL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut feed = Feed::default();
        let mut beat: Option<Beat> = None;
        let resync_at = tokio::time::sleep(self.config.resync_interval);
        let mut resync_at = std::pin::pin!(resync_at);
        let reopen_at = tokio::time::sleep(Duration::ZERO);
        let mut reopen_at = std::pin::pin!(reopen_at);
        loop {
            let wake = tokio::select! {
                _ = stop.wait_for(|s| *s) => Wake::Stop,
                event = next_event(&mut feed.events) => Wake::Event(event),
                _ = poll.tick(), if feed.polling => Wake::Poll,
                () = &mut reopen_at, if feed.closed() => Wake::Reopen,
                _ = heartbeat.tick(), if beat.is_none() => Wake::Heartbeat,
                result = beaten(&mut beat) => Wake::Beaten(result),
                () = &mut resync_at => Wake::Resync,
                _ = check.tick() => Wake::Check,
            };
            match wake {
                Wake::Stop => return SessionEnd::Stop,
                Wake::Reopen => {
                    let retry_in = self.open_feed(registered, &mut feed).await;
                    if feed.polling {
                        poll.reset();
                    }
                    if let Some(wait) = retry_in {
                        reopen_at.as_mut().reset(tokio::time::Instant::now() + wait);
                    }
                    if feed.events.is_some() {
                        feed.replica = Some(self.control.preferred_url().to_string());
                    }
                }
                Wake::Event(Some(Ok(event))) => {
                    feed.since = Some(event.revision);
                    if self.on_event(registered, event).await {
                        return SessionEnd::Reregister;
                    }
                }
                Wake::Event(end) => {
                    let wait = feed.broke(end.and_then(Result::err));
                    self.metrics.watch_reconnects.inc();
                    reopen_at.as_mut().reset(tokio::time::Instant::now() + wait);
                }
                Wake::Heartbeat => beat = Some(self.start_heartbeat(registered)),
                Wake::Beaten(result) => {
                    beat = None;
                    let answered = result.is_ok();
                    if self.heartbeat_answered(result) {
                        return SessionEnd::Reregister;
                    }
                    // Heartbeats left the watch's replica (it stopped answering, or
                    // answered 503): the watch follows now, from the last revision, rather
                    // than after three silent keepalive intervals.
                    let now_at = self.control.preferred_url();
                    if answered
                        && feed.events.is_some()
                        && feed.replica.as_deref().is_some_and(|r| r != now_at)
                    {
                        info!(from = ?feed.replica, to = %now_at, since = ?feed.since, "heartbeats moved to another replica; moving the watch there");
                        feed.restart();
                        self.metrics.watch_reconnects.inc();
                        reopen_at.as_mut().reset(tokio::time::Instant::now());
                    }
                }
                Wake::Resync => {
                    // List and compare; on success watch again from the list's revision,
                    // so no event older than the list is applied after it.
                    let next = match self.resync(registered).await {
                        Ok(revision) => {
                            feed.restart_from(revision);
                            reopen_at.as_mut().reset(tokio::time::Instant::now());
                            self.config.resync_interval
                        }
                        Err(e) => {
                            warn!(error = %e, "cannot list the nodes for the periodic resync; keeping the current view and trying again");
                            RESYNC_RETRY.min(self.config.resync_interval)
                        }
                    };
                    resync_at.as_mut().reset(tokio::time::Instant::now() + next);
                }
                Wake::Check => self.check(registered).await,
                Wake::Poll => match self.poll(registered).await {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!(node_id = %registered.node_id, "this node is no longer listed by the control plane; registering again");
                        return SessionEnd::Reregister;
                    }
                    Err(e) => warn!(error = %e, "cannot list the nodes; trying again"),
                },
            }
        }
    }

    /// Opens the watch from `feed.since` (listing and reconciling first when there is
    /// none); answers when to try again if it is not open, or `None` when it is (or the
    /// control plane has no watch stream: polling).
    async fn open_feed(&mut self, registered: &Registered, feed: &mut Feed) -> Option<Duration> {
        let since = match feed.since {
            Some(since) => since,
            None => match self.resync(registered).await {
                Ok(revision) => {
                    feed.since = Some(revision);
                    revision
                }
                Err(e) => return Some(feed.failed("list the nodes", &e)),
            },
        };
        match self.control.watch(since).await {
            Ok(events) => {
                feed.opened(Box::pin(events), since);
                None
            }
            Err(ControlError::Refused { status, url, .. }) if status.as_u16() == 404 => {
                if !self.polling_said {
                    warn!(%url, "the control plane has no watch stream (404, as the original one); polling the node list every {} s instead", POLL_INTERVAL.as_secs());
                    self.polling_said = true;
                }
                feed.polling = true;
                None
            }
            Err(ControlError::Gone(revision)) => {
                info!(
                    revision,
                    "the watch history no longer holds the last revision seen; listing again"
                );
                feed.since = None;
                Some(Duration::ZERO)
            }
            Err(e) => Some(feed.failed("open the watch stream", &e)),
        }
    }

    /// Sends a heartbeat and waits for it; answers true when the control plane no
    /// longer knows this node (see [`Agent::heartbeat_answered`]).
    async fn heartbeat(&mut self, registered: &Registered) -> bool {
        let result = self.start_heartbeat(registered).await;
        self.heartbeat_answered(result)
    }

    /// A heartbeat for `registered`, with the node's condition if it is held, to be
    /// awaited beside the session loop.
    fn start_heartbeat(&self, registered: &Registered) -> Beat {
        let control = self.control.clone();
        let (id, token) = (registered.node_id.clone(), registered.token.clone());
        let condition = self.held.as_ref().map(|h| h.condition.clone());
        Box::pin(async move { control.heartbeat(&id, &token, condition.as_ref()).await })
    }

    /// Reads a heartbeat's answer; true when the control plane no longer knows this node.
    /// Any other failure (no replica answers, 503 from all) keeps the session and
    /// everything on the node: it is said once, and again when heartbeats get through.
    fn heartbeat_answered(&mut self, result: Result<(), ControlError>) -> bool {
        match result {
            Ok(()) => {
                if self.heartbeats_failed > 0 {
                    info!(
                        failed = self.heartbeats_failed,
                        "heartbeats get through again"
                    );
                    self.heartbeats_failed = 0;
                }
                false
            }
            Err(ControlError::UnknownNode(id)) => {
                warn!(node_id = %id, "the control plane no longer knows this node; registering again");
                true
            }
            Err(e @ ControlError::StaleToken(_)) => {
                warn!(error = %e, "registering again");
                true
            }
            Err(e) => {
                self.heartbeats_failed += 1;
                if self.heartbeats_failed == 1 {
                    warn!(error = %e, "heartbeat failed; routes and the device stay as they are, retrying every interval");
                } else {
                    debug!(error = %e, failed = self.heartbeats_failed, "heartbeat failed again");
                }
                false
            }
        }
    }

    /// The periodic check: the device must exist, and failed changes are retried.
    async fn check(&mut self, registered: &Registered) {
        let gone = matches!(self.kernel.vxlan(&self.spec_template.name).await, Ok(None));
        if gone {
            warn!(device = %self.spec_template.name, "vxlan device is gone; rebuilding it and every peer on it");
        }
        if (gone || (self.dirty && Instant::now() >= self.retry_at))
            && let Err(e) = self.reconcile(registered).await
        {
            debug!(error = %e, "reconcile failed; retrying");
        }
    }

    /// Lists every node and reconciles with the list; answers the revision to watch from.
    async fn resync(&mut self, registered: &Registered) -> Result<u64, ControlError> {
        let list = self.control.list().await?;
        self.peers = self.peer_reader.peers_of(&list.nodes, &registered.node_id);
        if let Err(e) = self.reconcile(registered).await {
            warn!(error = %e, "reconcile failed; retrying shortly");
        }
        Ok(list.revision)
    }

    /// Lists the nodes of a control plane without a watch stream, and reconciles when
    /// the peers changed (or a change is still to be retried). Answers whether this node
    /// is still listed.
    async fn poll(&mut self, registered: &Registered) -> Result<bool, ControlError> {
        let list = self.control.list().await?;
        let listed = list.nodes.iter().any(|n| n.node_id == registered.node_id);
        let peers = self.peer_reader.peers_of(&list.nodes, &registered.node_id);
        if peers != self.peers || self.dirty {
            self.peers = peers;
            if let Err(e) = self.reconcile(registered).await {
                warn!(error = %e, "reconcile failed; retrying shortly");
            }
        }
        Ok(listed)
    }

    /// Applies one watch event as the plan for its one peer; answers true when this
    /// node itself was deleted.
    async fn on_event(&mut self, registered: &Registered, event: WatchEvent) -> bool {
        let started = Instant::now();
        let node = event.node;
        if node.node_id == registered.node_id {
            if event.kind == EventType::Deleted {
                warn!(node_id = %node.node_id, "this node was deleted from the control plane; registering again");
                return true;
            }
            return false;
        }
        let id = node.node_id.clone();
        let wanted = match event.kind {
            EventType::Deleted => {
                self.peer_reader.forget(&id);
                None
            }
            _ => self.peer_reader.peer_of(&node, &registered.node_id),
        };
        match &wanted {
            Some(peer) => self.peers.insert(id.clone(), peer.clone()),
            None => self.peers.remove(&id),
        };
        // The allow-list follows the peers in the same step: a joining node's VXLAN is
        // accepted before its route is in place, a gone one's dropped before its route goes.
        if let Err(e) = self.sync_members().await {
            warn!(node_id = %id, error = %e, "could not update the vxlan allow-list; retrying with a full reconcile");
            self.dirty = true;
            self.retry_at = Instant::now();
        }
        let previous = self.applied.get(&id).cloned();
        if previous == wanted {
            return false;
        }
        let device = &self.spec_template.name;
        let scope = plan::one(wanted.as_ref());
        let plan = plan::plan(
            &scope,
            &plan::observed_for(previous.as_ref(), device),
            device,
        );
        let outcome = self.apply(&plan, &scope, Trigger::Event).await;
        if outcome.failures == 0 {
            self.metrics
                .peer_convergence_seconds
                .observe(started.elapsed().as_secs_f64());
        } else {
            warn!(node_id = %id, failures = outcome.failures, "could not apply a peer change; retrying with a full reconcile");
            self.dirty = true;
        }
        self.metrics.count_peers(&self.applied);
        false
    }
}

/// Says why registrations fail, at warn level: the first failure, every new reason, and
/// a reminder (with the count) at most once a minute while the same reason goes on.
#[derive(Default)]
struct FailureLog {
    last: Option<String>,
    repeats: u64,
    said_at: Option<Instant>,
}

impl FailureLog {
    fn record(&mut self, error: &str, retry_in: Duration) {
        let same = self.last.as_deref() == Some(error);
        self.repeats = if same { self.repeats + 1 } else { 1 };
        let due = self
            .said_at
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
        if !same || due {
            warn!(
                error,
                attempts = self.repeats,
                retry_in_ms = retry_in.as_millis() as u64,
                "registration failed; retrying"
            );
            self.said_at = Some(Instant::now());
        } else {
            debug!(error, attempts = self.repeats, "registration failed again");
        }
        self.last = Some(error.to_string());
    }
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
