//! quiltctl's commands given several control-plane URLs: a paused replica (SIGSTOP) and
//! one answering 503 come first, and every command is answered by the live one behind
//! them. Real processes on loopback; no root needed.

use std::process::Output;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quilt_testkit::control::ControlBinary;
use quilt_testkit::replica::{Mode, ReplicaProxy};

const QUILTCTL: &str = env!("CARGO_BIN_EXE_quiltctl");

/// Runs quiltctl with `args` (off the async threads); answers its output and how long it took.
async fn quiltctl(args: Vec<String>) -> (Output, Duration) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let output = std::process::Command::new(QUILTCTL)
            .args(&args)
            .env_remove("QUILT_CONTROL_PLANE")
            .env_remove("QUILT_JOIN_TOKEN")
            .env("NO_PROXY", "*")
            .env("no_proxy", "*")
            .output()
            .unwrap();
        (output, started.elapsed())
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "quiltctl failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_answered_past_a_paused_and_a_503_replica() {
    let control = quilt_testkit::bins::binary("quilt-mesh-control");
    let dir = tempfile::tempdir().unwrap();
    let paused = ControlBinary::start(&control, &dir.path().join("paused.db"), &[]);
    let live = ControlBinary::start(&control, &dir.path().join("live.db"), &[]);
    let unavailable = ReplicaProxy::start(&live.base).await;
    unavailable.set(Mode::Unavailable);
    let direct = quilt_api::ControlClient::builder([live.base.clone()])
        .no_proxy()
        .build()
        .unwrap();
    for (host, ip) in [("w1", "192.168.8.1"), ("w2", "192.168.8.2")] {
        direct
            .register(&quilt_api::types::RegisterRequest::new(host, ip))
            .await
            .unwrap();
    }
    let pid = Pid::from_raw(i32::try_from(paused.child.id()).unwrap());
    kill(pid, Signal::SIGSTOP).unwrap();
    let urls = format!("{},{},{}", paused.base, unavailable.base, live.base);
    let cp = format!("--control-plane={urls}");

    let (nodes, took) = quiltctl(vec!["nodes".into(), "--json".into(), cp.clone()]).await;
    let list: serde_json::Value = serde_json::from_str(&stdout(&nodes)).unwrap();
    println!("quiltctl nodes past a paused and a 503 replica: {took:?}");
    assert_eq!(list["nodes"].as_array().unwrap().len(), 2);
    assert!(took < Duration::from_secs(8), "{took:?}");
    let warned = String::from_utf8_lossy(&nodes.stderr);
    assert!(
        warned.contains("left a control plane replica") && warned.contains(&paused.base),
        "the switch is said, naming the replica left: {warned}"
    );

    let (status, took) = quiltctl(vec!["status".into(), "--json".into(), cp.clone()]).await;
    let report: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    println!("quiltctl status (health, then list): {took:?}");
    assert_eq!(report["health"], "ok");
    assert_eq!(report["answered_by"], live.base.as_str());
    assert_eq!(report["control_plane"], urls.as_str());
    assert_eq!(report["nodes"]["total"], 2);
    let (text, _) = quiltctl(vec!["status".into(), cp.clone()]).await;
    assert!(
        stdout(&text).contains(&format!("control plane  {} (ok), of {urls}", live.base)),
        "{}",
        stdout(&text)
    );

    let (deleted, _) = quiltctl(vec![
        "node".into(),
        "delete".into(),
        "node-2".into(),
        "--json".into(),
        cp.clone(),
    ])
    .await;
    let node: serde_json::Value = serde_json::from_str(&stdout(&deleted)).unwrap();
    assert_eq!(node["hostname"], "w2");

    // Every replica refusing: the command fails with the refusal, exit 1.
    let (refused, _) = quiltctl(vec![
        "nodes".into(),
        format!("--control-plane={},{}", unavailable.base, unavailable.base),
    ])
    .await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("503"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let _ = kill(pid, Signal::SIGCONT);
}
