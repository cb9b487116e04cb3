//! Several real control-plane processes over one real etcd cluster: leases never shared
//! however registrations race, every watch sees every replica's changes, a replica or an
//! etcd member killed changes nothing for the rest, lost quorum answers 503 until it is
//! back, and a SQLite cluster migrated to etcd carries on.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::EventReader;
use quilt_api::ControlClient;
use quilt_api::types::{NodeInfo, RegisterRequest};
use quilt_testkit::control::{ControlBinary, client};
use quilt_testkit::etcd::{EtcdCluster, etcd_or_skip};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_quilt-mesh-control");

/// Starts a replica over `etcd` with `args`.
fn replica(etcd: &EtcdCluster, args: &[&str]) -> ControlBinary {
    let endpoints = etcd.endpoints_flag();
    let mut all = vec!["--store", "etcd", "--etcd-endpoints", &endpoints];
    all.extend_from_slice(args);
    // The database path is unused with --store etcd.
    ControlBinary::start(Path::new(BINARY), Path::new("/nonexistent/unused.db"), &all)
}

fn client_of(urls: &[String]) -> ControlClient {
    ControlClient::builder(urls.iter().cloned())
        .no_proxy()
        .build()
        .unwrap()
}

async fn watch(replica: &ControlBinary, since: u64) -> EventReader {
    let r = client()
        .get(replica.url(&format!("/api/nodes/watch?since={since}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "watch since {since}");
    EventReader::new(r)
}

async fn status_of(replica: &ControlBinary, path: &str) -> (u16, Value) {
    let r = client().get(replica.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Registers `host_ip` through `urls`, trying again while the store is unavailable
/// (elections after a member is lost), for at most `within`.
async fn register_within(urls: &[String], host_ip: &str, within: Duration) -> NodeInfo {
    let control = client_of(urls);
    let start = Instant::now();
    loop {
        match control.register(&RegisterRequest::new("n", host_ip)).await {
            Ok(answer) => return answer.node,
            Err(e) if start.elapsed() < within => {
                eprintln!("register {host_ip}: {e}; again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("register {host_ip} failed for {within:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_registrations_across_three_replicas_get_three_hundred_subnets() {
    if !etcd_or_skip("300 registrations across replicas") {
        return;
    }
    let etcd = EtcdCluster::start(3).await;
    let plan = ["--cluster-cidr", "10.64.0.0/14"];
    let replicas: Vec<ControlBinary> = (0..3).map(|_| replica(&etcd, &plan)).collect();
    let (_, list) = status_of(&replicas[0], "/api/nodes").await;
    let start_revision = list["revision"].as_u64().unwrap();
    let mut watch_a = watch(&replicas[0], start_revision).await;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        for worker in 0..4 {
            let control = Arc::new(client_of(std::slice::from_ref(&replica.base)));
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..25 {
                    let ip = format!("10.{}.{worker}.{}", 100 + r, i + 1);
                    let answer = control
                        .register(&RegisterRequest::new(format!("r{r}-{worker}-{i}"), ip))
                        .await
                        .unwrap();
                    got.push(answer.node);
                }
                got
            }));
        }
    }
    let mut registered = Vec::new();
    for task in tasks {
        registered.extend(task.await.unwrap());
    }
    eprintln!(
        "300 registrations across 3 replicas in {:?}",
        started.elapsed()
    );
    let subnets: BTreeSet<_> = registered.iter().map(|n| n.subnet).collect();
    assert_eq!(subnets.len(), 300, "300 distinct subnets");
    let ids: BTreeSet<_> = registered.iter().map(|n| n.node_id.clone()).collect();
    assert_eq!(ids.len(), 300, "300 distinct node ids");

    // Any replica lists all of them.
    let (_, list) = status_of(&replicas[2], "/api/nodes").await;
    assert_eq!(list["nodes"].as_array().unwrap().len(), 300);

    // The watch on replica A saw every registration, made through any replica, in order.
    let mut seen = BTreeSet::new();
    let mut last = start_revision;
    while seen.len() < 300 {
        let event = watch_a
            .next_within(Duration::from_secs(20))
            .await
            .expect("the stream goes on");
        let revision = event["revision"].as_u64().unwrap();
        assert!(revision > last, "revision order: {revision} after {last}");
        last = revision;
        assert_eq!(event["type"], "added");
        seen.insert(event["node"]["node_id"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_leaves_the_rest_serving_and_a_silent_node_is_marked_down_once() {
    if !etcd_or_skip("replica killed") {
        return;
    }
    let etcd = EtcdCluster::start(3).await;
    let args = ["--heartbeat-timeout", "2s"];
    let mut replicas: Vec<Option<ControlBinary>> =
        (0..3).map(|_| Some(replica(&etcd, &args))).collect();
    let urls: Vec<String> = replicas.iter().flatten().map(|r| r.base.clone()).collect();
    let control = Arc::new(client_of(&urls));
    // Past every replica's start grace, so that the monitors judge.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut nodes = Vec::new();
    for i in 1..=4 {
        let answer = control
            .register(&RegisterRequest::new(
                format!("n{i}"),
                format!("10.9.0.{i}"),
            ))
            .await
            .unwrap();
        nodes.push(answer);
    }
    let beating = {
        let control = control.clone();
        let nodes: Vec<_> = nodes[..3]
            .iter()
            .map(|n| (n.node.node_id.clone(), n.node_token.clone()))
            .collect();
        tokio::spawn(async move {
            loop {
                for (id, token) in &nodes {
                    if let Err(e) = control.heartbeat(id, token, None).await {
                        panic!("heartbeat of {id} failed: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let silent = nodes[3].node.node_id.clone();
    let beating_ids: Vec<String> = nodes[..3].iter().map(|n| n.node.node_id.clone()).collect();
    let silent_since = Instant::now();
    let (_, list) = status_of(replicas[2].as_ref().unwrap(), "/api/nodes").await;
    let mut watch_c = watch(
        replicas[2].as_ref().unwrap(),
        list["revision"].as_u64().unwrap(),
    )
    .await;

    // The replica the clients prefer dies.
    replicas[0].take().unwrap().kill9();
    let more = register_within(&urls, "10.9.0.50", Duration::from_secs(10)).await;
    assert_eq!(more.status, quilt_api::types::Status::Up);

    // The silent node is marked down by one of the others, once.
    let mut downs = 0;
    let mut marked_after = None;
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline {
        let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(500), watch_c.next()).await
        else {
            if marked_after
                .is_some_and(|t: Duration| silent_since.elapsed() > t + Duration::from_secs(3))
            {
                break;
            }
            continue;
        };
        if event["type"] == "updated" && event["node"]["status"] == "down" {
            let id = event["node"]["node_id"].as_str().unwrap();
            assert!(
                !beating_ids.iter().any(|b| b == id),
                "a node that sends heartbeats went down: {event}"
            );
            if id == silent {
                downs += 1;
                marked_after.get_or_insert(silent_since.elapsed());
            }
        }
    }
    let marked_after = marked_after.expect("the silent node is marked down");
    eprintln!(
        "silent node marked down {marked_after:?} after its last heartbeat (timeout 2 s, a replica killed meanwhile)"
    );
    assert_eq!(downs, 1, "marked down exactly once");
    assert!(
        marked_after < Duration::from_secs(6),
        "marked down within bounds: {marked_after:?}"
    );
    assert!(
        !beating.is_finished(),
        "heartbeats went on through the other replicas"
    );
    beating.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_etcd_member_lost_changes_nothing_and_lost_quorum_answers_503_until_it_returns() {
    if !etcd_or_skip("etcd quorum") {
        return;
    }
    let mut etcd = EtcdCluster::start(3).await;
    let replicas: Vec<ControlBinary> = (0..2).map(|_| replica(&etcd, &[])).collect();
    let urls: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let first = register_within(&urls, "10.8.0.1", Duration::from_secs(5)).await;
    let (_, list) = status_of(&replicas[1], "/api/nodes").await;
    let mut watch_b = watch(&replicas[1], list["revision"].as_u64().unwrap()).await;

    etcd.kill(0);
    let second = register_within(&urls, "10.8.0.2", Duration::from_secs(10)).await;
    assert_ne!(first.subnet, second.subnet);
    assert_eq!(status_of(&replicas[0], "/health").await.0, 200);

    // Two of three gone: no quorum.
    etcd.kill(1);
    let control = client_of(&[replicas[0].base.clone()]);
    let refused_at = Instant::now();
    let err = loop {
        match control
            .register(&RegisterRequest::new("n", "10.8.0.3"))
            .await
        {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    refused_at.elapsed() < Duration::from_secs(10),
                    "writes still work without quorum"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(err.status().map(|s| s.as_u16()), Some(503), "{err}");
    assert!(err.to_string().contains("etcd"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, health) = status_of(&replicas[1], "/health").await;
        if status == 503 {
            assert_eq!(health["status"], "not-ready");
            assert!(
                health["reason"].as_str().unwrap().contains("etcd"),
                "{health}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health still {status} {health} without quorum"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Quorum back: everything recovers without restarting a replica.
    etcd.restart(0);
    etcd.restart(1);
    let third = register_within(&urls, "10.8.0.4", Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(&replicas[1], "/health").await.0 != 200 {
        assert!(Instant::now() < deadline, "health recovers");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The watch opened before it all saw the registrations after.
    let mut added = BTreeSet::new();
    while !added.contains(&third.node_id) {
        let event = watch_b
            .next_within(Duration::from_secs(15))
            .await
            .expect("the watch stream survived");
        if event["type"] == "added" {
            added.insert(event["node"]["node_id"].as_str().unwrap().to_string());
        }
    }
    assert!(added.contains(&second.node_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sqlite_cluster_migrated_to_etcd_carries_on() {
    if !etcd_or_skip("migrate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("quilt-mesh.db");
    let sqlite = ControlBinary::start(Path::new(BINARY), &db, &[]);
    let control = client_of(std::slice::from_ref(&sqlite.base));
    let mut nodes = Vec::new();
    for i in 1..=12 {
        let mut request = RegisterRequest::new(format!("n{i}"), format!("10.7.0.{i}"));
        request.vtep_mac = Some(format!("02:00:00:00:07:{i:02x}"));
        nodes.push(control.register(&request).await.unwrap());
    }
    // A node that left: its id must never come back.
    control.delete_node(&nodes[11].node.node_id).await.unwrap();
    let gone = nodes.pop().unwrap();
    let before = control.list().await.unwrap();
    drop(control);
    let mut sqlite = sqlite;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sqlite.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    sqlite.child.wait().unwrap();

    let etcd = EtcdCluster::start(1).await;
    let to = format!("etcd:{}", etcd.endpoints_flag());
    let from = format!("sqlite:{}", db.display());
    let migrated = Command::new(BINARY)
        .args(["migrate", "--from", &from, "--to", &to])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&migrated.stdout);
    assert!(
        migrated.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert!(stdout.contains("migrated 11 nodes"), "{stdout}");

    let replica = replica(&etcd, &[]);
    let control = client_of(std::slice::from_ref(&replica.base));
    let after = control.list().await.unwrap();
    assert_eq!(
        after.revision, before.revision,
        "revisions carry on from SQLite's"
    );
    let key = |n: &NodeInfo| (n.node_id.clone(), n.host_ip, n.subnet, n.vtep_mac.clone());
    assert_eq!(
        after.nodes.iter().map(key).collect::<Vec<_>>(),
        before.nodes.iter().map(key).collect::<Vec<_>>(),
        "every node with its id, subnet and MAC"
    );
    // Agents carry on: their tokens work, their watch resumes from their revision.
    let mut resumed = watch(&replica, before.revision).await;
    for n in &nodes {
        control
            .heartbeat(&n.node.node_id, &n.node_token, None)
            .await
            .unwrap();
    }
    let newcomer = control
        .register(&RegisterRequest::new("new", "10.7.1.1"))
        .await
        .unwrap()
        .node;
    let event = resumed.next_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!(event["node"]["node_id"], newcomer.node_id.as_str());
    assert!(event["revision"].as_u64().unwrap() > before.revision);
    let number = |id: &str| id.trim_start_matches("node-").parse::<u64>().unwrap();
    assert!(
        number(&newcomer.node_id) > number(&gone.node.node_id),
        "ids are never reused"
    );
    assert_eq!(
        newcomer.subnet, gone.node.subnet,
        "the freed subnet is the lowest free one"
    );

    // Migrating again into a prefix that holds a cluster is refused.
    let again = Command::new(BINARY)
        .args(["migrate", "--from", &from, "--to", &to])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already holds a cluster"), "{stderr}");
}
