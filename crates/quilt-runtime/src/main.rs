//! The quilt-runtime binary: flags, logging, the netlink kernel, then [`quilt_runtime::run`].

use anyhow::Context;
use clap::Parser;
use quilt_kernel::netlink::NetlinkKernel;
use quilt_runtime::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    quilt_common::logging::init(&config.log_level);
    let listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on grpc address {}", config.grpc_addr))?;
    let kernel = NetlinkKernel::open().context("cannot open netlink")?;
    quilt_runtime::run(
        config,
        listener,
        kernel,
        quilt_common::shutdown::signal_received(),
    )
    .await
}
