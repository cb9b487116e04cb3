//! The control plane as the agent calls it: the shared [`ControlClient`] with the
//! agent's timeouts.

use std::time::Duration;

pub use quilt_api::{ControlClient, ControlError};

use crate::Config;

/// A client of the control planes `config` names, registering with its join token.
/// Unary calls (register, list, heartbeat, leave) give up after 5 s, well within a
/// heartbeat timeout; the watch stream is bounded only by the server.
pub fn client(config: &Config) -> Result<ControlClient, ControlError> {
    ControlClient::builder(config.control_planes.clone())
        .join_token(config.join_token.clone())
        .timeouts(quilt_api::Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(5),
        })
        .build()
}
