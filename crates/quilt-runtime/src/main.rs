//! The quilt-runtime binary: flags, logging, the listeners, the netlink kernel, then
//! [`quilt_runtime::run`].

use anyhow::Context;
use clap::Parser;
use quilt_kernel::netlink::NetlinkKernel;
use quilt_runtime::Config;

/// Blocking threads the runtime may use: store calls and raw netlink exchanges hand their
/// worker over to one of these (`quilt_kernel::blocking`); a small fixed pool keeps the
/// daemon's memory flat (each thread that allocates costs the process a malloc arena).
const BLOCKING_THREADS: usize = 2;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let config = Config::parse();
    quilt_common::logging::init(&config.log_level);
    let listeners = quilt_runtime::listen::bind(&config).await?;
    let kernel = NetlinkKernel::open().context("cannot open netlink")?;
    quilt_runtime::run(
        config,
        listeners,
        kernel,
        quilt_common::shutdown::signal_received(),
    )
    .await
}
