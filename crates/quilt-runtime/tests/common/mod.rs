//! A host for runtime tests: a fresh network namespace with an underlay interface and a
//! real `vxlan100`, the runtime binary running inside it, and a gRPC client that
//! connects from inside the namespace over TCP.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use quilt_kernel::netns::{self, OwnedNetns};
use quilt_proto::quilt_runtime_client::QuiltRuntimeClient;
use tonic::transport::Channel;

pub const GRPC_ADDR: &str = "127.0.0.1:50051";

pub struct Host {
    pub ns: OwnedNetns,
    pub state_dir: tempfile::TempDir,
    runtime: Option<Child>,
}

impl Host {
    /// A namespace with `underlay0` (192.168.50.1/24) and `vxlan100` over it.
    pub fn new() -> Self {
        let ns = OwnedNetns::create(&netns::unique_name("qrt")).expect("create netns");
        ns.add_underlay("192.168.50.1/24").expect("underlay");
        ns.add_vxlan100("192.168.50.1").expect("vxlan100");
        Self {
            ns,
            state_dir: tempfile::tempdir().expect("temp dir"),
            runtime: None,
        }
    }

    pub fn state_path(&self) -> &Path {
        self.state_dir.path()
    }

    /// Starts the runtime binary inside the namespace and waits until it answers.
    pub fn start(&mut self) {
        let log = std::fs::File::create(self.state_path().join("runtime.log")).expect("log file");
        let child = self
            .ns
            .command(runtime_binary())
            .args(["--grpc-addr", GRPC_ADDR, "--state-dir"])
            .arg(self.state_path())
            .args([
                "--overlay-interface",
                "vxlan100",
                "--overlay-interface",
                "vxlan200",
                "--reconcile-interval",
                "500ms",
                "--log-level",
                "debug",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start quilt-runtime");
        self.runtime = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.call(|_| async { Ok(()) }).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "quilt-runtime did not answer within 10 s; log:\n{}",
            self.log()
        );
    }

    /// Sends `signal` to the runtime and waits for it to exit; answers its exit status.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.runtime.take().expect("runtime running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal runtime");
        child.wait().expect("wait for runtime")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_path().join("runtime.log")).unwrap_or_default()
    }

    /// Runs `f` with a gRPC client connected from inside the namespace.
    pub fn call<T: Send, F>(
        &self,
        f: impl FnOnce(QuiltRuntimeClient<Channel>) -> F + Send,
    ) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = anyhow::Result<T>>,
    {
        netns::run_in(self.ns.name(), || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let channel = Channel::from_shared(format!("http://{GRPC_ADDR}"))?
                    .connect_timeout(Duration::from_secs(1))
                    .connect()
                    .await?;
                f(QuiltRuntimeClient::new(channel)).await
            })
        })?
    }

    /// The routes `ip route show` prints for `destination` inside the namespace.
    pub fn route_show(&self, destination: &str) -> String {
        self.ns
            .ip(&["route", "show", destination])
            .expect("ip route show")
            .trim()
            .to_string()
    }

    /// A channel from inside the namespace, for services other than QuiltRuntime.
    pub fn channel_call<T: Send, F>(&self, f: impl FnOnce(Channel) -> F + Send) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = anyhow::Result<T>>,
    {
        netns::run_in(self.ns.name(), || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let channel = Channel::from_shared(format!("http://{GRPC_ADDR}"))?
                    .connect()
                    .await?;
                f(channel).await
            })
        })?
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.runtime.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The quilt-runtime binary: cargo's own for this crate's tests; for another crate's
/// tests (quilt-cni), the one next to that crate's binary in the same target folder,
/// built first with `cargo build -p quilt-runtime` so it is never stale or missing.
pub fn runtime_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_quilt-runtime") {
        return PathBuf::from(path);
    }
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let Some(sibling) = option_env!("CARGO_BIN_EXE_quilt-cni") else {
                panic!("no binary of this workspace to find the target folder by")
            };
            let path = Path::new(sibling).with_file_name("quilt-runtime");
            let status = std::process::Command::new(option_env!("CARGO").unwrap_or("cargo"))
                .args(["build", "-p", "quilt-runtime", "--bin", "quilt-runtime"])
                .status();
            assert!(
                path.exists(),
                "quilt-runtime binary missing at {} (cargo build: {status:?})",
                path.display()
            );
            path
        })
        .clone()
}

pub fn temp_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().to_path_buf()
}
