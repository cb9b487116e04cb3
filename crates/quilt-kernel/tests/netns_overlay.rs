//! The overlay side of the real kernel in a fresh namespace: the VXLAN device as the
//! agent builds it, its address, permanent neighbour and FDB entries.

use std::net::Ipv4Addr;

use quilt_kernel::netlink::NetlinkKernel;
use quilt_kernel::overlay::{FdbEntry, Mac, Neighbour, Overlay, VxlanSpec};
use quilt_testkit::netns::{OwnedNetns, block_on_in, privileged_or_skip, unique_name};

#[test]
fn the_agent_builds_its_device_and_peer_entries() {
    if !privileged_or_skip("the_agent_builds_its_device_and_peer_entries") {
        return;
    }
    let ns = OwnedNetns::create(&unique_name("qov")).expect("netns");
    ns.ip(&[
        "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p",
    ])
    .unwrap();
    ns.ip(&["addr", "add", "192.168.51.1/24", "dev", "eth9"])
        .unwrap();
    ns.ip(&["link", "set", "eth9", "up"]).unwrap();
    let mac: Mac = "02:11:22:33:44:55".parse().unwrap();
    let peer = Neighbour {
        ip: Ipv4Addr::new(10, 42, 2, 0),
        mac: "02:aa:bb:cc:dd:ee".parse().unwrap(),
    };
    let fdb = FdbEntry {
        mac: peer.mac,
        destination: Ipv4Addr::new(192, 168, 51, 2),
        port: None,
    };
    // Two peers without a VTEP MAC (original agents), one on another UDP port.
    let flood = |last: u8, port: Option<u16>| FdbEntry {
        mac: Mac([0; 6]),
        destination: Ipv4Addr::new(192, 168, 51, last),
        port,
    };
    let (flood_a, flood_b) = (flood(3, None), flood(4, Some(8472)));
    block_on_in(ns.name(), async move || {
        let k = &NetlinkKernel::open().expect("netlink");
        let underlay = k
            .link_with_address(Ipv4Addr::new(192, 168, 51, 1))
            .await
            .unwrap()
            .expect("underlay");
        assert_eq!(underlay.name, "eth9");
        assert!(k.vxlan("vxlan100").await.unwrap().is_none());
        let spec = VxlanSpec {
            name: "vxlan100".into(),
            vni: 100,
            port: 4789,
            local: Ipv4Addr::new(192, 168, 51, 1),
            underlay: "eth9".into(),
            mtu: underlay.mtu - 50,
            mac,
        };
        k.create_vxlan(&spec).await.unwrap();
        let device = k.vxlan("vxlan100").await.unwrap().expect("device");
        assert_eq!(
            (device.vni, device.port, device.local),
            (Some(100), Some(4789), spec.local.into())
        );
        assert_eq!(
            (device.learning, device.mac, device.mtu),
            (Some(false), Some(mac), 1450)
        );
        assert_eq!(device.underlay_index, Some(underlay.index));
        k.add_address("vxlan100", "10.42.1.0/32".parse().unwrap())
            .await
            .unwrap();
        k.add_address("vxlan100", "10.42.1.0/32".parse().unwrap())
            .await
            .unwrap();
        k.replace_neighbour("vxlan100", peer).await.unwrap();
        k.replace_neighbour("vxlan100", peer).await.unwrap();
        k.replace_fdb("vxlan100", fdb).await.unwrap();
        k.replace_fdb("vxlan100", fdb).await.unwrap();
        assert_eq!(
            k.addresses("vxlan100").await.unwrap(),
            vec!["10.42.1.0/32".parse().unwrap()]
        );
        assert_eq!(k.neighbours("vxlan100").await.unwrap(), vec![peer]);
        assert_eq!(k.fdb("vxlan100").await.unwrap(), vec![fdb]);
        for entry in [flood_a, flood_b, flood_a, flood_b] {
            k.replace_fdb("vxlan100", entry).await.unwrap();
        }
        let mut all = k.fdb("vxlan100").await.unwrap();
        all.sort();
        assert_eq!(
            all,
            vec![flood_a, flood_b, fdb],
            "flood entries sit side by side"
        );
    });
    let link = ns.ip(&["-d", "link", "show", "vxlan100"]).unwrap();
    assert!(
        link.contains("vxlan id 100 local 192.168.51.1 dev eth9"),
        "{link}"
    );
    assert!(
        link.contains("dstport 4789") && link.contains("nolearning"),
        "{link}"
    );
    assert!(
        link.contains("mtu 1450") && link.contains("02:11:22:33:44:55"),
        "{link}"
    );
    let neigh = ns.ip(&["neigh", "show", "dev", "vxlan100"]).unwrap();
    assert_eq!(neigh.trim(), "10.42.2.0 lladdr 02:aa:bb:cc:dd:ee PERMANENT");
    let out = std::process::Command::new("bridge")
        .args(["-n", ns.name(), "fdb", "show", "dev", "vxlan100"])
        .output()
        .unwrap();
    let fdb_text = String::from_utf8_lossy(&out.stdout);
    assert!(
        fdb_text.contains("02:aa:bb:cc:dd:ee dst 192.168.51.2 self permanent"),
        "{fdb_text}"
    );
    assert!(
        fdb_text.contains("00:00:00:00:00:00 dst 192.168.51.3 self permanent")
            && fdb_text.contains("00:00:00:00:00:00 dst 192.168.51.4 port 8472 self permanent"),
        "{fdb_text}"
    );

    block_on_in(ns.name(), async move || {
        let k = &NetlinkKernel::open().expect("netlink");
        k.delete_neighbour("vxlan100", peer.ip).await.unwrap();
        k.delete_neighbour("vxlan100", peer.ip).await.unwrap();
        k.delete_fdb("vxlan100", fdb).await.unwrap();
        k.delete_fdb("vxlan100", fdb).await.unwrap();
        k.delete_fdb("vxlan100", flood_b).await.unwrap();
        assert_eq!(
            k.fdb("vxlan100").await.unwrap(),
            vec![flood_a],
            "only the one named goes"
        );
        k.delete_fdb("vxlan100", flood_a).await.unwrap();
        assert!(k.neighbours("vxlan100").await.unwrap().is_empty());
        assert!(k.fdb("vxlan100").await.unwrap().is_empty());
        assert!(k.delete_vxlan("vxlan100").await.unwrap());
        assert!(!k.delete_vxlan("vxlan100").await.unwrap());
    });
}
