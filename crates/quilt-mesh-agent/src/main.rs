//! The quilt-mesh-agent binary: flags, logging, the netlink kernel and the `nft` firewall, then [`quilt_mesh_agent::run`].

use anyhow::Context;
use clap::Parser;
use quilt_kernel::firewall::nft::NftFirewall;
use quilt_kernel::netlink::NetlinkKernel;
use quilt_mesh_agent::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    quilt_common::logging::init(&config.log_level);
    let kernel = NetlinkKernel::open().context("cannot open netlink")?;
    quilt_mesh_agent::run(
        config,
        kernel,
        NftFirewall::new(),
        quilt_common::shutdown::signal_received(),
    )
    .await
}
