//! The real quilt-runtime service inside the test process, on 127.0.0.1:0, over a
//! [`FakeKernel`]: for tests of its callers (the agent) that need no root.

use std::net::SocketAddr;

use clap::Parser;
use quilt_kernel::fake::FakeKernel;
use tokio::sync::oneshot;

/// A runtime serving gRPC on [`FakeRuntime::addr`]; stopped on drop.
pub struct FakeRuntime {
    pub addr: SocketAddr,
    pub state_dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

impl FakeRuntime {
    /// Starts the runtime with the default flags plus `args` over `kernel`, after giving
    /// it `vxlan100` (MTU 1450).
    pub async fn start(args: &[&str], kernel: FakeKernel) -> FakeRuntime {
        let state_dir = tempfile::Builder::new()
            .prefix("qrt-test-")
            .tempdir()
            .expect("temp dir");
        let mut argv = vec![
            "quilt-runtime".to_string(),
            "--state-dir".into(),
            state_dir.path().display().to_string(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let config = quilt_runtime::Config::parse_from(argv);
        kernel.add_link("vxlan100", 1450);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(quilt_runtime::run(config, listener, kernel, async {
            let _ = stopped.await;
        }));
        FakeRuntime {
            addr,
            state_dir,
            _stop: stop,
        }
    }

    /// `http://ADDR`, as an agent is configured with.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
