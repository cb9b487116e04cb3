//! `quilt-mesh-control`: parses flags, installs logging, serves until SIGTERM or SIGINT
//! (or runs `migrate`).

use anyhow::Context;
use clap::Parser;
use quilt_mesh_control::Config;
use quilt_mesh_control::config::Command;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    quilt_common::logging::init(&config.log_level);
    if let Some(Command::Migrate(args)) = &config.command {
        let migrated = quilt_mesh_control::migrate::run(args).await?;
        tracing::info!(nodes = migrated.nodes, revision = migrated.revision, next_node_id = migrated.next_node_id, from = %args.from.display(), to = args.to.0.join(","), prefix = %args.etcd_prefix, "migrated the cluster to etcd; start the replicas with --store etcd");
        println!(
            "migrated {} nodes from {} to etcd prefix {} (revision {}, next node id {})",
            migrated.nodes,
            args.from.display(),
            args.etcd_prefix,
            migrated.revision,
            migrated.next_node_id
        );
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let result =
        quilt_mesh_control::run(config, listener, quilt_common::shutdown::signal_received()).await;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "quilt-mesh-control failed");
    }
    result
}
