//! Leaving on exit. `--leave-on-exit`: the agent takes away what it made (routes, then
//! the device and every entry on it, then its nftables table and marked rules), then
//! deletes its node. `--deregister-on-exit`:
//! it only marks its node down, keeping everything else. Best effort: each failure is
//! logged and the rest still goes.

use quilt_kernel::firewall::Firewall;
use quilt_kernel::overlay::Overlay;
use tracing::{info, warn};

use super::Agent;
use crate::device;
use crate::peers::Peer;

impl<O: Overlay, F: Firewall> Agent<O, F> {
    /// Routes, device (and every entry on it), then the registration.
    pub(super) async fn leave(&mut self) {
        let peers: Vec<Peer> = self.applied.values().cloned().collect();
        for peer in peers {
            if let Err(e) = self.runtime.remove_route(peer.subnet).await {
                warn!(subnet = %peer.subnet, error = %e, "could not remove route while leaving");
            }
        }
        let name = &self.spec_template.name;
        match self.kernel.vxlan(name).await {
            Ok(Some(device)) if device::is_ours(&device, &self.spec_template) => {
                match self.kernel.delete_vxlan(name).await {
                    Ok(_) => info!(device = %name, "vxlan device removed"),
                    Err(e) => warn!(error = %e, "could not remove the vxlan device while leaving"),
                }
            }
            Ok(Some(_)) => warn!(device = %name, "not removing a link this agent did not make"),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "could not look at the vxlan device while leaving"),
        }
        self.remove_firewall().await;
        if let Some(registered) = &self.registered {
            match self
                .control
                .leave(&registered.node_id, &registered.token)
                .await
            {
                Ok(()) => info!(node_id = %registered.node_id, "left the mesh"),
                Err(e) => warn!(error = %e, "could not deregister while leaving"),
            }
        }
    }

    /// Marks this node down on the control plane; the kernel keeps everything.
    pub(super) async fn deregister(&mut self) {
        let Some(registered) = &self.registered else {
            return;
        };
        match self
            .control
            .deregister(&registered.node_id, &registered.token)
            .await
        {
            Ok(()) => {
                info!(node_id = %registered.node_id, "deregistered: marked down until the next start; routes and device stay")
            }
            Err(e) => warn!(error = %e, "could not deregister on exit"),
        }
    }
}
