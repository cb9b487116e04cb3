//! The real binary, killed with SIGKILL in the middle of registrations and started again
//! on the same database: every acknowledged registration is still there with the same
//! subnet, and the next lease does not collide.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::EventReader;
use quilt_testkit::control::{ControlBinary, client};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_quilt-mesh-control");

#[tokio::test]
async fn kill_9_keeps_every_acknowledged_registration_and_leases_do_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("quilt-mesh.db");
    let http = client();

    // /28 leases: 4095 of them, more than the workers can fill before the kill.
    let plan = ["--node-prefix-len", "28"];
    let server = ControlBinary::start(Path::new(BINARY), &db, &plan);
    let acknowledged: Arc<Mutex<HashMap<String, (String, String)>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..8u32 {
        let http = http.clone();
        let url = server.url("/api/nodes/register");
        let acknowledged = acknowledged.clone();
        workers.push(tokio::spawn(async move {
            for i in 0..1000u32 {
                let ip = format!("10.{}.{}.{}", 100 + w, i / 200, i % 200 + 1);
                let sent = http
                    .post(&url)
                    .json(&json!({"hostname": format!("w{w}-{i}"), "host_ip": ip}))
                    .send()
                    .await;
                let Ok(r) = sent else { return };
                if r.status() != 200 {
                    return;
                }
                let Ok(v) = r.json::<Value>().await else {
                    return;
                };
                let entry = (
                    v["node_id"].as_str().unwrap().into(),
                    v["subnet"].as_str().unwrap().into(),
                );
                acknowledged.lock().unwrap().insert(ip, entry);
            }
        }));
    }
    // Let registrations flow, then kill the server in the middle of them.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 60 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} registrations acknowledged in 30 s",
            acknowledged.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for w in workers {
        w.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 60 && acknowledged.len() < 8000,
        "killed mid-flight"
    );

    let server = ControlBinary::start(Path::new(BINARY), &db, &plan);
    let listed: Value = http
        .get(server.url("/api/nodes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let nodes = listed["nodes"].as_array().unwrap();
    let by_ip: HashMap<&str, &Value> = nodes
        .iter()
        .map(|n| (n["host_ip"].as_str().unwrap(), n))
        .collect();
    for (ip, (id, subnet)) in &acknowledged {
        let node = by_ip
            .get(ip.as_str())
            .unwrap_or_else(|| panic!("acknowledged {ip} lost"));
        assert_eq!(node["node_id"].as_str().unwrap(), id);
        assert_eq!(node["subnet"].as_str().unwrap(), subnet);
    }
    let subnets: HashSet<&str> = nodes
        .iter()
        .map(|n| n["subnet"].as_str().unwrap())
        .collect();
    assert_eq!(subnets.len(), nodes.len(), "no subnet is held twice");
    let revision = listed["revision"].as_u64().unwrap();
    assert!(
        revision >= nodes.len() as u64,
        "the revision counter survived"
    );

    // The retained history started over: an old revision is gone, the current one works.
    let r = http
        .get(server.url("/api/nodes/watch?since=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    let mut events = EventReader::new(
        http.get(server.url(&format!("/api/nodes/watch?since={revision}")))
            .send()
            .await
            .unwrap(),
    );

    let r = http
        .post(server.url("/api/nodes/register"))
        .json(&json!({"hostname": "after", "host_ip": "10.250.0.1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fresh: Value = r.json().await.unwrap();
    let fresh_subnet = fresh["subnet"].as_str().unwrap();
    assert!(
        !subnets.contains(fresh_subnet),
        "{fresh_subnet} collides after restart"
    );
    let ids: HashSet<&str> = nodes
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(fresh["node_id"].as_str().unwrap()));
    let event = events.next_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        event["revision"].as_u64().unwrap(),
        revision + 1,
        "revisions keep growing"
    );

    // An acknowledged node re-registering after the restart gets its old lease back.
    let (ip, (id, subnet)) = acknowledged.iter().next().unwrap();
    let again: Value = http
        .post(server.url("/api/nodes/register"))
        .json(&json!({"hostname": "again", "host_ip": ip}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            again["node_id"].as_str().unwrap(),
            again["subnet"].as_str().unwrap()
        ),
        (id.as_str(), subnet.as_str())
    );
    drop(server);
}

#[tokio::test]
async fn the_binary_stops_cleanly_on_sigterm_and_refuses_a_changed_plan() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("quilt-mesh.db");
    let server = ControlBinary::start(Path::new(BINARY), &db, &[]);
    let http = client();
    let watch = http
        .get(server.url("/api/nodes/watch"))
        .send()
        .await
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut events = EventReader::new(watch);
    assert!(
        events.next_within(Duration::from_secs(10)).await.is_none(),
        "the watch stream ends"
    );
    let mut server = server;
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");

    let out = std::process::Command::new(BINARY)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cluster-cidr",
            "10.43.0.0/16",
            "--db-path",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("10.42.0.0/16") && stderr.contains("10.43.0.0/16"),
        "{stderr}"
    );
}
