//! The control plane as three replicas over a three-member etcd cluster, one of each on
//! hosts 1 to 3 of a lab (`--control-replicas 3`), with an agent given every replica's URL
//! on every host. In order, while every host's routes, neighbours and FDB entries are
//! watched:
//! 1. full mesh;
//! 2. kill -9 of the replica every agent prefers: no route or entry changes on any host,
//!    every node stays up, and a new host still registers (through another replica);
//! 3. kill -9 of one etcd member: nothing changes;
//! 4. a second member killed, quorum lost: the replicas refuse changes and report not ready,
//!    and still no host's tables change and every container reaches every other;
//! 5. the members back: everything recovers by itself, nothing restarted, nothing changed.
//!
//! A second lab starts over SQLite and is migrated to three replicas over etcd while its
//! agents run: nothing changes on any host, every node keeps its id and subnet, and a new
//! host joins through etcd.
//!
//! The lab tears itself down when dropped, so a failing step leaves nothing behind.

use std::time::{Duration, Instant};

use quilt_lab::lab::Lab;
use quilt_lab::remote;
use quilt_lab::tables::TableWatch;
use quilt_testkit::etcd::etcd_or_skip;
use quilt_testkit::leaks::assert_nothing_left;
use quilt_testkit::netns::privileged_or_skip;

mod common;
use common::{
    assert_unchanged, dump_logs, lab_name, mesh_bins, sample_while, snapshot, spec, wait_full_mesh,
    watch_all,
};

const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

#[test]
fn three_replicas_over_etcd_lose_a_replica_a_member_and_quorum_without_the_data_plane_noticing() {
    let test = "three_replicas_over_etcd";
    if !privileged_or_skip(test) || !etcd_or_skip(test) {
        return;
    }
    let bins = mesh_bins();
    let root = tempfile::tempdir().unwrap();
    let name = lab_name("r");
    let mut s = spec(&name, 3, 1, &bins, root.path());
    s.control_replicas = 3;
    s.heartbeat_timeout = HEARTBEAT_TIMEOUT;
    s.heartbeat_interval = HEARTBEAT_INTERVAL;
    s.resync_interval = Duration::from_secs(5);
    s.reconcile_interval = Duration::from_secs(1);
    let mut lab = Lab::up(s, &mut |p| eprintln!("{p}"))
        .unwrap_or_else(|e| panic!("lab up: {e}\n{}", dump_logs(root.path(), &name)));
    let logs = || dump_logs(root.path(), &name);
    let status = lab.status();
    assert_eq!(status.replicas.len(), 3);
    assert!(
        status
            .replicas
            .iter()
            .all(|r| r.control.running && r.etcd.as_ref().is_some_and(|e| e.running))
    );
    wait_full_mesh(&lab, Duration::from_secs(20), "after up", &logs);

    // 2. The replica every agent tries first dies.
    unchanged_while(&mut lab, "replica 1 killed", &logs, |lab| {
        lab.kill_control(1).unwrap();
        std::thread::sleep(HEARTBEAT_TIMEOUT * 2 + Duration::from_secs(1));
    });
    join_a_host(
        &mut lab,
        "the new host registers through another replica",
        &logs,
    );
    wait_full_mesh(
        &lab,
        Duration::from_secs(20),
        "after the new host joined",
        &logs,
    );
    lab.start_control(1).unwrap();

    // 3. One etcd member dies.
    unchanged_while(&mut lab, "one etcd member killed", &logs, |lab| {
        lab.kill_etcd(2).unwrap();
        std::thread::sleep(HEARTBEAT_TIMEOUT * 2);
    });

    // 4. Quorum lost: changes refused, the data plane untouched.
    let h1 = lab.state().hosts[0].netns.clone();
    let url = lab.state().control_url.clone();
    let tls = lab.state().control_tls();
    unchanged_while(&mut lab, "etcd quorum lost", &logs, |lab| {
        lab.kill_etcd(3).unwrap();
        let start = Instant::now();
        loop {
            match remote::control_health(&h1, &url, tls.clone()) {
                Err(e) if e.contains("503") => break,
                other => {
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
                        "health is still {other:?} without quorum"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        std::thread::sleep(HEARTBEAT_TIMEOUT * 2);
        let matrix = lab.ping_matrix();
        assert!(
            matrix.full(),
            "containers without etcd quorum:\n{}",
            matrix.render()
        );
    });

    // 5. Quorum back: nothing restarted, everything recovers.
    unchanged_while(&mut lab, "etcd quorum back", &logs, |lab| {
        lab.start_etcd(2).unwrap();
        lab.start_etcd(3).unwrap();
        let start = Instant::now();
        while remote::control_health(&h1, &url, tls.clone()).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the replicas do not recover\n{}",
                logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(HEARTBEAT_TIMEOUT * 2);
    });
    assert!(
        lab.status()
            .nodes
            .iter()
            .all(|n| n.status.as_deref() == Some("up")),
        "{:?}",
        lab.status()
    );
    wait_full_mesh(&lab, Duration::from_secs(10), "at the end", &logs);

    lab.down(true).expect("down");
    assert_nothing_left(&name, root.path());
}

/// Runs `during` while every host's tables are watched and read; asserts none changed and
/// every node is up after.
fn unchanged_while(
    lab: &mut Lab,
    when: &str,
    logs: &dyn Fn() -> String,
    during: impl FnOnce(&mut Lab),
) {
    let before = snapshot(lab);
    let watches = watch_all(lab);
    let sampled = sample_while(lab, during);
    let changes: Vec<String> = watches.into_iter().flat_map(TableWatch::finish).collect();
    assert_eq!(
        changes,
        Vec::<String>::new(),
        "the kernel changed: {when}\n{}",
        logs()
    );
    assert_unchanged(&before, &sampled, when);
}

/// Adds a host with its agent and waits until every node, the new one too, is up.
fn join_a_host(lab: &mut Lab, what: &str, logs: &dyn Fn() -> String) {
    let joined = lab.add_host().unwrap();
    lab.start_agent(joined).unwrap();
    wait_until(lab, Duration::from_secs(20), what, logs, |lab| {
        lab.status()
            .nodes
            .iter()
            .all(|n| n.status.as_deref() == Some("up"))
    });
}

fn wait_until(
    lab: &Lab,
    timeout: Duration,
    what: &str,
    logs: &dyn Fn() -> String,
    done: impl Fn(&Lab) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done(lab) {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}\n{:?}\n{}",
            lab.status(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_running_lab_migrated_from_sqlite_to_etcd_carries_on() {
    let test = "a_running_lab_migrated_from_sqlite_to_etcd_carries_on";
    if !privileged_or_skip(test) || !etcd_or_skip(test) {
        return;
    }
    let bins = mesh_bins();
    let root = tempfile::tempdir().unwrap();
    let name = lab_name("m");
    let mut s = spec(&name, 3, 1, &bins, root.path());
    s.heartbeat_timeout = HEARTBEAT_TIMEOUT;
    s.heartbeat_interval = HEARTBEAT_INTERVAL;
    let mut lab = Lab::up(s, &mut |p| eprintln!("{p}"))
        .unwrap_or_else(|e| panic!("lab up: {e}\n{}", dump_logs(root.path(), &name)));
    let logs = || dump_logs(root.path(), &name);
    wait_full_mesh(&lab, Duration::from_secs(20), "after up", &logs);
    let nodes = |lab: &Lab| -> Vec<_> {
        lab.status()
            .nodes
            .into_iter()
            .map(|n| (n.host, n.node_id, n.subnet, n.status))
            .collect()
    };
    let before = nodes(&lab);

    unchanged_while(&mut lab, "migrating to etcd", &logs, |lab| {
        let printed = lab.migrate_to_etcd(3).unwrap();
        assert!(printed.contains("migrated 3 nodes"), "{printed}");
        std::thread::sleep(HEARTBEAT_TIMEOUT * 2);
    });
    assert_eq!(
        nodes(&lab),
        before,
        "every node kept its id and subnet, and is up"
    );
    assert_eq!(lab.status().replicas.len(), 3);

    join_a_host(&mut lab, "a new host registers over etcd", &logs);
    lab.down(true).expect("down");
    assert_nothing_left(&name, root.path());
}
