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
//! - [`store`]: the [`store::Store`] trait, SQLite and in-memory implementations.
//! - [`model`]: validated domain values (node ids, tokens, hostnames, MACs, nodes).
//!
//! [`run`] serves until its shutdown future completes, then stops every task it started.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod metrics;
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
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{SqliteStore, Store};
use crate::watch::Hub;

/// Opens the SQLite database named by `config` and serves the API on `listener` until
/// `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let plan = config.validate()?;
    let path = config.db_path.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path, plan))
        .await
        .context("opening the database panicked")?
        .with_context(|| format!("cannot open database {}", config.db_path.display()))?;
    run_with_store(config, Box::new(store), listener, shutdown).await
}

/// Serves the API over `store` (any [`Store`], such as [`store::MemoryStore`] in tests).
pub async fn run_with_store(
    config: Config,
    mut store: Box<dyn Store>,
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
    let revision = store.revision()?;
    let hub = Arc::new(Hub::new(revision, config.watch_history));
    let (registry, registry_thread) =
        Registry::start(store, hub).context("cannot start the registry thread")?;
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

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
