//! The network configuration quilt-cni reads on stdin, and the CNI versions it speaks.

use serde::Deserialize;

use crate::error::{CniError, code};

/// The CNI versions whose results quilt-cni can write.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// Where quilt-runtime listens unless `runtime_address` says otherwise: the workspace's
/// `quilt_common::defaults::RUNTIME_URL`, kept here so the plugin links no HTTP server
/// (a test checks the two agree).
pub const DEFAULT_RUNTIME_ADDRESS: &str = "unix:/run/quilt/runtime.sock";

/// The plugin's network configuration. Keys it does not know (runtimeConfig, args,
/// other plugins' keys) are allowed, as the specification requires.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default = "default_runtime_address")]
    pub runtime_address: String,
    /// MTU for the container interface; the runtime's overlay MTU when absent.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The previous plugin's result, when chained.
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<serde_json::Value>,
}

fn default_runtime_address() -> String {
    DEFAULT_RUNTIME_ADDRESS.to_string()
}

impl NetConf {
    /// Parses and checks stdin.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "cannot decode the network configuration")
                .with_details(e.to_string())
        })?;
        check_version(&conf.cni_version)?;
        if !conf.plugin_type.is_empty() && conf.plugin_type != "quilt-cni" {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "network configuration type {:?} is not \"quilt-cni\"",
                    conf.plugin_type
                ),
            ));
        }
        if let Err(e) = quilt_proto::connect::Target::parse(&conf.runtime_address) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "runtime_address {:?} is not unix:/PATH, an absolute socket path or an http:// or https:// url",
                    conf.runtime_address
                ),
            )
            .with_details(e.to_string()));
        }
        if let Some(mtu) = conf.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("mtu {mtu} is outside 68..=65535"),
            ));
        }
        Ok(conf)
    }
}

/// Refuses a version quilt-cni cannot write.
pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {version:?} is not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ))
    }
}

/// Whether results of `version` carry `ips[].version` (before 1.0.0).
pub fn has_ip_version_field(version: &str) -> bool {
    version.starts_with("0.")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_runtime_address_is_the_workspace_default() {
        assert_eq!(
            super::DEFAULT_RUNTIME_ADDRESS,
            quilt_common::defaults::RUNTIME_URL
        );
    }
}
