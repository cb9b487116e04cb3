//! The agent's nftables table `inet quilt` and its marked accept rules in iptables'
//! FORWARD chain: observed and planned at every full reconcile (so a flushed or deleted
//! table is back within a resync), the members set changed by element with every watch
//! event, and everything taken away on `--leave-on-exit`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use quilt_kernel::KernelError;
use quilt_kernel::firewall::{self, Firewall, FirewallOp, MeshRules};
use quilt_kernel::overlay::Overlay;
use tracing::{info, warn};

use super::{Agent, Registered};

impl<O: Overlay, F: Firewall> Agent<O, F> {
    /// The member host addresses: every peer's.
    fn members(&self) -> BTreeSet<Ipv4Addr> {
        self.peers.values().map(|p| p.host_ip).collect()
    }

    fn mesh_rules(&self, registered: &Registered) -> MeshRules {
        MeshRules {
            subnet: registered.subnet,
            cluster: registered.cluster_cidr,
            masquerade: self.config.masquerade,
            vxlan_port: self.config.vxlan_port,
            members: self.members(),
            forward_interfaces: vec![
                self.spec_template.name.clone(),
                self.config.bridge_interface.clone(),
            ],
        }
    }

    /// Observes the filter and makes it what it should be; answers the changes made.
    pub(super) async fn reconcile_firewall(
        &mut self,
        registered: &Registered,
    ) -> Result<u64, KernelError> {
        let desired = self.mesh_rules(registered);
        let observed = self.firewall.observe().await?;
        let why = firewall::table_difference(&desired, &observed);
        let ops = firewall::plan(&desired, &observed);
        if ops.is_empty() {
            self.firewall_members = Some(desired.members);
            return Ok(0);
        }
        self.firewall_members = None;
        self.firewall.apply(&ops).await?;
        for op in &ops {
            log_op(op, why.as_deref(), self.synced);
        }
        self.firewall_members = Some(desired.members);
        Ok(ops.len() as u64)
    }

    /// Brings the members set in line with the peers, by element, against what was last
    /// applied (a full reconcile follows when that is not known or the change fails).
    pub(super) async fn sync_members(&mut self) -> Result<(), KernelError> {
        let Some(have) = self.firewall_members.clone() else {
            return Err(KernelError::Other {
                operation: "update set inet quilt vxlan_members".into(),
                message: "the table's state is not known yet".into(),
            });
        };
        let want = self.members();
        let ops = firewall::member_changes(&have, &want);
        if ops.is_empty() {
            return Ok(());
        }
        self.firewall_members = None;
        self.firewall.apply(&ops).await?;
        for op in &ops {
            log_op(op, None, true);
        }
        self.firewall_members = Some(want);
        Ok(())
    }

    /// Takes away the table and the marked rules (leaving).
    pub(super) async fn remove_firewall(&mut self) {
        let observed = match self.firewall.observe().await {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "could not read nftables while leaving");
                return;
            }
        };
        let ops = firewall::plan_removal(&observed);
        match self.firewall.apply(&ops).await {
            Ok(()) => {
                for op in &ops {
                    log_op(op, None, true);
                }
            }
            Err(e) => warn!(error = %e, "could not remove the nftables table while leaving"),
        }
    }
}

fn log_op(op: &FirewallOp, why: Option<&str>, repair: bool) {
    match op {
        FirewallOp::ReplaceTable(r) => {
            let why = why.unwrap_or("its rules differ");
            if repair {
                info!(
                    reason = why,
                    members = r.members.len(),
                    masquerade = r.masquerade,
                    "repair: nftables table inet quilt made again"
                );
            } else {
                info!(members = r.members.len(), masquerade = r.masquerade, subnet = %r.subnet, cluster = %r.cluster, "nftables table inet quilt created");
            }
        }
        FirewallOp::AddMembers(m) => {
            info!(members = ?m, "vxlan allow-list: members added")
        }
        FirewallOp::DeleteMembers(m) => {
            info!(members = ?m, "vxlan allow-list: members removed")
        }
        FirewallOp::DeleteTable => info!("nftables table inet quilt removed"),
        FirewallOp::DeleteMarked(rules) => {
            for r in rules {
                info!(chain = r.chain.name(), handle = r.handle, comment = %r.comment, "removed a marked rule from ip filter");
            }
        }
        FirewallOp::InsertForwardAccepts { chain, rules } => {
            info!(
                chain = chain.name(),
                rules = rules.len(),
                "accept rules for cluster forwarding put into ip filter (its forward policy may drop)"
            )
        }
    }
}
