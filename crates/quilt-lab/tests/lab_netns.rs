//! The lab on the real kernel: namespaces, the underlay, the daemons, teardown, and
//! what the mesh does when one agent is stopped.

use std::time::{Duration, Instant};

use quilt_lab::LabError;
use quilt_lab::lab::Lab;
use quilt_testkit::netns::{OwnedNetns, privileged_or_skip};

mod common;
use common::{dump_logs, infra_bins, lab_name, mesh_bins, spec};
use quilt_testkit::leaks::{assert_nothing_left, namespaces_of};

#[test]
fn underlay_control_plane_and_runtimes_come_up_and_go_away() {
    if !privileged_or_skip("underlay_control_plane_and_runtimes_come_up_and_go_away") {
        return;
    }
    let bins = infra_bins();
    let root = tempfile::tempdir().unwrap();
    let name = lab_name("u");
    let mut s = spec(&name, 3, 1, &bins, root.path());
    s.start_agents = false;
    let mut stages = Vec::new();
    let lab = Lab::up(s, &mut |p| stages.push(p.stage)).expect("lab up");
    assert!(
        stages.contains(&"underlay") && stages.contains(&"runtimes"),
        "{stages:?}"
    );
    let state = lab.state().clone();
    assert_eq!(state.namespaces.len(), 4, "no containers without agents");
    assert_eq!(namespaces_of(&name).len(), 4);

    // Host 3 reaches host 2 over the switch, and nothing else is on the underlay.
    let out = lab
        .exec(
            "h3",
            &[
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                &state.hosts[1].host_ip.to_string(),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let forwarding = lab
        .exec(
            "h2",
            &["cat", "/proc/sys/net/ipv4/ip_forward"],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(forwarding.stdout.trim(), "1");

    let status = lab.status();
    assert!(status.control.running, "{status:?}");
    assert_eq!(status.control_error, None);
    assert!(
        status
            .nodes
            .iter()
            .all(|n| n.runtime.running && !n.agent.running)
    );
    assert!(
        status
            .nodes
            .iter()
            .all(|n| n.runtime.rss_kib.unwrap_or(0) > 0)
    );

    // Another process finds the lab by its state file.
    let loaded = quilt_lab::LabState::load(root.path(), &name).unwrap();
    assert_eq!(loaded, state);

    lab.down(true).expect("down");
    assert_nothing_left(&name, root.path());
    assert!(!root.path().join(&name).exists(), "lab folder left");
}

#[test]
fn a_clashing_name_is_refused_and_nothing_is_touched() {
    if !privileged_or_skip("a_clashing_name_is_refused_and_nothing_is_touched") {
        return;
    }
    let bins = infra_bins();
    let root = tempfile::tempdir().unwrap();
    let name = lab_name("c");
    let foreign = OwnedNetns::create(&format!("qlab-{name}-h2")).unwrap();
    let mut s = spec(&name, 3, 1, &bins, root.path());
    s.start_agents = false;
    let err = Lab::up(s.clone(), &mut |_| {}).err().expect("refused");
    assert!(
        matches!(&err, LabError::NameClash { namespace, .. } if namespace == foreign.name()),
        "{err}"
    );
    assert!(err.to_string().contains("was not made by lab"), "{err}");
    assert_eq!(namespaces_of(&name), vec![foreign.name().to_string()]);
    assert!(!root.path().join(&name).join("state.json").exists());
    drop(foreign);

    // A lab of the same name that is already up is refused too, and survives.
    let lab = Lab::up(s.clone(), &mut |_| {}).expect("lab up");
    let err = Lab::up(s, &mut |_| {}).err().expect("refused");
    assert!(matches!(err, LabError::AlreadyExists { .. }), "{err}");
    assert_eq!(namespaces_of(&name).len(), 4);
    lab.down(true).unwrap();
    assert_nothing_left(&name, root.path());
}

#[test]
fn a_panic_tears_the_lab_down_and_down_by_name_cleans_up_after_a_crash() {
    if !privileged_or_skip("a_panic_tears_the_lab_down") {
        return;
    }
    let bins = infra_bins();
    let root = tempfile::tempdir().unwrap();

    let name = lab_name("p");
    let mut s = spec(&name, 2, 0, &bins, root.path());
    s.start_agents = false;
    let r = std::panic::catch_unwind(|| {
        let _lab = Lab::up(s, &mut |_| {}).expect("lab up");
        assert_eq!(namespaces_of(&name).len(), 3);
        panic!("test panics with the lab up");
    });
    assert!(r.is_err());
    assert_nothing_left(&name, root.path());

    // A lab left running (as `quiltctl lab up` leaves it) is removed by name.
    let name = lab_name("k");
    let mut s = spec(&name, 2, 0, &bins, root.path());
    s.start_agents = false;
    let lab = Lab::up(s, &mut |_| {}).expect("lab up");
    let state = lab.keep_running();
    assert_eq!(namespaces_of(&name).len(), 3);
    let down = quilt_lab::lab::down(root.path(), &name, true).expect("down by name");
    assert_eq!(down, state);
    assert_nothing_left(&name, root.path());
    // Down again: there is no such lab.
    assert!(matches!(
        quilt_lab::lab::down(root.path(), &name, true),
        Err(LabError::NotFound { .. })
    ));
}

#[test]
fn three_nodes_reach_full_mesh_and_leave_nothing_behind() {
    if !privileged_or_skip("three_nodes_reach_full_mesh_and_leave_nothing_behind") {
        return;
    }
    let bins = mesh_bins();
    let root = tempfile::tempdir().unwrap();
    let name = lab_name("m");
    let mut lines = Vec::new();
    let lab = Lab::up(spec(&name, 3, 2, &bins, root.path()), &mut |p| {
        lines.push(p.to_string())
    })
    .unwrap_or_else(|e| panic!("lab up: {e}\n{}", dump_logs(root.path(), &name)));
    let matrix = lab.matrix().expect("matrix").clone();
    assert!(
        matrix.full(),
        "not fully connected:\n{}\n{}\n{}",
        lines.join("\n"),
        matrix.render(),
        dump_logs(root.path(), &name)
    );
    assert_eq!(matrix.pairs(), 36);
    assert!(lab.full_mesh_after().is_some());
    let status = lab.status();
    let subnets: std::collections::BTreeSet<_> = status.nodes.iter().map(|n| n.subnet).collect();
    assert_eq!(subnets.len(), 3, "{status:?}");
    assert!(
        status
            .nodes
            .iter()
            .all(|n| n.status.as_deref() == Some("up") && n.vtep_mac.is_some())
    );
    // Each container's address is inside its node's subnet.
    for c in &status.containers {
        let node = &status.nodes[usize::from(c.host - 1)];
        assert!(
            node.subnet.unwrap().contains(&c.address.unwrap().addr()),
            "{c:?}"
        );
    }
    // Secrets: files that hold one are root's only, and no command line shows one.
    let state = lab.state();
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&state.state_path()), 0o600, "state.json");
    assert_eq!(mode(&state.dir.join("data/join-token")), 0o600);
    for h in 1..=3 {
        let agent_json = state.dir.join(format!("data/h{h}/agent/agent.json"));
        assert_eq!(mode(&agent_json), 0o600, "{}", agent_json.display());
    }
    let pids = state
        .hosts
        .iter()
        .flat_map(|h| [h.runtime_pid, h.agent_pid, h.control_pid])
        .flatten();
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(!cmdline.contains(&state.join_token), "pid {pid}: {cmdline}");
    }
    lab.down(true).expect("down");
    assert_nothing_left(&name, root.path());
}

#[test]
fn the_matrix_is_right_when_one_agent_is_stopped() {
    if !privileged_or_skip("the_matrix_is_right_when_one_agent_is_stopped") {
        return;
    }
    let bins = mesh_bins();
    let root = tempfile::tempdir().unwrap();
    let name = lab_name("a");
    let mut s = spec(&name, 3, 1, &bins, root.path());
    s.heartbeat_timeout = Duration::from_secs(3);
    s.heartbeat_interval = Duration::from_millis(500);
    let mut lab = Lab::up(s, &mut |_| {})
        .unwrap_or_else(|e| panic!("lab up: {e}\n{}", dump_logs(root.path(), &name)));
    assert!(
        lab.matrix().unwrap().full(),
        "{}",
        lab.matrix().unwrap().render()
    );
    let before = lab.status();
    let h3 = before.nodes[2].clone();
    let h3_tables = lab.tables(3).unwrap();
    assert_eq!(h3_tables.routes.len(), 2, "{h3_tables}");

    // A graceful stop (SIGTERM) leaves h3's kernel state and its registration alone...
    lab.stop_agent(3).unwrap();
    assert_eq!(lab.tables(3).unwrap(), h3_tables, "h3's own tables changed");
    // ...but its heartbeats stop, so the control plane marks it down after the timeout
    // and the other hosts remove everything they held for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = lab.status();
        let gone = (1..=2).all(|h| {
            lab.tables(h)
                .map(|t| {
                    t.entries_for_peer(h3.subnet.unwrap(), h3.host_ip)
                        .is_empty()
                })
                .unwrap_or(false)
        });
        if (status.nodes[2].status.as_deref() == Some("down") && gone) || Instant::now() > deadline
        {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        status.nodes[2].status.as_deref(),
        Some("down"),
        "{status:?}"
    );
    assert_eq!(status.nodes[2].node_id, h3.node_id, "registration kept");
    assert_eq!(status.nodes[2].subnet, h3.subnet, "lease kept");
    assert!(!status.nodes[2].agent.running && status.nodes[0].agent.running);
    for h in 1..=2 {
        let t = lab.tables(h).unwrap();
        assert_eq!(
            t.entries_for_peer(h3.subnet.unwrap(), h3.host_ip),
            Vec::<String>::new(),
            "h{h} still holds entries for h3:\n{t}"
        );
        assert_eq!(t.routes.len(), 1, "h{h} lost its other peer:\n{t}");
    }
    assert_eq!(lab.tables(3).unwrap(), h3_tables, "h3's own tables changed");

    // Exactly: c1-1 and c2-1 reach each other; c3-1 reaches only itself, and nobody
    // reaches it. Every cell is asked twice, so a slow answer is not mistaken.
    let matrix = lab.ping_matrix();
    let names: Vec<&str> = matrix.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["c1-1", "c2-1", "c3-1"]);
    eprintln!("matrix with h3's agent stopped:\n{}", matrix.render());
    for (i, row) in matrix.ok.iter().enumerate() {
        for (j, ok) in row.iter().enumerate() {
            let expected = i == j || (i < 2 && j < 2);
            let e = &matrix.endpoints;
            let again = quilt_lab::probe::ping(&e[i].netns, e[j].address);
            assert!(
                *ok == expected && again == expected,
                "{} -> {}: expected {}, pinged {ok} then {again}\n{}",
                e[i].name,
                e[j].name,
                if expected { "an answer" } else { "no answer" },
                matrix.render()
            );
        }
    }

    // The agent back: h3 up again with the same lease, and the full mesh returns.
    lab.start_agent(3).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut matrix = lab.ping_matrix();
    while !matrix.full() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        matrix.retry_failed();
    }
    assert!(
        matrix.full(),
        "{}\n{}",
        matrix.render(),
        dump_logs(root.path(), &name)
    );
    assert_eq!(lab.status().nodes[2].subnet, h3.subnet);
    lab.down(true).expect("down");
    assert_nothing_left(&name, root.path());
}
