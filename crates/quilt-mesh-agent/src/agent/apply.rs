//! Decide, then apply: [`Agent::reconcile`] observes the device and the runtime and
//! plans every peer; [`Agent::apply`] is the one executor, for a full resync and for a
//! single watch event (the plan for one peer) alike. Route additions go to the runtime
//! as one `InjectRoutes` call; a peer whose entries failed gets no route until retried.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use ipnet::Ipv4Net;
use quilt_kernel::KernelError;
use quilt_kernel::firewall::Firewall;
use quilt_kernel::overlay::Overlay;
use tracing::{debug, info, warn};

use super::{Agent, FAILED_RETRY_INTERVAL, Registered};
use crate::device::DeviceChange;
use crate::error::AgentError;
use crate::peers::Peer;
use crate::plan::{self, EntryOp, Observed, PeerPlan};
use crate::runtime::RouteRequest;

/// What made a plan: the wording of the logs differs, the order of changes does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trigger {
    /// A full resync: every change is a repair of something the watch missed.
    Resync,
    /// One watch event.
    Event,
}

/// What an executed plan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outcome {
    /// Changes made.
    pub changes: u64,
    /// Changes that failed (each logged); they are retried by a later reconcile.
    pub failures: u64,
}

impl<O: Overlay, F: Firewall> Agent<O, F> {
    /// Makes the kernel and the runtime match the peers: device, entries, routes.
    pub(super) async fn reconcile(&mut self, registered: &Registered) -> Result<(), AgentError> {
        self.dirty = true;
        let mut repairs = 0u64;
        let change = self.ensure_device(registered.subnet).await?;
        let device = &self.spec_template.name;
        let mut observed = Observed {
            neighbours: self.kernel.neighbours(device).await?,
            fdb: self.kernel.fdb(device).await?,
            routes: self.runtime.managed_routes().await?,
        };
        if change != DeviceChange::Adopted {
            repairs += 1;
            // The kernel dropped the runtime's routes with the old device.
            self.applied.clear();
            for route in &mut observed.routes {
                route.in_kernel = false;
            }
        }
        match self.reconcile_firewall(registered).await {
            Ok(changes) if self.synced => repairs += changes,
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "could not reconcile the nftables table inet quilt");
                self.dirty = true;
            }
        }
        let device = &self.spec_template.name;
        let plan = plan::plan(&self.peers, &observed, device);
        let scope = self.peers.clone();
        let outcome = self.apply(&plan, &scope, Trigger::Resync).await;
        repairs += outcome.changes;
        let failures = outcome.failures + u64::from(self.firewall_members.is_none());
        self.metrics.count_peers(&self.applied);
        if !self.synced {
            info!(peers = self.peers.len(), failures, "initial sync done");
        } else if repairs > 0 {
            self.metrics.repairs.inc_by(repairs);
            info!(
                repairs,
                failures,
                peers = self.peers.len(),
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

    /// Applies `plan`, made for the peers in `scope`, in its order: route removals,
    /// entry removals, entry additions, then every route addition in one runtime call.
    /// One failure (a route the runtime refuses, say) is logged and counted; it does not
    /// hold up the other peers, but a peer whose entries failed gets no route until a
    /// later reconcile retries it. Then `applied` is brought in line: peers no longer
    /// wanted leave it, peers of `scope` whose entries and route are in place join it,
    /// and those with a failure leave it.
    pub(super) async fn apply(
        &mut self,
        plan: &PeerPlan,
        scope: &BTreeMap<String, Peer>,
        trigger: Trigger,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        self.remove_routes(&plan.route_removals, trigger, &mut outcome)
            .await;
        self.remove_entries(&plan.entry_removals, trigger, &mut outcome)
            .await;
        self.forget_gone_peers(trigger);
        let failed_entries = self.add_entries(&plan.entry_additions, &mut outcome).await;
        for peer in plan.held_back(&failed_entries) {
            debug!(node_id = %peer.node_id, subnet = %peer.subnet, "the route waits for the peer's entries");
        }
        let failed_routes = self
            .add_routes(&plan.ready_routes(&failed_entries), &mut outcome)
            .await;
        for peer in scope.values() {
            if plan::entries_failed(peer, &failed_entries) || failed_routes.contains(&peer.node_id)
            {
                self.applied.remove(&peer.node_id);
            } else if self.applied.get(&peer.node_id) != Some(peer) {
                self.applied.insert(peer.node_id.clone(), peer.clone());
                log_peer_added(peer);
            }
        }
        outcome
    }

    async fn remove_routes(
        &self,
        destinations: &[Ipv4Net],
        trigger: Trigger,
        outcome: &mut Outcome,
    ) {
        for destination in destinations {
            match self.runtime.remove_route(*destination).await {
                Ok(()) => {
                    if trigger == Trigger::Resync {
                        info!(%destination, "repair: removed the route of a node that is no longer a peer");
                    }
                    outcome.changes += 1;
                }
                Err(e) => {
                    warn!(%destination, error = %e, "could not remove a stale route");
                    outcome.failures += 1;
                }
            }
        }
    }

    async fn remove_entries(&self, ops: &[EntryOp], trigger: Trigger, outcome: &mut Outcome) {
        for op in ops {
            match self.apply_entry(op).await {
                Ok(()) => {
                    if trigger == Trigger::Resync {
                        info!(operation = ?op, "repair: removed a stale entry");
                    }
                    outcome.changes += 1;
                }
                Err(e) => {
                    warn!(operation = ?op, error = %e, "could not remove a stale entry");
                    outcome.failures += 1;
                }
            }
        }
    }

    /// Drops the applied peers that are no longer peers (their removals ran just before).
    fn forget_gone_peers(&mut self, trigger: Trigger) {
        let peers = &self.peers;
        let gone: Vec<Peer> = self
            .applied
            .values()
            .filter(|p| !peers.contains_key(&p.node_id))
            .cloned()
            .collect();
        for peer in gone {
            self.applied.remove(&peer.node_id);
            if trigger == Trigger::Event {
                info!(node_id = %peer.node_id, hostname = %peer.hostname, subnet = %peer.subnet, "peer removed");
            }
        }
    }

    /// Adds entries; answers those that failed.
    async fn add_entries(&self, ops: &[EntryOp], outcome: &mut Outcome) -> BTreeSet<EntryOp> {
        let mut failed = BTreeSet::new();
        for op in ops {
            match self.apply_entry(op).await {
                Ok(()) => outcome.changes += 1,
                Err(e) => {
                    warn!(operation = ?op, error = %e, "could not add an entry");
                    outcome.failures += 1;
                    failed.insert(op.clone());
                }
            }
        }
        failed
    }

    /// Adds the routes to `peers` in one `InjectRoutes` call; answers the node ids whose
    /// route failed (all of them when the runtime did not answer).
    async fn add_routes(&self, peers: &[&Peer], outcome: &mut Outcome) -> BTreeSet<String> {
        let mut failed = BTreeSet::new();
        if peers.is_empty() {
            return failed;
        }
        let requests: Vec<RouteRequest> = peers
            .iter()
            .map(|peer| RouteRequest {
                destination: peer.subnet,
                interface: self.spec_template.name.clone(),
                gateway: peer.gateway(),
            })
            .collect();
        match self.runtime.inject_routes(&requests).await {
            Ok(results) => {
                for (peer, result) in peers.iter().zip(results) {
                    match result {
                        Ok(()) => outcome.changes += 1,
                        Err(e) => {
                            warn!(node_id = %peer.node_id, subnet = %peer.subnet, error = %e, "could not get the route to a peer");
                            outcome.failures += 1;
                            failed.insert(peer.node_id.clone());
                        }
                    }
                }
            }
            Err(e) => {
                warn!(routes = requests.len(), error = %e, "could not get the routes to peers");
                outcome.failures += requests.len() as u64;
                failed.extend(peers.iter().map(|p| p.node_id.clone()));
            }
        }
        failed
    }

    async fn apply_entry(&self, op: &EntryOp) -> Result<(), KernelError> {
        let device = &self.spec_template.name;
        match op {
            EntryOp::SetNeighbour(n) => self.kernel.replace_neighbour(device, *n).await,
            EntryOp::SetFdb(f) => self.kernel.replace_fdb(device, *f).await,
            EntryOp::DeleteNeighbour(ip) => self.kernel.delete_neighbour(device, *ip).await,
            EntryOp::DeleteFdb(f) => self.kernel.delete_fdb(device, *f).await,
        }
    }
}

fn log_peer_added(peer: &Peer) {
    info!(
        node_id = %peer.node_id, hostname = %peer.hostname, subnet = %peer.subnet,
        host_ip = %peer.host_ip,
        vtep_mac = %peer.vtep_mac.map_or_else(|| "none (flooded)".to_string(), |m| m.to_string()),
        "peer added"
    );
}
