//! Containers on the node subnet. The runtime owns bridge `quilt0` (the subnet's `.1`
//! with the subnet's prefix, MTU = overlay MTU, IPv4 forwarding on) and, per attached
//! container interface, an address allocation, a veth pair (host side a port of the
//! bridge, peer inside the container namespace) and a record in the store.
//!
//! Attach order, each step undone when a later one fails: namespace path checked (before
//! the lock, bounded in time), bridge (kept: it is the node's), host name chosen, address,
//! veth pair created directly in the container namespace, container side configured,
//! record stored. A crash between the address and the record leaves an allocation
//! without a record; reconcile frees it (and unrecorded veths of its candidate names).
//!
//! Host veth names are a 48-bit hash of container id and ifname, so two containers can
//! derive the same one. The name is chosen once at attach (another candidate when the
//! first is recorded or held) and stored; every later operation (detach, check, repair)
//! uses the recorded name of exactly that container id and ifname, never a derived one.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use ipnet::Ipv4Net;
use quilt_kernel::{ContainerInterface, Kernel, KernelError, LinkKind, VethSpec};
use tracing::{debug, info, warn};

use super::{Inner, Runtime};
use crate::model::{
    AttachRequest, Attachment, HOST_IFNAME_CANDIDATES, format_mac, host_ifname_candidate, owner,
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
    /// ifname again in the same namespace answer the recorded attachment; in another
    /// namespace they are refused.
    ///
    /// The namespace path is looked at first, before the lock, within a bounded time
    /// ([`Kernel::check_netns`]): a path that would block (a FIFO, a hung file system)
    /// holds up only this call.
    pub async fn attach(&self, request: &AttachRequest) -> Result<Attachment, RuntimeError> {
        self.kernel
            .check_netns(&request.netns)
            .await
            .map_err(attach_error)?;
        let mut inner = self.inner.lock().await;
        let key = (request.container_id.clone(), request.ifname.clone());
        let existing = inner.desired.attachments.get(&key).cloned();
        if let Some(existing) = &existing {
            if existing.netns != request.netns {
                return Err(RuntimeError::AlreadyAttached {
                    container_id: existing.container_id.clone(),
                    ifname: existing.ifname.clone(),
                    attached: existing.netns.display().to_string(),
                    requested: request.netns.display().to_string(),
                });
            }
            if self.kernel.link(&existing.host_ifname).await?.is_some() {
                debug!(container_id = %existing.container_id, ifname = %existing.ifname, "already attached");
                return Ok(existing.clone());
            }
            // The veth is gone: attach afresh under the recorded name, keeping the address.
            warn!(container_id = %existing.container_id, ifname = %existing.ifname, "attachment lost its veth; attaching again");
        }
        let subnet = inner.desired.subnet.ok_or(RuntimeError::NoSubnet)?;
        let overlay_mtu = self.overlay_mtu().await?;
        let mtu = match request.mtu {
            Some(mtu) if mtu > overlay_mtu => {
                return Err(RuntimeError::MtuAboveOverlay {
                    mtu,
                    overlay: overlay_mtu,
                });
            }
            Some(mtu) => mtu,
            None => overlay_mtu,
        };
        self.ensure_bridge(subnet).await?;
        let host = match &existing {
            Some(record) => record.host_ifname.clone(),
            None => self.free_host_name(&recorded(&inner), request).await?,
        };
        let owner = owner(&request.container_id, &request.ifname);
        let (lease, fresh) = self.allocate_in(&mut inner, &owner)?;
        match self
            .attach_kernel(request, &host, lease.address, lease.gateway, mtu)
            .await
        {
            Ok(record) => match inner.with_store(1, |s| s.put_attachment(&record)) {
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

    /// The first of a container interface's candidate host names that no attachment
    /// records and no link holds. A veth of that name that no attachment records is the
    /// leftover of an unfinished attach (every finished one is recorded, and attaches are
    /// serialised): it is removed and its name used. A link of another kind is left alone
    /// and the next name tried.
    async fn free_host_name(
        &self,
        taken: &BTreeSet<String>,
        request: &AttachRequest,
    ) -> Result<String, RuntimeError> {
        for attempt in 0..HOST_IFNAME_CANDIDATES {
            let name = host_ifname_candidate(&request.container_id, &request.ifname, attempt);
            if taken.contains(&name) {
                debug!(host_ifname = %name, container_id = %request.container_id, "host name taken by another attachment; trying the next");
                continue;
            }
            match self.kernel.link(&name).await? {
                None => return Ok(name),
                Some(link) if link.kind == Some(LinkKind::Veth) => {
                    self.kernel.delete_link(&name).await?;
                    info!(host_ifname = %name, "removed a leftover veth of an unfinished attach");
                    return Ok(name);
                }
                Some(_) => {
                    debug!(host_ifname = %name, "host name held by a link that is not ours; trying the next");
                }
            }
        }
        Err(RuntimeError::NoHostName {
            container_id: request.container_id.clone(),
            ifname: request.ifname.clone(),
        })
    }

    /// Removes the unrecorded veths an unfinished attach of `container_id`/`ifname` may
    /// have left under its candidate names (never a name an attachment records).
    pub(super) async fn sweep_leftovers(
        &self,
        taken: &BTreeSet<String>,
        container_id: &str,
        ifname: &str,
    ) -> Result<usize, RuntimeError> {
        let mut removed = 0;
        for attempt in 0..HOST_IFNAME_CANDIDATES {
            let name = host_ifname_candidate(container_id, ifname, attempt);
            if taken.contains(&name) {
                continue;
            }
            if let Some(link) = self.kernel.link(&name).await?
                && link.kind == Some(LinkKind::Veth)
                && self.kernel.delete_link(&name).await?
            {
                info!(host_ifname = %name, %container_id, %ifname, "removed a leftover veth of an unfinished attach");
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The kernel part of attach; on failure it removes the veth it made.
    pub(super) async fn attach_kernel(
        &self,
        request: &AttachRequest,
        host: &str,
        address: Ipv4Net,
        gateway: Ipv4Addr,
        mtu: u32,
    ) -> Result<Attachment, RuntimeError> {
        let host = host.to_string();
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
    /// success; answers whether something was. It acts on the record of exactly this
    /// container id and ifname: without one, no link is touched but the leftovers of an
    /// unfinished attach that holds an address (see `Runtime::sweep_leftovers`).
    pub async fn detach(&self, container_id: &str, ifname: &str) -> Result<bool, RuntimeError> {
        let mut inner = self.inner.lock().await;
        let key = (container_id.to_string(), ifname.to_string());
        let owner = owner(container_id, ifname);
        let record = inner.desired.attachments.get(&key).cloned();
        let held = inner.desired.allocations.contains_key(&owner);
        let deleted = match &record {
            Some(record) => self.kernel.delete_link(&record.host_ifname).await?,
            None if held => {
                self.sweep_leftovers(&recorded(&inner), container_id, ifname)
                    .await?
                    > 0
            }
            None => false,
        };
        if record.is_some() || held {
            inner.with_store(1, |s| s.delete_attachment(container_id, ifname, &owner))?;
            inner.desired.attachments.remove(&key);
            inner.desired.allocations.remove(&owner);
            self.metrics
                .allocated_ips
                .set(inner.desired.allocations.len() as i64);
        }
        let was_attached = record.is_some();
        if was_attached || deleted || held {
            let host = record.map(|r| r.host_ifname).unwrap_or_default();
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
}

/// The host names attachments record.
pub(super) fn recorded(inner: &Inner) -> BTreeSet<String> {
    inner
        .desired
        .attachments
        .values()
        .map(|r| r.host_ifname.clone())
        .collect()
}

/// Kernel failures of attach; a namespace that cannot be entered is the caller's input.
pub(super) fn attach_error(e: KernelError) -> RuntimeError {
    match e {
        KernelError::Netns { name, message } => RuntimeError::BadField {
            field: "netns_path",
            value: quilt_common::cluster::excerpt(&name),
            reason: format!("not usable: {message}"),
        },
        other => RuntimeError::Kernel(other),
    }
}
