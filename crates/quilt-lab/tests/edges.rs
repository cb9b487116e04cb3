//! The data plane at the lab's edges, on a real kernel: containers reach an outside
//! network beyond a router only through masquerade; a rogue machine on the underlay
//! gets no VXLAN packet through to a container while members do (and the table it hits
//! comes back when deleted or flushed); a host whose iptables FORWARD policy drops, as
//! Docker leaves one, carries the full mesh; nothing in another table changes beyond the
//! marked accept rules; `--leave-on-exit` leaves the host's ruleset as it was.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quilt_kernel::netns::{self, OwnedNetns};
use quilt_lab::lab::Lab;
use quilt_lab::layout::{OUTSIDE_IP, SWITCH_BRIDGE};
use quilt_lab::remote::{nft, nft_ruleset};
use quilt_testkit::netns::{privileged_or_skip, unique_name};

const UDP_PORT: u16 = 9999;

fn ping(ns: &str, to: Ipv4Addr) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1"])
        .arg(to.to_string())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Opens a TCP connection from `ns` to the outside listener and reads its greeting.
fn tcp_hello(ns: &str, to: SocketAddr) -> Result<String, String> {
    netns::run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf)
            .map_err(|e| format!("read: {e}"))?;
        Ok(buf)
    })
    .map_err(|e| e.to_string())?
}

/// A TCP server in the outside namespace greeting each connection, until dropped.
struct Greeter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Greeter {
    fn start(ns: &str, port: u16) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ns = ns.to_string();
        let thread = std::thread::spawn(move || {
            netns::run_in(&ns, || {
                let listener = TcpListener::bind(("0.0.0.0", port)).unwrap();
                listener.set_nonblocking(true).unwrap();
                tx.send(()).unwrap();
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.write_all(b"hello from outside");
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .unwrap();
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `count` datagrams from `from_ns` to `to` while a socket in `to_ns` counts what
/// arrives; answers the count.
fn udp_through(from_ns: &str, to_ns: &str, to: Ipv4Addr, count: usize) -> usize {
    let (tx, rx) = std::sync::mpsc::channel();
    let to_ns = to_ns.to_string();
    let listener = std::thread::spawn(move || {
        netns::run_in(&to_ns, || {
            let socket = UdpSocket::bind(("0.0.0.0", UDP_PORT)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            tx.send(()).unwrap();
            let mut got = 0;
            let mut buf = [0u8; 64];
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if socket.recv(&mut buf).is_ok() {
                    got += 1;
                }
            }
            got
        })
        .unwrap()
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    netns::run_in(from_ns, || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..count {
            let _ = socket.send_to(format!("packet {i}").as_bytes(), (to, UDP_PORT));
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .unwrap();
    listener.join().unwrap()
}

/// How many marked rules the ruleset holds outside the agent's own table.
fn marked(ruleset: &str) -> usize {
    let mut in_ours = false;
    let mut n = 0;
    for line in ruleset.lines() {
        if line.starts_with("table inet quilt ") {
            in_ours = true;
        } else if in_ours && line == "}" {
            in_ours = false;
        } else if !in_ours && line.contains("comment \"quilt") {
            n += 1;
        }
    }
    n
}

/// The ruleset with the agent's table and every marked rule taken out.
fn without_ours(ruleset: &str) -> String {
    let mut out = Vec::new();
    let mut in_ours = false;
    for line in ruleset.lines() {
        if line.starts_with("table inet quilt ") {
            in_ours = true;
            continue;
        }
        if in_ours {
            if line == "}" {
                in_ours = false;
            }
            continue;
        }
        if line.contains("comment \"quilt") {
            continue;
        }
        out.push(line);
    }
    out.join("\n")
}

/// What a fresh host with iptables' FORWARD dropping lists: the ruleset before any agent.
fn forward_drop_ruleset() -> String {
    let scratch = OwnedNetns::create(&unique_name("qnf")).unwrap();
    nft(
        scratch.name(),
        &[
            "add table ip filter",
            "add chain ip filter FORWARD { type filter hook forward priority 0 ; policy drop ; }",
        ],
    )
    .unwrap();
    nft_ruleset(scratch.name()).unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Joins a rogue namespace to the lab's switch at `.250` with a VXLAN device of its own
/// aimed at host 1, posing as a node of host 2's subnet (so the kernel's reverse-path
/// check passes and only the allow-list can stop it).
fn rogue(lab: &Lab) -> OwnedNetns {
    let state = lab.state();
    let rogue = OwnedNetns::create(&unique_name("qrg")).unwrap();
    let underlay = state.underlay;
    let rogue_ip = Ipv4Addr::from(u32::from(underlay.network()) + 250);
    rogue
        .ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "prg",
            "netns",
            &state.switch_netns,
        ])
        .unwrap();
    let sw = &state.switch_netns;
    let port = Command::new("ip")
        .args([
            "-n",
            sw,
            "link",
            "set",
            "prg",
            "master",
            SWITCH_BRIDGE,
            "up",
        ])
        .status()
        .unwrap();
    assert!(port.success());
    rogue
        .ip(&["addr", "add", &format!("{rogue_ip}/24"), "dev", "eth0"])
        .unwrap();
    rogue.ip(&["link", "set", "eth0", "up"]).unwrap();
    let h1 = &state.hosts[0];
    let vtep = Command::new("ip")
        .args(["-n", &h1.netns, "-j", "link", "show", "vxlan100"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&vtep.stdout).unwrap();
    let mac = json[0]["address"].as_str().unwrap().to_string();
    let target = state.containers.iter().find(|c| c.host == 1).unwrap();
    let target_subnet = target.address.unwrap().trunc();
    let posing = state.containers.iter().find(|c| c.host == 2).unwrap();
    let posing_ip = Ipv4Addr::from(u32::from(posing.address.unwrap().network()) + 250);
    let gw = target_subnet.network().to_string();
    for args in [
        vec![
            "link",
            "add",
            "vxlan100",
            "type",
            "vxlan",
            "id",
            "100",
            "dstport",
            "4789",
            "local",
            &rogue_ip.to_string(),
            "dev",
            "eth0",
            "nolearning",
        ],
        vec!["link", "set", "vxlan100", "up"],
        vec!["addr", "add", &format!("{posing_ip}/32"), "dev", "vxlan100"],
        vec![
            "neigh",
            "replace",
            &gw,
            "lladdr",
            &mac,
            "dev",
            "vxlan100",
            "nud",
            "permanent",
        ],
        vec![
            "route",
            "add",
            &target_subnet.to_string(),
            "via",
            &gw,
            "dev",
            "vxlan100",
            "onlink",
        ],
    ] {
        rogue.ip(&args).unwrap();
    }
    let fdb = Command::new("bridge")
        .args([
            "-n",
            rogue.name(),
            "fdb",
            "append",
            &mac,
            "dev",
            "vxlan100",
            "dst",
            &h1.host_ip.to_string(),
        ])
        .status()
        .unwrap();
    assert!(fdb.success());
    rogue
}

#[test]
fn the_mesh_at_its_edges_masquerade_allow_list_forward_drop_and_leaving() {
    if !privileged_or_skip("the_mesh_at_its_edges_masquerade_allow_list_forward_drop_and_leaving") {
        return;
    }
    let bins = common::mesh_bins();
    let root = tempfile::tempdir().unwrap();
    let name = common::lab_name("edge");
    let mut spec = common::spec(&name, 3, 1, &bins, root.path());
    spec.outside = true;
    spec.forward_drop_hosts = [3].into();
    spec.resync_interval = Duration::from_secs(2);
    spec.agent_args
        .insert(2, vec!["--masquerade".into(), "false".into()]);
    spec.agent_args.insert(3, vec!["--leave-on-exit".into()]);
    let mut lab = Lab::up(spec, &mut |p| eprintln!("{p}"))
        .unwrap_or_else(|e| panic!("lab up: {e}\n{}", common::dump_logs(root.path(), &name)));
    let logs = || common::dump_logs(root.path(), &name);
    // The full mesh, through host 3 whose iptables FORWARD policy drops.
    assert!(lab.full_mesh_after().is_some(), "no full mesh\n{}", logs());
    let state = lab.state().clone();
    let c = |host: u16| {
        state
            .containers
            .iter()
            .find(|c| c.host == host)
            .unwrap()
            .clone()
    };
    let (c1, c2, c3) = (c(1), c(2), c(3));
    let h3 = state.hosts[2].netns.clone();
    let before = forward_drop_ruleset();
    let h3_rules = nft_ruleset(&h3).unwrap();
    assert_eq!(
        without_ours(&h3_rules),
        without_ours(&before),
        "another table changed:\n{h3_rules}"
    );
    assert_eq!(marked(&h3_rules), 4, "{h3_rules}");

    // Egress: host 1 masquerades, host 2 (--masquerade false) does not.
    let outside_ns = format!("qlab-{name}-out");
    let _greeter = Greeter::start(&outside_ns, 8080);
    let outside = SocketAddr::from((OUTSIDE_IP, 8080));
    assert!(
        ping(&c1.netns, OUTSIDE_IP),
        "c1 cannot ping the outside\n{}",
        logs()
    );
    assert_eq!(tcp_hello(&c1.netns, outside).unwrap(), "hello from outside");
    assert!(
        !ping(&c2.netns, OUTSIDE_IP),
        "c2 reached the outside without masquerade"
    );
    assert!(tcp_hello(&c2.netns, outside).is_err());
    // Between containers the source stays: c3 sees c1's own address (no masquerade).
    assert!(ping(&c3.netns, c1.address.unwrap().addr()));

    // The VXLAN allow-list: a rogue on the underlay gets nothing through, a member does.
    let rogue = rogue(&lab);
    let target = c1.address.unwrap().addr();
    assert_eq!(
        udp_through(rogue.name(), &c1.netns, target, 20),
        0,
        "a rogue's packets arrived"
    );
    assert!(
        udp_through(&c2.netns, &c1.netns, target, 20) >= 18,
        "a member's packets did not arrive"
    );
    // Without the table the rogue's packets do arrive: the path is real, the table stops it.
    let h1 = state.hosts[0].netns.clone();
    nft(&h1, &["delete table inet quilt"]).unwrap();
    assert!(
        udp_through(rogue.name(), &c1.netns, target, 20) > 0,
        "the rogue path does not work even without the table"
    );
    wait_until("table inet quilt back", Duration::from_secs(10), || {
        nft(&h1, &["list table inet quilt"]).is_ok_and(|t| t.contains("vxlan_members"))
    });
    assert_eq!(
        udp_through(rogue.name(), &c1.netns, target, 20),
        0,
        "a rogue's packets arrived after the repair"
    );
    // Flushed: the rules come back too.
    nft(&h1, &["flush table inet quilt"]).unwrap();
    wait_until(
        "rules of table inet quilt back",
        Duration::from_secs(10),
        || {
            nft(&h1, &["list table inet quilt"])
                .is_ok_and(|t| t.contains("masquerade") && t.contains("drop"))
        },
    );
    assert!(ping(&c1.netns, OUTSIDE_IP));

    // Marked rules taken out of host 3's FORWARD chain come back, and the mesh with them.
    let listing = Command::new("ip")
        .args([
            "netns", "exec", &h3, "nft", "-a", "list", "chain", "ip", "filter", "FORWARD",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    for line in listing.lines().filter(|l| l.contains("comment \"quilt")) {
        let handle = line.rsplit("handle ").next().unwrap().trim();
        nft(
            &h3,
            &[&format!("delete rule ip filter FORWARD handle {handle}")],
        )
        .unwrap();
    }
    wait_until(
        "the marked rules back on h3",
        Duration::from_secs(10),
        || nft_ruleset(&h3).is_ok_and(|r| marked(&r) == 4),
    );
    wait_until("c1 reaches c3 again", Duration::from_secs(10), || {
        ping(&c1.netns, c3.address.unwrap().addr())
    });

    // Leaving: host 3's ruleset is what it was before its agent started.
    lab.stop_agent(3).unwrap();
    assert_eq!(
        nft_ruleset(&h3).unwrap(),
        before,
        "h3 after --leave-on-exit\n{}",
        logs()
    );
    drop(rogue);
    lab.down(true).unwrap();
    assert!(
        !netns::path(&outside_ns).exists(),
        "the outside namespace was left behind"
    );
}
