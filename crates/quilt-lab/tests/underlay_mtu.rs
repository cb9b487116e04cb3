//! The overlay MTU from the underlay, on a real kernel: on a 9000-byte underlay the VXLAN
//! device, the bridge and every container interface get 8950, and a packet of exactly
//! 8950 bytes crosses hosts unfragmented while one byte more does not leave.

mod common;

use std::process::Command;

use quilt_lab::lab::Lab;
use quilt_testkit::netns::privileged_or_skip;

fn mtu_of(ns: &str, link: &str) -> u64 {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", link])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip -n {ns} link show {link}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json[0]["mtu"].as_u64().unwrap()
}

/// `ping -M do -s SIZE` (no fragmentation) from `ns` to `to`.
fn ping_df(ns: &str, to: &str, size: u32) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "1", "-W", "2", "-M", "do", "-s",
        ])
        .arg(size.to_string())
        .arg(to)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn a_jumbo_underlay_gives_the_overlay_and_containers_its_mtu_less_50() {
    if !privileged_or_skip("a_jumbo_underlay_gives_the_overlay_and_containers_its_mtu_less_50") {
        return;
    }
    let bins = common::mesh_bins();
    let root = tempfile::tempdir().unwrap();
    let name = common::lab_name("mtu");
    let mut spec = common::spec(&name, 2, 1, &bins, root.path());
    spec.underlay_mtu = Some(9000);
    let lab = Lab::up(spec, &mut |p| eprintln!("{p}"))
        .unwrap_or_else(|e| panic!("lab up: {e}\n{}", common::dump_logs(root.path(), &name)));
    let logs = || common::dump_logs(root.path(), &name);
    assert!(lab.full_mesh_after().is_some(), "no full mesh\n{}", logs());
    let state = lab.state().clone();
    for h in &state.hosts {
        assert_eq!(mtu_of(&h.netns, "underlay0"), 9000);
        assert_eq!(mtu_of(&h.netns, "vxlan100"), 8950, "{}", h.netns);
        assert_eq!(mtu_of(&h.netns, "quilt0"), 8950, "{}", h.netns);
    }
    for c in &state.containers {
        assert_eq!(mtu_of(&c.netns, "eth0"), 8950, "{}", c.netns);
    }
    let c1 = &state.containers[0];
    let c2 = state.containers.iter().find(|c| c.host == 2).unwrap();
    let to = c2.address.unwrap().addr().to_string();
    // 8950 bytes of IP: 8922 of ICMP payload + 8 ICMP + 20 IP.
    assert!(
        ping_df(&c1.netns, &to, 8922),
        "a full-size packet did not cross\n{}",
        logs()
    );
    assert!(
        !ping_df(&c1.netns, &to, 8923),
        "a packet over the overlay mtu left unfragmented"
    );
    lab.down(true).unwrap();
}
