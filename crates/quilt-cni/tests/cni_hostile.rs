//! quilt-cni against hostile input (issue 11): CNI_NETNS naming a FIFO, an MTU above the
//! overlay's, container ids whose host veth names collide, a second ADD elsewhere. The
//! runtime runs in a fresh "host" namespace; containers are namespaces of their own.

mod common;

use std::time::{Duration, Instant};

use common::{Answer, exec, host_with_subnet, path, quilt_conf};
use quilt_proto as pb;
use quilt_testkit::netns::{OwnedNetns, privileged_or_skip, unique_name};
use quilt_testkit::runtime::RuntimeHost;
use serde_json::{Value, json};

/// quilt-cni with `command` for container `id` (ifname eth0), as an engine runs it.
fn cni(host: &RuntimeHost, command: &str, id: &str, netns: &str, conf: &Value) -> Answer {
    exec(host, "quilt-cni", command, id, netns, "eth0", conf)
}

fn conf() -> Value {
    quilt_conf()
}

fn host_ifnames(host: &RuntimeHost) -> Vec<String> {
    host.call(|mut c| async move {
        Ok(c.list_attachments(pb::ListAttachmentsRequest {})
            .await?
            .into_inner()
            .attachments
            .into_iter()
            .map(|a| a.host_ifname)
            .collect())
    })
    .unwrap()
}

#[test]
fn cni_netns_naming_a_fifo_is_refused_and_the_runtime_keeps_answering() {
    if !privileged_or_skip("cni_netns_naming_a_fifo_is_refused_and_the_runtime_keeps_answering") {
        return;
    }
    let host = host_with_subnet();
    let fifo = host.state_path().join("cni.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let a = cni(&host, "ADD", "c1", &fifo.display().to_string(), &conf());
    assert_eq!(a.code(), 4, "{}", a.stdout);
    assert!(a.stdout.contains("not a network namespace"), "{}", a.stdout);
    // The runtime still answers, and took nothing.
    assert_eq!(host_ifnames(&host), Vec::<String>::new());
}

#[test]
fn an_mtu_above_the_overlay_is_code_7() {
    if !privileged_or_skip("an_mtu_above_the_overlay_is_code_7") {
        return;
    }
    let host = host_with_subnet();
    let c1 = OwnedNetns::create(&unique_name("qch")).unwrap();
    let mut big = conf();
    big["mtu"] = json!(9000);
    let a = cni(&host, "ADD", "c1", &path(&c1), &big);
    assert_eq!(a.code(), 7, "{}", a.stdout);
    assert!(a.stdout.contains("9000"), "{}", a.stdout);
}

#[test]
fn colliding_container_ids_never_share_a_veth() {
    if !privileged_or_skip("colliding_container_ids_never_share_a_veth") {
        return;
    }
    // Both give host veth qv2545ca5b71c7 with ifname eth0.
    let (first, second) = ("kq5xlckbah0a", "k5scufamlufs");
    let host = host_with_subnet();
    let c1 = OwnedNetns::create(&unique_name("qch")).unwrap();
    let c2 = OwnedNetns::create(&unique_name("qch")).unwrap();
    let added = cni(&host, "ADD", first, &path(&c1), &conf());
    assert!(added.ok, "{}", added.stdout);
    let first_veth = host_ifnames(&host);
    assert_eq!(first_veth.len(), 1);

    // DEL of the never-added one removes nothing.
    let del = cni(&host, "DEL", second, &path(&c2), &conf());
    assert!(del.ok, "{}", del.stdout);
    assert!(
        host.ns.ip(&["link", "show", &first_veth[0]]).is_ok(),
        "DEL of {second} removed {first}'s veth"
    );
    let prev = {
        let mut c = conf();
        c["prevResult"] = added.json();
        c
    };
    let check = cni(&host, "CHECK", first, &path(&c1), &prev);
    assert!(check.ok, "{}", check.stdout);

    // ADD of it gets a veth of its own.
    let added = cni(&host, "ADD", second, &path(&c2), &conf());
    assert!(added.ok, "{}", added.stdout);
    let both = host_ifnames(&host);
    assert_eq!(both.len(), 2);
    assert_ne!(both[0], both[1]);
    let check = cni(&host, "CHECK", first, &path(&c1), &prev);
    assert!(check.ok, "{}", check.stdout);

    // A second ADD of the first in another namespace is refused.
    let again = cni(&host, "ADD", first, &path(&c2), &conf());
    assert!(!again.ok, "{}", again.stdout);
    assert!(
        again.stdout.contains("already attached"),
        "{}",
        again.stdout
    );

    for (id, ns) in [(first, &c1), (second, &c2)] {
        let del = cni(&host, "DEL", id, &path(ns), &conf());
        assert!(del.ok, "{}", del.stdout);
    }
    assert_eq!(host_ifnames(&host), Vec::<String>::new());
}

#[test]
fn a_container_veth_deleted_by_hand_is_recreated_by_reconcile() {
    if !privileged_or_skip("a_container_veth_deleted_by_hand_is_recreated_by_reconcile") {
        return;
    }
    let host = host_with_subnet();
    let c1 = OwnedNetns::create(&unique_name("qch")).unwrap();
    let added = cni(&host, "ADD", "c1", &path(&c1), &conf());
    assert!(added.ok, "{}", added.stdout);
    let veth = host_ifnames(&host).remove(0);
    host.ns.ip(&["link", "del", &veth]).unwrap();
    assert!(
        c1.ip(&["link", "show", "eth0"]).is_err(),
        "the peer went too"
    );
    let mut prev = conf();
    prev["prevResult"] = added.json();
    // The runtime reconciles every 500 ms; wait (bounded) until CHECK passes again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut check = cni(&host, "CHECK", "c1", &path(&c1), &prev);
    while !check.ok && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        check = cni(&host, "CHECK", "c1", &path(&c1), &prev);
    }
    assert!(check.ok, "not repaired: {}\n{}", check.stdout, host.log());
    assert!(
        host.log().contains("container veth recreated"),
        "{}",
        host.log()
    );
    let inside = c1.ip(&["-4", "addr", "show", "eth0"]).unwrap();
    let address = added.json()["ips"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(inside.contains(&address), "{inside}");
    let del = cni(&host, "DEL", "c1", &path(&c1), &conf());
    assert!(del.ok, "{}", del.stdout);
}
