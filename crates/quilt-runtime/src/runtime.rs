//! The runtime's core: desired state, the kernel and the store kept in step. Generic
//! over [`Kernel`], so its logic is tested against the fake without root.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use quilt_kernel::{Kernel, KernelError, Route};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::attach::ContainerSettings;
use crate::metrics::Metrics;
use crate::reconcile::{self, RouteOp};
use crate::request::RouteRequest;
use crate::store::{DesiredState, Store};
use crate::{ROUTE_PROTOCOL, RuntimeError, ipam};

/// What one InjectRoute did to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    Added,
    Replaced,
    Unchanged,
}

/// A managed route and whether the kernel holds it as desired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStatus {
    pub route: RouteRequest,
    pub in_kernel: bool,
}

/// A container address: the address with the subnet's prefix, and the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// What a reconcile pass found and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileReport {
    pub repairs: usize,
    pub failures: usize,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) desired: DesiredState,
}

/// The core. Changes are serialised by one lock, so the store, the kernel and the
/// in-memory desired state never disagree about what was acknowledged.
pub struct Runtime<K> {
    pub(crate) kernel: K,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) containers: ContainerSettings,
}

impl<K: Kernel> Runtime<K> {
    /// Loads desired state from `store`.
    pub fn new(kernel: K, store: Store, metrics: Arc<Metrics>) -> Result<Self, RuntimeError> {
        let desired = store.load()?;
        metrics.managed_routes.set(desired.routes.len() as i64);
        metrics.allocated_ips.set(desired.allocations.len() as i64);
        Ok(Self {
            kernel,
            inner: Mutex::new(Inner { store, desired }),
            metrics,
            containers: ContainerSettings::default(),
        })
    }

    /// Sets the bridge, overlay interface and default MTU container attachment uses.
    pub fn with_container_settings(mut self, settings: ContainerSettings) -> Self {
        self.containers = settings;
        self
    }

    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// A copy of the desired state.
    pub async fn desired(&self) -> DesiredState {
        self.inner.lock().await.desired.clone()
    }

    /// Sets the node subnet. The same subnet again changes nothing; another one is
    /// refused while container addresses are allocated from the current one.
    pub async fn configure_subnet(&self, subnet: Ipv4Net) -> Result<(), RuntimeError> {
        let mut inner = self.inner.lock().await;
        let current = inner.desired.subnet;
        if current == Some(subnet) {
            debug!(%subnet, "node subnet unchanged");
            return Ok(());
        }
        if let Some(current) = current
            && !inner.desired.allocations.is_empty()
        {
            return Err(RuntimeError::SubnetInUse {
                current,
                requested: subnet,
                allocations: inner.desired.allocations.len(),
            });
        }
        if inner.desired.routes.contains_key(&subnet) {
            // The node's own subnet is local now; a route sending it over the overlay
            // would black-hole local containers.
            self.kernel.delete_route(subnet, ROUTE_PROTOCOL).await?;
            inner.store.delete_route(subnet)?;
            inner.desired.routes.remove(&subnet);
            self.metrics
                .managed_routes
                .set(inner.desired.routes.len() as i64);
            info!(destination = %subnet, "route removed: the destination became this node's own subnet");
        }
        inner.store.set_subnet(subnet)?;
        inner.desired.subnet = Some(subnet);
        if let Err(e) = self.ensure_bridge(subnet).await {
            // The subnet is recorded; the reconcile loop retries the bridge.
            warn!(%subnet, error = %e, "could not set up the container bridge yet");
        }
        match current {
            Some(previous) => info!(%subnet, %previous, "node subnet changed"),
            None => info!(%subnet, "node subnet configured"),
        }
        Ok(())
    }

    /// Adds or replaces each route and records the successful ones as desired, in one
    /// transaction, before answering. Results come in request order.
    pub async fn inject_routes(
        &self,
        requests: &[RouteRequest],
    ) -> Vec<Result<RouteChange, RuntimeError>> {
        let mut inner = self.inner.lock().await;
        let own_subnet = inner.desired.subnet;
        // Routes of one batch go to the kernel together (one write per chunk). A batch
        // naming a destination twice is applied one route at a time instead, so the
        // last one wins as the caller expects.
        let destinations: BTreeSet<Ipv4Net> = requests.iter().map(|r| r.destination).collect();
        let results: Vec<Result<RouteChange, RuntimeError>> =
            if destinations.len() == requests.len() {
                self.apply_batch(requests, own_subnet).await
            } else {
                let mut results = Vec::with_capacity(requests.len());
                for request in requests {
                    results.push(self.apply_checked(request, own_subnet).await);
                }
                results
            };
        let to_persist: Vec<&RouteRequest> = requests
            .iter()
            .zip(&results)
            .filter(|(request, result)| {
                result.is_ok() && inner.desired.routes.get(&request.destination) != Some(*request)
            })
            .map(|(request, _)| request)
            .collect();
        if !to_persist.is_empty()
            && let Err(e) = inner.store.put_routes(&to_persist)
        {
            // Nothing may stay in the kernel that was not recorded: undo what this call
            // added, and put back what it replaced as it was recorded before.
            for (request, result) in requests.iter().zip(&results) {
                let undo = match (result, inner.desired.routes.get(&request.destination)) {
                    (Ok(RouteChange::Added), _) => self
                        .kernel
                        .delete_route(request.destination, ROUTE_PROTOCOL)
                        .await
                        .map(|_| ()),
                    (Ok(RouteChange::Replaced), Some(previous)) => {
                        self.kernel.replace_route(&kernel_route(previous)).await
                    }
                    _ => Ok(()),
                };
                if let Err(undo) = undo {
                    warn!(destination = %request.destination, error = %undo, "could not undo route after a store failure");
                }
            }
            let message = e.to_string();
            return requests
                .iter()
                .map(|_| Err(RuntimeError::NotRecorded(message.clone())))
                .collect();
        }
        for (request, result) in requests.iter().zip(&results) {
            if let Ok(change) = result {
                inner
                    .desired
                    .routes
                    .insert(request.destination, request.clone());
                log_change(request, *change);
            }
        }
        self.metrics
            .managed_routes
            .set(inner.desired.routes.len() as i64);
        results
    }

    async fn apply_checked(
        &self,
        request: &RouteRequest,
        own_subnet: Option<Ipv4Net>,
    ) -> Result<RouteChange, RuntimeError> {
        if Some(request.destination) == own_subnet {
            return Err(RuntimeError::OwnSubnet(request.destination));
        }
        self.apply_route(request).await
    }

    /// Adds every route of a batch with distinct destinations in one kernel call, then
    /// settles those whose destination already had a route.
    async fn apply_batch(
        &self,
        requests: &[RouteRequest],
        own_subnet: Option<Ipv4Net>,
    ) -> Vec<Result<RouteChange, RuntimeError>> {
        let (own, candidates): (Vec<_>, Vec<_>) = requests
            .iter()
            .enumerate()
            .partition(|(_, r)| Some(r.destination) == own_subnet);
        let routes: Vec<Route> = candidates.iter().map(|(_, r)| kernel_route(r)).collect();
        let added = self.kernel.add_routes(&routes).await;
        let mut results: Vec<Option<Result<RouteChange, RuntimeError>>> =
            requests.iter().map(|_| None).collect();
        for (i, request) in own {
            results[i] = Some(Err(RuntimeError::OwnSubnet(request.destination)));
        }
        for (((i, _), route), outcome) in candidates.into_iter().zip(&routes).zip(added) {
            results[i] = Some(self.settle(route, outcome).await);
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(RuntimeError::NotRecorded("no result for this route".into()))
                })
            })
            .collect()
    }

    async fn apply_route(&self, request: &RouteRequest) -> Result<RouteChange, RuntimeError> {
        let route = kernel_route(request);
        let outcome = self.kernel.add_route(&route).await;
        self.settle(&route, outcome).await
    }

    /// What an add answered becomes a change: added; or, where a route was already
    /// there, unchanged or replaced when it is ours and refused when it is not.
    async fn settle(
        &self,
        route: &Route,
        outcome: Result<(), KernelError>,
    ) -> Result<RouteChange, RuntimeError> {
        match outcome {
            Ok(()) => Ok(RouteChange::Added),
            Err(KernelError::RouteExists { protocol, .. }) if protocol == ROUTE_PROTOCOL => {
                if self.kernel.route(route.destination).await?.as_ref() == Some(route) {
                    Ok(RouteChange::Unchanged)
                } else {
                    self.kernel
                        .replace_route(route)
                        .await
                        .map_err(interface_error)?;
                    Ok(RouteChange::Replaced)
                }
            }
            Err(KernelError::RouteExists {
                destination,
                protocol,
            }) => Err(RuntimeError::NotOurs {
                destination,
                protocol,
            }),
            Err(e) => Err(interface_error(e)),
        }
    }

    /// Removes the route for `destination` if it is ours; an absent route is success,
    /// someone else's is refused and left alone.
    pub async fn remove_route(&self, destination: Ipv4Net) -> Result<(), RuntimeError> {
        let mut inner = self.inner.lock().await;
        let desired = inner.desired.routes.get(&destination).cloned();
        if desired.is_some() {
            inner.store.delete_route(destination)?;
        }
        match self.kernel.delete_route(destination, ROUTE_PROTOCOL).await {
            Ok(true) => info!(%destination, "route removed"),
            Ok(false) => {
                if let Some(other) = self.kernel.route(destination).await? {
                    if let Some(desired) = &desired {
                        inner.store.put_routes(&[desired])?;
                    }
                    return Err(RuntimeError::NotOurs {
                        destination,
                        protocol: other.protocol,
                    });
                }
                debug!(%destination, "route already absent");
            }
            Err(e) => {
                if let Some(desired) = &desired {
                    inner.store.put_routes(&[desired])?;
                }
                return Err(e.into());
            }
        }
        inner.desired.routes.remove(&destination);
        self.metrics
            .managed_routes
            .set(inner.desired.routes.len() as i64);
        Ok(())
    }

    /// Every managed route, and whether the kernel holds it as desired.
    pub async fn list_routes(&self) -> Result<Vec<RouteStatus>, RuntimeError> {
        let inner = self.inner.lock().await;
        let observed = self.kernel.routes(ROUTE_PROTOCOL).await?;
        Ok(inner
            .desired
            .routes
            .values()
            .map(|route| RouteStatus {
                in_kernel: observed.contains(&kernel_route(route)),
                route: route.clone(),
            })
            .collect())
    }

    /// An address for `owner` from the node subnet; the same owner gets the same one.
    pub async fn allocate(&self, owner: &str) -> Result<Lease, RuntimeError> {
        let mut inner = self.inner.lock().await;
        self.allocate_in(&mut inner, owner).map(|(lease, _)| lease)
    }

    /// [`Runtime::allocate`] under the caller's lock; also answers whether the address
    /// was newly allocated (rather than already held by `owner`).
    pub(crate) fn allocate_in(
        &self,
        inner: &mut Inner,
        owner: &str,
    ) -> Result<(Lease, bool), RuntimeError> {
        let subnet = inner.desired.subnet.ok_or(RuntimeError::NoSubnet)?;
        let lease = |address: Ipv4Addr| Lease {
            address: Ipv4Net::new(address, subnet.prefix_len()).unwrap_or(subnet),
            gateway: ipam::gateway(subnet),
        };
        if let Some(address) = inner.desired.allocations.get(owner) {
            return Ok((lease(*address), false));
        }
        let used: BTreeSet<Ipv4Addr> = inner.desired.allocations.values().copied().collect();
        let address = ipam::next_free(subnet, &used).ok_or(RuntimeError::PoolExhausted(subnet))?;
        inner.store.put_allocation(owner, address)?;
        inner.desired.allocations.insert(owner.to_string(), address);
        self.metrics
            .allocated_ips
            .set(inner.desired.allocations.len() as i64);
        info!(%owner, %address, "container address allocated");
        Ok((lease(address), true))
    }

    /// Gives `owner`'s address back under the caller's lock.
    pub(crate) fn release_in(&self, inner: &mut Inner, owner: &str) -> Result<(), RuntimeError> {
        if let Some(address) = inner.desired.allocations.get(owner).copied() {
            inner.store.delete_allocation(owner)?;
            inner.desired.allocations.remove(owner);
            self.metrics
                .allocated_ips
                .set(inner.desired.allocations.len() as i64);
            info!(%owner, %address, "container address released");
        }
        Ok(())
    }

    /// Gives `owner`'s address back; nothing held is success.
    pub async fn release(&self, owner: &str) -> Result<(), RuntimeError> {
        let mut inner = self.inner.lock().await;
        self.release_in(&mut inner, owner)
    }

    /// Compares the kernel with desired state and repairs the difference: re-adds missing
    /// routes, fixes wrong ones, deletes ours that are no longer desired.
    pub async fn reconcile(&self) -> Result<ReconcileReport, RuntimeError> {
        let mut inner = self.inner.lock().await;
        let observed = self.kernel.routes(ROUTE_PROTOCOL).await?;
        let mut present = BTreeSet::new();
        let interfaces: BTreeSet<&String> = inner
            .desired
            .routes
            .values()
            .map(|r| &r.interface)
            .collect();
        for interface in interfaces {
            if self.kernel.link(interface).await?.is_some() {
                present.insert(interface.clone());
            }
        }
        let ops = reconcile::plan(&inner.desired.routes, &observed, &present, ROUTE_PROTOCOL);
        let mut report = ReconcileReport::default();
        for op in ops {
            let outcome = match &op {
                RouteOp::Add(route) => self.kernel.add_route(route).await,
                RouteOp::Replace(route) => self.kernel.replace_route(route).await,
                RouteOp::Delete(destination) => self
                    .kernel
                    .delete_route(*destination, ROUTE_PROTOCOL)
                    .await
                    .map(|_| ()),
            };
            match (outcome, &op) {
                (Ok(()), RouteOp::Add(route)) => {
                    info!(destination = %route.destination, gateway = ?route.gateway, interface = %route.interface, "repaired: missing route re-added")
                }
                (Ok(()), RouteOp::Replace(route)) => {
                    info!(destination = %route.destination, gateway = ?route.gateway, interface = %route.interface, "repaired: route corrected")
                }
                (Ok(()), RouteOp::Delete(destination)) => {
                    info!(%destination, "repaired: stale route removed")
                }
                (Err(e), _) => {
                    warn!(operation = ?op, error = %e, "reconcile could not apply a change");
                    report.failures += 1;
                    continue;
                }
            }
            report.repairs += 1;
        }
        let containers = self.reconcile_containers(&mut inner).await;
        report.repairs += containers.repairs;
        report.failures += containers.failures;
        self.metrics.reconcile_runs.inc();
        self.metrics.reconcile_repairs.inc_by(report.repairs as u64);
        Ok(report)
    }
}

fn kernel_route(request: &RouteRequest) -> Route {
    Route {
        destination: request.destination,
        interface: request.interface.clone(),
        gateway: request.gateway,
        protocol: ROUTE_PROTOCOL,
    }
}

fn interface_error(e: KernelError) -> RuntimeError {
    match e {
        KernelError::NoSuchLink(name) => RuntimeError::NoSuchInterface(name),
        other => RuntimeError::Kernel(other),
    }
}

fn log_change(request: &RouteRequest, change: RouteChange) {
    let gateway = request
        .gateway
        .map(|g| g.to_string())
        .unwrap_or_else(|| "none".into());
    match change {
        RouteChange::Added => {
            info!(destination = %request.destination, %gateway, interface = %request.interface, "route added")
        }
        RouteChange::Replaced => {
            info!(destination = %request.destination, %gateway, interface = %request.interface, "route replaced")
        }
        RouteChange::Unchanged => debug!(destination = %request.destination, "route unchanged"),
    }
}
