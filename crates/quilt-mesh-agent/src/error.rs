//! The agent's one error type: each module's typed error, composed with `#[from]`, so
//! a caller can match on what failed (a refusal, an unreachable runtime, the kernel).

use quilt_proto::connect::ConnectError;

use crate::control::ControlError;
use crate::device::DeviceError;
use crate::runtime::RuntimeCallError;
use crate::state::StateError;

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Runtime(#[from] RuntimeCallError),
    #[error(transparent)]
    RuntimeAddress(#[from] ConnectError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Kernel(#[from] quilt_kernel::KernelError),
}
