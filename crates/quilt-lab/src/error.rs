//! The lab's error type: what went wrong, naming the namespace, binary or host involved.

use std::path::PathBuf;

/// Every way building, inspecting or tearing down a lab can fail.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "the lab needs root: CAP_SYS_ADMIN to create network namespaces and CAP_NET_ADMIN to configure them (run it with sudo)"
    )]
    NotRoot,
    #[error("{program} is needed and was not found on PATH ({package})")]
    MissingTool {
        program: &'static str,
        package: &'static str,
    },
    #[error("{binary} not found at {} (build it with `cargo build --workspace`, or point --bin-dir at the folder holding it)", .path.display())]
    MissingBinary { binary: &'static str, path: PathBuf },
    #[error(
        "lab name {0:?} is invalid: use 1-24 lowercase letters, digits and hyphens, starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("{what} {value} is outside {range}")]
    OutOfRange {
        what: &'static str,
        value: u64,
        range: &'static str,
    },
    #[error(
        "lab {name} already exists (state at {}): run `quiltctl lab down --name {name}` first", .state.display()
    )]
    AlreadyExists { name: String, state: PathBuf },
    #[error(
        "network namespace {namespace} already exists and was not made by lab {name}: pick another --name"
    )]
    NameClash { name: String, namespace: String },
    #[error("no lab {name} (no state at {})", .state.display())]
    NotFound { name: String, state: PathBuf },
    #[error("no {what} {name:?} in lab {lab} (known: {known})")]
    UnknownMember {
        lab: String,
        what: &'static str,
        name: String,
        known: String,
    },
    #[error("lab state {}: {message}", .path.display())]
    State { path: PathBuf, message: String },
    #[error("{operation}: {message}")]
    Setup { operation: String, message: String },
    #[error("{what} did not happen within {seconds:.1} s: {detail}")]
    Timeout {
        what: String,
        seconds: f64,
        detail: String,
    },
    #[error("interrupted")]
    Interrupted,
    #[error("teardown left things behind: {}", .0.join("; "))]
    Teardown(Vec<String>),
    #[error(transparent)]
    Kernel(#[from] quilt_kernel::KernelError),
}

impl LabError {
    pub(crate) fn setup(operation: impl Into<String>, message: impl std::fmt::Display) -> Self {
        LabError::Setup {
            operation: operation.into(),
            message: message.to_string(),
        }
    }
}
