//! Node subnet and routes: ConfigureNodeSubnet, InjectRoute(s), RemoveRoute and
//! ListRoutes. A route is in the kernel only while it is recorded as desired.

use std::collections::BTreeSet;
use std::sync::Arc;

use ipnet::Ipv4Net;
use quilt_kernel::{Kernel, KernelError, Route};
use tracing::{debug, info, warn};

use super::{ROUTES_PER_SLICE, Runtime};
use crate::model::{ManagedRoute, RouteChange, RouteStatus};
use crate::{ROUTE_PROTOCOL, RuntimeError};

impl<K: Kernel> Runtime<K> {
    /// Sets the node subnet. The same subnet again changes nothing; another one is
    /// refused while container addresses are allocated from the current one.
    pub async fn configure_subnet(&self, subnet: Ipv4Net) -> Result<(), RuntimeError> {
        let mut inner = self.inner.lock().await;
        let current = inner.desired.subnet;
        if current == Some(subnet) {
            debug!(%subnet, "node subnet unchanged");
            // The agent may have made the overlay device again since.
            self.ensure_overlay_answers_arp(Some(subnet)).await;
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
            inner.with_store(1, |s| s.delete_route(subnet))?;
            inner.desired.routes.remove(&subnet);
            self.metrics
                .managed_routes
                .set(inner.desired.routes.len() as i64);
            info!(destination = %subnet, "route removed: the destination became this node's own subnet");
        }
        inner.with_store(1, |s| s.set_subnet(subnet))?;
        inner.desired.subnet = Some(subnet);
        if let Err(e) = self.ensure_bridge(subnet).await {
            // The subnet is recorded; the reconcile loop retries the bridge.
            warn!(%subnet, error = %e, "could not set up the container bridge yet");
        }
        match current {
            Some(previous) => info!(%subnet, %previous, "node subnet changed"),
            None => info!(%subnet, "node subnet configured"),
        }
        self.ensure_overlay_answers_arp(Some(subnet)).await;
        Ok(())
    }

    /// Adds or replaces each route and records the successful ones as desired before
    /// answering. Results come in request order.
    ///
    /// A batch is applied in slices of [`ROUTES_PER_SLICE`], in order, each under one
    /// hold of the lock and recorded in one transaction; between slices the lock is let
    /// go, so a large batch never holds up other callers for longer than one slice. A
    /// destination named twice still ends as its last request says.
    pub async fn inject_routes(
        &self,
        requests: &[ManagedRoute],
    ) -> Vec<Result<RouteChange, RuntimeError>> {
        let mut results = Vec::with_capacity(requests.len());
        for (index, slice) in requests.chunks(ROUTES_PER_SLICE).enumerate() {
            if index > 0 {
                // Let the callers waiting for the lock (queued fairly) in first.
                tokio::task::yield_now().await;
            }
            results.extend(self.inject_slice(slice).await);
        }
        results
    }

    /// One slice of [`Runtime::inject_routes`], under the lock, in one transaction.
    async fn inject_slice(
        &self,
        requests: &[ManagedRoute],
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
        let to_persist: Vec<&ManagedRoute> = requests
            .iter()
            .zip(&results)
            .filter(|(request, result)| {
                result.is_ok() && inner.desired.routes.get(&request.destination) != Some(*request)
            })
            .map(|(request, _)| request)
            .collect();
        if !to_persist.is_empty()
            && let Err(e) = inner.with_store(to_persist.len(), |s| s.put_routes(&to_persist))
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
            let source = Arc::new(e);
            return requests
                .iter()
                .map(|_| {
                    Err(RuntimeError::NotRecorded {
                        source: source.clone(),
                    })
                })
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
        request: &ManagedRoute,
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
        requests: &[ManagedRoute],
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
            .map(|r| r.unwrap_or(Err(RuntimeError::Internal("no result for this route"))))
            .collect()
    }

    async fn apply_route(&self, request: &ManagedRoute) -> Result<RouteChange, RuntimeError> {
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
            inner.with_store(1, |s| s.delete_route(destination))?;
        }
        match self.kernel.delete_route(destination, ROUTE_PROTOCOL).await {
            Ok(true) => info!(%destination, "route removed"),
            Ok(false) => {
                if let Some(other) = self.kernel.route(destination).await? {
                    if let Some(desired) = &desired {
                        inner.with_store(1, |s| s.put_routes(&[desired]))?;
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
                    inner.with_store(1, |s| s.put_routes(&[desired]))?;
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
}

fn kernel_route(request: &ManagedRoute) -> Route {
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

fn log_change(request: &ManagedRoute, change: RouteChange) {
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
