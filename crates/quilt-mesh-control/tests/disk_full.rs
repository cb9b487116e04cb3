//! The real binary with its database on a 1 MiB tmpfs of its own (a private mount
//! namespace, so the machine's mounts are untouched), filled up while nodes live and die:
//! liveness is still decided and published, `/health` says why it is degraded, the log
//! says it once, and everything is written once the disk has room again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use quilt_api::ControlClient;
use quilt_api::types::{RegisterRequest, Status};
use quilt_testkit::control::wait_for_ready_file;
use quilt_testkit::netns::privileged_or_skip;

const BINARY: &str = env!("CARGO_BIN_EXE_quilt-mesh-control");

/// The server, killed on drop (its tmpfs goes with its mount namespace).
struct Server {
    child: Child,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Where the server's database folder is, seen from this process.
    fn data(&self, mount: &Path) -> PathBuf {
        Path::new("/proc")
            .join(self.child.id().to_string())
            .join("root")
            .join(mount.strip_prefix("/").unwrap())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn start(mount: &Path, outside: &Path) -> (Server, String) {
    let log = outside.join("control.log");
    let ready = outside.join("ready");
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=1m quilt-test "$0" && exec "$@""#)
        .arg(mount)
        .arg(BINARY)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--heartbeat-timeout",
            "1s",
            "--db-path",
        ])
        .arg(mount.join("quilt-mesh.db"))
        .arg("--ready-file")
        .arg(&ready)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr =
        wait_for_ready_file(&ready, &mut child, Duration::from_secs(20)).unwrap_or_else(|e| {
            panic!(
                "not ready: {e}; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    (Server { child, log }, format!("http://{addr}"))
}

fn node(n: u8) -> RegisterRequest {
    RegisterRequest::new(format!("n{n}"), format!("192.168.6.{n}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_still_marks_dead_nodes_down_and_says_why() {
    if !privileged_or_skip("a_full_disk_still_marks_dead_nodes_down_and_says_why") {
        return;
    }
    let mount = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let (server, url) = start(mount.path(), outside.path());
    let client = Arc::new(ControlClient::builder([url]).no_proxy().build().unwrap());
    let alive = client.register(&node(1)).await.unwrap();
    let dead = client.register(&node(2)).await.unwrap();
    let until = Instant::now() + Duration::from_secs(12);
    let beater = {
        let client = client.clone();
        let (id, token) = (alive.node.node_id.clone(), alive.node_token.clone());
        tokio::spawn(async move {
            while Instant::now() < until {
                let _ = client.heartbeat(&id, &token, None).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let revision = client.list().await.unwrap().revision;
    let mut events = Box::pin(client.watch(revision).await.unwrap());

    // Fill the server's disk to the last byte.
    let filler = server.data(mount.path()).join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.write_all(&[0u8; 512]);
    let _ = file.write_all(&[0u8; 1]);
    drop(file);

    // The silent node goes down (published), the heartbeating one stays up.
    let down = tokio::time::timeout(Duration::from_secs(6), async {
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            assert_ne!(
                event.node.node_id, alive.node.node_id,
                "the live node changed: {event:?}"
            );
            if event.node.status == Status::Down {
                return event.node.node_id;
            }
        }
        panic!("the watch stream ended");
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the dead node was never marked down; log:\n{}",
            server.log()
        )
    });
    assert_eq!(down, dead.node.node_id);
    let listed = client.list().await.unwrap();
    let status_of = |id: &str| {
        listed
            .nodes
            .iter()
            .find(|n| n.node_id == id)
            .unwrap()
            .status
    };
    assert_eq!(status_of(&dead.node.node_id), Status::Down);
    assert_eq!(status_of(&alive.node.node_id), Status::Up);
    let health = client.health().await.unwrap();
    assert_eq!(
        health.status,
        "degraded",
        "{health:?}; log:\n{}",
        server.log()
    );
    let reason = health.reason.unwrap();
    assert!(reason.contains("full"), "{reason}");
    // A registration cannot be written: refused, and nothing is half made.
    assert!(client.register(&node(3)).await.is_err());

    // Room again: the decisions are written and health is ok.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.health().await.unwrap().status != "ok" {
        assert!(
            Instant::now() < deadline,
            "never healthy again; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    beater.await.unwrap();
    let log = server.log();
    let said = log.matches("database writes fail").count();
    assert!(
        (1..=2).contains(&said),
        "the failure was logged {said} times:\n{log}"
    );
    assert!(log.contains("database writes work again"), "{log}");
}
