//! Reconcile passes: the planner's operations (see [`crate::reconcile`]) applied to the
//! kernel, then the container part, counted into one report.

use std::collections::BTreeSet;

use quilt_kernel::Kernel;
use tracing::{info, warn};

use super::Runtime;
use crate::model::ReconcileReport;
use crate::reconcile::{self, RouteOp};
use crate::store::Store;
use crate::{ROUTE_PROTOCOL, RuntimeError};

impl<K: Kernel> Runtime<K> {
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
        self.ensure_overlay_answers_arp(inner.desired.subnet).await;
        let containers = self.reconcile_containers(&mut inner).await;
        report.repairs += containers.repairs;
        report.failures += containers.failures;
        report.conflicts = containers.conflicts;
        if let Err(e) = inner.with_store(usize::MAX, Store::checkpoint) {
            warn!(error = %e, "could not checkpoint the state database; retrying next pass");
        }
        self.metrics.reconcile_runs.inc();
        self.metrics.reconcile_repairs.inc_by(report.repairs as u64);
        Ok(report)
    }
}
