//! The runtime's gRPC API as the agent uses it: [`RuntimeClient`]. The channel connects
//! lazily, so a runtime that is restarting is simply retried.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use quilt_proto as pb;
use quilt_proto::connect::{ConnectError, Timeouts, connect_lazy_with};
use quilt_proto::quilt_runtime_client::QuiltRuntimeClient;
use tonic::transport::Channel;

use crate::config::RuntimeAddress;

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeCallError {
    #[error("runtime at {address} did not answer: {message}")]
    Unreachable { address: String, message: String },
    #[error("runtime refused {what}: {message}")]
    Refused { what: String, message: String },
    /// The runtime keeps subnet `current`: containers hold addresses of it, and a
    /// runtime never re-addresses running containers.
    #[error("runtime keeps node subnet {current}: {message}")]
    SubnetInUse { current: Ipv4Net, message: String },
}

/// A route the runtime manages, as `ListRoutes` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedRoute {
    pub destination: Ipv4Net,
    pub interface: String,
    /// `None` for a device route.
    pub gateway: Option<Ipv4Addr>,
    /// Whether the kernel holds the route as desired right now.
    pub in_kernel: bool,
}

/// One route to add: `destination` via `gateway` over `interface` (no gateway: the
/// original form, `destination dev interface`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRequest {
    pub destination: Ipv4Net,
    pub interface: String,
    pub gateway: Option<Ipv4Addr>,
}

impl RouteRequest {
    fn to_wire(&self) -> pb::InjectRouteRequest {
        pb::InjectRouteRequest {
            destination: self.destination.to_string(),
            via_interface: self.interface.clone(),
            gateway: self.gateway.map(|g| g.to_string()).unwrap_or_default(),
        }
    }

    fn what(&self) -> String {
        match self.gateway {
            Some(gateway) => format!("route {} via {gateway}", self.destination),
            None => format!("route {} dev {}", self.destination, self.interface),
        }
    }
}

/// A client of the node's runtime.
#[derive(Clone)]
pub struct RuntimeClient {
    address: String,
    client: QuiltRuntimeClient<Channel>,
}

impl RuntimeClient {
    /// A client of the runtime at `address` (a `--runtime-addr` value, or the address and
    /// TLS files together).
    pub fn new(address: impl Into<RuntimeAddress>) -> Result<Self, ConnectError> {
        let address = address.into();
        Ok(Self {
            client: connect_lazy_with(&address.address, Timeouts::default(), &address.tls())?,
            address: address.address,
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
        let current = answer.current_subnet.parse::<Ipv4Net>().ok();
        match current {
            Some(current)
                if !answer.success && answer.error_kind == pb::ErrorKind::SubnetInUse as i32 =>
            {
                Err(RuntimeCallError::SubnetInUse {
                    current,
                    message: answer.error,
                })
            }
            _ => Self::check(
                format!("node subnet {subnet}"),
                answer.success,
                answer.error,
            ),
        }
    }

    /// Adds or replaces every route in one `InjectRoutes` call; answers one result per
    /// route, in order (a refused route does not hold up the others).
    pub async fn inject_routes(
        &self,
        routes: &[RouteRequest],
    ) -> Result<Vec<Result<(), RuntimeCallError>>, RuntimeCallError> {
        let answer = self
            .client
            .clone()
            .inject_routes(pb::InjectRoutesRequest {
                routes: routes.iter().map(RouteRequest::to_wire).collect(),
            })
            .await
            .map_err(|s| self.unreachable(s))?
            .into_inner();
        if answer.results.len() != routes.len() {
            return Err(RuntimeCallError::Unreachable {
                address: self.address.clone(),
                message: format!(
                    "answered {} results for {} routes",
                    answer.results.len(),
                    routes.len()
                ),
            });
        }
        Ok(routes
            .iter()
            .zip(answer.results)
            .map(|(route, result)| Self::check(route.what(), result.success, result.error))
            .collect())
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

    /// The routes the runtime manages (a route it reports with an unreadable
    /// destination is left out: the agent could not plan for it anyway).
    pub async fn managed_routes(&self) -> Result<Vec<ManagedRoute>, RuntimeCallError> {
        let answer = self
            .client
            .clone()
            .list_routes(pb::ListRoutesRequest {})
            .await
            .map_err(|s| self.unreachable(s))?
            .into_inner();
        Ok(answer
            .routes
            .into_iter()
            .filter_map(|r| {
                Some(ManagedRoute {
                    destination: r.destination.parse().ok()?,
                    interface: r.via_interface,
                    gateway: r.gateway.parse().ok(),
                    in_kernel: r.in_kernel,
                })
            })
            .collect())
    }
}
