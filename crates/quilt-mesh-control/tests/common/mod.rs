//! Helpers for the HTTP tests: a server on 127.0.0.1:0 (in process, or the real binary)
//! over a SQLite database in a temporary directory that is removed afterwards.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use quilt_mesh_control::Config;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("qmc-test-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A control plane running inside the test process.
pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    pub dir: TempDir,
}

impl Server {
    /// Starts a server with the default flags plus `args` (like `["--join-token", "x"]`).
    pub async fn start(args: &[&str]) -> Server {
        let dir = TempDir::new("srv");
        let db = dir.path().join("quilt-mesh.db");
        let mut argv = vec![
            "quilt-mesh-control".to_string(),
            "--db-path".into(),
            db.display().to_string(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let config = Config::parse_from(argv);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(quilt_mesh_control::run(config, listener, async move {
            let _ = rx.await;
        }));
        Server {
            base,
            client: client(),
            stop: Some(tx),
            task: Some(task),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server and waits until it has stopped every task.
    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("server stops within 10 s")
            .unwrap()
            .unwrap();
    }

    /// Registers `host_ip` (no token) and answers the JSON.
    pub async fn register(&self, hostname: &str, host_ip: &str) -> Value {
        let r = self
            .client
            .post(self.url("/api/nodes/register"))
            .json(&serde_json::json!({"hostname": hostname, "host_ip": host_ip, "cpu_cores": 2, "ram_mb": 2048}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The real binary as a child process; killed (SIGKILL) on drop.
pub struct Binary {
    pub child: Child,
    pub base: String,
}

impl Binary {
    /// Starts `quilt-mesh-control` on 127.0.0.1:0 with `args`, and waits until it serves.
    pub fn start(db: &Path, args: &[&str]) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_quilt-mesh-control"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-level",
                "info",
                "--db-path",
            ])
            .arg(db)
            .args(args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the log until the serving line names the address, then keeps draining it.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listen=").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the binary logs its listen address");
        Binary {
            child,
            base: format!("http://{addr}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads NDJSON events from a watch response.
pub struct EventReader {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl EventReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buf: Vec::new(),
        }
    }

    /// The next event, or `None` when the stream ended; panics after `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        tokio::time::timeout(wait, self.next())
            .await
            .expect("a watch event in time")
    }

    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("each line is json"));
            }
            match self.response.chunk().await.expect("watch stream reads") {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return None,
            }
        }
    }
}
