//! The quilt-mesh-agent binary: flags, logging, the netlink kernel, then [`quilt_mesh_agent::run`].

use anyhow::Context;
use clap::Parser;
use quilt_kernel::netlink::NetlinkKernel;
use quilt_mesh_agent::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    quilt_common::logging::init(&config.log_level);
    let kernel = NetlinkKernel::open().context("cannot open netlink")?;
    quilt_mesh_agent::run(config, kernel, quilt_common::shutdown::signal_received()).await
}
