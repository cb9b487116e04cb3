//! A host for runtime tests: a fresh network namespace with an underlay interface and a
//! real `vxlan100`, the `quilt-runtime` binary running inside it on its own unix socket
//! (in the host's state folder) and on TCP 127.0.0.1:50051 of the namespace, and gRPC
//! clients that connect from inside the namespace over either.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use quilt_proto::quilt_runtime_client::QuiltRuntimeClient;
use tonic::transport::Channel;

use crate::netns::{OwnedNetns, block_on_in, host_with_overlay};

/// Where the runtime of a [`RuntimeHost`] listens on TCP, inside its namespace.
pub const GRPC_ADDR: &str = "127.0.0.1:50051";
/// The name of a [`RuntimeHost`]'s socket in its state folder.
pub const SOCKET_NAME: &str = "runtime.sock";

/// A namespace with an underlay and `vxlan100`, a state folder, and (once started) the
/// runtime; dropping it kills the runtime and deletes the namespace.
pub struct RuntimeHost {
    pub ns: OwnedNetns,
    pub state_dir: tempfile::TempDir,
    runtime: Option<Child>,
}

impl Default for RuntimeHost {
    fn default() -> Self {
        Self::new()
    }
}

impl RuntimeHost {
    /// A namespace with `underlay0` (192.168.50.1/24) and `vxlan100` over it.
    pub fn new() -> Self {
        Self {
            ns: host_with_overlay("qrt", "192.168.50.1/24"),
            state_dir: tempfile::tempdir().expect("temp dir"),
            runtime: None,
        }
    }

    /// A host in namespace `ns` as the caller built it (its own underlay and overlay
    /// devices), with a fresh state folder.
    pub fn in_netns(ns: OwnedNetns) -> Self {
        Self {
            ns,
            state_dir: tempfile::tempdir().expect("temp dir"),
            runtime: None,
        }
    }

    pub fn state_path(&self) -> &Path {
        self.state_dir.path()
    }

    /// The runtime's unix socket (in the state folder).
    pub fn socket_path(&self) -> PathBuf {
        self.state_path().join(SOCKET_NAME)
    }

    /// The socket as a client address, `unix:/...`.
    pub fn socket_address(&self) -> String {
        format!("unix:{}", self.socket_path().display())
    }

    /// Starts the runtime binary inside the namespace and waits until it answers.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// [`Self::start`] with `extra` flags; a flag in `extra` replaces the usual one of
    /// that name (`--grpc-addr`, `--grpc-socket`, `--reconcile-interval`, `--log-level`).
    pub fn start_with(&mut self, extra: &[&str]) {
        let log_path = self.state_path().join("runtime.log");
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let socket = self.socket_path().display().to_string();
        let state = self.state_path().display().to_string();
        let usual = [
            ("--grpc-addr", GRPC_ADDR),
            ("--grpc-socket", socket.as_str()),
            ("--state-dir", state.as_str()),
            ("--reconcile-interval", "500ms"),
            ("--log-level", "debug"),
        ];
        let mut command = self.ns.command(crate::bins::binary("quilt-runtime"));
        for (flag, value) in usual {
            if !extra.contains(&flag) {
                command.args([flag, value]);
            }
        }
        let child = command
            .args([
                "--overlay-interface",
                "vxlan100",
                "--overlay-interface",
                "vxlan200",
            ])
            .args(extra)
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
            if let Some(child) = self.runtime.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("quilt-runtime exited with {status}; log:\n{}", self.log());
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

    /// The runtime's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_path().join("runtime.log")).unwrap_or_default()
    }

    /// Gives the runtime node subnet `subnet`; panics with the runtime's refusal.
    pub fn configure_subnet(&self, subnet: &str) {
        let subnet = subnet.to_string();
        let answer = self
            .call(|mut c| async move {
                Ok(
                    c.configure_node_subnet(quilt_proto::ConfigureNodeSubnetRequest { subnet })
                        .await?
                        .into_inner(),
                )
            })
            .expect("ConfigureNodeSubnet answers");
        assert!(
            answer.success,
            "ConfigureNodeSubnet refused: {}",
            answer.error
        );
    }

    /// Runs `f` with a gRPC client connected from inside the namespace over the unix
    /// socket.
    pub fn call<T: Send, F>(
        &self,
        f: impl FnOnce(QuiltRuntimeClient<Channel>) -> F + Send,
    ) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = anyhow::Result<T>>,
    {
        self.channel_call_with(Some(Duration::from_secs(1)), |channel| {
            f(QuiltRuntimeClient::new(channel))
        })
    }

    /// [`Self::call`] over TCP ([`GRPC_ADDR`] inside the namespace).
    pub fn call_tcp<T: Send, F>(
        &self,
        f: impl FnOnce(QuiltRuntimeClient<Channel>) -> F + Send,
    ) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = anyhow::Result<T>>,
    {
        self.channel_call_to(GRPC_ADDR, Some(Duration::from_secs(1)), |channel| {
            f(QuiltRuntimeClient::new(channel))
        })
    }

    /// A channel from inside the namespace over the unix socket, for services other than
    /// QuiltRuntime.
    pub fn channel_call<T: Send, F>(&self, f: impl FnOnce(Channel) -> F + Send) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = anyhow::Result<T>>,
    {
        self.channel_call_to(&self.socket_address(), None, f)
    }

    fn channel_call_with<T: Send, F>(
        &self,
        connect_timeout: Option<Duration>,
        f: impl FnOnce(Channel) -> F + Send,
    ) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = anyhow::Result<T>>,
    {
        self.channel_call_to(&self.socket_address(), connect_timeout, f)
    }

    /// A channel to `address` (the socket, or TCP inside the namespace).
    pub fn channel_call_to<T: Send, F>(
        &self,
        address: &str,
        connect_timeout: Option<Duration>,
        f: impl FnOnce(Channel) -> F + Send,
    ) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = anyhow::Result<T>>,
    {
        block_on_in(self.ns.name(), async move || {
            let mut timeouts = quilt_proto::connect::Timeouts::default();
            if let Some(timeout) = connect_timeout {
                timeouts.connect = timeout;
            }
            let endpoint = quilt_proto::connect::endpoint(address, timeouts)?;
            f(endpoint.connect().await?).await
        })
    }

    /// The routes `ip route show` prints for `destination` inside the namespace.
    pub fn route_show(&self, destination: &str) -> String {
        self.ns
            .ip(&["route", "show", destination])
            .unwrap_or_else(|e| panic!("ip route show {destination}: {e}"))
            .trim()
            .to_string()
    }
}

impl Drop for RuntimeHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.runtime.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
