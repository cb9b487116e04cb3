//! The real netlink kernel's container operations inside fresh namespaces: a "host"
//! with the bridge, a "container" the veth peer lands in.

use std::path::Path;

use quilt_kernel::netlink::NetlinkKernel;
use quilt_kernel::netns;
use quilt_kernel::{ContainerInterface, Kernel, LinkKind, VethSpec};
use quilt_testkit::netns::{OwnedNetns, block_on_in, privileged_or_skip, unique_name};

#[test]
fn bridge_veth_and_container_side() {
    if !privileged_or_skip("bridge_veth_and_container_side") {
        return;
    }
    let host = OwnedNetns::create(&unique_name("qkh")).unwrap();
    let container = OwnedNetns::create(&unique_name("qkc")).unwrap();
    let container_path = netns::path(container.name());
    let plain_file = tempfile::NamedTempFile::new().unwrap();
    let plain = plain_file.path().to_path_buf();
    let cpath = container_path.clone();
    block_on_in(host.name(), async move || {
        let k = NetlinkKernel::open().expect("netlink");
        let bridge_address = "10.42.1.1/24".parse().unwrap();
        assert!(
            k.ensure_bridge("quilt0", bridge_address, 1450)
                .await
                .unwrap(),
            "created"
        );
        assert!(
            !k.ensure_bridge("quilt0", bridge_address, 1450)
                .await
                .unwrap(),
            "converged"
        );
        assert!(
            k.ensure_bridge("quilt0", bridge_address, 1400)
                .await
                .unwrap(),
            "mtu fixed"
        );
        let bridge = k.link("quilt0").await.unwrap().unwrap();
        assert_eq!((bridge.mtu, bridge.kind), (1400, Some(LinkKind::Bridge)));

        let veth = |netns: &Path| VethSpec {
            host: "qvtest".into(),
            bridge: "quilt0".into(),
            netns: netns.to_path_buf(),
            ifname: "eth0".into(),
            mtu: 1400,
        };
        // Not a namespace, or missing: refused, nothing made.
        let err = k.create_veth_into(&veth(&plain)).await.unwrap_err();
        assert!(err.to_string().contains("not a network namespace"), "{err}");
        assert!(
            k.create_veth_into(&veth(Path::new("/run/netns/quilt-missing")))
                .await
                .is_err()
        );
        assert!(k.link("qvtest").await.unwrap().is_none());

        k.create_veth_into(&veth(&cpath)).await.unwrap();
        assert!(k.link("qvtest").await.unwrap().is_some());
        assert!(
            k.link("eth0").await.unwrap().is_none(),
            "the peer is in the container"
        );
        let interface = ContainerInterface {
            ifname: "eth0".into(),
            address: "10.42.1.2/24".parse().unwrap(),
            gateway: "10.42.1.1".parse().unwrap(),
            mtu: 1400,
        };
        let link = k.configure_container(&cpath, &interface).await.unwrap();
        assert!(link.mac.is_some());
        // A retry is harmless.
        k.configure_container(&cpath, &interface).await.unwrap();
        let view = k.inspect_container(&cpath, "eth0").await.unwrap().unwrap();
        assert!(view.up);
        assert_eq!(view.addresses, vec![interface.address]);
        assert_eq!(view.default_gateway, Some(interface.gateway));
        assert_eq!(view.link.mtu, 1400);
        assert!(k.inspect_container(&cpath, "eth9").await.unwrap().is_none());

        assert!(k.delete_link("qvtest").await.unwrap());
        assert!(!k.delete_link("qvtest").await.unwrap());
        assert!(
            k.inspect_container(&cpath, "eth0").await.unwrap().is_none(),
            "the peer went with it"
        );
    });
    let shown = host.ip(&["-o", "addr", "show", "dev", "quilt0"]).unwrap();
    assert!(shown.contains("10.42.1.1/24"), "{shown}");
    let forwarding = host
        .command("cat")
        .arg("/proc/sys/net/ipv4/conf/quilt0/forwarding")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&forwarding.stdout).trim(), "1");
}

#[test]
fn a_link_of_another_kind_is_not_made_a_bridge() {
    if !privileged_or_skip("a_link_of_another_kind_is_not_made_a_bridge") {
        return;
    }
    let host = OwnedNetns::create(&unique_name("qkh")).unwrap();
    // An operator's veth called quilt0 (the dummy module may be missing).
    host.ip(&[
        "link", "add", "quilt0", "mtu", "1500", "type", "veth", "peer", "name", "quilt0p",
    ])
    .unwrap();
    block_on_in(host.name(), async move || {
        let k = NetlinkKernel::open().expect("netlink");
        let link = k.link("quilt0").await.unwrap().unwrap();
        assert_eq!(link.kind, Some(LinkKind::Veth));
        let err = k
            .ensure_bridge("quilt0", "10.42.1.1/24".parse().unwrap(), 1450)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "set up bridge quilt0 failed: quilt0 exists and is not a bridge; it is left alone"
        );
    });
    let shown = host
        .ip(&["-d", "-o", "link", "show", "dev", "quilt0"])
        .unwrap();
    assert!(
        shown.contains("mtu 1500") && shown.contains("veth"),
        "{shown}"
    );
    let addresses = host.ip(&["-o", "addr", "show", "dev", "quilt0"]).unwrap();
    assert!(!addresses.contains("10.42.1.1"), "{addresses}");
}
