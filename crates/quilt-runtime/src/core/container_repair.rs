//! The container part of a reconcile pass: the bridge as wanted (its ports re-added when it
//! was recreated), container veths deleted by hand recreated from their records, the
//! allocations of unfinished attaches freed, and addresses used twice reported.

use quilt_kernel::{Kernel, KernelError};
use tracing::{debug, info, warn};

use super::containers::recorded;
use super::{Inner, Runtime};
use crate::ipam;
use crate::model::{AttachRequest, Attachment, OWNER_PREFIX, ReconcileReport, owner};

impl<K: Kernel> Runtime<K> {
    /// One container reconcile pass under the caller's lock (see the module doc).
    pub(super) async fn reconcile_containers(&self, inner: &mut Inner) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let Some(subnet) = inner.desired.subnet else {
            return report;
        };
        match self.ensure_bridge(subnet).await {
            Ok(true) => {
                report.repairs += 1;
                for record in inner.desired.attachments.values() {
                    match self
                        .kernel
                        .set_bridge_port(&record.host_ifname, &self.containers.bridge)
                        .await
                    {
                        Ok(()) => report.repairs += 1,
                        Err(KernelError::NoSuchLink(_)) => {}
                        Err(e) => {
                            warn!(host_ifname = %record.host_ifname, error = %e, "could not put a container veth back on the bridge");
                            report.failures += 1;
                        }
                    }
                }
            }
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "could not set up the container bridge");
                report.failures += 1;
                return report;
            }
        }
        self.recreate_veths(inner, &mut report).await;
        self.free_orphans(inner, &mut report).await;
        report.conflicts = self.report_double_uses(inner);
        report
    }

    /// Recreates, under its recorded name and address, the veth of every attachment whose
    /// host side is gone while its namespace is still there. A namespace that is gone
    /// (the container ended without a DEL) is left for the DEL.
    async fn recreate_veths(&self, inner: &mut Inner, report: &mut ReconcileReport) {
        let records: Vec<Attachment> = inner.desired.attachments.values().cloned().collect();
        for record in records {
            match self.kernel.link(&record.host_ifname).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => {
                    warn!(host_ifname = %record.host_ifname, error = %e, "could not look up a container veth");
                    report.failures += 1;
                    continue;
                }
            }
            if let Err(e) = self.kernel.check_netns(&record.netns).await {
                debug!(container_id = %record.container_id, ifname = %record.ifname, error = %e, "veth gone with its namespace; waiting for the DEL");
                continue;
            }
            let request = AttachRequest {
                container_id: record.container_id.clone(),
                ifname: record.ifname.clone(),
                netns: record.netns.clone(),
                mtu: Some(record.mtu),
            };
            let made = self
                .attach_kernel(
                    &request,
                    &record.host_ifname,
                    record.address,
                    record.gateway,
                    record.mtu,
                )
                .await;
            let repaired = match made {
                Ok(repaired) => repaired,
                Err(e) => {
                    warn!(container_id = %record.container_id, ifname = %record.ifname, host_ifname = %record.host_ifname, error = %e, "could not recreate a container veth");
                    report.failures += 1;
                    continue;
                }
            };
            let key = (record.container_id.clone(), record.ifname.clone());
            match inner.with_store(1, |s| s.put_attachment(&repaired)) {
                Ok(()) => {
                    info!(container_id = %repaired.container_id, ifname = %repaired.ifname, host_ifname = %repaired.host_ifname, address = %repaired.address, "repaired: container veth recreated");
                    inner.desired.attachments.insert(key, repaired);
                    report.repairs += 1;
                }
                Err(e) => {
                    // The veth works; only its new MACs are unrecorded until the next pass.
                    warn!(container_id = %repaired.container_id, error = %e, "could not record the recreated veth's MACs");
                    report.failures += 1;
                }
            }
        }
    }

    /// Frees the allocations an unfinished attach left without a record, with the
    /// unrecorded veths of their candidate names.
    async fn free_orphans(&self, inner: &mut Inner, report: &mut ReconcileReport) {
        let orphans: Vec<String> = inner
            .desired
            .allocations
            .keys()
            .filter(|held_by| held_by.starts_with(OWNER_PREFIX))
            .filter(|held_by| {
                !inner
                    .desired
                    .attachments
                    .values()
                    .any(|r| &owner(&r.container_id, &r.ifname) == *held_by)
            })
            .cloned()
            .collect();
        for orphan in orphans {
            let Some((container_id, ifname)) = orphan[OWNER_PREFIX.len()..].rsplit_once('/') else {
                continue;
            };
            if let Err(e) = self
                .sweep_leftovers(&recorded(inner), container_id, ifname)
                .await
            {
                warn!(owner = %orphan, error = %e, "could not delete an unfinished attach's veth");
                report.failures += 1;
                continue;
            }
            match self.release_in(inner, &orphan) {
                Ok(()) => {
                    info!(owner = %orphan, "repaired: freed the address of an unfinished attach");
                    report.repairs += 1;
                }
                Err(e) => {
                    warn!(owner = %orphan, error = %e, "could not free an unfinished attach's address");
                    report.failures += 1;
                }
            }
        }
    }

    /// Logs every address used by more than one owner and sets the conflicts gauge;
    /// answers how many there are. Nothing is changed: which owner keeps the address is
    /// the operator's call (detach the container that should move, and attach it again).
    fn report_double_uses(&self, inner: &Inner) -> usize {
        let conflicts = ipam::double_uses(&inner.desired);
        for (address, owners) in &conflicts {
            warn!(%address, owners = %owners.join(", "), "address used by more than one owner");
        }
        self.metrics.address_conflicts.set(conflicts.len() as i64);
        conflicts.len()
    }
}
