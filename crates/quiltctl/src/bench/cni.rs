//! `quiltctl bench cni`: container attach and detach through the `quilt-cni` binary, run
//! the way a container engine runs it (CNI environment, configuration on stdin), against
//! quilt-runtime in a host namespace of its own; containers are namespaces too.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quilt_kernel::netns::OwnedNetns;
use quilt_lab::bench::quantile;
use quilt_lab::cni::invoke;
use quilt_proto as pb;

use super::runtime::{BenchRuntime, SUBNET, with_runtime};
use super::scratch;
use crate::cli::CniArgs;

/// Runs the benchmark with the runtime and plugin binaries found in `bin_dir`.
pub fn run(args: CniArgs, bin_dir: &Path) -> anyhow::Result<ExitCode> {
    quilt_lab::lab::preflight(bin_dir, false, false)?;
    let runtime_bin = bin_dir.join(quilt_lab::lab::RUNTIME_BIN);
    let cni_bin = bin_dir.join(quilt_lab::lab::CNI_BIN);
    let count = usize::from(args.containers);
    println!("quiltctl bench cni: {count} containers on node subnet {SUBNET}, one call at a time");
    let containers: Vec<OwnedNetns> = (0..count)
        .map(|_| scratch::namespace())
        .collect::<anyhow::Result<_>>()?;
    let (adds, dels) = with_runtime(&runtime_bin, move |runtime| {
        Box::pin(async move {
            let BenchRuntime {
                mut client,
                netns,
                address,
                ..
            } = runtime;
            let adds = time_each(&cni_bin, "ADD", &netns, &address, &containers)?;
            let attached = attachments(&mut client).await?;
            if attached != count {
                bail!("{attached} attachments after {count} ADDs");
            }
            let dels = time_each(&cni_bin, "DEL", &netns, &address, &containers)?;
            let left = attachments(&mut client).await?;
            if left != 0 {
                bail!("{left} attachments left after {count} DELs");
            }
            Ok((adds, dels))
        })
    })?
    .0;
    for (what, times) in [("ADD", &adds), ("DEL", &dels)] {
        let total: Duration = times.iter().sum();
        let q = |p: f64| quantile(times, p).unwrap_or_default().as_secs_f64() * 1e3;
        println!(
            "{what}: {:>6.1} calls/s, p50 {:>6.2} ms, p99 {:>6.2} ms{}",
            count as f64 / total.as_secs_f64(),
            q(0.50),
            q(0.99),
            if what == "ADD" {
                " (target p50 < 20 ms, process start and `ip netns exec` included)"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the plugin with `command` for each container in turn, inside `host` whose
/// runtime is at `runtime`; answers
/// each call's time.
fn time_each(
    cni_bin: &Path,
    command: &str,
    host: &str,
    runtime: &str,
    containers: &[OwnedNetns],
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(containers.len());
    for (i, c) in containers.iter().enumerate() {
        let t = Instant::now();
        invoke(
            cni_bin,
            command,
            host,
            runtime,
            &format!("bench-{i}"),
            c.name(),
        )
        .map_err(|f| anyhow::anyhow!("{command} of container {i}: {}", f.message))?;
        times.push(t.elapsed());
    }
    Ok(times)
}

async fn attachments(
    client: &mut pb::quilt_runtime_client::QuiltRuntimeClient<tonic::transport::Channel>,
) -> anyhow::Result<usize> {
    Ok(client
        .list_attachments(pb::ListAttachmentsRequest {})
        .await
        .context("ListAttachments")?
        .into_inner()
        .attachments
        .len())
}
