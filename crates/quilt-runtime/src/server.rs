//! Wiring: the gRPC server (QuiltRuntime, health, reflection), the reconcile loop and the
//! metrics endpoint, all stopped by one shutdown future.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quilt_common::{ClusterNetwork, metrics_endpoint};
use quilt_kernel::Kernel;
use quilt_proto::quilt_runtime_server::QuiltRuntimeServer;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{error, info, warn};

use crate::Config;
use crate::core::Runtime;
use crate::grpc::GrpcService;
use crate::inject_queue::InjectQueue;
use crate::metrics::Metrics;
use crate::model::{self, ContainerSettings};
use crate::request::Rules;
use crate::store::Store;

/// The gRPC service name health checks ask about.
pub const SERVICE_NAME: &str = "quilt.QuiltRuntime";

/// Runs the runtime on `listener` until `shutdown` completes: loads state, reconciles
/// the kernel, serves gRPC, reconciles periodically. On shutdown in-flight calls finish
/// and kernel routes stay in place.
pub async fn run<K: Kernel>(
    config: Config,
    listener: tokio::net::TcpListener,
    kernel: K,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cluster = ClusterNetwork::new(config.cluster_cidr, config.node_prefix_len)
        .context("invalid --cluster-cidr / --node-prefix-len")?;
    let rules = Rules {
        cluster,
        overlay_interfaces: config.overlay_interfaces.clone(),
    };
    // Opening may create the folder and migrate the schema: blocking work, off the runtime.
    let state_dir = config.state_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&state_dir))
        .await
        .context("opening the state store panicked")?
        .with_context(|| format!("cannot open state in {}", config.state_dir.display()))?;
    let metrics = Arc::new(Metrics::new());
    let containers = ContainerSettings {
        bridge: model::BRIDGE.to_string(),
        overlay_interface: config.overlay_interfaces.first().cloned(),
        default_mtu: config.container_mtu,
    };
    let runtime =
        Arc::new(Runtime::new(kernel, store, metrics.clone())?.with_container_settings(containers));
    let desired = runtime.desired().await;
    info!(
        grpc_addr = %listener.local_addr()?,
        state_dir = %config.state_dir.display(),
        subnet = ?desired.subnet.map(|s| s.to_string()),
        routes = desired.routes.len(),
        allocations = desired.allocations.len(),
        attachments = desired.attachments.len(),
        route_protocol = crate::ROUTE_PROTOCOL,
        "quilt-runtime starting"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let shutdown_task = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    reconcile_once(&runtime, &reporter).await;

    let reconcile_task = tokio::spawn(reconcile_loop(
        runtime.clone(),
        reporter.clone(),
        config.reconcile_interval,
        stop_rx.clone(),
    ));
    let metrics_endpoint = metrics_endpoint::spawn(
        config.metrics_addr,
        metrics.registry.clone(),
        stop_rx.clone(),
    )
    .await?;

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quilt_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build gRPC reflection service")?;
    let queue = InjectQueue::new(runtime.clone());
    let service = GrpcService::new(runtime.clone(), queue, rules, metrics);
    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(QuiltRuntimeServer::new(service))
        .serve_with_incoming_shutdown(without_nagle(listener), stopped)
        .await;

    shutdown_task.abort();
    reconcile_task.abort();
    match reconcile_task.await {
        Err(e) if e.is_panic() => error!(error = %e, "the reconcile loop panicked"),
        _ => {}
    }
    metrics_endpoint.finish().await;
    served.context("gRPC server failed")?;
    info!("quilt-runtime stopped; kernel routes left in place");
    Ok(())
}

/// Accepted connections with Nagle's algorithm off: a gRPC answer is one small write,
/// and waiting for the peer's delayed ACK would add up to 40 ms to it.
fn without_nagle(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        })
    })
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

/// One reconcile pass; health follows whether the kernel answered.
async fn reconcile_once<K: Kernel>(runtime: &Runtime<K>, reporter: &HealthReporter) {
    match runtime.reconcile().await {
        Ok(report) => {
            if report.repairs > 0 || report.failures > 0 {
                info!(
                    repairs = report.repairs,
                    failures = report.failures,
                    "reconcile pass done"
                );
            }
            set_health(reporter, ServingStatus::Serving).await;
        }
        Err(e) => {
            warn!(error = %e, "reconcile failed: the kernel did not answer");
            set_health(reporter, ServingStatus::NotServing).await;
        }
    }
}

async fn reconcile_loop<K: Kernel>(
    runtime: Arc<Runtime<K>>,
    reporter: HealthReporter,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            return;
        }
        reconcile_once(&runtime, &reporter).await;
    }
}
