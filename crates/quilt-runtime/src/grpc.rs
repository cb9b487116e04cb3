//! The `quilt.QuiltRuntime` gRPC service: wire messages in, typed requests to the core,
//! and every error mapped in one place to `success = false` with a readable text.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use quilt_kernel::Kernel;
use quilt_proto as pb;
use quilt_proto::quilt_runtime_server::QuiltRuntime;
use tonic::{Request, Response, Status};

use crate::core::Runtime;
use crate::inject_queue::InjectQueue;
use crate::metrics::Metrics;
use crate::model::Attachment;
use crate::request::Rules;
use crate::{ROUTE_PROTOCOL, RuntimeError};

/// The gRPC face of a [`Runtime`].
pub struct GrpcService<K> {
    runtime: Arc<Runtime<K>>,
    queue: InjectQueue<K>,
    rules: Rules,
    metrics: Arc<Metrics>,
}

impl<K: Kernel> GrpcService<K> {
    /// `queue` coalesces concurrent InjectRoute calls into batches of `runtime`.
    pub fn new(
        runtime: Arc<Runtime<K>>,
        queue: InjectQueue<K>,
        rules: Rules,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            runtime,
            queue,
            rules,
            metrics,
        }
    }

    /// Runs one RPC `call` (given `method`, for its own refusal log) and records its
    /// latency and outcome under `method`: `ok` when it answers success, else `refused`.
    async fn observed<T, F>(
        &self,
        method: &'static str,
        call: impl FnOnce(&'static str) -> F,
    ) -> Result<Response<T>, Status>
    where
        T: Answer,
        F: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let answer = call(method).await;
        let success = answer.as_ref().is_ok_and(Answer::success);
        self.metrics.observe_rpc(method, success, started.elapsed());
        answer.map(Response::new)
    }
}

/// An RPC answer, as the metrics count it. Listings cannot be refused (one that fails
/// answers a gRPC status instead), so by default an answer is a success.
trait Answer {
    fn success(&self) -> bool {
        true
    }
}

/// Answers that say themselves whether they succeeded.
macro_rules! answer_by_success_field {
    ($($response:ty),* $(,)?) => {
        $(impl Answer for $response {
            fn success(&self) -> bool {
                self.success
            }
        })*
    };
}

answer_by_success_field!(
    pb::AttachContainerResponse,
    pb::DetachContainerResponse,
    pb::CheckContainerResponse,
    pb::ConfigureNodeSubnetResponse,
    pb::InjectRouteResponse,
    pb::RemoveRouteResponse,
    pb::AllocateIpResponse,
    pb::ReleaseIpResponse,
);

/// A batch succeeds when every route in it does.
impl Answer for pb::InjectRoutesResponse {
    fn success(&self) -> bool {
        self.results.iter().all(|r| r.success)
    }
}

impl Answer for pb::ListAttachmentsResponse {}
impl Answer for pb::ListRoutesResponse {}
impl Answer for pb::ListAllocationsResponse {}

/// The one mapping from a result to the wire: `(success, error)`. Refusals and kernel
/// failures are answers, not gRPC errors, because that is what existing clients read.
fn outcome<T>(method: &str, result: &Result<T, RuntimeError>) -> (bool, String) {
    match result {
        Ok(_) => (true, String::new()),
        Err(e) => {
            tracing::info!(method, error = %e, "request refused");
            (false, e.to_string())
        }
    }
}

/// The one mapping from a runtime error to the kind clients read (quilt-cni for
/// container requests, the agent for ConfigureNodeSubnet).
pub fn error_kind(e: &RuntimeError) -> pb::ErrorKind {
    match e {
        RuntimeError::Invalid(_)
        | RuntimeError::BadField { .. }
        | RuntimeError::AlreadyAttached { .. }
        | RuntimeError::OwnedByAttachment { .. }
        | RuntimeError::ReservedOwner { .. } => pb::ErrorKind::InvalidArgument,
        RuntimeError::MtuAboveOverlay { .. } => pb::ErrorKind::InvalidConfig,
        RuntimeError::NoSubnet => pb::ErrorKind::NotReady,
        RuntimeError::PoolExhausted(_) => pb::ErrorKind::Exhausted,
        RuntimeError::NotAttached { .. } => pb::ErrorKind::NotFound,
        RuntimeError::Mismatch { .. } => pb::ErrorKind::Mismatch,
        RuntimeError::SubnetInUse { .. } => pb::ErrorKind::SubnetInUse,
        RuntimeError::Kernel(_)
        | RuntimeError::NoSuchInterface(_)
        | RuntimeError::BridgeTaken { .. } => pb::ErrorKind::Kernel,
        _ => pb::ErrorKind::Internal,
    }
}

/// `(success, error, error_kind)` of a request whose answer carries a kind.
fn container_outcome<T>(method: &str, result: &Result<T, RuntimeError>) -> (bool, String, i32) {
    let (success, error) = outcome(method, result);
    let kind = match result {
        Ok(_) => pb::ErrorKind::Unspecified,
        Err(e) => error_kind(e),
    };
    (success, error, kind as i32)
}

fn attachment_message(record: Attachment) -> pb::Attachment {
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
        let r = request.into_inner();
        self.observed("AttachContainer", |method| async move {
            let result = match self
                .rules
                .attach(&r.container_id, &r.netns_path, &r.ifname, r.mtu)
            {
                Ok(parsed) => self.runtime.attach(&parsed).await,
                Err(e) => Err(e),
            };
            let (success, error, error_kind) = container_outcome(method, &result);
            Ok(pb::AttachContainerResponse {
                success,
                error,
                error_kind,
                attachment: result.ok().map(attachment_message),
            })
        })
        .await
    }

    async fn detach_container(
        &self,
        request: Request<pb::DetachContainerRequest>,
    ) -> Result<Response<pb::DetachContainerResponse>, Status> {
        let r = request.into_inner();
        self.observed("DetachContainer", |method| async move {
            let result = match (
                self.rules.container_id(&r.container_id),
                self.rules.ifname(&r.ifname),
            ) {
                (Ok(id), Ok(ifname)) => self.runtime.detach(&id, &ifname).await,
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            let (success, error, error_kind) = container_outcome(method, &result);
            Ok(pb::DetachContainerResponse {
                success,
                error,
                error_kind,
                was_attached: result.unwrap_or(false),
            })
        })
        .await
    }

    async fn list_attachments(
        &self,
        _request: Request<pb::ListAttachmentsRequest>,
    ) -> Result<Response<pb::ListAttachmentsResponse>, Status> {
        self.observed("ListAttachments", |_| async {
            let attachments = self.runtime.attachments().await;
            Ok(pb::ListAttachmentsResponse {
                attachments: attachments.into_iter().map(attachment_message).collect(),
            })
        })
        .await
    }

    async fn check_container(
        &self,
        request: Request<pb::CheckContainerRequest>,
    ) -> Result<Response<pb::CheckContainerResponse>, Status> {
        let r = request.into_inner();
        self.observed("CheckContainer", |method| async move {
            let netns = (!r.netns_path.is_empty()).then(|| std::path::PathBuf::from(&r.netns_path));
            let result = match (
                self.rules.container_id(&r.container_id),
                self.rules.ifname(&r.ifname),
            ) {
                (Ok(id), Ok(ifname)) => self.runtime.check(&id, &ifname, netns.as_deref()).await,
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            let (success, error, error_kind) = container_outcome(method, &result);
            Ok(pb::CheckContainerResponse {
                success,
                error,
                error_kind,
                attachment: result.ok().map(attachment_message),
            })
        })
        .await
    }

    async fn configure_node_subnet(
        &self,
        request: Request<pb::ConfigureNodeSubnetRequest>,
    ) -> Result<Response<pb::ConfigureNodeSubnetResponse>, Status> {
        let r = request.into_inner();
        self.observed("ConfigureNodeSubnet", |method| async move {
            let result = match self.rules.node_subnet(&r.subnet) {
                Ok(subnet) => self.runtime.configure_subnet(subnet).await,
                Err(e) => Err(e),
            };
            let (success, error, error_kind) = container_outcome(method, &result);
            let current_subnet = self.runtime.subnet().await;
            Ok(pb::ConfigureNodeSubnetResponse {
                success,
                error,
                error_kind,
                current_subnet: current_subnet.map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .await
    }

    async fn inject_route(
        &self,
        request: Request<pb::InjectRouteRequest>,
    ) -> Result<Response<pb::InjectRouteResponse>, Status> {
        let r = request.into_inner();
        self.observed("InjectRoute", |method| async move {
            let result = match self
                .rules
                .route(&r.destination, &r.via_interface, &r.gateway)
            {
                Ok(route) => self.queue.inject(route).await.map(|_| ()),
                Err(e) => Err(e),
            };
            let (success, error) = outcome(method, &result);
            Ok(pb::InjectRouteResponse { success, error })
        })
        .await
    }

    async fn remove_route(
        &self,
        request: Request<pb::RemoveRouteRequest>,
    ) -> Result<Response<pb::RemoveRouteResponse>, Status> {
        let r = request.into_inner();
        self.observed("RemoveRoute", |method| async move {
            let result = match self.rules.destination(&r.destination) {
                Ok(destination) => self.runtime.remove_route(destination).await,
                Err(e) => Err(e),
            };
            let (success, error) = outcome(method, &result);
            Ok(pb::RemoveRouteResponse { success, error })
        })
        .await
    }

    async fn inject_routes(
        &self,
        request: Request<pb::InjectRoutesRequest>,
    ) -> Result<Response<pb::InjectRoutesResponse>, Status> {
        let r = request.into_inner();
        self.observed("InjectRoutes", |method| async move {
            if let Err(e) = self.rules.batch_len(r.routes.len()) {
                tracing::info!(method, error = %e, "request refused");
                return Err(Status::invalid_argument(e.to_string()));
            }
            let results = self.inject(&r.routes).await;
            Ok(pb::InjectRoutesResponse { results })
        })
        .await
    }

    async fn list_routes(
        &self,
        _request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        self.observed("ListRoutes", |_| async {
            let routes = self
                .runtime
                .list_routes()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            Ok(pb::ListRoutesResponse {
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
            })
        })
        .await
    }

    async fn allocate_ip(
        &self,
        request: Request<pb::AllocateIpRequest>,
    ) -> Result<Response<pb::AllocateIpResponse>, Status> {
        let r = request.into_inner();
        self.observed("AllocateIp", |method| async move {
            let result = match self.rules.owner(&r.owner) {
                Ok(owner) => self.runtime.allocate(&owner).await,
                Err(e) => Err(e),
            };
            let (success, error) = outcome(method, &result);
            let (address, gateway) = match result {
                Ok(lease) => (lease.address.to_string(), lease.gateway.to_string()),
                Err(_) => (String::new(), String::new()),
            };
            Ok(pb::AllocateIpResponse {
                success,
                error,
                address,
                gateway,
            })
        })
        .await
    }

    async fn release_ip(
        &self,
        request: Request<pb::ReleaseIpRequest>,
    ) -> Result<Response<pb::ReleaseIpResponse>, Status> {
        let r = request.into_inner();
        self.observed("ReleaseIp", |method| async move {
            let result = match self.rules.owner(&r.owner) {
                Ok(owner) => self.runtime.release(&owner).await,
                Err(e) => Err(e),
            };
            let (success, error) = outcome(method, &result);
            Ok(pb::ReleaseIpResponse { success, error })
        })
        .await
    }

    async fn list_allocations(
        &self,
        _request: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<pb::ListAllocationsResponse>, Status> {
        self.observed("ListAllocations", |_| async {
            let (subnet, allocations) = self.runtime.allocations().await;
            Ok(pb::ListAllocationsResponse {
                subnet: subnet.map(|s| s.to_string()).unwrap_or_default(),
                allocations: allocations
                    .into_iter()
                    .map(|(owner, address)| pb::Allocation {
                        owner,
                        address: address.to_string(),
                    })
                    .collect(),
            })
        })
        .await
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
                        .unwrap_or(Err(RuntimeError::Internal("no result for this route")))
                        .map(|_| ()),
                    Err(e) => Err(e),
                };
                let (success, error) = outcome("InjectRoute", &result);
                pb::InjectRouteResponse { success, error }
            })
            .collect()
    }
}
