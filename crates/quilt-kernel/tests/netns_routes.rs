//! The real netlink kernel inside a fresh network namespace: routes over nexthop
//! objects, ownership by route protocol, and lookups.

use std::net::Ipv4Addr;

use quilt_kernel::netlink::NetlinkKernel;
use quilt_kernel::netns::{self, OwnedNetns};
use quilt_kernel::{Kernel, KernelError, Route};

const PROTO: u8 = 158;

fn namespace_with_overlay() -> OwnedNetns {
    let ns = OwnedNetns::create(&netns::unique_name("qk")).expect("create netns");
    ns.add_underlay("192.168.50.1/24").expect("underlay");
    ns.add_vxlan100("192.168.50.1").expect("vxlan100");
    ns
}

fn in_ns<T: Send>(ns: &OwnedNetns, f: impl AsyncFnOnce(&NetlinkKernel) -> T + Send) -> T {
    quilt_kernel::netlink::with_kernel_in(ns.name(), f).expect("run in netns")
}

#[test]
fn gateway_routes_use_nexthops_and_respect_ownership() {
    if !netns::privileged_or_skip("gateway_routes_use_nexthops_and_respect_ownership") {
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
    in_ns(&ns, async move |k: &NetlinkKernel| {
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
    in_ns(&ns, async move |k: &NetlinkKernel| {
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
