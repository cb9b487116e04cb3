//! quilt-mesh-control: the control plane every Quilt Mesh agent registers with; the
//! source of truth for nodes and their subnet leases.
//!
//! Modules, from the edge inwards:
//! - [`config`]: flags and their environment variables.
//! - [`serve`]: the connection loop: caps, idle and slow-header timeouts, graceful stop.
//! - [`tls`]: HTTPS and mutual TLS, re-read on SIGHUP; the identity a certificate proves.
//! - [`api`]: HTTP routes and handlers; [`api::types`] holds the JSON shapes clients reuse.
//! - [`error`]: API errors and their one mapping to HTTP status codes.
//! - [`auth`]: join token, node token and node certificate decisions.
//! - [`registry`]: the thread that owns the store and publishes its changes.
//! - [`watch`]: revisions, retained history and fan-out to watchers.
//! - [`monitor`]: marks down nodes that stopped sending heartbeats.
//! - [`metrics`]: Prometheus metrics.
//! - [`store`]: the [`store::Store`] trait; SQLite, etcd and in-memory implementations.
//! - [`migrate`]: `quilt-mesh-control migrate`, from SQLite to etcd.
//! - [`model`]: validated domain values (node ids, tokens, hostnames, MACs, nodes).
//!
//! [`run`] serves until its shutdown future completes, then stops every task it started.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod monitor;
pub mod registry;
pub mod serve;
pub mod store;
pub mod tls;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

pub use config::Config;

use crate::api::AppState;
use crate::auth::Policy;
use crate::config::StoreKind;
use crate::metrics::Metrics;
use crate::registry::{Publication, Registry};
use crate::store::etcd::Feed;
use crate::store::{EtcdStore, SqliteStore, Store, StoreError};
use crate::watch::Hub;

/// How often a replica that starts while etcd is unavailable tries again.
const ETCD_OPEN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens the store `config` names (the SQLite database, or the etcd cluster) and serves
/// the API on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let plan = config.validate()?;
    match config.store {
        StoreKind::Sqlite => {
            let path = config.db_path.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path, plan))
                .await
                .context("opening the database panicked")?
                .with_context(|| format!("cannot open database {}", config.db_path.display()))?;
            serve_store(config, Box::new(store), None, listener, shutdown).await
        }
        StoreKind::Etcd => {
            let client = quilt_etcd::EtcdClient::new(&config.etcd_endpoints, Default::default())?;
            let mut shutdown = Box::pin(shutdown);
            let (store, feed) = loop {
                match EtcdStore::open(client.clone(), &config.etcd_prefix, plan).await {
                    Ok(opened) => break opened,
                    Err(StoreError::Unavailable(e)) => {
                        tracing::warn!(error = %e, "etcd is unavailable; trying again every second before serving");
                        tokio::select! {
                            _ = tokio::time::sleep(ETCD_OPEN_RETRY) => {}
                            _ = &mut shutdown => return Ok(()),
                        }
                    }
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!(
                                "cannot use etcd prefix {} at {}",
                                config.etcd_prefix,
                                config.etcd_endpoints.join(",")
                            )
                        });
                    }
                }
            };
            serve_store(config, Box::new(store), Some(feed), listener, shutdown).await
        }
    }
}

/// Serves the API over `store` (any [`Store`], such as [`store::MemoryStore`] in tests).
pub async fn run_with_store(
    config: Config,
    store: Box<dyn Store>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_store(config, store, None, listener, shutdown).await
}

/// Serves the API over `store`; watchers learn its changes from `feed` when it has one
/// (a store other replicas share), else from the registry.
async fn serve_store(
    config: Config,
    mut store: Box<dyn Store>,
    feed: Option<Feed>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let plan = config.validate()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(
            tls::ServerTls::load(tls::TlsFiles {
                identity: quilt_tls::Identity {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                client_ca: config.tls_ca.clone(),
            })
            .context("cannot set up TLS")?,
        ),
        _ => None,
    };
    let policy = Policy::new(config.join_token()?);
    if policy.is_open() && !tls.as_ref().is_some_and(tls::ServerTls::mutual) {
        tracing::warn!(
            "OPEN MODE: no join token and no client certificates; anyone who reaches this port can register nodes, re-register an existing host (taking over its node and token) and delete nodes; set --join-token-file, or --tls-ca for mutual TLS"
        );
    }
    if tls.is_none() {
        tracing::warn!(
            "serving plain HTTP: tokens cross the network in clear; set --tls-cert and --tls-key"
        );
    }
    let reload = match &tls {
        Some(tls) => Some(tls.reload_on_sighup().context("cannot watch for SIGHUP")?),
        None => None,
    };
    let (revision, publication) = match &feed {
        Some(feed) => (feed.start_revision(), Publication::ByFeed),
        None => (store.revision()?, Publication::ByRegistry),
    };
    let hub = Arc::new(Hub::new(revision, config.watch_history));
    let (registry, registry_thread) = Registry::start(store, hub.clone(), publication)
        .context("cannot start the registry thread")?;
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let feed = feed.map(|feed| tokio::spawn(feed.run(hub, stop_rx.clone())));

    let monitor = tokio::spawn(monitor::run(
        registry.clone(),
        metrics.clone(),
        config.heartbeat_timeout,
        stop_rx.clone(),
    ));

    let state = AppState {
        registry,
        policy: Arc::new(policy),
        metrics,
        plan,
        watch_slots: Arc::new(api::watch::WatchSlots::new(
            config.max_watchers,
            config.max_watchers_per_client,
        )),
        heartbeat_timeout: config.heartbeat_timeout,
        watch_keepalive: config.watch_keepalive,
        stopping: stop_rx,
    };
    let app = api::router(state, config.request_timeout);
    let open_files = serve::raise_open_file_limit();
    let limits = serve::Limits {
        // Leave room for the database, logs and the sockets the server itself opens.
        max_connections: config
            .max_connections
            .min(usize::try_from(open_files.saturating_sub(64)).unwrap_or(usize::MAX))
            .max(1),
        max_connections_per_client: config.max_connections_per_client,
        idle_timeout: config.idle_timeout,
        dead_client_after: serve::dead_client_after(config.watch_keepalive),
    };
    let local = listener
        .local_addr()
        .context("listener has no local address")?;
    tracing::info!(
        listen = %local,
        tls = tls.is_some(),
        mutual_tls = tls.as_ref().is_some_and(tls::ServerTls::mutual),
        store = ?config.store,
        cluster_cidr = %config.cluster_cidr,
        node_prefix_len = config.node_prefix_len,
        heartbeat_timeout = ?config.heartbeat_timeout,
        revision,
        max_connections = limits.max_connections,
        max_connections_per_client = limits.max_connections_per_client,
        idle_timeout = ?limits.idle_timeout,
        open_files,
        "quilt-mesh-control serving"
    );
    if let Some(path) = &config.ready_file {
        write_ready_file(path, local).await?;
    }

    let stop_for_serve = stop_tx.clone();
    let served = serve::serve(listener, app, limits, tls.clone(), async move {
        shutdown.await;
        tracing::info!("shutting down: closing watch streams and finishing requests");
        let _ = stop_for_serve.send(true);
    })
    .await;

    let _ = stop_tx.send(true);
    if let Some(reload) = reload {
        reload.abort();
    }
    if let Err(e) = monitor.await {
        tracing::error!(error = %e, "heartbeat monitor panicked");
    }
    if let Some(feed) = feed
        && let Err(e) = feed.await
    {
        tracing::error!(error = %e, "etcd change feed panicked");
    }
    registry_thread.stop().await;
    tracing::info!("quilt-mesh-control stopped");
    served.context("http server failed")
}

/// Writes `IP:PORT\n` to `path` atomically: to a temporary file beside it, then renamed, so
/// a reader sees either no file or the whole address.
async fn write_ready_file(
    path: &std::path::Path,
    local: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    tokio::fs::write(&tmp, format!("{local}\n"))
        .await
        .with_context(|| format!("cannot write ready file {}", tmp.display()))?;
    tokio::fs::rename(&tmp, path).await.with_context(|| {
        format!(
            "cannot rename {} to ready file {}",
            tmp.display(),
            path.display()
        )
    })
}
