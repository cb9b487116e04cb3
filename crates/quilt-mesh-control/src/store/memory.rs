//! An in-memory [`Store`]: the same leases and revisions as SQLite, gone at exit. For tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use quilt_common::ClusterNetwork;

use super::{
    Change, ChangeKind, MarkDown, Registration, Revision, Store, StoreError, count, exhausted,
    lowest_free_index,
};
use crate::model::{Condition, MacAddr, NewNode, Node, NodeId, NodeStatus, TokenHash};

#[derive(Debug)]
pub struct MemoryStore {
    plan: ClusterNetwork,
    nodes: BTreeMap<NodeId, Node>,
    by_ip: HashMap<Ipv4Addr, NodeId>,
    leased: BTreeSet<u64>,
    next_id: u64,
    revision: Revision,
}

impl MemoryStore {
    pub fn new(plan: ClusterNetwork) -> Self {
        Self {
            plan,
            nodes: BTreeMap::new(),
            by_ip: HashMap::new(),
            leased: BTreeSet::new(),
            next_id: 1,
            revision: 0,
        }
    }

    fn change(&mut self, kind: ChangeKind, node: Node) -> Change {
        self.revision += 1;
        Change {
            revision: self.revision,
            kind,
            node,
        }
    }
}

impl Store for MemoryStore {
    fn revision(&mut self) -> Result<Revision, StoreError> {
        Ok(self.revision)
    }

    fn register(
        &mut self,
        new: &NewNode,
        token_hash: TokenHash,
        now_ms: u64,
    ) -> Result<Registration, StoreError> {
        let wanted = new
            .wanted_subnet
            .and_then(|subnet| self.plan.index_of(subnet))
            .filter(|index| *index >= 1 && !self.leased.contains(index));
        if let Some(id) = self.by_ip.get(&new.host_ip).copied() {
            let old = self.nodes[&id].clone();
            let mut node = old.renewed(new, token_hash, now_ms);
            if let Some(index) = wanted
                && let Some(subnet) = self.plan.subnet_at(index)
            {
                if let Some(previous) = self.plan.index_of(old.subnet) {
                    self.leased.remove(&previous);
                }
                self.leased.insert(index);
                node.subnet = subnet;
            }
            self.nodes.insert(id, node.clone());
            let change = old
                .differs_for_watchers(&node)
                .then(|| self.change(ChangeKind::Updated, node.clone()));
            return Ok(Registration {
                node,
                created: false,
                change,
            });
        }
        let index = wanted.unwrap_or_else(|| lowest_free_index(self.leased.iter().copied()));
        let subnet = self
            .plan
            .subnet_at(index)
            .ok_or_else(|| exhausted(&self.plan))?;
        let id = NodeId::new(self.next_id);
        self.next_id += 1;
        let node = new.leased(id, subnet, token_hash, now_ms);
        self.leased.insert(index);
        self.by_ip.insert(node.host_ip, id);
        self.nodes.insert(id, node.clone());
        let change = self.change(ChangeKind::Added, node.clone());
        Ok(Registration {
            node,
            created: true,
            change: Some(change),
        })
    }

    fn heartbeat(
        &mut self,
        id: NodeId,
        now_ms: u64,
        condition: Option<&Condition>,
    ) -> Result<Option<Change>, StoreError> {
        let node = self.nodes.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        node.last_heartbeat_ms = now_ms;
        if node.status == NodeStatus::Up && node.condition.as_ref() == condition {
            return Ok(None);
        }
        node.status = NodeStatus::Up;
        node.condition = condition.cloned();
        let node = node.clone();
        Ok(Some(self.change(ChangeKind::Updated, node)))
    }

    fn mac_holder(&mut self, mac: MacAddr) -> Result<Option<Node>, StoreError> {
        Ok(self
            .nodes
            .values()
            .find(|n| n.vtep_mac == Some(mac))
            .cloned())
    }

    fn get(&mut self, id: NodeId) -> Result<Option<Node>, StoreError> {
        Ok(self.nodes.get(&id).cloned())
    }

    fn list(&mut self) -> Result<(Vec<Node>, Revision), StoreError> {
        Ok((self.nodes.values().cloned().collect(), self.revision))
    }

    fn delete(&mut self, id: NodeId) -> Result<Change, StoreError> {
        let node = self.nodes.remove(&id).ok_or(StoreError::NotFound(id))?;
        self.by_ip.remove(&node.host_ip);
        if let Some(index) = self.plan.index_of(node.subnet) {
            self.leased.remove(&index);
        }
        Ok(self.change(ChangeKind::Deleted, node))
    }

    fn mark_down(&mut self, which: MarkDown) -> Result<Vec<Change>, StoreError> {
        let stale: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.status == NodeStatus::Up && which.selects(n))
            .map(|n| n.id)
            .collect();
        let mut changes = Vec::with_capacity(stale.len());
        for id in stale {
            let node = self.nodes.get_mut(&id).expect("listed above");
            node.status = NodeStatus::Down;
            let node = node.clone();
            changes.push(self.change(ChangeKind::Updated, node));
        }
        Ok(changes)
    }

    fn count_by_status(&mut self) -> Result<(u64, u64), StoreError> {
        Ok(count(self.nodes.values()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract;

    #[test]
    fn behaves_like_a_store() {
        contract::run_all(|plan| Box::new(MemoryStore::new(plan)));
    }
}
