//! Containers on the node subnet. The runtime owns bridge `quilt0` (the subnet's `.1`
//! with the subnet's prefix, MTU = overlay MTU, IPv4 forwarding on) and, per attached
//! container interface, an address allocation, a veth pair (host side a port of the
//! bridge, peer inside the container namespace) and a record in the store.
//!
//! Attach order, each step undone when a later one fails: bridge (kept: it is the
//! node's), address, veth pair created directly in the container namespace, container
//! side configured, record stored. A crash between the address and the record leaves an
//! allocation without a record; reconcile frees it (and any veth of that name).

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use ipnet::Ipv4Net;
use quilt_kernel::{ContainerInterface, Kernel, KernelError, LinkKind, VethSpec};
use tracing::{debug, info, warn};

use super::{Inner, Runtime};
use crate::model::{
    AttachRequest, Attachment, OWNER_PREFIX, ReconcileReport, format_mac, host_ifname, owner,
};
use crate::{RuntimeError, ipam};

impl<K: Kernel> Runtime<K> {
    /// The MTU containers get: the overlay interface's when it exists, else the default.
    async fn overlay_mtu(&self) -> Result<u32, RuntimeError> {
        if let Some(overlay) = &self.containers.overlay_interface
            && let Some(link) = self.kernel.link(overlay).await?
        {
            return Ok(link.mtu);
        }
        Ok(self.containers.default_mtu)
    }

    /// Makes the bridge hold `subnet`'s gateway with the overlay MTU; answers whether
    /// anything changed. A link of that name that is not a bridge is somebody else's:
    /// it is refused, and nothing is done to it.
    pub(super) async fn ensure_bridge(&self, subnet: Ipv4Net) -> Result<bool, RuntimeError> {
        let bridge = &self.containers.bridge;
        if let Some(link) = self.kernel.link(bridge).await?
            && link.kind != Some(LinkKind::Bridge)
        {
            let kind = link
                .kind
                .map_or_else(|| "device".to_string(), |k| format!("{k} link"));
            return Err(RuntimeError::BridgeTaken {
                name: bridge.clone(),
                kind,
            });
        }
        let mtu = self.overlay_mtu().await?;
        let address = Ipv4Net::new(ipam::gateway(subnet), subnet.prefix_len()).unwrap_or(subnet);
        let changed = self
            .kernel
            .ensure_bridge(&self.containers.bridge, address, mtu)
            .await?;
        if changed {
            info!(bridge = %self.containers.bridge, %address, mtu, "container bridge set up");
        }
        Ok(changed)
    }

    /// Attaches a container interface (see the module doc). The same container and
    /// ifname again answer the recorded attachment.
    pub async fn attach(&self, request: &AttachRequest) -> Result<Attachment, RuntimeError> {
        let mut inner = self.inner.lock().await;
        let key = (request.container_id.clone(), request.ifname.clone());
        if let Some(existing) = inner.desired.attachments.get(&key).cloned() {
            if self.kernel.link(&existing.host_ifname).await?.is_some() {
                debug!(container_id = %existing.container_id, ifname = %existing.ifname, "already attached");
                return Ok(existing);
            }
            // The veth is gone (the namespace was destroyed): attach afresh, keeping the address.
            warn!(container_id = %existing.container_id, ifname = %existing.ifname, "attachment lost its veth; attaching again");
        }
        let subnet = inner.desired.subnet.ok_or(RuntimeError::NoSubnet)?;
        let overlay_mtu = self.overlay_mtu().await?;
        let mtu = match request.mtu {
            Some(mtu) if mtu > overlay_mtu => {
                return Err(RuntimeError::BadField {
                    field: "mtu",
                    value: mtu.to_string(),
                    reason: format!("above the overlay mtu {overlay_mtu}"),
                });
            }
            Some(mtu) => mtu,
            None => overlay_mtu,
        };
        self.ensure_bridge(subnet).await?;
        let owner = owner(&request.container_id, &request.ifname);
        let (lease, fresh) = self.allocate_in(&mut inner, &owner)?;
        match self
            .attach_kernel(request, lease.address, lease.gateway, mtu)
            .await
        {
            Ok(record) => match inner.with_store(|s| s.put_attachment(&record)) {
                Ok(()) => {
                    inner.desired.attachments.insert(key, record.clone());
                    info!(
                        container_id = %record.container_id,
                        ifname = %record.ifname,
                        netns = %record.netns.display(),
                        address = %record.address,
                        host_ifname = %record.host_ifname,
                        "container attached"
                    );
                    Ok(record)
                }
                Err(e) => {
                    self.undo_attach(&mut inner, &record.host_ifname, &owner, fresh)
                        .await;
                    Err(RuntimeError::NotRecorded {
                        source: Arc::new(e),
                    })
                }
            },
            Err(e) => {
                if fresh && let Err(undo) = self.release_in(&mut inner, &owner) {
                    warn!(%owner, error = %undo, "could not release the address after a failed attach");
                }
                Err(e)
            }
        }
    }

    /// The kernel part of attach; on failure it removes the veth it made.
    async fn attach_kernel(
        &self,
        request: &AttachRequest,
        address: Ipv4Net,
        gateway: Ipv4Addr,
        mtu: u32,
    ) -> Result<Attachment, RuntimeError> {
        let host = host_ifname(&request.container_id, &request.ifname);
        if self.kernel.delete_link(&host).await? {
            // Left by a crash between veth and record: the name is derived from this very
            // container interface, so it is ours.
            info!(host_ifname = %host, "removed a leftover veth of an unfinished attach");
        }
        let veth = VethSpec {
            host: host.clone(),
            bridge: self.containers.bridge.clone(),
            netns: request.netns.clone(),
            ifname: request.ifname.clone(),
            mtu,
        };
        self.kernel
            .create_veth_into(&veth)
            .await
            .map_err(attach_error)?;
        let interface = ContainerInterface {
            ifname: request.ifname.clone(),
            address,
            gateway,
            mtu,
        };
        let configured = async {
            let link = self
                .kernel
                .configure_container(&request.netns, &interface)
                .await?;
            let host_link = self.kernel.link(&host).await?;
            Ok::<_, KernelError>((link, host_link))
        }
        .await;
        match configured {
            Ok((link, host_link)) => Ok(Attachment {
                container_id: request.container_id.clone(),
                ifname: request.ifname.clone(),
                netns: request.netns.clone(),
                host_ifname: host,
                address,
                gateway,
                mac: format_mac(link.mac),
                host_mac: format_mac(host_link.and_then(|l| l.mac)),
                mtu,
            }),
            Err(e) => {
                if let Err(undo) = self.kernel.delete_link(&host).await {
                    warn!(host_ifname = %host, error = %undo, "could not delete the veth of a failed attach");
                }
                Err(attach_error(e))
            }
        }
    }

    async fn undo_attach(&self, inner: &mut Inner, host: &str, owner: &str, release: bool) {
        if let Err(e) = self.kernel.delete_link(host).await {
            warn!(host_ifname = %host, error = %e, "could not delete the veth of a failed attach");
        }
        if release && let Err(e) = self.release_in(inner, owner) {
            warn!(%owner, error = %e, "could not release the address after a failed attach");
        }
    }

    /// Removes a container interface's veth, address and record. Nothing attached is
    /// success; answers whether something was.
    pub async fn detach(&self, container_id: &str, ifname: &str) -> Result<bool, RuntimeError> {
        let mut inner = self.inner.lock().await;
        let key = (container_id.to_string(), ifname.to_string());
        let owner = owner(container_id, ifname);
        let record = inner.desired.attachments.get(&key).cloned();
        let host = record
            .as_ref()
            .map(|r| r.host_ifname.clone())
            .unwrap_or_else(|| host_ifname(container_id, ifname));
        let deleted = self.kernel.delete_link(&host).await?;
        let held = inner.desired.allocations.contains_key(&owner);
        if record.is_some() || held {
            inner.with_store(|s| s.delete_attachment(container_id, ifname, &owner))?;
            inner.desired.attachments.remove(&key);
            inner.desired.allocations.remove(&owner);
            self.metrics
                .allocated_ips
                .set(inner.desired.allocations.len() as i64);
        }
        let was_attached = record.is_some();
        if was_attached || deleted {
            info!(%container_id, %ifname, host_ifname = %host, "container detached");
        } else {
            debug!(%container_id, %ifname, "nothing attached; detach is a no-op");
        }
        Ok(was_attached)
    }

    /// Every attachment.
    pub async fn attachments(&self) -> Vec<Attachment> {
        self.inner
            .lock()
            .await
            .desired
            .attachments
            .values()
            .cloned()
            .collect()
    }

    /// Compares the kernel with an attachment: the host veth exists, and inside the
    /// namespace the interface is up with the address, MTU, MAC and default route.
    pub async fn check(
        &self,
        container_id: &str,
        ifname: &str,
        netns: Option<&Path>,
    ) -> Result<Attachment, RuntimeError> {
        let inner = self.inner.lock().await;
        let key = (container_id.to_string(), ifname.to_string());
        let record = inner
            .desired
            .attachments
            .get(&key)
            .cloned()
            .ok_or_else(|| RuntimeError::NotAttached {
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
            })?;
        drop(inner);
        let mismatch = |problem: String| RuntimeError::Mismatch {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            problem,
        };
        if let Some(netns) = netns
            && netns != record.netns
        {
            return Err(mismatch(format!(
                "attached in namespace {}, not {}",
                record.netns.display(),
                netns.display()
            )));
        }
        if self.kernel.link(&record.host_ifname).await?.is_none() {
            return Err(mismatch(format!(
                "host side {} is missing",
                record.host_ifname
            )));
        }
        let view = self
            .kernel
            .inspect_container(&record.netns, ifname)
            .await
            .map_err(|e| mismatch(e.to_string()))?
            .ok_or_else(|| {
                mismatch(format!(
                    "no interface {ifname} in {}",
                    record.netns.display()
                ))
            })?;
        if !view.addresses.contains(&record.address) {
            let found: Vec<String> = view.addresses.iter().map(ToString::to_string).collect();
            return Err(mismatch(format!(
                "address {} is missing (found: [{}])",
                record.address,
                found.join(", ")
            )));
        }
        if view.default_gateway != Some(record.gateway) {
            return Err(mismatch(format!(
                "default route via {} is missing (found: {:?})",
                record.gateway, view.default_gateway
            )));
        }
        if !view.up {
            return Err(mismatch("interface is down".to_string()));
        }
        if view.link.mtu != record.mtu {
            return Err(mismatch(format!(
                "mtu is {}, not {}",
                view.link.mtu, record.mtu
            )));
        }
        let mac = format_mac(view.link.mac);
        if !record.mac.is_empty() && mac != record.mac {
            return Err(mismatch(format!("mac is {mac}, not {}", record.mac)));
        }
        Ok(record)
    }

    /// The container part of a reconcile pass: the bridge exists as wanted (its ports
    /// re-added when it was recreated), and allocations an unfinished attach left
    /// without a record are freed with their veth.
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
            }
        }
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
            let host = host_ifname(container_id, ifname);
            match self.kernel.delete_link(&host).await {
                Ok(_) => match self.release_in(inner, &orphan) {
                    Ok(()) => {
                        info!(owner = %orphan, "repaired: freed the address of an unfinished attach");
                        report.repairs += 1;
                    }
                    Err(e) => {
                        warn!(owner = %orphan, error = %e, "could not free an unfinished attach's address");
                        report.failures += 1;
                    }
                },
                Err(e) => {
                    warn!(host_ifname = %host, error = %e, "could not delete an unfinished attach's veth");
                    report.failures += 1;
                }
            }
        }
        report
    }
}

/// Kernel failures of attach; a namespace that cannot be entered is the caller's input.
fn attach_error(e: KernelError) -> RuntimeError {
    match e {
        KernelError::Netns { name, message } => RuntimeError::BadField {
            field: "netns_path",
            value: quilt_common::cluster::excerpt(&name),
            reason: format!("not usable: {message}"),
        },
        other => RuntimeError::Kernel(other),
    }
}
