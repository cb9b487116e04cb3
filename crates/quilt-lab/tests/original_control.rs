//! Our agents and runtimes against a stand-in for the original control plane (issue 12):
//! it answers registrations with only `{node_id, subnet}`, drops `vtep_mac`, lists
//! nodes without `revision` and has no watch stream. On a 3-host lab the agents must
//! poll, reach every peer by flooding with gateway-less routes (the runtimes answer
//! proxy ARP), and build the full mesh (every container pings every other across
//! hosts); `quiltctl nodes` reads the stand-in's list. And a mixed cluster on our control
//! plane where one host's agent acts as the original does (no `vtep_mac`, flood entries,
//! gateway-less routes): its containers and the others' reach each other. And an agent
//! with `--deregister-on-exit`: stopped, its peers withdraw its route at once, long before
//! the heartbeat timeout.

use std::time::{Duration, Instant};

use quilt_lab::lab::Lab;
use quilt_lab::tables::HostTables;
use quilt_testkit::bins;
use quilt_testkit::leaks::assert_nothing_left;
use quilt_testkit::netns::privileged_or_skip;

mod common;
use common::{dump_logs, lab_name, mesh_bins, spec};

/// What a host holds for its peers: (neighbour entries, flood FDB entries, routes, routes
/// via a gateway). A peer of ours adds (1, 0, 1, 1); one reached by flooding (1 flood
/// entry, a route with no gateway) adds (0, 1, 1, 0).
fn shape(t: &HostTables) -> (usize, usize, usize, usize) {
    let flood = t
        .fdb
        .iter()
        .filter(|f| f.starts_with("00:00:00:00:00:00"))
        .count();
    let via = t.routes.iter().filter(|r| r.contains(" via ")).count();
    (t.neighbours.len(), flood, t.routes.len(), via)
}

#[test]
fn our_agents_build_the_full_mesh_against_the_original_control_plane() {
    if !privileged_or_skip("our_agents_build_the_full_mesh_against_the_original_control_plane") {
        return;
    }
    let bins = mesh_bins();
    let root = tempfile::tempdir().unwrap();
    let name = lab_name("o");
    let mut s = spec(&name, 3, 1, &bins, root.path());
    s.insecure = true;
    s.control_program = Some(bins::original_control());
    s.heartbeat_timeout = Duration::from_secs(6);
    s.heartbeat_interval = Duration::from_secs(1);
    s.converge_timeout = Duration::from_secs(60);
    let lab = Lab::up(s, &mut |p| eprintln!("{p}"))
        .unwrap_or_else(|e| panic!("lab up: {e}\n{}", dump_logs(root.path(), &name)));
    let logs = || dump_logs(root.path(), &name);
    let after = lab.full_mesh_after();
    assert!(
        after.is_some(),
        "no full mesh against the stand-in: {:?}\n{}",
        lab.matrix(),
        logs()
    );
    eprintln!("full mesh after {after:?}");

    // Every host reaches its peers by flooding: no neighbour entry, a flood FDB entry per
    // peer, routes with no gateway.
    for host in 1..=3u16 {
        let tables = lab.tables(host).unwrap();
        assert_eq!(shape(&tables), (0, 2, 2, 0), "h{host}: {tables:?}");
    }
    let agent_log = std::fs::read_to_string(root.path().join(&name).join("logs/h1-agent.log"))
        .unwrap_or_default();
    assert!(
        agent_log.contains("no watch stream") && agent_log.contains("registered no vtep_mac"),
        "the agent says it polls and floods:\n{agent_log}"
    );

    // quiltctl reads the stand-in's list (no revision, no vtep_mac).
    let quiltctl = bins::binary("quiltctl");
    let url = lab.state().control_url.clone();
    let h1 = lab.state().hosts[0].netns.clone();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &h1])
        .arg(&quiltctl)
        .args(["--control-plane", &url, "nodes"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(table.matches(" up ").count(), 3, "{table}");
    assert!(table.contains("no vtep_mac:"), "{table}");

    lab.down(true).expect("down");
    assert_nothing_left(&name, root.path());
}

#[test]
fn a_host_acting_as_the_original_agent_and_ours_reach_each_other() {
    if !privileged_or_skip("a_host_acting_as_the_original_agent_and_ours_reach_each_other") {
        return;
    }
    let bins = mesh_bins();
    let root = tempfile::tempdir().unwrap();
    let name = lab_name("m");
    let mut s = spec(&name, 3, 1, &bins, root.path());
    s.heartbeat_interval = Duration::from_secs(1);
    s.converge_timeout = Duration::from_secs(60);
    s.agent_args
        .insert(3, vec!["--original-data-plane".to_string()]);
    let lab = Lab::up(s, &mut |p| eprintln!("{p}"))
        .unwrap_or_else(|e| panic!("lab up: {e}\n{}", dump_logs(root.path(), &name)));
    let logs = || dump_logs(root.path(), &name);
    assert!(
        lab.full_mesh_after().is_some(),
        "no full mesh with an original-style host: {:?}\n{}",
        lab.matrix(),
        logs()
    );
    let h3 = lab.tables(3).unwrap();
    assert_eq!(shape(&h3), (0, 2, 2, 0), "h3 floods to both: {h3:?}");
    for host in 1..=2u16 {
        let t = lab.tables(host).unwrap();
        assert_eq!(
            shape(&t),
            (1, 1, 2, 1),
            "h{host}: the other of ours by MAC and via its gateway, h3 by flooding: {t:?}"
        );
    }
    lab.down(true).expect("down");
    assert_nothing_left(&name, root.path());
}

#[test]
fn an_agent_that_deregisters_on_exit_is_withdrawn_at_once() {
    if !privileged_or_skip("an_agent_that_deregisters_on_exit_is_withdrawn_at_once") {
        return;
    }
    let bins = mesh_bins();
    let root = tempfile::tempdir().unwrap();
    let name = lab_name("d");
    let mut s = spec(&name, 3, 0, &bins, root.path());
    // Far longer than the wait below: only the deregistration can explain a withdrawal.
    s.heartbeat_timeout = Duration::from_secs(60);
    s.heartbeat_interval = Duration::from_secs(1);
    s.agent_args
        .insert(3, vec!["--deregister-on-exit".to_string()]);
    let mut lab = Lab::up(s, &mut |p| eprintln!("{p}"))
        .unwrap_or_else(|e| panic!("lab up: {e}\n{}", dump_logs(root.path(), &name)));
    let logs = || dump_logs(root.path(), &name);
    let routes = |lab: &Lab, host: u16| lab.tables(host).map(|t| t.routes.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while (routes(&lab, 1) < 2 || routes(&lab, 2) < 2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!((routes(&lab, 1), routes(&lab, 2)), (2, 2), "{}", logs());

    let stopped = Instant::now();
    lab.stop_agent(3).unwrap();
    let deadline = stopped + Duration::from_secs(10);
    while (routes(&lab, 1) > 1 || routes(&lab, 2) > 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        (routes(&lab, 1), routes(&lab, 2)),
        (1, 1),
        "h3's route withdrawn on h1 and h2\n{}",
        logs()
    );
    eprintln!("h3 withdrawn {:?} after SIGTERM", stopped.elapsed());
    let h3 = lab.tables(3).unwrap();
    assert_eq!(h3.routes.len(), 2, "h3 keeps its own routes: {h3:?}");
    lab.down(true).expect("down");
    assert_nothing_left(&name, root.path());
}
