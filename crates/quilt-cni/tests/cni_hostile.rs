//! quilt-cni against hostile input (issue 11): CNI_NETNS naming a FIFO, an MTU above the
//! overlay's, container ids whose host veth names collide, a second ADD elsewhere. The
//! runtime runs in a fresh "host" namespace; containers are namespaces of their own.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use quilt_kernel::netns;
use quilt_proto as pb;
use quilt_testkit::netns::{OwnedNetns, privileged_or_skip, unique_name};
use quilt_testkit::runtime::RuntimeHost;
use serde_json::{Value, json};

/// What one plugin invocation answered.
struct Answer {
    ok: bool,
    stdout: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not json ({e}): {}", self.stdout))
    }

    fn code(&self) -> u64 {
        assert!(!self.ok, "expected a failure, got {}", self.stdout);
        self.json()["code"].as_u64().expect("error code")
    }
}

/// Runs quilt-cni inside the host namespace as an engine would. A plugin that has not
/// answered after a minute is killed (so a frozen runtime fails the test, not hangs it).
fn cni(host: &RuntimeHost, command: &str, id: &str, netns: &str, conf: &Value) -> Answer {
    let mut child = host
        .ns
        .command(env!("CARGO_BIN_EXE_quilt-cni"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run quilt-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    Answer {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).trim().to_string(),
    }
}

fn conf() -> Value {
    json!({"cniVersion": "1.0.0", "name": "quilt", "type": "quilt-cni", "runtime_address": "http://127.0.0.1:50051"})
}

fn host_with_subnet() -> RuntimeHost {
    let mut host = RuntimeHost::new();
    host.start();
    host.call(|mut c| async move {
        let r = c
            .configure_node_subnet(pb::ConfigureNodeSubnetRequest {
                subnet: "10.42.1.0/24".into(),
            })
            .await?
            .into_inner();
        assert!(r.success, "{}", r.error);
        Ok(())
    })
    .unwrap();
    host
}

fn path(ns: &OwnedNetns) -> String {
    netns::path(ns.name()).display().to_string()
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
