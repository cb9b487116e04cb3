//! CNI errors: the specification's error JSON and codes, and the one mapping from a
//! runtime answer to a code.

use quilt_proto::ErrorKind;

/// Error codes. 1-99 are the specification's; 100 and up are quilt-cni's own.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (CNI_COMMAND, CNI_CONTAINERID, ...).
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (stdin is not the expected JSON).
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: quilt-runtime is unreachable or has no node subnet yet.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The node subnet has no free address.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// The kernel refused a change.
    pub const KERNEL: u32 = 101;
    /// CHECK: the container's network is not as attached.
    pub const CHECK_FAILED: u32 = 102;
    /// quilt-runtime failed internally (its state store).
    pub const RUNTIME_INTERNAL: u32 = 103;
}

/// A failure, as the specification's error JSON describes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (code {code})")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// `{"cniVersion", "code", "msg", "details"}`.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut value = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            value["details"] = serde_json::Value::String(self.details.clone());
        }
        value.to_string()
    }

    /// The one mapping from a runtime refusal to a CNI error.
    pub fn from_runtime(kind: ErrorKind, error: String) -> Self {
        let code = match kind {
            ErrorKind::InvalidArgument => code::INVALID_ENVIRONMENT,
            ErrorKind::InvalidConfig => code::INVALID_CONFIG,
            ErrorKind::NotReady => code::TRY_AGAIN_LATER,
            ErrorKind::Exhausted => code::POOL_EXHAUSTED,
            ErrorKind::Kernel => code::KERNEL,
            ErrorKind::NotFound => code::UNKNOWN_CONTAINER,
            ErrorKind::Mismatch => code::CHECK_FAILED,
            // Only ConfigureNodeSubnet answers SubnetInUse; a container call never does.
            ErrorKind::Internal | ErrorKind::Unspecified | ErrorKind::SubnetInUse => {
                code::RUNTIME_INTERNAL
            }
        };
        Self::new(code, error)
    }

    /// quilt-runtime did not answer.
    pub fn unreachable(address: &str, error: impl std::fmt::Display) -> Self {
        Self::new(
            code::TRY_AGAIN_LATER,
            format!("quilt-runtime at {address} is unreachable"),
        )
        .with_details(error.to_string())
    }
}
