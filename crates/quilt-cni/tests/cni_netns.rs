//! quilt-cni driven the way a container engine drives it (CNI_* environment, network
//! configuration on stdin), against quilt-runtime running in a fresh "host" namespace;
//! containers are namespaces of their own. Nothing touches the machine's namespace.

mod common;

use std::process::Stdio;

use common::{
    Answer, REFERENCE_PLUGINS, allocations, attachments, configure, exec, host_with_subnet, path,
    quilt_conf,
};
use nix::sys::signal::Signal;
use quilt_proto as pb;
use quilt_testkit::netns::{OwnedNetns, privileged_or_skip, unique_name};
use quilt_testkit::runtime::RuntimeHost;
use serde_json::{Value, json};

fn with_prev(mut conf: Value, prev: &Value) -> Value {
    conf["prevResult"] = prev.clone();
    conf
}

/// CHECK for container `id` in `c`, with `previous` (its ADD result) as prevResult.
fn cni_check(host: &RuntimeHost, id: &str, c: &OwnedNetns, previous: &Value) -> Answer {
    exec(
        host,
        "quilt-cni",
        "CHECK",
        id,
        &path(c),
        "eth0",
        &with_prev(quilt_conf(), previous),
    )
}

fn add(host: &RuntimeHost, id: &str, c: &OwnedNetns) -> Value {
    let a = exec(
        host,
        "quilt-cni",
        "ADD",
        id,
        &path(c),
        "eth0",
        &quilt_conf(),
    );
    assert!(a.ok, "ADD {id} failed: {}\n{}", a.stdout, host.log());
    a.json()
}

fn ping(from: &OwnedNetns, to: &str) -> bool {
    from.command("ping")
        .args(["-c", "1", "-W", "2", to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn host_links(host: &RuntimeHost) -> String {
    host.ns.ip(&["-o", "link", "show"]).unwrap()
}

fn bare_ip(address: &Value) -> String {
    address
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn add_ping_check_restart_del() {
    if !privileged_or_skip("add_ping_check_restart_del") {
        return;
    }
    let mut host = host_with_subnet();
    let c1 = OwnedNetns::create(&unique_name("qcc")).unwrap();
    let c2 = OwnedNetns::create(&unique_name("qcc")).unwrap();

    let r1 = add(&host, "container-one", &c1);
    let r2 = add(&host, "container-two", &c2);
    assert_eq!(r1["cniVersion"], "1.0.0");
    assert_eq!(r1["ips"][0]["gateway"], "10.42.1.1");
    assert_eq!(r1["interfaces"][1]["sandbox"], path(&c1));
    assert_eq!(r1["routes"][0]["dst"], "0.0.0.0/0");
    let (a1, a2) = (
        bare_ip(&r1["ips"][0]["address"]),
        bare_ip(&r2["ips"][0]["address"]),
    );
    assert_ne!(a1, a2, "two containers got the same address");

    // The bridge: the subnet's .1, the overlay MTU, up.
    let bridge = host
        .ns
        .ip(&["-o", "addr", "show", "dev", "quilt0"])
        .unwrap();
    assert!(bridge.contains("10.42.1.1/24"), "{bridge}");
    let bridge_link = host.ns.ip(&["-o", "link", "show", "quilt0"]).unwrap();
    assert!(
        bridge_link.contains("mtu 1450") && bridge_link.contains(",UP"),
        "{bridge_link}"
    );
    let inside = c1.ip(&["-o", "link", "show", "eth0"]).unwrap();
    assert!(inside.contains("mtu 1450"), "{inside}");
    let route = c1.ip(&["route", "show", "default"]).unwrap();
    assert!(route.contains("via 10.42.1.1 dev eth0"), "{route}");

    assert!(
        ping(&c1, "10.42.1.1"),
        "container one cannot reach the gateway"
    );
    assert!(ping(&c1, &a2), "container one cannot reach container two");
    assert!(ping(&c2, &a1), "container two cannot reach container one");

    // ADD again answers the same.
    let again = add(&host, "container-one", &c1);
    assert_eq!(again["ips"], r1["ips"]);
    assert_eq!(again["interfaces"], r1["interfaces"]);

    // CHECK passes, and fails once the address is removed by hand.
    let check = cni_check(&host, "container-one", &c1, &r1);
    assert!(check.ok, "CHECK failed: {}", check.stdout);
    c2.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
    let check = cni_check(&host, "container-two", &c2, &r2);
    assert_eq!(check.code(), 102, "{}", check.stdout);
    assert!(
        check.json()["msg"].as_str().unwrap().contains("address"),
        "{}",
        check.stdout
    );

    // A restart (kill -9) between ADD and DEL changes nothing.
    let before = attachments(&host);
    assert_eq!(before.len(), 2);
    host.stop_with(Signal::SIGKILL);
    host.start();
    assert_eq!(attachments(&host), before);
    let check = cni_check(&host, "container-one", &c1, &r1);
    assert!(check.ok, "CHECK after restart failed: {}", check.stdout);

    // DEL removes the veth and frees the address; DEL again succeeds.
    let host_side = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(host_links(&host).contains(&host_side));
    for _ in 0..2 {
        let del = exec(
            &host,
            "quilt-cni",
            "DEL",
            "container-one",
            &path(&c1),
            "eth0",
            &quilt_conf(),
        );
        assert!(del.ok && del.stdout.is_empty(), "DEL: {}", del.stdout);
    }
    assert!(!host_links(&host).contains(&host_side));
    assert!(
        c1.ip(&["link", "show", "eth0"]).is_err(),
        "the container side must be gone"
    );
    assert!(!allocations(&host).iter().any(|a| a.address == a1));

    // The freed address goes to the next container.
    let c3 = OwnedNetns::create(&unique_name("qcc")).unwrap();
    let r3 = add(&host, "container-three", &c3);
    assert_eq!(bare_ip(&r3["ips"][0]["address"]), a1);

    // DEL after the container's namespace is gone still succeeds and frees the address.
    let c2_path = path(&c2);
    drop(c2);
    let del = exec(
        &host,
        "quilt-cni",
        "DEL",
        "container-two",
        &c2_path,
        "eth0",
        &quilt_conf(),
    );
    assert!(del.ok, "DEL of a gone container: {}", del.stdout);
    assert!(!allocations(&host).iter().any(|a| a.address == a2));
    let del = exec(
        &host,
        "quilt-cni",
        "DEL",
        "container-three",
        &path(&c3),
        "eth0",
        &quilt_conf(),
    );
    assert!(del.ok, "{}", del.stdout);
    assert!(attachments(&host).is_empty());
    assert!(!host_links(&host).contains("qv"), "{}", host_links(&host));
}

#[test]
fn the_bridge_is_recreated_by_reconcile() {
    if !privileged_or_skip("the_bridge_is_recreated_by_reconcile") {
        return;
    }
    let host = host_with_subnet();
    let c1 = OwnedNetns::create(&unique_name("qcc")).unwrap();
    add(&host, "c1", &c1);
    host.ns.ip(&["link", "del", "quilt0"]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ping(&c1, "10.42.1.1") {
        assert!(
            std::time::Instant::now() < deadline,
            "bridge not repaired:\n{}",
            host.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let del = exec(
        &host,
        "quilt-cni",
        "DEL",
        "c1",
        &path(&c1),
        "eth0",
        &quilt_conf(),
    );
    assert!(del.ok, "{}", del.stdout);
}

#[test]
fn a_conflist_chain_with_reference_plugins() {
    if !privileged_or_skip("a_conflist_chain_with_reference_plugins") {
        return;
    }
    for plugin in ["tuning", "portmap"] {
        assert!(
            std::path::Path::new(REFERENCE_PLUGINS)
                .join(plugin)
                .exists(),
            "{REFERENCE_PLUGINS}/{plugin} is missing: install Debian's containernetworking-plugins"
        );
    }
    let host = host_with_subnet();
    let c1 = OwnedNetns::create(&unique_name("qcc")).unwrap();
    let netns_path = path(&c1);
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "quilt",
        "plugins": [
            {"type": "quilt-cni", "runtime_address": "http://127.0.0.1:50051"},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": false},
        ]
    });
    let runtime_config =
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    let plugin_conf = |plugin: &Value, prev: Option<&Value>| {
        let mut conf = plugin.clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        conf["name"] = conflist["name"].clone();
        if plugin.get("capabilities").is_some() {
            conf["runtimeConfig"] = runtime_config.clone();
        }
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    };
    let plugins = conflist["plugins"].as_array().unwrap();

    // ADD in order, each plugin getting the previous result.
    let mut prev: Option<Value> = None;
    for plugin in plugins {
        let kind = plugin["type"].as_str().unwrap();
        let a = exec(
            &host,
            kind,
            "ADD",
            "chained",
            &netns_path,
            "eth0",
            &plugin_conf(plugin, prev.as_ref()),
        );
        assert!(a.ok, "ADD {kind}: {}", a.stdout);
        prev = Some(a.json());
    }
    let result = prev.unwrap();
    assert_eq!(result["ips"][0]["gateway"], "10.42.1.1", "{result}");
    let sysctl = c1
        .command("cat")
        .arg("/proc/sys/net/ipv4/conf/eth0/arp_notify")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sysctl.stdout).trim(),
        "1",
        "tuning did not run inside the container"
    );
    let nat = host
        .ns
        .command("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        nat.contains("CNI-HOSTPORT-DNAT"),
        "portmap made no rules in the host namespace:\n{nat}"
    );

    // CHECK in order with the final result. portmap 1.1.1 (Debian bookworm) is skipped:
    // its CHECK looks for ip6tables rules it never made for an IPv4-only container
    // (containernetworking/plugins#819), whatever the plugin before it answered.
    for plugin in plugins {
        let kind = plugin["type"].as_str().unwrap();
        if kind == "portmap" {
            continue;
        }
        let a = exec(
            &host,
            kind,
            "CHECK",
            "chained",
            &netns_path,
            "eth0",
            &plugin_conf(plugin, Some(&result)),
        );
        assert!(a.ok, "CHECK {kind}: {}", a.stdout);
    }

    // DEL in reverse order, twice (the second finds nothing and still succeeds).
    for _ in 0..2 {
        for plugin in plugins.iter().rev() {
            let kind = plugin["type"].as_str().unwrap();
            let a = exec(
                &host,
                kind,
                "DEL",
                "chained",
                &netns_path,
                "eth0",
                &plugin_conf(plugin, Some(&result)),
            );
            assert!(a.ok, "DEL {kind}: {}", a.stdout);
        }
    }
    assert!(attachments(&host).is_empty());
    assert!(c1.ip(&["link", "show", "eth0"]).is_err());
}

#[test]
fn bad_input_is_refused_and_leaves_nothing_behind() {
    if !privileged_or_skip("bad_input_is_refused_and_leaves_nothing_behind") {
        return;
    }
    let mut host = RuntimeHost::new();
    host.start();
    let c1 = OwnedNetns::create(&unique_name("qcc")).unwrap();
    let good = path(&c1);

    // No subnet yet: try again later.
    let a = exec(
        &host,
        "quilt-cni",
        "ADD",
        "c1",
        &good,
        "eth0",
        &quilt_conf(),
    );
    assert_eq!(a.code(), 11, "{}", a.stdout);
    assert!(
        a.json()["msg"].as_str().unwrap().contains("no node subnet"),
        "{}",
        a.stdout
    );
    configure(&host);

    let not_a_namespace = host.state_path().join("plain-file");
    std::fs::write(&not_a_namespace, "x").unwrap();
    let not_a_namespace = not_a_namespace.display().to_string();
    let long_id = "x".repeat(300);
    let cases: Vec<(&str, &str, &str, u64, &str)> = vec![
        (
            "c1",
            "/run/netns/does-not-exist-quilt",
            "eth0",
            4,
            "No such file",
        ),
        ("c1", &not_a_namespace, "eth0", 4, "not a network namespace"),
        // Resolved by the runtime, inside the host: its own namespace, and a mount one.
        (
            "c1",
            "/proc/self/ns/net",
            "eth0",
            4,
            "host's own network namespace",
        ),
        (
            "c1",
            "/proc/self/ns/mnt",
            "eth0",
            4,
            "not a network namespace",
        ),
        ("c1", "relative/path", "eth0", 4, "not an absolute path"),
        ("", &good, "eth0", 4, "CNI_CONTAINERID is not set"),
        (&long_id, &good, "eth0", 4, "300 bytes long"),
        ("c1", &good, "abcdefghijklmnop", 4, "16 bytes long"),
        ("c1", &good, "a/b", 4, "not a valid interface name"),
    ];
    for (id, netns_path, ifname, code, message) in cases {
        let a = exec(
            &host,
            "quilt-cni",
            "ADD",
            id,
            netns_path,
            ifname,
            &quilt_conf(),
        );
        assert_eq!(
            a.code(),
            code,
            "({id:.20}, {netns_path}, {ifname}): {}",
            a.stdout
        );
        assert!(
            a.stdout.contains(message),
            "({id:.20}, {netns_path}, {ifname}): {}",
            a.stdout
        );
    }
    assert!(allocations(&host).is_empty(), "{:?}", allocations(&host));
    assert!(attachments(&host).is_empty());
    assert!(!host_links(&host).contains("qv"), "{}", host_links(&host));
    assert!(
        c1.ip(&["-o", "link", "show"]).unwrap().lines().count() == 1,
        "only lo in the container"
    );

    // Pool exhausted: fill the /24 but one address, attach one, the next is refused.
    host.call(|mut c| async move {
        for i in 0..252 {
            let r = c
                .allocate_ip(pb::AllocateIpRequest {
                    owner: format!("filler-{i}"),
                })
                .await?
                .into_inner();
            assert!(r.success, "{}", r.error);
        }
        Ok(())
    })
    .unwrap();
    add(&host, "last", &c1);
    let c2 = OwnedNetns::create(&unique_name("qcc")).unwrap();
    let a = exec(
        &host,
        "quilt-cni",
        "ADD",
        "one-too-many",
        &path(&c2),
        "eth0",
        &quilt_conf(),
    );
    assert_eq!(a.code(), 100, "{}", a.stdout);
    assert!(c2.ip(&["link", "show", "eth0"]).is_err());
    assert_eq!(allocations(&host).len(), 253);
    assert_eq!(attachments(&host).len(), 1);
}
