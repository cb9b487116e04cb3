//! Wiring: the gRPC servers (QuiltRuntime, health, reflection v1 and v1alpha) on the unix
//! socket and on TCP, both behind the caller check, the reconcile loop and the metrics
//! endpoint, all stopped by one shutdown future.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quilt_common::{ClusterNetwork, metrics_endpoint};
use quilt_kernel::Kernel;
use quilt_proto::quilt_runtime_server::QuiltRuntimeServer;
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{error, info, warn};

use crate::Config;
use crate::caller::{self, CallerCheckLayer, TrustPolicy};
use crate::core::Runtime;
use crate::grpc::GrpcService;
use crate::inject_queue::InjectQueue;
use crate::listen::Listeners;
use crate::metrics::Metrics;
use crate::model::{self, ContainerSettings};
use crate::request::Rules;
use crate::store::Store;
use crate::tls::TlsFiles;

/// The gRPC service name health checks ask about.
pub const SERVICE_NAME: &str = "quilt.QuiltRuntime";

/// Runs the runtime on `listeners` (see [`crate::listen::bind`]; a bare TCP listener
/// serves TCP only) until `shutdown` completes: loads state, reconciles the kernel, serves
/// gRPC, reconciles periodically. On shutdown in-flight calls finish, the socket file is
/// removed and kernel routes stay in place.
pub async fn run<K: Kernel>(
    config: Config,
    listeners: impl Into<Listeners>,
    kernel: K,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut listeners = listeners.into();
    let tls = config.tls_files();
    let tls_config = match &tls {
        Some(files) => Some(files.server_config()?),
        None => None,
    };
    if let Some(tcp) = &listeners.tcp {
        crate::listen::check_tcp_addr(tcp.local_addr()?, tls.is_some())?;
        if tls
            .as_ref()
            .is_some_and(|t| !t.requires_client_certificates())
            && !tcp.local_addr()?.ip().is_loopback()
        {
            warn!(
                grpc_addr = %tcp.local_addr()?,
                "TLS without --tls-ca: callers on other hosts cannot be identified and are refused"
            );
        }
    }
    let group = crate::caller::SocketGroup::resolve(&config.grpc_socket_group)
        .map_err(anyhow::Error::msg)?;
    let policy = Arc::new(TrustPolicy::new(
        group,
        tls.as_ref()
            .is_some_and(TlsFiles::requires_client_certificates),
    ));
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
        grpc_socket = ?listeners.unix.as_ref().map(|u| u.path().display().to_string()),
        grpc_addr = ?listeners.tcp.as_ref().and_then(|t| t.local_addr().ok()).map(|a| a.to_string()),
        tls = tls.is_some(),
        client_certificates = policy.certificates,
        socket_group = %policy.group,
        state_dir = %config.state_dir.display(),
        subnet = ?desired.subnet.map(|s| s.to_string()),
        routes = desired.routes.len(),
        allocations = desired.allocations.len(),
        attachments = desired.attachments.len(),
        route_protocol = crate::ROUTE_PROTOCOL,
        "quilt-runtime starting"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = || {
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

    let descriptors = [
        quilt_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ];
    let mut reflection_v1 = tonic_reflection::server::Builder::configure();
    let mut reflection_v1alpha = tonic_reflection::server::Builder::configure();
    for set in descriptors {
        reflection_v1 = reflection_v1.register_encoded_file_descriptor_set(set);
        reflection_v1alpha = reflection_v1alpha.register_encoded_file_descriptor_set(set);
    }
    let reflection_v1 = reflection_v1
        .build_v1()
        .context("cannot build gRPC reflection service v1")?;
    let reflection_v1alpha = reflection_v1alpha
        .build_v1alpha()
        .context("cannot build gRPC reflection service v1alpha")?;
    let queue = InjectQueue::new(runtime.clone());
    let service = QuiltRuntimeServer::new(GrpcService::new(
        runtime.clone(),
        queue,
        rules,
        metrics.clone(),
    ));
    let builder = || {
        tonic::transport::Server::builder()
            .layer(CallerCheckLayer::new(policy.clone(), metrics.clone()))
    };
    let router = |mut builder: tonic::transport::Server<_>| {
        builder
            .add_service(health_service.clone())
            .add_service(reflection_v1.clone())
            .add_service(reflection_v1alpha.clone())
            .add_service(service.clone())
    };
    let unix_server = async {
        let Some(listener) = listeners.unix.as_mut().and_then(|u| u.take_listener()) else {
            return Ok(());
        };
        router(builder())
            .serve_with_incoming_shutdown(
                caller::stream::unix_incoming(listener, policy.clone()),
                stopped(),
            )
            .await
            .context("gRPC server on the unix socket failed")
    };
    let tcp_server = async {
        let Some(listener) = listeners.tcp.take() else {
            return Ok(());
        };
        let mut builder = builder();
        if let Some(tls) = tls_config {
            builder = builder.tls_config(tls).context("cannot set up TLS")?;
        }
        router(builder)
            .serve_with_incoming_shutdown(
                caller::stream::tcp_incoming(listener, policy.clone()),
                stopped(),
            )
            .await
            .context("gRPC server on TCP failed")
    };
    let served = tokio::try_join!(unix_server, tcp_server);

    shutdown_task.abort();
    reconcile_task.abort();
    match reconcile_task.await {
        Err(e) if e.is_panic() => error!(error = %e, "the reconcile loop panicked"),
        _ => {}
    }
    metrics_endpoint.finish().await;
    served?;
    drop(listeners);
    info!("quilt-runtime stopped; kernel routes left in place");
    Ok(())
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
