//! The real binary paused (SIGSTOP) for longer than the heartbeat timeout while its nodes
//! keep sending heartbeats: when it resumes, no node is marked down, because the missing
//! heartbeats were its own fault.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quilt_api::ControlClient;
use quilt_api::types::{RegisterRequest, Status};
use quilt_testkit::control::ControlBinary;

const BINARY: &str = env!("CARGO_BIN_EXE_quilt-mesh-control");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_of_the_control_plane_marks_no_live_node_down() {
    let dir = tempfile::tempdir().unwrap();
    let server = ControlBinary::start(
        Path::new(BINARY),
        &dir.path().join("quilt-mesh.db"),
        &["--heartbeat-timeout", "1s"],
    );
    let client = ControlClient::builder([server.url("")])
        .no_proxy()
        .timeouts(quilt_api::Timeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(20),
            failover: Duration::from_secs(2),
        })
        .build()
        .unwrap();
    let mut nodes = Vec::new();
    for n in 1..=3u8 {
        let request = RegisterRequest::new(format!("n{n}"), format!("192.168.5.{n}"));
        let answer = client.register(&request).await.unwrap();
        nodes.push((answer.node.node_id, answer.node_token));
    }
    // Past the start-up grace, every node heartbeating every 200 ms.
    let client = std::sync::Arc::new(client);
    let revision = client.list().await.unwrap().revision;
    let mut events = Box::pin(client.watch(revision).await.unwrap());
    // The nodes beat until the watching below is over: a fixed end raced its last second.
    let beating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let beaters: Vec<_> = nodes
        .into_iter()
        .map(|(id, token)| {
            let client = client.clone();
            let beating = beating.clone();
            tokio::spawn(async move {
                while beating.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = client.heartbeat(&id, &token, None).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let pid = Pid::from_raw(i32::try_from(server.child.id()).unwrap());
    kill(pid, Signal::SIGSTOP).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    kill(pid, Signal::SIGCONT).unwrap();

    let watching = tokio::time::timeout(Duration::from_secs(4), async {
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            assert_ne!(
                event.node.status,
                Status::Down,
                "{} was marked down after the control plane's own pause; log:\n{}",
                event.node.node_id,
                server.log()
            );
        }
    })
    .await;
    assert!(watching.is_err(), "the watch stream ended early");
    beating.store(false, std::sync::atomic::Ordering::Relaxed);
    for b in beaters {
        b.await.unwrap();
    }
    assert!(server.log().contains("stalled"), "the stall is logged");
}
