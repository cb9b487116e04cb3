//! The operator commands: `nodes`, `node delete`, `routes`, `status`. Each prints a table,
//! or with `--json` one JSON document, and fails with a message naming what failed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use quilt_api::types::Status;
use quilt_api::{ControlClient, Timeouts};
use quilt_common::ClusterNetwork;
use serde::Serialize;

use crate::cli::{NodeCommand, OperatorCommand, StatusArgs};
use crate::table;

/// Flags every operator command shares.
#[derive(Debug, Clone)]
pub struct Global {
    pub control_planes: Vec<String>,
    pub join_token: Option<String>,
    /// How https:// control planes are trusted (`--tls-ca`, `--tls-cert`, `--tls-key`).
    pub control_tls: Option<quilt_api::ClientTls>,
    pub json: bool,
}

pub async fn run(command: OperatorCommand, global: &Global) -> anyhow::Result<ExitCode> {
    let cp = control_client(global)?;
    match command {
        OperatorCommand::Nodes => nodes(&cp, global.json).await,
        OperatorCommand::Node {
            command: NodeCommand::Delete { id },
        } => delete_node(&cp, &id, global.json).await,
        OperatorCommand::Routes {
            runtime,
            tls_ca,
            tls_cert,
            tls_key,
        } => {
            let tls = quilt_proto::connect::TlsOptions {
                ca: tls_ca,
                cert: tls_cert,
                key: tls_key,
            };
            routes(&runtime, &tls, global.json).await
        }
        OperatorCommand::Status(args) => status(&cp, &args, global.json).await,
    }
}

/// A client of the control planes the flags name, with the operator's timeouts.
pub fn control_client(global: &Global) -> anyhow::Result<ControlClient> {
    Ok(ControlClient::builder(global.control_planes.clone())
        .join_token(global.join_token.clone())
        .tls(global.control_tls.clone())
        .timeouts(Timeouts {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(10),
            failover: Duration::from_secs(2),
        })
        .build()?)
}

/// Refuses, before asking anyone, a node id that is not of the form `node-<n>`.
fn check_node_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        bail!("node id {id:?} is not a node id (like node-3)");
    }
    Ok(())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn nodes(cp: &ControlClient, json: bool) -> anyhow::Result<ExitCode> {
    let list = cp.list().await?;
    if json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_unix();
    let rows: Vec<Vec<String>> = list
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.clone(),
                n.hostname.clone(),
                n.host_ip.to_string(),
                n.subnet.to_string(),
                n.vtep_mac.clone().unwrap_or_else(|| "none".to_string()),
                n.status.as_str().to_string(),
                format!("{} ago", table::age(now.saturating_sub(n.last_heartbeat))),
                n.condition
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |c| c.reason.clone()),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "ID",
                "HOSTNAME",
                "HOST IP",
                "SUBNET",
                "VTEP MAC",
                "STATUS",
                "LAST HEARTBEAT",
                "CONDITION"
            ],
            &rows
        )
    );
    if list.nodes.is_empty() {
        println!("(no nodes)");
    }
    let without_mac: Vec<&str> = list
        .nodes
        .iter()
        .filter(|n| n.vtep_mac.is_none())
        .map(|n| n.node_id.as_str())
        .collect();
    if !without_mac.is_empty() {
        println!(
            "no vtep_mac: {} (agents of the original programs?); peers reach them by flooding",
            without_mac.join(", ")
        );
    }
    // What each condition means, in its agent's words.
    for n in &list.nodes {
        if let Some(c) = &n.condition {
            println!("{} {}: {}", n.node_id, c.reason, c.message);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn delete_node(cp: &ControlClient, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    check_node_id(id)?;
    let node = cp.delete_node(id).await?;
    if json {
        print_json(&node)?;
    } else {
        println!(
            "deleted {} ({}, host {}); subnet {} is free",
            node.node_id, node.hostname, node.host_ip, node.subnet
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What `status --json` prints.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// Every control-plane URL given, comma-separated.
    pub control_plane: String,
    /// The replica that answered (the first that did, in the order tried).
    pub answered_by: String,
    pub health: String,
    /// Why the control plane is degraded, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
    pub nodes: Counts,
    pub revision: u64,
    pub leases: Leases,
}

#[derive(Debug, Serialize)]
pub struct Counts {
    pub total: usize,
    pub up: usize,
    pub down: usize,
}

#[derive(Debug, Serialize)]
pub struct Leases {
    pub cluster_cidr: String,
    pub node_prefix_len: u8,
    /// Subnets the control plane can lease (the cluster's first one is never leased).
    pub capacity: u64,
    pub used: u64,
    pub free: u64,
}

async fn status(cp: &ControlClient, args: &StatusArgs, json: bool) -> anyhow::Result<ExitCode> {
    let plan =
        ClusterNetwork::new(args.cluster_cidr, args.node_prefix_len).map_err(|e| anyhow!("{e}"))?;
    let health = cp.health().await?;
    let list = cp.list().await?;
    let up = list.nodes.iter().filter(|n| n.status == Status::Up).count();
    let capacity = plan.subnet_count().saturating_sub(1);
    let used = list.nodes.len() as u64;
    let report = StatusReport {
        control_plane: cp.urls().join(","),
        answered_by: cp.preferred_url().to_string(),
        health: health.status,
        health_reason: health.reason,
        nodes: Counts {
            total: list.nodes.len(),
            up,
            down: list.nodes.len() - up,
        },
        revision: list.revision,
        leases: Leases {
            cluster_cidr: plan.cidr().to_string(),
            node_prefix_len: plan.node_prefix_len(),
            capacity,
            used,
            free: capacity.saturating_sub(used),
        },
    };
    if json {
        print_json(&report)?;
    } else {
        let r = &report;
        if cp.urls().len() > 1 {
            println!(
                "control plane  {} ({}), of {}",
                r.answered_by, r.health, r.control_plane
            );
        } else {
            println!("control plane  {} ({})", r.control_plane, r.health);
        }
        if let Some(reason) = &r.health_reason {
            println!("               {reason}");
        }
        println!(
            "nodes          {} ({} up, {} down), revision {}",
            r.nodes.total, r.nodes.up, r.nodes.down, r.revision
        );
        println!(
            "leases         {} of {} used, {} free ({}, /{} per node)",
            r.leases.used,
            r.leases.capacity,
            r.leases.free,
            r.leases.cluster_cidr,
            r.leases.node_prefix_len
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What `routes --json` prints.
#[derive(Debug, Serialize)]
pub struct RoutesReport {
    pub runtime: String,
    pub node_subnet: String,
    pub route_protocol: u32,
    pub routes: Vec<RouteRow>,
}

#[derive(Debug, Serialize)]
pub struct RouteRow {
    pub destination: String,
    pub via_interface: String,
    pub gateway: String,
    pub in_kernel: bool,
}

async fn routes(
    runtime: &str,
    tls: &quilt_proto::connect::TlsOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let addr = quilt_proto::connect::url_of(runtime);
    let timeouts = quilt_proto::connect::Timeouts {
        connect: Duration::from_secs(3),
        call: Duration::from_secs(10),
    };
    let mut client = quilt_proto::connect::connect_with(runtime, timeouts, tls).await?;
    let listed = client
        .list_routes(quilt_proto::ListRoutesRequest {})
        .await
        .map_err(|s| anyhow!("ListRoutes at {addr}: {}", s.message()))?
        .into_inner();
    let subnet = client
        .list_allocations(quilt_proto::ListAllocationsRequest {})
        .await
        .map_err(|s| anyhow!("ListAllocations at {addr}: {}", s.message()))?
        .into_inner()
        .subnet;
    let report = RoutesReport {
        runtime: addr,
        node_subnet: subnet,
        route_protocol: listed.route_protocol,
        routes: listed
            .routes
            .into_iter()
            .map(|r| RouteRow {
                destination: r.destination,
                via_interface: r.via_interface,
                gateway: r.gateway,
                in_kernel: r.in_kernel,
            })
            .collect(),
    };
    if json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "runtime {}: node subnet {}, route protocol {}",
        report.runtime,
        if report.node_subnet.is_empty() {
            "(not configured)"
        } else {
            &report.node_subnet
        },
        report.route_protocol
    );
    let rows: Vec<Vec<String>> = report
        .routes
        .iter()
        .map(|r| {
            vec![
                r.destination.clone(),
                r.via_interface.clone(),
                if r.gateway.is_empty() {
                    "-".to_string()
                } else {
                    r.gateway.clone()
                },
                if r.in_kernel { "yes" } else { "MISSING" }.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["DESTINATION", "DEVICE", "GATEWAY", "IN KERNEL"], &rows)
    );
    if report.routes.is_empty() {
        println!("(no routes)");
    }
    Ok(ExitCode::SUCCESS)
}
