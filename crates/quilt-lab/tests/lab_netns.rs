//! The lab on the real kernel: namespaces, the underlay, the daemons, teardown. The
//! full mesh tests need quilt-mesh-agent and quilt-cni; they skip (loudly) only while
//! the workspace has no quilt-mesh-agent crate yet.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quilt_kernel::netns::{self, OwnedNetns};
use quilt_lab::lab::Lab;
use quilt_lab::{LabError, LabSpec, bins};

/// A lab name no other test of this machine uses (at most 24 characters).
fn lab_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn infra_bins() -> PathBuf {
    bins::build_for_tests(&["quilt-mesh-control", "quilt-runtime"])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The binaries of the full mesh (from `QUILT_LAB_BIN_DIR` when set), or `None` (skip)
/// while quilt-mesh-agent is not in the workspace yet.
fn mesh_bins(test: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("QUILT_LAB_BIN_DIR") {
        return Some(PathBuf::from(dir));
    }
    if !bins::workspace_has("quilt-mesh-agent") || !bins::workspace_has("quilt-cni") {
        eprintln!("skipping {test}: quilt-mesh-agent or quilt-cni is not in the workspace yet");
        return None;
    }
    Some(
        bins::build_for_tests(&[
            "quilt-mesh-control",
            "quilt-runtime",
            "quilt-mesh-agent",
            "quilt-cni",
        ])
        .unwrap_or_else(|e| panic!("{e}")),
    )
}

fn spec(name: &str, nodes: u16, per_node: u16, bins: &Path, root: &Path) -> LabSpec {
    let mut spec = LabSpec::new(name, nodes, per_node, bins);
    spec.root = root.to_path_buf();
    spec
}

/// Lab namespaces still present.
fn namespaces_of(name: &str) -> Vec<String> {
    let prefix = format!("qlab-{name}-");
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Live (not zombie) processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

fn assert_nothing_left(name: &str, root: &Path) {
    assert_eq!(namespaces_of(name), Vec::<String>::new(), "namespaces left");
    let deadline = Instant::now() + Duration::from_secs(5);
    let needle = root.display().to_string();
    while !processes_mentioning(&needle).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        processes_mentioning(&needle),
        Vec::<String>::new(),
        "processes left"
    );
}

#[test]
fn underlay_control_plane_and_runtimes_come_up_and_go_away() {
    if !netns::privileged_or_skip("underlay_control_plane_and_runtimes_come_up_and_go_away") {
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
    if !netns::privileged_or_skip("a_clashing_name_is_refused_and_nothing_is_touched") {
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
    if !netns::privileged_or_skip("a_panic_tears_the_lab_down") {
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
    if !netns::privileged_or_skip("three_nodes_reach_full_mesh_and_leave_nothing_behind") {
        return;
    }
    let Some(bins) = mesh_bins("three_nodes_reach_full_mesh_and_leave_nothing_behind") else {
        return;
    };
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
    lab.down(true).expect("down");
    assert_nothing_left(&name, root.path());
}

#[test]
fn the_matrix_is_right_when_one_agent_is_stopped() {
    if !netns::privileged_or_skip("the_matrix_is_right_when_one_agent_is_stopped") {
        return;
    }
    let Some(bins) = mesh_bins("the_matrix_is_right_when_one_agent_is_stopped") else {
        return;
    };
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

    lab.stop_agent(3).unwrap();
    // The control plane marks h3 down after the heartbeat timeout.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = lab.status();
        if status.nodes[2].status.as_deref() == Some("down") || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        status.nodes[2].status.as_deref(),
        Some("down"),
        "{status:?}"
    );
    assert!(!status.nodes[2].agent.running && status.nodes[0].agent.running);

    // Hosts whose agents run keep reaching each other; every cell is what a ping says.
    let matrix = lab.ping_matrix();
    let names: Vec<&str> = matrix.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["c1-1", "c2-1", "c3-1"]);
    for i in 0..2 {
        for j in 0..2 {
            assert!(
                matrix.ok[i][j],
                "c{}-1 -> c{}-1 lost:\n{}",
                i + 1,
                j + 1,
                matrix.render()
            );
        }
    }
    eprintln!("matrix with h3's agent stopped:\n{}", matrix.render());
    for (i, row) in matrix.ok.iter().enumerate() {
        for (j, ok) in row.iter().enumerate() {
            let e = &matrix.endpoints;
            let again = quilt_lab::probe::ping(&e[i].netns, e[j].address);
            assert_eq!(
                *ok, again,
                "{} -> {} changed between two pings",
                e[i].name, e[j].name
            );
        }
    }

    // The agent back: h3 up again and the full mesh returns.
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
    lab.down(true).expect("down");
    assert_nothing_left(&name, root.path());
}

fn dump_logs(root: &Path, name: &str) -> String {
    let dir = root.join(name).join("logs");
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.filter_map(|e| e.ok()) {
            out.push_str(&format!(
                "--- {}\n{}\n",
                e.path().display(),
                quilt_lab::lab::log_tail(&e.path(), 20)
            ));
        }
    }
    out
}
