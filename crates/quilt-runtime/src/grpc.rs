//! The `quilt.QuiltRuntime` gRPC service: wire messages in, typed requests to the core,
//! and every error mapped in one place to `success = false` with a readable text.

use std::sync::Arc;
use std::time::Instant;

use quilt_kernel::Kernel;
use quilt_proto as pb;
use quilt_proto::quilt_runtime_server::QuiltRuntime;
use tonic::{Request, Response, Status};

use crate::inject_queue::InjectQueue;
use crate::request::Rules;
use crate::runtime::Runtime;
use crate::{ROUTE_PROTOCOL, RuntimeError};

/// The gRPC face of a [`Runtime`].
pub struct GrpcService<K> {
    runtime: Arc<Runtime<K>>,
    queue: InjectQueue<K>,
    rules: Rules,
    metrics: Arc<crate::metrics::Metrics>,
}

impl<K: Kernel> GrpcService<K> {
    /// `queue` coalesces concurrent InjectRoute calls into batches of `runtime`.
    pub fn new(
        runtime: Arc<Runtime<K>>,
        queue: InjectQueue<K>,
        rules: Rules,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            runtime,
            queue,
            rules,
            metrics,
        }
    }

    fn record(&self, method: &str, started: Instant, success: bool) {
        self.metrics.observe_rpc(method, success, started.elapsed());
    }
}

/// The one mapping from a result to the wire: `(success, error)`. Refusals and kernel
/// failures are answers, not gRPC errors, because that is what existing clients read.
fn outcome<T>(method: &str, result: &Result<T, RuntimeError>) -> (bool, String) {
    match result {
        Ok(_) => (true, String::new()),
        Err(e) => {
            tracing::debug!(method, error = %e, "request refused");
            (false, e.to_string())
        }
    }
}

/// The one mapping from a runtime error to the kind container clients (quilt-cni) read.
pub fn error_kind(e: &RuntimeError) -> pb::ErrorKind {
    match e {
        RuntimeError::Invalid(_) | RuntimeError::BadField { .. } => pb::ErrorKind::InvalidArgument,
        RuntimeError::NoSubnet => pb::ErrorKind::NotReady,
        RuntimeError::PoolExhausted(_) => pb::ErrorKind::Exhausted,
        RuntimeError::NotAttached { .. } => pb::ErrorKind::NotFound,
        RuntimeError::Mismatch { .. } => pb::ErrorKind::Mismatch,
        RuntimeError::Kernel(_) | RuntimeError::NoSuchInterface(_) => pb::ErrorKind::Kernel,
        _ => pb::ErrorKind::Internal,
    }
}

/// `(success, error, error_kind)` of a container request.
fn container_outcome<T>(method: &str, result: &Result<T, RuntimeError>) -> (bool, String, i32) {
    let (success, error) = outcome(method, result);
    let kind = match result {
        Ok(_) => pb::ErrorKind::Unspecified,
        Err(e) => error_kind(e),
    };
    (success, error, kind as i32)
}

fn attachment_message(record: crate::attach::AttachmentRecord) -> pb::Attachment {
    pb::Attachment {
        container_id: record.container_id,
        ifname: record.ifname,
        netns_path: record.netns.display().to_string(),
        address: record.address.to_string(),
        gateway: record.gateway.to_string(),
        mac: record.mac,
        mtu: record.mtu,
        host_ifname: record.host_ifname,
        host_mac: record.host_mac,
    }
}

#[tonic::async_trait]
impl<K: Kernel> QuiltRuntime for GrpcService<K> {
    async fn attach_container(
        &self,
        request: Request<pb::AttachContainerRequest>,
    ) -> Result<Response<pb::AttachContainerResponse>, Status> {
        let started = Instant::now();
        let r = request.get_ref();
        let result = match self
            .rules
            .attach(&r.container_id, &r.netns_path, &r.ifname, r.mtu)
        {
            Ok(parsed) => self.runtime.attach(&parsed).await,
            Err(e) => Err(e),
        };
        let (success, error, error_kind) = container_outcome("AttachContainer", &result);
        self.record("AttachContainer", started, success);
        Ok(Response::new(pb::AttachContainerResponse {
            success,
            error,
            error_kind,
            attachment: result.ok().map(attachment_message),
        }))
    }

    async fn detach_container(
        &self,
        request: Request<pb::DetachContainerRequest>,
    ) -> Result<Response<pb::DetachContainerResponse>, Status> {
        let started = Instant::now();
        let r = request.get_ref();
        let result = match (
            self.rules.container_id(&r.container_id),
            self.rules.ifname(&r.ifname),
        ) {
            (Ok(id), Ok(ifname)) => self.runtime.detach(&id, &ifname).await,
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let (success, error, error_kind) = container_outcome("DetachContainer", &result);
        self.record("DetachContainer", started, success);
        Ok(Response::new(pb::DetachContainerResponse {
            success,
            error,
            error_kind,
            was_attached: result.unwrap_or(false),
        }))
    }

    async fn list_attachments(
        &self,
        _request: Request<pb::ListAttachmentsRequest>,
    ) -> Result<Response<pb::ListAttachmentsResponse>, Status> {
        let started = Instant::now();
        let attachments = self.runtime.attachments().await;
        self.record("ListAttachments", started, true);
        Ok(Response::new(pb::ListAttachmentsResponse {
            attachments: attachments.into_iter().map(attachment_message).collect(),
        }))
    }

    async fn check_container(
        &self,
        request: Request<pb::CheckContainerRequest>,
    ) -> Result<Response<pb::CheckContainerResponse>, Status> {
        let started = Instant::now();
        let r = request.get_ref();
        let netns = (!r.netns_path.is_empty()).then(|| std::path::PathBuf::from(&r.netns_path));
        let result = match (
            self.rules.container_id(&r.container_id),
            self.rules.ifname(&r.ifname),
        ) {
            (Ok(id), Ok(ifname)) => self.runtime.check(&id, &ifname, netns.as_deref()).await,
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let (success, error, error_kind) = container_outcome("CheckContainer", &result);
        self.record("CheckContainer", started, success);
        Ok(Response::new(pb::CheckContainerResponse {
            success,
            error,
            error_kind,
            attachment: result.ok().map(attachment_message),
        }))
    }

    async fn configure_node_subnet(
        &self,
        request: Request<pb::ConfigureNodeSubnetRequest>,
    ) -> Result<Response<pb::ConfigureNodeSubnetResponse>, Status> {
        let started = Instant::now();
        let result = match self.rules.node_subnet(&request.get_ref().subnet) {
            Ok(subnet) => self.runtime.configure_subnet(subnet).await,
            Err(e) => Err(e),
        };
        let (success, error) = outcome("ConfigureNodeSubnet", &result);
        self.record("ConfigureNodeSubnet", started, success);
        Ok(Response::new(pb::ConfigureNodeSubnetResponse {
            success,
            error,
        }))
    }

    async fn inject_route(
        &self,
        request: Request<pb::InjectRouteRequest>,
    ) -> Result<Response<pb::InjectRouteResponse>, Status> {
        let started = Instant::now();
        let r = request.get_ref();
        let result = match self
            .rules
            .route(&r.destination, &r.via_interface, &r.gateway)
        {
            Ok(route) => self.queue.inject(route).await.map(|_| ()),
            Err(e) => Err(e),
        };
        let (success, error) = outcome("InjectRoute", &result);
        self.record("InjectRoute", started, success);
        Ok(Response::new(pb::InjectRouteResponse { success, error }))
    }

    async fn remove_route(
        &self,
        request: Request<pb::RemoveRouteRequest>,
    ) -> Result<Response<pb::RemoveRouteResponse>, Status> {
        let started = Instant::now();
        let result = match self.rules.destination(&request.get_ref().destination) {
            Ok(destination) => self.runtime.remove_route(destination).await,
            Err(e) => Err(e),
        };
        let (success, error) = outcome("RemoveRoute", &result);
        self.record("RemoveRoute", started, success);
        Ok(Response::new(pb::RemoveRouteResponse { success, error }))
    }

    async fn inject_routes(
        &self,
        request: Request<pb::InjectRoutesRequest>,
    ) -> Result<Response<pb::InjectRoutesResponse>, Status> {
        let started = Instant::now();
        let results = self.inject(&request.get_ref().routes).await;
        self.record("InjectRoutes", started, results.iter().all(|r| r.success));
        Ok(Response::new(pb::InjectRoutesResponse { results }))
    }

    async fn list_routes(
        &self,
        _request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let started = Instant::now();
        let result = self.runtime.list_routes().await;
        self.record("ListRoutes", started, result.is_ok());
        let routes = result.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::ListRoutesResponse {
            routes: routes
                .into_iter()
                .map(|s| pb::ManagedRoute {
                    destination: s.route.destination.to_string(),
                    via_interface: s.route.interface,
                    gateway: s.route.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    in_kernel: s.in_kernel,
                })
                .collect(),
            route_protocol: u32::from(ROUTE_PROTOCOL),
        }))
    }

    async fn allocate_ip(
        &self,
        request: Request<pb::AllocateIpRequest>,
    ) -> Result<Response<pb::AllocateIpResponse>, Status> {
        let started = Instant::now();
        let result = match self.rules.owner(&request.get_ref().owner) {
            Ok(owner) => self.runtime.allocate(&owner).await,
            Err(e) => Err(e),
        };
        let (success, error) = outcome("AllocateIp", &result);
        self.record("AllocateIp", started, success);
        let (address, gateway) = match result {
            Ok(lease) => (lease.address.to_string(), lease.gateway.to_string()),
            Err(_) => (String::new(), String::new()),
        };
        Ok(Response::new(pb::AllocateIpResponse {
            success,
            error,
            address,
            gateway,
        }))
    }

    async fn release_ip(
        &self,
        request: Request<pb::ReleaseIpRequest>,
    ) -> Result<Response<pb::ReleaseIpResponse>, Status> {
        let started = Instant::now();
        let result = match self.rules.owner(&request.get_ref().owner) {
            Ok(owner) => self.runtime.release(&owner).await,
            Err(e) => Err(e),
        };
        let (success, error) = outcome("ReleaseIp", &result);
        self.record("ReleaseIp", started, success);
        Ok(Response::new(pb::ReleaseIpResponse { success, error }))
    }

    async fn list_allocations(
        &self,
        _request: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<pb::ListAllocationsResponse>, Status> {
        let started = Instant::now();
        let desired = self.runtime.desired().await;
        self.record("ListAllocations", started, true);
        Ok(Response::new(pb::ListAllocationsResponse {
            subnet: desired.subnet.map(|s| s.to_string()).unwrap_or_default(),
            allocations: desired
                .allocations
                .into_iter()
                .map(|(owner, address)| pb::Allocation {
                    owner,
                    address: address.to_string(),
                })
                .collect(),
        }))
    }
}

impl<K: Kernel> GrpcService<K> {
    /// Parses each route at the edge, applies the valid ones as one batch, and answers
    /// one response per request, in order.
    async fn inject(&self, requests: &[pb::InjectRouteRequest]) -> Vec<pb::InjectRouteResponse> {
        let parsed: Vec<Result<_, RuntimeError>> = requests
            .iter()
            .map(|r| {
                self.rules
                    .route(&r.destination, &r.via_interface, &r.gateway)
            })
            .collect();
        let valid: Vec<_> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .cloned()
            .collect();
        let mut applied = self.runtime.inject_routes(&valid).await.into_iter();
        parsed
            .into_iter()
            .map(|p| {
                let result = match p {
                    Ok(_) => applied
                        .next()
                        .unwrap_or_else(|| {
                            Err(RuntimeError::NotRecorded("no result for this route".into()))
                        })
                        .map(|_| ()),
                    Err(e) => Err(e),
                };
                let (success, error) = outcome("InjectRoute", &result);
                pb::InjectRouteResponse { success, error }
            })
            .collect()
    }
}
