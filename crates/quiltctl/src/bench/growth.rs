//! `quiltctl bench control --growth`: whether a registration costs as much in a big
//! cluster as in a small one. Fresh servers on a /8 cluster (/24 each) take
//! `--growth-nodes` registrations in blocks of `--growth-block`, each block timed: on
//! SQLite, and with `--store etcd` on the replicas over etcd too (the load spread over
//! them). Target: the last block within 1.5x of the first.

use std::ops::Range;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;

use super::control::{Plane, Spec, register_all};
use crate::cli::BenchStore;

/// How much slower than the first block the last one may be.
const TARGET_SLOWDOWN: f64 = 1.5;

pub(super) fn run(
    spec: &Spec,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let args = spec.args;
    let blocks: Vec<Range<usize>> = (0..args.growth_nodes)
        .step_by(args.growth_block)
        .map(|start| start..(start + args.growth_block).min(args.growth_nodes))
        .collect();
    eprintln!(
        "quiltctl bench control --growth: {} registrations on {} (/{} each) in blocks of {}, concurrency {}",
        args.growth_nodes, spec.cidr, spec.prefix, args.growth_block, args.concurrency
    );
    let sqlite = {
        let mut plane = Plane::sqlite(spec, &dir.join("growth-sqlite"), None)?;
        let rates = rt.block_on(timed_blocks("SQLite", &plane, &blocks, args.concurrency));
        plane.stop();
        rates?
    };
    let etcd = match args.store {
        BenchStore::Sqlite => None,
        BenchStore::Etcd => {
            let mut plane = Plane::etcd(
                spec,
                &dir.join("growth-etcd"),
                args.replicas,
                args.etcd_members,
                rt,
            )?;
            let rates = rt.block_on(timed_blocks("etcd", &plane, &blocks, args.concurrency));
            plane.stop();
            Some(rates?)
        }
    };
    let last_to_first = |rates: &[f64]| rates[rates.len() - 1] / rates[0];
    if json {
        let each =
            |rates: &[f64]| json!({"per_block": rates, "last_to_first": last_to_first(rates)});
        println!(
            "{}",
            json!({"nodes": args.growth_nodes, "block": args.growth_block,
                   "cluster_cidr": spec.cidr, "node_prefix_len": spec.prefix,
                   "concurrency": args.concurrency,
                   "sqlite": each(&sqlite), "etcd": etcd.as_deref().map(each),
                   "replicas": etcd.is_some().then_some(args.replicas)})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    println!(
        "registrations/s per block of {} on {} (/{} each), concurrency {}{}",
        args.growth_block,
        spec.cidr,
        spec.prefix,
        args.concurrency,
        match &etcd {
            Some(_) => format!(
                "; etcd: {} replicas over {} members",
                args.replicas, args.etcd_members
            ),
            None => String::new(),
        }
    );
    let header_etcd = if etcd.is_some() { "etcd" } else { "" };
    println!(
        "{:>5} {:>15} {:>10} {:>10}",
        "block", "nodes", "SQLite", header_etcd
    );
    for (i, block) in blocks.iter().enumerate() {
        let etcd_rate = etcd
            .as_ref()
            .map_or(String::new(), |r| format!("{:.0}", r[i]));
        println!(
            "{:>5} {:>15} {:>10.0} {:>10}",
            i + 1,
            format!("{}-{}", block.start, block.end),
            sqlite[i],
            etcd_rate
        );
    }
    let verdict = |ratio: f64| {
        if ratio >= 1.0 / TARGET_SLOWDOWN {
            "ok"
        } else {
            "MISSED"
        }
    };
    let s = last_to_first(&sqlite);
    let e = etcd.as_deref().map(last_to_first);
    println!(
        "last block / first: SQLite {s:.2}x {}{} (target >= {:.2}x: within {TARGET_SLOWDOWN}x)",
        verdict(s),
        e.map_or(String::new(), |e| format!(", etcd {e:.2}x {}", verdict(e))),
        1.0 / TARGET_SLOWDOWN
    );
    Ok(ExitCode::SUCCESS)
}

/// Registers each block in turn; answers each block's registrations/s.
async fn timed_blocks(
    name: &str,
    plane: &Plane,
    blocks: &[Range<usize>],
    concurrency: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut rates = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        let started = Instant::now();
        register_all(&plane.clients, block.clone(), concurrency).await?;
        let rate = block.len() as f64 / started.elapsed().as_secs_f64();
        eprintln!(
            "{name} block {}/{} (nodes {}-{}): {rate:.0} registrations/s",
            i + 1,
            blocks.len(),
            block.start,
            block.end
        );
        rates.push(rate);
    }
    Ok(rates)
}
