//! The control plane for tests: [`ControlServer`] runs it inside the test process on
//! 127.0.0.1:0 (over SQLite, or in memory), [`ControlBinary`] runs the real binary and learns its port from
//! `--ready-file`. Both keep their SQLite database in a temporary folder.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use quilt_mesh_control::Config;
use quilt_mesh_control::store::MemoryStore;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A control plane running inside the test process; stopped on drop.
pub struct ControlServer {
    pub base: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    pub dir: tempfile::TempDir,
}

impl ControlServer {
    /// Starts a server with the default flags plus `args` (like `["--join-token", "x"]`).
    pub async fn start(args: &[&str]) -> ControlServer {
        Self::start_with(args, false).await
    }

    /// Like [`ControlServer::start`], over the in-memory store: for tests that register
    /// thousands of nodes and do not test storage.
    pub async fn start_in_memory(args: &[&str]) -> ControlServer {
        Self::start_with(args, true).await
    }

    async fn start_with(args: &[&str], in_memory: bool) -> ControlServer {
        let dir = tempfile::Builder::new()
            .prefix("qmc-test-srv-")
            .tempdir()
            .expect("temp dir");
        let db = dir.path().join("quilt-mesh.db");
        let mut argv = vec![
            "quilt-mesh-control".to_string(),
            "--db-path".into(),
            db.display().to_string(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let config = Config::parse_from(argv);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let (tx, rx) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = rx.await;
        };
        let task = if in_memory {
            let store = MemoryStore::new(config.validate().expect("a valid plan"));
            tokio::spawn(quilt_mesh_control::run_with_store(
                config,
                Box::new(store),
                listener,
                stopped,
            ))
        } else {
            tokio::spawn(quilt_mesh_control::run(config, listener, stopped))
        };
        ControlServer {
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

    /// `GET path`, answered JSON (any status).
    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        r.json().await.unwrap()
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
        assert_eq!(r.status(), 200, "register {hostname} {host_ip}");
        r.json().await.unwrap()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An HTTP client with a 30 s timeout.
pub fn client() -> reqwest::Client {
    {
        quilt_tls::install_default_provider();
        reqwest::Client::builder()
    }
    .timeout(Duration::from_secs(30))
    .build()
    .unwrap()
}

/// The real binary as a child process; killed (SIGKILL) on drop. Its log and ready file
/// live in a temporary folder of its own.
pub struct ControlBinary {
    pub child: Child,
    pub base: String,
    dir: tempfile::TempDir,
}

impl ControlBinary {
    /// Starts `binary` (a `quilt-mesh-control`) on 127.0.0.1:0 over database `db` with
    /// `args`, and waits until it has written its `--ready-file`.
    pub fn start(binary: &Path, db: &Path, args: &[&str]) -> ControlBinary {
        let dir = tempfile::Builder::new()
            .prefix("qmc-test-bin-")
            .tempdir()
            .expect("temp dir");
        let ready = dir.path().join("ready");
        let log_path = dir.path().join("control.log");
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let mut child = Command::new(binary)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-level",
                "info",
                "--db-path",
            ])
            .arg(db)
            .arg("--ready-file")
            .arg(&ready)
            .args(args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let addr = match wait_for_ready_file(&ready, &mut child, Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not become ready: {why}; log:\n{}",
                    binary.display(),
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
        };
        ControlBinary {
            child,
            base: format!("http://{addr}"),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The binary's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("control.log")).unwrap_or_default()
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ControlBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `path` (a `--ready-file`) holds `IP:PORT`, and answers it; an error says
/// why not (the child exited, or `wait` passed).
pub fn wait_for_ready_file(
    path: &Path,
    child: &mut Child,
    wait: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return Ok(text.trim().to_string());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "it exited with {status} before writing {}",
                path.display()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!("no {} after {wait:?}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
