//! The planner: desired peers and what the kernel and the runtime hold become one
//! [`PeerPlan`], the operations that make them agree. Pure, so "no stale entry or
//! route, no missing one" is tested without a kernel. A full resync plans every peer
//! against everything observed; a watch event plans one peer against what was applied
//! for it (see [`observed_for`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use quilt_kernel::overlay::{FdbEntry, Mac, Neighbour};

use crate::peers::Peer;
use crate::runtime::ManagedRoute;

/// One change to the VXLAN device's entries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryOp {
    SetNeighbour(Neighbour),
    SetFdb(FdbEntry),
    DeleteNeighbour(Ipv4Addr),
    DeleteFdb(FdbEntry),
}

/// What the device and the runtime hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
    pub routes: Vec<ManagedRoute>,
}

/// What to change, in the order the executor applies it: route removals, entry
/// removals (neighbours before FDB entries), entry additions (per peer, neighbour
/// before FDB), then route additions (all in one runtime call).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    pub route_removals: Vec<Ipv4Net>,
    pub entry_removals: Vec<EntryOp>,
    pub entry_additions: Vec<EntryOp>,
    /// Peers whose route the runtime must add or correct.
    pub route_additions: Vec<Peer>,
}

impl PeerPlan {
    pub fn is_empty(&self) -> bool {
        self.route_removals.is_empty()
            && self.entry_removals.is_empty()
            && self.entry_additions.is_empty()
            && self.route_additions.is_empty()
    }

    /// The route additions to send once the entry additions ran and `failed` of them
    /// failed: a peer whose neighbour or FDB entry failed gets no route yet.
    pub fn ready_routes(&self, failed: &BTreeSet<EntryOp>) -> Vec<&Peer> {
        self.route_additions
            .iter()
            .filter(|p| !entries_failed(p, failed))
            .collect()
    }

    /// The route additions held back because their peer's entries failed.
    pub fn held_back(&self, failed: &BTreeSet<EntryOp>) -> Vec<&Peer> {
        self.route_additions
            .iter()
            .filter(|p| entries_failed(p, failed))
            .collect()
    }
}

/// Whether adding `peer`'s neighbour or FDB entry is among the `failed` operations.
pub fn entries_failed(peer: &Peer, failed: &BTreeSet<EntryOp>) -> bool {
    peer.neighbour()
        .is_some_and(|n| failed.contains(&EntryOp::SetNeighbour(n)))
        || failed.contains(&EntryOp::SetFdb(peer.fdb()))
}

/// Plans `desired` peers against `observed`. Every permanent entry on the device is
/// the agent's (it made the device), and every route the runtime manages is the mesh's.
/// A route is added unless the runtime holds it via the peer's gateway (none for a
/// peer without a VTEP MAC) over `device` and the kernel has it. A unicast FDB entry is
/// replaced in place when its peer moves; flood entries, one per destination, are not.
pub fn plan(desired: &BTreeMap<String, Peer>, observed: &Observed, device: &str) -> PeerPlan {
    let have_neighbours: BTreeMap<Ipv4Addr, Neighbour> =
        observed.neighbours.iter().map(|n| (n.ip, *n)).collect();
    let have_fdb: BTreeSet<FdbEntry> = observed.fdb.iter().copied().collect();
    let want_neighbours: BTreeSet<Ipv4Addr> = desired.values().filter_map(Peer::gateway).collect();
    let want_fdb: BTreeSet<FdbEntry> = desired.values().map(Peer::fdb).collect();
    let want_fdb_macs: BTreeSet<Mac> = want_fdb.iter().map(|w| w.mac).collect();
    let wanted_routes: BTreeSet<Ipv4Net> = desired.values().map(|p| p.subnet).collect();
    let have_routes: BTreeMap<Ipv4Net, &ManagedRoute> =
        observed.routes.iter().map(|r| (r.destination, r)).collect();

    let mut plan = PeerPlan::default();
    for route in &observed.routes {
        if !wanted_routes.contains(&route.destination) {
            plan.route_removals.push(route.destination);
        }
    }
    for neighbour in have_neighbours.values() {
        if !want_neighbours.contains(&neighbour.ip) {
            plan.entry_removals
                .push(EntryOp::DeleteNeighbour(neighbour.ip));
        }
    }
    for entry in &have_fdb {
        let replaced = !entry.is_flood() && want_fdb_macs.contains(&entry.mac);
        if !want_fdb.contains(entry) && !replaced {
            plan.entry_removals.push(EntryOp::DeleteFdb(*entry));
        }
    }
    for peer in desired.values() {
        if let Some(neighbour) = peer.neighbour()
            && have_neighbours.get(&neighbour.ip) != Some(&neighbour)
        {
            plan.entry_additions.push(EntryOp::SetNeighbour(neighbour));
        }
        if !have_fdb.contains(&peer.fdb()) {
            plan.entry_additions.push(EntryOp::SetFdb(peer.fdb()));
        }
        let in_place = have_routes
            .get(&peer.subnet)
            .is_some_and(|r| r.gateway == peer.gateway() && r.interface == device && r.in_kernel);
        if !in_place {
            plan.route_additions.push(peer.clone());
        }
    }
    plan
}

/// What the kernel and the runtime hold for one peer once its entries and route were
/// applied: the observed side of a watch event's plan.
pub fn observed_for(applied: Option<&Peer>, device: &str) -> Observed {
    match applied {
        None => Observed::default(),
        Some(peer) => Observed {
            neighbours: peer.neighbour().into_iter().collect(),
            fdb: vec![peer.fdb()],
            routes: vec![ManagedRoute {
                destination: peer.subnet,
                interface: device.to_string(),
                gateway: peer.gateway(),
                in_kernel: true,
            }],
        },
    }
}

/// The one-peer desired set of a watch event.
pub fn one(peer: Option<&Peer>) -> BTreeMap<String, Peer> {
    peer.map(|p| (p.node_id.clone(), p.clone()))
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: &str = "vxlan100";

    fn peer(n: u8) -> Peer {
        Peer {
            node_id: format!("node-{n}"),
            hostname: format!("host{n}"),
            subnet: format!("10.42.{n}.0/24").parse().unwrap(),
            host_ip: Ipv4Addr::new(192, 168, 77, 10 + n),
            vtep_mac: Some(format!("02:00:00:00:00:0{n}").parse().unwrap()),
            port: None,
        }
    }

    fn peers(ids: &[u8]) -> BTreeMap<String, Peer> {
        ids.iter()
            .map(|n| peer(*n))
            .map(|p| (p.node_id.clone(), p))
            .collect()
    }

    /// What the kernel and the runtime hold once `peers` are applied.
    fn converged(peers: &BTreeMap<String, Peer>) -> Observed {
        let mut all = Observed::default();
        for p in peers.values() {
            let one = observed_for(Some(p), DEVICE);
            all.neighbours.extend(one.neighbours);
            all.fdb.extend(one.fdb);
            all.routes.extend(one.routes);
        }
        all
    }

    #[test]
    fn a_new_peer_gets_neighbour_then_fdb_then_its_route() {
        let want = peers(&[2]);
        let p = &want["node-2"];
        let plan = plan(&want, &Observed::default(), DEVICE);
        assert_eq!(
            plan.entry_additions,
            vec![
                EntryOp::SetNeighbour(p.neighbour().unwrap()),
                EntryOp::SetFdb(p.fdb())
            ]
        );
        assert_eq!(plan.route_additions, vec![p.clone()]);
        assert!(plan.route_removals.is_empty() && plan.entry_removals.is_empty());
    }

    #[test]
    fn converged_peers_need_nothing() {
        let want = peers(&[2, 3]);
        assert!(plan(&want, &converged(&want), DEVICE).is_empty());
    }

    #[test]
    fn a_route_the_kernel_lost_or_that_points_elsewhere_is_added_again() {
        let want = peers(&[2, 3]);
        let mut observed = converged(&want);
        observed.routes[0].in_kernel = false;
        observed.routes[1].gateway = Some(Ipv4Addr::new(10, 42, 9, 0));
        let plan = plan(&want, &observed, DEVICE);
        assert_eq!(plan.route_additions, vec![peer(2), peer(3)]);
        assert!(plan.entry_additions.is_empty() && plan.route_removals.is_empty());
    }

    #[test]
    fn a_gone_peer_loses_route_and_entries_and_a_moved_one_is_replaced() {
        let before = peers(&[2, 3]);
        let mut after = peers(&[2]);
        after.get_mut("node-2").unwrap().host_ip = Ipv4Addr::new(192, 168, 77, 99);
        let p = plan(&after, &converged(&before), DEVICE);
        assert_eq!(p.route_removals, vec![before["node-3"].subnet]);
        assert_eq!(
            p.entry_removals,
            vec![
                EntryOp::DeleteNeighbour(before["node-3"].gateway().unwrap()),
                EntryOp::DeleteFdb(before["node-3"].fdb()),
            ]
        );
        assert_eq!(
            p.entry_additions,
            vec![EntryOp::SetFdb(after["node-2"].fdb())]
        );
        assert!(p.route_additions.is_empty(), "the route did not change");
    }

    #[test]
    fn a_peer_whose_entries_failed_gets_no_route_yet() {
        let want = peers(&[2, 3, 4]);
        let plan = plan(&want, &Observed::default(), DEVICE);
        let failed: BTreeSet<EntryOp> = [EntryOp::SetFdb(peer(3).fdb())].into();
        assert_eq!(plan.ready_routes(&failed), vec![&peer(2), &peer(4)]);
        assert_eq!(plan.held_back(&failed), vec![&peer(3)]);
        assert_eq!(plan.ready_routes(&BTreeSet::new()).len(), 3);
    }

    #[test]
    fn an_event_is_the_plan_for_one_peer() {
        let old = peer(2);
        // Deleted: its route, then its entries.
        let gone = plan(&one(None), &observed_for(Some(&old), DEVICE), DEVICE);
        assert_eq!(gone.route_removals, vec![old.subnet]);
        assert_eq!(
            gone.entry_removals,
            vec![
                EntryOp::DeleteNeighbour(old.gateway().unwrap()),
                EntryOp::DeleteFdb(old.fdb())
            ]
        );
        assert!(gone.entry_additions.is_empty() && gone.route_additions.is_empty());

        // Re-registered with a new subnet: the old route goes, the new one comes.
        let mut moved = old.clone();
        moved.subnet = "10.42.7.0/24".parse().unwrap();
        let p = plan(
            &one(Some(&moved)),
            &observed_for(Some(&old), DEVICE),
            DEVICE,
        );
        assert_eq!(p.route_removals, vec![old.subnet]);
        assert_eq!(
            p.entry_removals,
            vec![EntryOp::DeleteNeighbour(old.gateway().unwrap())]
        );
        assert_eq!(
            p.entry_additions,
            vec![EntryOp::SetNeighbour(moved.neighbour().unwrap())]
        );
        assert_eq!(p.route_additions, vec![moved.clone()]);

        // Unchanged: nothing.
        assert!(plan(&one(Some(&old)), &observed_for(Some(&old), DEVICE), DEVICE).is_empty());
    }

    /// A peer that registered no VTEP MAC, as the original agents do.
    fn flooded(n: u8) -> Peer {
        Peer {
            vtep_mac: None,
            ..peer(n)
        }
    }

    #[test]
    fn a_peer_without_a_mac_gets_a_flood_entry_and_a_gateway_less_route() {
        let mut want = peers(&[2]);
        for p in [flooded(3), flooded(4)] {
            want.insert(p.node_id.clone(), p);
        }
        let p = plan(&want, &Observed::default(), DEVICE);
        let zero = Mac([0; 6]);
        assert_eq!(
            p.entry_additions,
            vec![
                EntryOp::SetNeighbour(peer(2).neighbour().unwrap()),
                EntryOp::SetFdb(peer(2).fdb()),
                EntryOp::SetFdb(FdbEntry {
                    mac: zero,
                    destination: Ipv4Addr::new(192, 168, 77, 13),
                    port: None
                }),
                EntryOp::SetFdb(FdbEntry {
                    mac: zero,
                    destination: Ipv4Addr::new(192, 168, 77, 14),
                    port: None
                }),
            ],
            "no neighbour entry for a peer without a MAC"
        );
        assert_eq!(p.route_additions.len(), 3);
        assert_eq!(flooded(3).gateway(), None);
        assert!(
            plan(&want, &converged(&want), DEVICE).is_empty(),
            "flood entries side by side are all in place"
        );

        // One flood peer leaves: only its flood entry goes, not the other's.
        let mut fewer = want.clone();
        fewer.remove("node-4");
        let p = plan(&fewer, &converged(&want), DEVICE);
        assert_eq!(p.entry_removals, vec![EntryOp::DeleteFdb(flooded(4).fdb())]);
        assert_eq!(p.route_removals, vec![flooded(4).subnet]);
    }

    #[test]
    fn a_peer_that_gains_a_mac_moves_from_flooding_to_its_own_entries() {
        let before = one(Some(&flooded(3)));
        let after = one(Some(&peer(3)));
        let p = plan(&after, &converged(&before), DEVICE);
        assert_eq!(p.entry_removals, vec![EntryOp::DeleteFdb(flooded(3).fdb())]);
        assert_eq!(
            p.entry_additions,
            vec![
                EntryOp::SetNeighbour(peer(3).neighbour().unwrap()),
                EntryOp::SetFdb(peer(3).fdb())
            ]
        );
        assert_eq!(p.route_additions, vec![peer(3)], "now via its gateway");
    }
}
