//! What quilt-cni's kernel tests share: running a plugin as an engine does, the
//! network configuration, and a runtime host with a node subnet.
#![allow(dead_code)]

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use quilt_kernel::netns;
use quilt_proto as pb;
use quilt_testkit::netns::OwnedNetns;
use quilt_testkit::runtime::RuntimeHost;
use serde_json::{Value, json};

/// The node subnet [`host_with_subnet`] configures.
pub const SUBNET: &str = "10.42.1.0/24";
/// Debian's reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// What one plugin invocation answered.
pub struct Answer {
    pub ok: bool,
    pub stdout: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not json ({e}): {}", self.stdout))
    }

    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected a failure, got {}", self.stdout);
        self.json()["code"].as_u64().expect("error code")
    }
}

/// Runs `plugin` inside the host namespace as an engine would. A plugin that has not
/// answered after a minute is killed, so a frozen runtime fails a test, not hangs it.
pub fn exec(
    host: &RuntimeHost,
    plugin: &str,
    command: &str,
    container_id: &str,
    netns: &str,
    ifname: &str,
    conf: &Value,
) -> Answer {
    let binary = if plugin == "quilt-cni" {
        env!("CARGO_BIN_EXE_quilt-cni").to_string()
    } else {
        format!("{REFERENCE_PLUGINS}/{plugin}")
    };
    let cni_path = format!(
        "{}:{REFERENCE_PLUGINS}",
        std::path::Path::new(env!("CARGO_BIN_EXE_quilt-cni"))
            .parent()
            .unwrap()
            .display()
    );
    let mut child = host
        .ns
        .command(&binary)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output().unwrap();
    Answer {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).trim().to_string(),
    }
}

/// The network configuration of a quilt-cni network.
pub fn quilt_conf() -> Value {
    json!({"cniVersion": "1.0.0", "name": "quilt", "type": "quilt-cni", "runtime_address": "http://127.0.0.1:50051"})
}

/// The `/run/netns` path of `ns`, as CNI_NETNS.
pub fn path(ns: &OwnedNetns) -> String {
    netns::path(ns.name()).display().to_string()
}

/// A runtime host holding node subnet [`SUBNET`].
pub fn host_with_subnet() -> RuntimeHost {
    let mut host = RuntimeHost::new();
    host.start();
    configure(&host);
    host
}

/// Gives the runtime node subnet [`SUBNET`].
pub fn configure(host: &RuntimeHost) {
    host.configure_subnet(SUBNET);
}

pub fn allocations(host: &RuntimeHost) -> Vec<pb::Allocation> {
    host.call(|mut c| async move {
        Ok(c.list_allocations(pb::ListAllocationsRequest {})
            .await?
            .into_inner()
            .allocations)
    })
    .unwrap()
}

pub fn attachments(host: &RuntimeHost) -> Vec<pb::Attachment> {
    host.call(|mut c| async move {
        Ok(c.list_attachments(pb::ListAttachmentsRequest {})
            .await?
            .into_inner()
            .attachments)
    })
    .unwrap()
}
