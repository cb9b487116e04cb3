//! The overlay planner: desired peers and the entries the kernel holds become the
//! operations that make them agree. Pure, so "no stale entry, no missing entry" is
//! tested without a kernel. Routes are the runtime's; see [`stale_routes`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use quilt_kernel::overlay::{FdbEntry, Neighbour};

use crate::peers::Peer;

/// One change to the VXLAN device's entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOp {
    SetNeighbour(Neighbour),
    SetFdb(FdbEntry),
    DeleteNeighbour(Ipv4Addr),
    DeleteFdb(FdbEntry),
}

/// What to change: additions (per peer, neighbour before FDB) and removals (neighbours
/// before FDB entries, after the caller has removed the routes).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EntryPlan {
    pub additions: Vec<EntryOp>,
    pub removals: Vec<EntryOp>,
}

impl EntryPlan {
    pub fn is_empty(&self) -> bool {
        self.additions.is_empty() && self.removals.is_empty()
    }
}

/// Plans the entries for `desired` peers against the `neighbours` and `fdb` entries the
/// device holds. Every permanent entry on the device is the agent's: it made the device.
pub fn plan(
    desired: &BTreeMap<String, Peer>,
    neighbours: &[Neighbour],
    fdb: &[FdbEntry],
) -> EntryPlan {
    let have_neighbours: BTreeMap<Ipv4Addr, Neighbour> =
        neighbours.iter().map(|n| (n.ip, *n)).collect();
    let have_fdb: BTreeSet<FdbEntry> = fdb.iter().copied().collect();
    let want_neighbours: BTreeSet<Neighbour> = desired.values().map(Peer::neighbour).collect();
    let want_fdb: BTreeSet<FdbEntry> = desired.values().map(Peer::fdb).collect();

    let mut plan = EntryPlan::default();
    for peer in desired.values() {
        let neighbour = peer.neighbour();
        if have_neighbours.get(&neighbour.ip) != Some(&neighbour) {
            plan.additions.push(EntryOp::SetNeighbour(neighbour));
        }
        if !have_fdb.contains(&peer.fdb()) {
            plan.additions.push(EntryOp::SetFdb(peer.fdb()));
        }
    }
    for neighbour in have_neighbours.values() {
        if !want_neighbours.iter().any(|w| w.ip == neighbour.ip) {
            plan.removals.push(EntryOp::DeleteNeighbour(neighbour.ip));
        }
    }
    for entry in &have_fdb {
        let replaced = want_fdb.iter().any(|w| w.mac == entry.mac);
        if !want_fdb.contains(entry) && !replaced {
            plan.removals.push(EntryOp::DeleteFdb(*entry));
        }
    }
    plan
}

/// Routes the runtime manages that no peer wants any more.
pub fn stale_routes(managed: &[Ipv4Net], desired: &BTreeMap<String, Peer>) -> Vec<Ipv4Net> {
    let wanted: BTreeSet<Ipv4Net> = desired.values().map(|p| p.subnet).collect();
    managed
        .iter()
        .filter(|d| !wanted.contains(d))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use quilt_api::types::Status;

    use super::*;
    use crate::peers::{desired, tests::node};

    fn peers(ids: &[u8]) -> BTreeMap<String, Peer> {
        let nodes: Vec<_> = ids
            .iter()
            .map(|n| {
                node(
                    &format!("node-{n}"),
                    *n,
                    Status::Up,
                    Some(&format!("02:00:00:00:00:0{n}")),
                )
            })
            .collect();
        desired(&nodes, "node-1")
    }

    #[test]
    fn a_new_peer_gets_neighbour_then_fdb() {
        let want = peers(&[2]);
        let p = &want["node-2"];
        assert_eq!(
            plan(&want, &[], &[]).additions,
            vec![
                EntryOp::SetNeighbour(p.neighbour()),
                EntryOp::SetFdb(p.fdb())
            ]
        );
    }

    #[test]
    fn converged_entries_need_nothing() {
        let want = peers(&[2, 3]);
        let neighbours: Vec<_> = want.values().map(Peer::neighbour).collect();
        let fdb: Vec<_> = want.values().map(Peer::fdb).collect();
        assert!(plan(&want, &neighbours, &fdb).is_empty());
    }

    #[test]
    fn a_gone_peer_loses_its_entries_and_a_moved_one_is_replaced() {
        let before = peers(&[2, 3]);
        let neighbours: Vec<_> = before.values().map(Peer::neighbour).collect();
        let fdb: Vec<_> = before.values().map(Peer::fdb).collect();
        let mut after = peers(&[2]);
        after.get_mut("node-2").unwrap().host_ip = Ipv4Addr::new(192, 168, 77, 99);
        let p = plan(&after, &neighbours, &fdb);
        assert_eq!(p.additions, vec![EntryOp::SetFdb(after["node-2"].fdb())]);
        assert_eq!(
            p.removals,
            vec![
                EntryOp::DeleteNeighbour(before["node-3"].gateway()),
                EntryOp::DeleteFdb(before["node-3"].fdb()),
            ]
        );
    }

    #[test]
    fn routes_of_gone_peers_are_stale() {
        let want = peers(&[2]);
        let managed: Vec<Ipv4Net> = vec![
            "10.42.2.0/24".parse().unwrap(),
            "10.42.3.0/24".parse().unwrap(),
        ];
        assert_eq!(
            stale_routes(&managed, &want),
            vec!["10.42.3.0/24".parse::<Ipv4Net>().unwrap()]
        );
    }
}
