//! `quiltctl bench`, the one home of the benchmarks: each builds what it measures (a lab,
//! or namespaces of its own), measures, prints, and tears it down. The lab measurements
//! are in `quilt_lab::bench`; the method is in docs/quiltctl.md and docs/benchmarks.md.
//!
//! - `runtime`: route programming against `ip -batch`;
//! - `control`: the control plane's registrations, heartbeats, watch fan-out and RSS, on
//!   SQLite or also on replicas over a real etcd cluster (`etcd`); `growth`: registration
//!   cost as the cluster grows;
//! - `cni`: container attach and detach through the quilt-cni binary;
//! - `convergence` and `dataplane`: on a lab.
//!
//! The benchmarks outside a lab make their namespaces and folders through `scratch`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use quilt_lab::bench::{self, JoinTiming, Rtt};
use quilt_lab::{Lab, LabSpec};
use serde_json::json;

mod cni;
mod control;
mod etcd;
mod growth;
mod runtime;
mod scratch;

use crate::cli::{BenchCommand, BenchLab, ConvergenceArgs, DataplaneArgs};
use crate::lab::{default_bin_dir, watch_for_interrupt};

pub fn run(command: BenchCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Convergence(args) => convergence(args, json),
        BenchCommand::Dataplane(args) => dataplane(args, json),
        BenchCommand::Runtime(args) => {
            let bin_dir = bin_dir_or_own(&args.bin_dir)?;
            scratch::prepare();
            runtime::run(args, &bin_dir)
        }
        BenchCommand::Control(args) => {
            let bin_dir = bin_dir_or_own(&args.bin_dir)?;
            scratch::prepare();
            control::run(args, &bin_dir, json)
        }
        BenchCommand::Cni(args) => {
            let bin_dir = bin_dir_or_own(&args.bin_dir)?;
            scratch::prepare();
            cni::run(args, &bin_dir)
        }
    }
}

fn bin_dir_or_own(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(d) => Ok(d.clone()),
        None => default_bin_dir(),
    }
}

/// Builds the bench lab (`hosts` hosts, one container each) and waits for its full mesh.
fn lab_up(lab: &BenchLab, hosts: u16, cancel: &Arc<AtomicBool>) -> anyhow::Result<Lab> {
    let bin_dir = bin_dir_or_own(&lab.bin_dir)?;
    let mut spec = LabSpec::new(&lab.name, hosts, 1, &bin_dir);
    spec.root = lab.root.clone();
    spec.log_level = lab.daemon_log_level.clone();
    spec.cancel = Some(cancel.clone());
    eprintln!("binaries: {}", bin_dir.display());
    let up = Lab::up(spec, &mut |p| eprintln!("{p}")).context("bench lab")?;
    if up.full_mesh_after().is_none() {
        bail!(
            "the bench lab never reached a full mesh; logs in {}",
            up.state().log_dir.display()
        );
    }
    Ok(up)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn convergence(args: ConvergenceArgs, json: bool) -> anyhow::Result<ExitCode> {
    let cancel = Arc::new(AtomicBool::new(false));
    watch_for_interrupt(cancel.clone());
    let mut lab = lab_up(&args.lab, args.hosts, &cancel)?;
    let mut runs: Vec<JoinTiming> = Vec::new();
    for run in 1..=args.runs {
        if cancel.load(Ordering::Relaxed) {
            bail!(
                "interrupted after {} runs: the lab was torn down",
                runs.len()
            );
        }
        let t = bench::join_new_host(&mut lab, args.timeout)
            .with_context(|| format!("run {run}; logs in {}", lab.state().log_dir.display()))?;
        if !json {
            println!(
                "run {run:>2}: h{:<3} runtime configured {:>6.1} ms, container attached {:>6.1} ms, \
                 reached from all {} containers {:>6.1} ms",
                t.host,
                ms(t.configured),
                ms(t.attached),
                t.sources,
                ms(t.converged)
            );
        }
        runs.push(t);
    }
    let converged: Vec<Duration> = runs.iter().map(|r| r.converged).collect();
    let p50 = bench::quantile(&converged, 0.5).unwrap_or_default();
    let p99 = bench::quantile(&converged, 0.99).unwrap_or_default();
    if json {
        let each: Vec<_> = runs
            .iter()
            .map(|r| {
                json!({"host": r.host, "sources": r.sources, "configured_ms": ms(r.configured),
                       "attached_ms": ms(r.attached), "converged_ms": ms(r.converged)})
            })
            .collect();
        println!(
            "{}",
            json!({"runs": each, "p50_ms": ms(p50), "p99_ms": ms(p99)})
        );
    } else {
        println!(
            "convergence over {} runs: p50 {:.1} ms (target < 300), p99 {:.1} ms (target < 1000)",
            runs.len(),
            ms(p50),
            ms(p99)
        );
    }
    lab.down(true)?;
    Ok(ExitCode::SUCCESS)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn dataplane(args: DataplaneArgs, json: bool) -> anyhow::Result<ExitCode> {
    let cancel = Arc::new(AtomicBool::new(false));
    watch_for_interrupt(cancel.clone());
    let lab = lab_up(&args.lab, 2, &cancel)?;
    let state = lab.state().clone();
    let (h1, h2) = (&state.hosts[0], &state.hosts[1]);
    let (c1, c2) = (&state.containers[0], &state.containers[1]);
    let c2_addr = c2.address.context("c2-1 has no address")?.addr();
    let (mut underlay, mut overlay) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        if cancel.load(Ordering::Relaxed) {
            bail!("interrupted: the lab was torn down");
        }
        let u = bench::iperf3(&h1.netns, &h2.netns, h2.host_ip, args.seconds)?;
        let o = bench::iperf3(&c1.netns, &c2.netns, c2_addr, args.seconds)?;
        if !json {
            println!(
                "round {round}: underlay h1->h2 {:>7.2} Gbit/s, overlay c1-1->c2-1 {:>7.2} Gbit/s, ratio {:.3}",
                u / 1e9,
                o / 1e9,
                o / u
            );
        }
        underlay.push(u);
        overlay.push(o);
    }
    let (u, o) = (median(&mut underlay), median(&mut overlay));
    let rtt_underlay = bench::rtt(&h1.netns, h2.host_ip, args.pings)?;
    let rtt_overlay = bench::rtt(&c1.netns, c2_addr, args.pings)?;
    if json {
        let rtt = |r: &Rtt| json!({"min_ms": r.min_ms, "avg_ms": r.avg_ms, "max_ms": r.max_ms});
        println!(
            "{}",
            json!({"underlay_bps": u, "overlay_bps": o, "throughput_ratio": o / u,
                   "rtt_underlay": rtt(&rtt_underlay), "rtt_overlay": rtt(&rtt_overlay)})
        );
    } else {
        println!(
            "throughput (median of {}, {} s each): underlay {:.2} Gbit/s, overlay {:.2} Gbit/s, overlay/underlay {:.3}",
            args.rounds,
            args.seconds,
            u / 1e9,
            o / 1e9,
            o / u
        );
        for (what, r) in [("underlay", &rtt_underlay), ("overlay ", &rtt_overlay)] {
            println!(
                "ping rtt {what} ({} pings): min {:.3} ms, avg {:.3} ms, max {:.3} ms",
                args.pings, r.min_ms, r.avg_ms, r.max_ms
            );
        }
        println!(
            "rtt overlay/underlay: avg {:.2}x, min {:.2}x",
            rtt_overlay.avg_ms / rtt_underlay.avg_ms,
            rtt_overlay.min_ms / rtt_underlay.min_ms
        );
    }
    lab.down(true)?;
    Ok(ExitCode::SUCCESS)
}
