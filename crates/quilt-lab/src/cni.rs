//! Attaching lab containers the way a container engine on the host would: run the
//! `quilt-cni` binary inside the host's namespace with the CNI_* environment and the
//! network configuration on stdin, and read the CNI result.

use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::layout::CONTAINER_IF;
use crate::process::{command_in, run_bounded};

/// The network configuration the lab hands quilt-cni: the host's runtime at
/// `runtime_address` (its unix socket).
pub fn netconf(runtime_address: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "quilt",
        "type": "quilt-cni",
        "runtime_address": runtime_address,
    })
    .to_string()
}

/// Why an attach failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniFailure {
    /// The CNI error code, when the plugin answered one (11: try again later).
    pub code: Option<u64>,
    pub message: String,
}

impl CniFailure {
    pub fn try_again(&self) -> bool {
        self.code == Some(11)
    }
}

/// Runs `quilt-cni` with `command` (ADD, DEL) for the container in namespace
/// `container_netns`, inside `host_netns` whose runtime is at `runtime_address`; answers
/// the parsed stdout.
pub fn invoke(
    cni_binary: &Path,
    command: &str,
    host_netns: &str,
    runtime_address: &str,
    container_id: &str,
    container_netns: &str,
) -> Result<serde_json::Value, CniFailure> {
    let cni_path = cni_binary.parent().unwrap_or(Path::new("/"));
    let mut cmd = command_in(host_netns, cni_binary);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env(
            "CNI_NETNS",
            quilt_kernel::netns::path(container_netns).as_os_str(),
        )
        .env("CNI_IFNAME", CONTAINER_IF)
        .env("CNI_PATH", cni_path.as_os_str());
    let out = run_bounded(
        cmd,
        Some(netconf(runtime_address).as_bytes()),
        Duration::from_secs(20),
    )
    .map_err(|message| CniFailure {
        code: None,
        message: format!("quilt-cni {command}: {message}"),
    })?;
    let parsed: Option<serde_json::Value> = serde_json::from_str(out.stdout.trim()).ok();
    if out.status.success() {
        return Ok(parsed.unwrap_or(serde_json::Value::Null));
    }
    let code = parsed
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(|c| c.as_u64());
    let msg = parsed
        .as_ref()
        .and_then(|v| v.get("msg"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{} {}", out.stdout.trim(), out.stderr.trim()));
    Err(CniFailure {
        code,
        message: format!("quilt-cni {command} ({}): {msg}", out.status),
    })
}

/// The first IPv4 address of a CNI result (`ips[0].address`).
pub fn result_address(result: &serde_json::Value) -> Option<Ipv4Net> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str()?.parse::<Ipv4Net>().ok())
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_address_of_a_result() {
        let r = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "qv0"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "10.42.3.2/24", "gateway": "10.42.3.1", "interface": 1}],
        });
        assert_eq!(result_address(&r), Some("10.42.3.2/24".parse().unwrap()));
        assert_eq!(result_address(&serde_json::json!({})), None);
    }

    #[test]
    fn netconf_is_what_the_plugin_reads() {
        let v: serde_json::Value =
            serde_json::from_str(&netconf("unix:/lab/data/h1/runtime/runtime.sock")).unwrap();
        assert_eq!(v["type"], "quilt-cni");
        assert_eq!(
            v["runtime_address"],
            "unix:/lab/data/h1/runtime/runtime.sock"
        );
    }
}
