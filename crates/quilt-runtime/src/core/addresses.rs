//! Container address allocation: AllocateIp and ReleaseIp, and the same under a lock
//! the caller already holds (for attach, detach and reconcile).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use quilt_kernel::Kernel;
use tracing::info;

use super::{Inner, Runtime};
use crate::model::{Lease, OWNER_PREFIX};
use crate::{RuntimeError, ipam};

impl<K: Kernel> Runtime<K> {
    /// An address for `owner` from the node subnet; the same owner gets the same one.
    /// Owners `attach:...` are the runtime's own (one per attachment) and refused here:
    /// answering one would hand an attached container's address to a second user.
    pub async fn allocate(&self, owner: &str) -> Result<Lease, RuntimeError> {
        if owner.starts_with(OWNER_PREFIX) {
            return Err(RuntimeError::ReservedOwner {
                owner: owner.to_string(),
            });
        }
        let mut inner = self.inner.lock().await;
        self.allocate_in(&mut inner, owner).map(|(lease, _)| lease)
    }

    /// [`Runtime::allocate`] under the caller's lock; also answers whether the address
    /// was newly allocated (rather than already held by `owner`).
    pub(super) fn allocate_in(
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
        let used = ipam::in_use(&inner.desired);
        let address = ipam::next_free(subnet, &used).ok_or(RuntimeError::PoolExhausted(subnet))?;
        inner.with_store(1, |s| s.put_allocation(owner, address))?;
        inner.desired.allocations.insert(owner.to_string(), address);
        self.metrics
            .allocated_ips
            .set(inner.desired.allocations.len() as i64);
        info!(%owner, %address, "container address allocated");
        Ok((lease(address), true))
    }

    /// Gives `owner`'s address back under the caller's lock.
    pub(super) fn release_in(&self, inner: &mut Inner, owner: &str) -> Result<(), RuntimeError> {
        if let Some(address) = inner.desired.allocations.get(owner).copied() {
            inner.with_store(1, |s| s.delete_allocation(owner))?;
            inner.desired.allocations.remove(owner);
            self.metrics
                .allocated_ips
                .set(inner.desired.allocations.len() as i64);
            info!(%owner, %address, "container address released");
        }
        Ok(())
    }

    /// The node subnet and every allocation (without copying the rest of the state).
    pub async fn allocations(&self) -> (Option<Ipv4Net>, BTreeMap<String, Ipv4Addr>) {
        let inner = self.inner.lock().await;
        (inner.desired.subnet, inner.desired.allocations.clone())
    }

    /// Gives `owner`'s address back; nothing held is success. An attachment's address
    /// (owner `attach:<id>/<ifname>`) is refused: only detaching releases it, so it can
    /// never be handed to a second owner while the container still uses it.
    pub async fn release(&self, owner: &str) -> Result<(), RuntimeError> {
        if owner.starts_with(OWNER_PREFIX) {
            return Err(RuntimeError::OwnedByAttachment {
                owner: owner.to_string(),
            });
        }
        let mut inner = self.inner.lock().await;
        self.release_in(&mut inner, owner)
    }
}
