//! Proxy ARP on the overlay device: what makes gateway-less routes (`subnet dev
//! vxlan100`, the original programs' form) carry container traffic. A peer with such a
//! route ARPs over the overlay for each container address of this node; with proxy ARP
//! and forwarding on the overlay device, this host answers for the addresses it routes
//! to `quilt0`. Asked when the node subnet is configured and again on every reconcile,
//! since the agent may make (or remake, losing its sysctls) the device later.

use quilt_kernel::Kernel;
use quilt_kernel::kernel::ProxyArp;
use tracing::{debug, info, warn};

use super::Runtime;

impl<K: Kernel> Runtime<K> {
    /// Turns proxy ARP and forwarding on for the overlay device, if there is one and a
    /// node subnet is configured; says so when it changed something.
    pub(super) async fn ensure_overlay_answers_arp(&self, subnet: Option<ipnet::Ipv4Net>) {
        let (Some(subnet), Some(device)) = (subnet, self.containers.overlay_interface.as_deref())
        else {
            return;
        };
        match self.kernel.ensure_proxy_arp(device).await {
            Ok(ProxyArp::TurnedOn) => {
                info!(%device, %subnet, "proxy ARP and forwarding on {device} for {subnet}: peers with gateway-less routes reach this node's containers")
            }
            Ok(ProxyArp::AlreadyOn) => {}
            Ok(ProxyArp::Missing) => {
                debug!(%device, "no overlay device yet; proxy ARP is turned on when it appears")
            }
            Err(e) => {
                warn!(%device, error = %e, "could not turn on proxy ARP on the overlay device")
            }
        }
    }
}
