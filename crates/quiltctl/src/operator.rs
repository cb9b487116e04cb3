//! The operator commands: `nodes`, `node delete`, `routes`, `status`. Each prints a table,
//! or with `--json` one JSON document, and fails with a message naming what failed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use quilt_common::ClusterNetwork;
use quilt_mesh_control::api::types::{ErrorBody, Health, NodeInfo, NodeList, Status};
use quilt_proto::quilt_runtime_client::QuiltRuntimeClient;
use serde::Serialize;

use crate::cli::{Command, NodeCommand, StatusArgs};
use crate::table;

/// Flags every operator command shares.
#[derive(Debug, Clone)]
pub struct Global {
    pub control_planes: Vec<String>,
    pub join_token: Option<String>,
    pub json: bool,
}

pub async fn run(command: Command, global: &Global) -> anyhow::Result<ExitCode> {
    let cp = ControlPlane::new(global)?;
    match command {
        Command::Nodes => nodes(&cp, global.json).await,
        Command::Node {
            command: NodeCommand::Delete { id },
        } => delete_node(&cp, &id, global.json).await,
        Command::Routes { runtime } => routes(&runtime, global.json).await,
        Command::Status(args) => status(&cp, &args, global.json).await,
        Command::Lab { .. } | Command::Bench { .. } => {
            unreachable!("lab and bench commands do not reach the operator")
        }
    }
}

/// The control plane, over one or more URLs tried in order.
pub struct ControlPlane {
    urls: Vec<String>,
    token: Option<String>,
    http: reqwest::Client,
}

impl ControlPlane {
    pub fn new(global: &Global) -> anyhow::Result<Self> {
        let urls: Vec<String> = global
            .control_planes
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            bail!("no control plane url given (--control-plane or QUILT_CONTROL_PLANE)");
        }
        for u in &urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                bail!("control plane url {u:?} is not an http:// or https:// url");
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the http client")?;
        Ok(Self {
            urls,
            token: global.join_token.clone(),
            http,
        })
    }

    /// Sends the request to the first control plane that answers; HTTP errors become
    /// errors carrying the server's message.
    async fn send(&self, method: reqwest::Method, path: &str) -> anyhow::Result<reqwest::Response> {
        let mut failures = Vec::new();
        for base in &self.urls {
            let url = format!("{base}{path}");
            let mut request = self.http.request(method.clone(), &url);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) => {
                    let status = r.status();
                    let message = r
                        .json::<ErrorBody>()
                        .await
                        .map(|b| b.error)
                        .unwrap_or_else(|_| "no error message".to_string());
                    bail!("{method} {url}: {status}: {message}");
                }
                Err(e) => failures.push(format!("{url}: {}", error_chain(&e))),
            }
        }
        Err(anyhow!(
            "no control plane answered: {}",
            failures.join("; ")
        ))
    }

    pub async fn health(&self) -> anyhow::Result<Health> {
        let r = self.send(reqwest::Method::GET, "/health").await?;
        r.json().await.context("cannot parse the /health answer")
    }

    pub async fn nodes(&self) -> anyhow::Result<NodeList> {
        let r = self.send(reqwest::Method::GET, "/api/nodes").await?;
        r.json().await.context("cannot parse the /api/nodes answer")
    }

    pub async fn delete(&self, id: &str) -> anyhow::Result<NodeInfo> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            bail!("node id {id:?} is not a node id (like node-3)");
        }
        let r = self
            .send(reqwest::Method::DELETE, &format!("/api/nodes/{id}"))
            .await?;
        r.json().await.context("cannot parse the DELETE answer")
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Up => "up",
        Status::Down => "down",
    }
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn nodes(cp: &ControlPlane, json: bool) -> anyhow::Result<ExitCode> {
    let list = cp.nodes().await?;
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
                status_word(n.status).to_string(),
                format!("{} ago", table::age(now.saturating_sub(n.last_heartbeat))),
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
                "STATUS",
                "LAST HEARTBEAT"
            ],
            &rows
        )
    );
    if list.nodes.is_empty() {
        println!("(no nodes)");
    }
    Ok(ExitCode::SUCCESS)
}

async fn delete_node(cp: &ControlPlane, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let node = cp.delete(id).await?;
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
    pub control_plane: String,
    pub health: String,
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

async fn status(cp: &ControlPlane, args: &StatusArgs, json: bool) -> anyhow::Result<ExitCode> {
    let plan =
        ClusterNetwork::new(args.cluster_cidr, args.node_prefix_len).map_err(|e| anyhow!("{e}"))?;
    let health = cp.health().await?;
    let list = cp.nodes().await?;
    let up = list.nodes.iter().filter(|n| n.status == Status::Up).count();
    let capacity = plan.subnet_count().saturating_sub(1);
    let used = list.nodes.len() as u64;
    let report = StatusReport {
        control_plane: cp.urls.join(","),
        health: health.status,
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
        println!("control plane  {} ({})", r.control_plane, r.health);
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

async fn routes(runtime: &str, json: bool) -> anyhow::Result<ExitCode> {
    let addr = if runtime.contains("://") {
        runtime.to_string()
    } else {
        format!("http://{runtime}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(addr.clone())
        .with_context(|| format!("runtime address {runtime:?} is not a url"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| anyhow!("cannot reach quilt-runtime at {addr}: {}", error_chain(&e)))?;
    let mut client = QuiltRuntimeClient::new(channel);
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
