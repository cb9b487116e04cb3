//! `quilt-mesh-control`: parses flags, installs logging, serves until SIGTERM or SIGINT.

use anyhow::Context;
use clap::Parser;
use quilt_mesh_control::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    quilt_common::logging::init(&config.log_level);
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
