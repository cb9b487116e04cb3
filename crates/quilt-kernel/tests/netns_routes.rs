//! The real netlink kernel inside a fresh network namespace: routes over nexthop
//! objects, ownership by route protocol, and lookups.

use std::net::Ipv4Addr;

use quilt_kernel::netlink::NetlinkKernel;
use quilt_kernel::{Kernel, KernelError, Route};
use quilt_testkit::netns::{
    OwnedNetns, Underlay, block_on_in, host_with_overlay, privileged_or_skip,
};

const PROTO: u8 = 158;

fn namespace_with_overlay() -> OwnedNetns {
    host_with_overlay("qk", "192.168.50.1/24")
}

#[test]
fn gateway_routes_use_nexthops_and_respect_ownership() {
    if !privileged_or_skip("gateway_routes_use_nexthops_and_respect_ownership") {
        return;
    }
    let ns = namespace_with_overlay();
    let route = Route {
        destination: "10.42.2.0/24".parse().unwrap(),
        interface: "vxlan100".into(),
        gateway: Some(Ipv4Addr::new(10, 42, 2, 0)),
        protocol: PROTO,
    };
    let route2 = route.clone();
    block_on_in(ns.name(), async move || {
        let k = &NetlinkKernel::open().expect("netlink");
        k.add_route(&route2).await.expect("add");
        let again = k.add_route(&route2).await.unwrap_err();
        assert!(
            matches!(
                again,
                KernelError::RouteExists {
                    protocol: PROTO,
                    ..
                }
            ),
            "{again}"
        );
        assert_eq!(
            k.route(route2.destination).await.unwrap(),
            Some(route2.clone())
        );
        assert_eq!(k.routes(PROTO).await.unwrap(), vec![route2.clone()]);
    });
    let shown = ns.ip(&["route", "show", "10.42.2.0/24"]).unwrap();
    assert!(
        shown.contains("via 10.42.2.0 dev vxlan100 proto 158 onlink"),
        "{shown}"
    );
    assert!(shown.contains("nhid"), "{shown}");

    // An operator's route with another protocol is never deleted by us.
    ns.ip(&["route", "add", "10.42.9.0/24", "dev", "vxlan100"])
        .unwrap();
    let dest = route.destination;
    block_on_in(ns.name(), async move || {
        let k = &NetlinkKernel::open().expect("netlink");
        assert!(
            !k.delete_route("10.42.9.0/24".parse().unwrap(), PROTO)
                .await
                .unwrap()
        );
        assert!(k.delete_route(dest, PROTO).await.unwrap());
        assert!(!k.delete_route(dest, PROTO).await.unwrap());
        assert_eq!(k.route(dest).await.unwrap(), None);
    });
    assert!(
        ns.ip(&["route", "show", "10.42.9.0/24"])
            .unwrap()
            .contains("vxlan100")
    );
    let nexthops = ns.ip(&["nexthop", "show"]).unwrap();
    assert!(
        nexthops.trim().is_empty(),
        "the nexthop went with its route: {nexthops}"
    );
}

#[test]
fn a_route_goes_back_over_a_recreated_device() {
    if !privileged_or_skip("a_route_goes_back_over_a_recreated_device") {
        return;
    }
    let ns = namespace_with_overlay();
    let route = Route {
        destination: "10.42.2.0/24".parse().unwrap(),
        interface: "vxlan100".into(),
        gateway: Some(Ipv4Addr::new(10, 42, 2, 0)),
        protocol: PROTO,
    };
    // One connection throughout, as in a running runtime: the device it learned the
    // index of goes away and comes back under another index (as the agent rebuilds it).
    let recreate = || {
        ns.ip(&["link", "del", "vxlan100"]).unwrap();
        ns.add_vxlan100("192.168.50.1").unwrap();
    };
    block_on_in(ns.name(), async move || {
        let k = &NetlinkKernel::open().expect("netlink");
        k.add_route(&route).await.expect("add");
        recreate();
        assert_eq!(k.route(route.destination).await.unwrap(), None);
        k.add_route(&route).await.expect("add over the new device");
        assert_eq!(
            k.route(route.destination).await.unwrap(),
            Some(route.clone())
        );
        // The batch way (what the runtime uses) too.
        recreate();
        let added = k.add_routes(std::slice::from_ref(&route)).await;
        assert!(added.iter().all(Result::is_ok), "{added:?}");
        assert_eq!(k.route(route.destination).await.unwrap(), Some(route));
    });
}

#[test]
fn a_batch_of_routes_goes_in_together_and_each_answers_for_itself() {
    if !privileged_or_skip("a_batch_of_routes_goes_in_together_and_each_answers_for_itself") {
        return;
    }
    let ns = namespace_with_overlay();
    ns.ip(&["route", "add", "10.42.9.0/24", "dev", "vxlan100"])
        .unwrap();
    let route = |n: u8, interface: &str| Route {
        destination: format!("10.42.{n}.0/24").parse().unwrap(),
        interface: interface.into(),
        gateway: Some(Ipv4Addr::new(10, 42, n, 0)),
        protocol: PROTO,
    };
    let mut batch: Vec<Route> = (10..210).map(|n| route(n, "vxlan100")).collect();
    batch.push(route(9, "vxlan100")); // the operator's destination
    batch.push(route(3, "vxlan999")); // no such interface
    let batch2 = batch.clone();
    let results = block_on_in(ns.name(), async move || {
        let k = &NetlinkKernel::open().expect("netlink");
        k.add_routes(&batch2).await
    });
    assert!(
        results[..200].iter().all(|r| r.is_ok()),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    assert!(
        matches!(
            results[200],
            Err(KernelError::RouteExists { protocol: 3, .. })
        ),
        "{:?}",
        results[200]
    );
    assert!(
        matches!(results[201], Err(KernelError::NoSuchLink(_))),
        "{:?}",
        results[201]
    );
    let shown = ns.ip(&["route", "show", "proto", "158"]).unwrap();
    assert_eq!(shown.lines().count(), 200, "{shown}");
    assert!(shown.contains("10.42.57.0/24 nhid"), "{shown}");
    let nexthops = ns.ip(&["nexthop", "show"]).unwrap();
    assert_eq!(
        nexthops.lines().count(),
        200,
        "no nexthop left over from refused routes"
    );

    // The same batch again: every route of ours is already there.
    let again = block_on_in(ns.name(), async move || {
        let k = &NetlinkKernel::open().expect("netlink");
        k.add_routes(&batch[..200]).await
    });
    assert!(again.iter().all(|r| matches!(
        r,
        Err(KernelError::RouteExists {
            protocol: PROTO,
            ..
        })
    )));
    assert_eq!(ns.ip(&["nexthop", "show"]).unwrap().lines().count(), 200);
}

#[test]
fn lookups_see_through_more_specific_routes_and_refusals_leave_no_nexthop() {
    if !privileged_or_skip("lookups_see_through_more_specific_routes_and_refusals_leave_no_nexthop")
    {
        return;
    }
    let ns = namespace_with_overlay();
    ns.ip(&["route", "add", "10.42.9.0/24", "dev", "vxlan100"])
        .unwrap();
    ns.ip(&["route", "add", "10.42.9.0/25", "dev", "vxlan100"])
        .unwrap();
    ns.ip(&["route", "add", "10.42.5.0/25", "dev", "vxlan100"])
        .unwrap();
    let ours = Route {
        destination: "10.42.5.0/24".parse().unwrap(),
        interface: "vxlan100".into(),
        gateway: Some(Ipv4Addr::new(10, 42, 5, 0)),
        protocol: PROTO,
    };
    let refused = Route {
        destination: "10.42.9.0/24".parse().unwrap(),
        gateway: Some(Ipv4Addr::new(10, 42, 9, 0)),
        ..ours.clone()
    };
    let ours2 = ours.clone();
    block_on_in(ns.name(), async move || {
        let k = &NetlinkKernel::open().expect("netlink");
        k.add_route(&ours2).await.unwrap();
        // Hidden behind a /25, both /24s are still found exactly.
        assert_eq!(
            k.route(ours2.destination).await.unwrap(),
            Some(ours2.clone())
        );
        let operators = k
            .route(refused.destination)
            .await
            .unwrap()
            .expect("the operator's /24");
        assert_ne!(operators.protocol, PROTO);
        // A refused add leaves no nexthop of its own behind.
        let err = k.add_route(&refused).await.unwrap_err();
        assert!(matches!(err, KernelError::RouteExists { .. }), "{err}");
        // Deleting ours must not be confused by the /25 either.
        assert!(k.delete_route(ours2.destination, PROTO).await.unwrap());
    });
    let nexthops = ns.ip(&["nexthop", "show"]).unwrap();
    assert!(nexthops.trim().is_empty(), "{nexthops}");
}
