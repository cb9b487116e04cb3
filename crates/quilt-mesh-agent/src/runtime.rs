//! The runtime's gRPC API as the agent uses it. The channel connects lazily, so a
//! runtime that is restarting is simply retried.

use ipnet::Ipv4Net;
use quilt_proto as pb;
use quilt_proto::connect::{ConnectError, Timeouts, connect_lazy};
use quilt_proto::quilt_runtime_client::QuiltRuntimeClient;
use tonic::transport::Channel;

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeCallError {
    #[error("runtime at {address} did not answer: {message}")]
    Unreachable { address: String, message: String },
    #[error("runtime refused {what}: {message}")]
    Refused { what: String, message: String },
}

/// A client of the node's runtime.
#[derive(Clone)]
pub struct Runtime {
    address: String,
    client: QuiltRuntimeClient<Channel>,
}

impl Runtime {
    pub fn new(address: &str) -> Result<Self, ConnectError> {
        Ok(Self {
            address: address.to_string(),
            client: connect_lazy(address, Timeouts::default())?,
        })
    }

    fn unreachable(&self, status: tonic::Status) -> RuntimeCallError {
        RuntimeCallError::Unreachable {
            address: self.address.clone(),
            message: status.message().to_string(),
        }
    }

    fn check(what: String, success: bool, error: String) -> Result<(), RuntimeCallError> {
        if success {
            Ok(())
        } else {
            Err(RuntimeCallError::Refused {
                what,
                message: error,
            })
        }
    }

    pub async fn configure_subnet(&self, subnet: Ipv4Net) -> Result<(), RuntimeCallError> {
        let answer = self
            .client
            .clone()
            .configure_node_subnet(pb::ConfigureNodeSubnetRequest {
                subnet: subnet.to_string(),
            })
            .await
            .map_err(|s| self.unreachable(s))?
            .into_inner();
        Self::check(
            format!("node subnet {subnet}"),
            answer.success,
            answer.error,
        )
    }

    pub async fn inject_route(
        &self,
        destination: Ipv4Net,
        interface: &str,
        gateway: std::net::Ipv4Addr,
    ) -> Result<(), RuntimeCallError> {
        let answer = self
            .client
            .clone()
            .inject_route(pb::InjectRouteRequest {
                destination: destination.to_string(),
                via_interface: interface.to_string(),
                gateway: gateway.to_string(),
            })
            .await
            .map_err(|s| self.unreachable(s))?
            .into_inner();
        Self::check(
            format!("route {destination} via {gateway}"),
            answer.success,
            answer.error,
        )
    }

    pub async fn remove_route(&self, destination: Ipv4Net) -> Result<(), RuntimeCallError> {
        let answer = self
            .client
            .clone()
            .remove_route(pb::RemoveRouteRequest {
                destination: destination.to_string(),
            })
            .await
            .map_err(|s| self.unreachable(s))?
            .into_inner();
        Self::check(
            format!("removal of route {destination}"),
            answer.success,
            answer.error,
        )
    }

    /// The destinations of the routes the runtime manages.
    pub async fn managed_routes(&self) -> Result<Vec<Ipv4Net>, RuntimeCallError> {
        let answer = self
            .client
            .clone()
            .list_routes(pb::ListRoutesRequest {})
            .await
            .map_err(|s| self.unreachable(s))?
            .into_inner();
        Ok(answer
            .routes
            .iter()
            .filter_map(|r| r.destination.parse().ok())
            .collect())
    }
}
