//! The reconcile planner: desired routes and what the kernel holds become a list of
//! operations. Pure, so "no stale route, no missing route" is tested without a kernel.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use quilt_kernel::Route;

use crate::model::ManagedRoute;

/// One change the kernel needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOp {
    /// A desired route is missing.
    Add(Route),
    /// Our route is there but points elsewhere.
    Replace(Route),
    /// A route of ours that is no longer desired.
    Delete(Ipv4Net),
}

/// Plans the operations that make the kernel hold exactly the desired routes.
/// `observed` are the kernel's routes carrying our protocol; `present_interfaces` the
/// interfaces that exist now (a desired route over a missing interface waits for it).
pub fn plan(
    desired: &BTreeMap<Ipv4Net, ManagedRoute>,
    observed: &[Route],
    present_interfaces: &BTreeSet<String>,
    protocol: u8,
) -> Vec<RouteOp> {
    let observed_by_destination: BTreeMap<Ipv4Net, &Route> =
        observed.iter().map(|r| (r.destination, r)).collect();
    let mut ops = Vec::new();
    for (destination, want) in desired {
        let route = Route {
            destination: *destination,
            interface: want.interface.clone(),
            gateway: want.gateway,
            protocol,
        };
        match observed_by_destination.get(destination) {
            Some(have) if **have == route => {}
            _ if !present_interfaces.contains(&want.interface) => {}
            Some(_) => ops.push(RouteOp::Replace(route)),
            None => ops.push(RouteOp::Add(route)),
        }
    }
    for destination in observed_by_destination.keys() {
        if !desired.contains_key(destination) {
            ops.push(RouteOp::Delete(*destination));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const P: u8 = 158;

    fn want(dest: &str, gw: Option<[u8; 4]>) -> (Ipv4Net, ManagedRoute) {
        let destination: Ipv4Net = dest.parse().unwrap();
        (
            destination,
            ManagedRoute {
                destination,
                interface: "vxlan100".into(),
                gateway: gw.map(Ipv4Addr::from),
            },
        )
    }

    fn have(dest: &str, gw: Option<[u8; 4]>) -> Route {
        Route {
            destination: dest.parse().unwrap(),
            interface: "vxlan100".into(),
            gateway: gw.map(Ipv4Addr::from),
            protocol: P,
        }
    }

    fn up() -> BTreeSet<String> {
        ["vxlan100".to_string()].into()
    }

    #[test]
    fn converged_state_needs_nothing() {
        let desired = BTreeMap::from([want("10.42.2.0/24", Some([10, 42, 2, 0]))]);
        assert!(
            plan(
                &desired,
                &[have("10.42.2.0/24", Some([10, 42, 2, 0]))],
                &up(),
                P
            )
            .is_empty()
        );
    }

    #[test]
    fn adds_missing_replaces_wrong_and_deletes_stale() {
        let desired = BTreeMap::from([
            want("10.42.2.0/24", Some([10, 42, 2, 0])),
            want("10.42.3.0/24", Some([10, 42, 3, 0])),
        ]);
        let observed = [have("10.42.3.0/24", None), have("10.42.9.0/24", None)];
        assert_eq!(
            plan(&desired, &observed, &up(), P),
            vec![
                RouteOp::Add(have("10.42.2.0/24", Some([10, 42, 2, 0]))),
                RouteOp::Replace(have("10.42.3.0/24", Some([10, 42, 3, 0]))),
                RouteOp::Delete("10.42.9.0/24".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn waits_for_a_missing_interface() {
        let desired = BTreeMap::from([want("10.42.2.0/24", None)]);
        assert!(plan(&desired, &[], &BTreeSet::new(), P).is_empty());
    }
}
