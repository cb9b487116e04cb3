//! What every handle of one replica's etcd store knows without asking etcd: which subnet
//! indices are leased, and which node holds each host IP and VTEP MAC. Loaded when the
//! store opens and kept from etcd's watch by the feed (and by this replica's own writes, at
//! once). A guess only, never a decision: every write still compares with etcd, and a
//! compare that fails corrects the guess. It lets a new node be one transaction with no
//! read before it.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use quilt_common::ClusterNetwork;

use super::lock;
use crate::model::{MacAddr, NodeId};

#[derive(Debug, Default)]
pub(crate) struct Known {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    leases: BTreeSet<u64>,
    hosts: HashMap<Ipv4Addr, NodeId>,
    /// By the MAC's text (the key's own spelling).
    macs: HashMap<String, NodeId>,
    /// The etcd revision the load was read at: the feed's older events (its replay) are
    /// in it already.
    loaded_at: i64,
}

/// A change the feed saw, for [`Known::apply`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seen {
    Lease(u64),
    Host(Ipv4Addr, NodeId),
    Mac(MacAddr, NodeId),
}

impl Known {
    /// What the store's keys held at etcd revision `revision`.
    pub(crate) fn loaded(
        leases: impl IntoIterator<Item = u64>,
        hosts: impl IntoIterator<Item = (Ipv4Addr, NodeId)>,
        macs: impl IntoIterator<Item = (MacAddr, NodeId)>,
        revision: i64,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                leases: leases.into_iter().collect(),
                hosts: hosts.into_iter().collect(),
                macs: macs
                    .into_iter()
                    .map(|(m, id)| (m.to_string(), id))
                    .collect(),
                loaded_at: revision,
            }),
        }
    }

    /// A key was written (`present`) or deleted at etcd revision `revision`.
    pub(crate) fn apply(&self, seen: Seen, present: bool, revision: i64) {
        let mut inner = lock(&self.inner);
        if revision <= inner.loaded_at {
            return;
        }
        inner.note(seen, present);
    }

    /// What this replica just wrote, or learned from a failed compare.
    pub(crate) fn note(&self, seen: Seen, present: bool) {
        lock(&self.inner).note(seen, present);
    }

    pub(crate) fn host(&self, ip: Ipv4Addr) -> Option<NodeId> {
        lock(&self.inner).hosts.get(&ip).copied()
    }

    pub(crate) fn mac(&self, mac: MacAddr) -> Option<NodeId> {
        lock(&self.inner).macs.get(&mac.to_string()).copied()
    }

    /// Up to `wanted` subnet indices from `from` on that look free and are not in
    /// `passing` (being leased by another handle), in order; and the lowest index that
    /// looks free at all.
    pub(crate) fn free(
        &self,
        plan: &ClusterNetwork,
        from: u64,
        wanted: usize,
        passing: &BTreeSet<u64>,
    ) -> (Vec<u64>, Option<u64>) {
        let inner = lock(&self.inner);
        let mut used = inner.leases.range(from..).peekable();
        let mut free = Vec::new();
        let mut lowest = None;
        let mut candidate = from;
        while free.len() < wanted && plan.subnet_at(candidate).is_some() {
            while used.next_if(|u| **u < candidate).is_some() {}
            if used.next_if_eq(&&candidate).is_none() {
                lowest.get_or_insert(candidate);
                if !passing.contains(&candidate) {
                    free.push(candidate);
                }
            }
            candidate += 1;
        }
        (free, lowest)
    }
}

impl Inner {
    fn note(&mut self, seen: Seen, present: bool) {
        match (seen, present) {
            (Seen::Lease(index), true) => {
                self.leases.insert(index);
            }
            (Seen::Lease(index), false) => {
                self.leases.remove(&index);
            }
            (Seen::Host(ip, id), true) => {
                self.hosts.insert(ip, id);
            }
            (Seen::Host(ip, _), false) => {
                self.hosts.remove(&ip);
            }
            (Seen::Mac(mac, id), true) => {
                self.macs.insert(mac.to_string(), id);
            }
            (Seen::Mac(mac, _), false) => {
                self.macs.remove(&mac.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_indices_skip_the_used_and_the_passing_and_old_events_change_nothing() {
        let plan = ClusterNetwork::new("10.42.0.0/16".parse().unwrap(), 24).unwrap();
        let known = Known::loaded([1, 2, 4], [], [], 10);
        let passing = BTreeSet::from([3]);
        assert_eq!(known.free(&plan, 1, 2, &passing), (vec![5, 6], Some(3)));
        known.apply(Seen::Lease(5), true, 9);
        assert_eq!(
            known.free(&plan, 1, 1, &BTreeSet::new()).0,
            vec![3],
            "replayed"
        );
        known.apply(Seen::Lease(3), true, 11);
        known.apply(Seen::Lease(2), false, 12);
        assert_eq!(
            known.free(&plan, 1, 2, &BTreeSet::new()),
            (vec![2, 5], Some(2))
        );
        let tiny = ClusterNetwork::new("10.99.0.0/22".parse().unwrap(), 24).unwrap();
        let full = Known::loaded([1, 2, 3], [], [], 0);
        assert_eq!(full.free(&tiny, 1, 5, &BTreeSet::new()), (vec![], None));
    }
}
