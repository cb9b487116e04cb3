//! A stand-in for the original Quilt Mesh control plane, written from the facts known of
//! it (issue 12), to prove our agents and quiltctl work against it: register answers
//! only `{node_id, subnet}` (a UUID-like id, a new node each time, unknown fields such
//! as `vtep_mac` dropped), `GET /api/nodes` has no `revision` and no `vtep_mac`,
//! heartbeat takes an empty body, `deregister` marks down, there is no watch (404) and
//! no token. Takes the lab's control-plane flags; only `--listen` and
//! `--heartbeat-timeout` mean anything.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long, default_value = "30000ms", value_parser = parse_ms)]
    heartbeat_timeout: Duration,
    #[arg(long)]
    db_path: Option<String>,
    #[arg(long)]
    join_token_file: Option<String>,
    #[arg(long)]
    log_level: Option<String>,
}

fn parse_ms(s: &str) -> Result<Duration, String> {
    let ms = s
        .trim_end_matches("ms")
        .parse::<u64>()
        .map_err(|e| e.to_string())?;
    Ok(Duration::from_millis(ms))
}

struct Node {
    hostname: String,
    host_ip: Ipv4Addr,
    subnet: String,
    cpu_cores: u64,
    ram_mb: u64,
    up: bool,
    registered_at: u64,
    last_heartbeat: u64,
}

#[derive(Default)]
struct Registry {
    nodes: BTreeMap<String, Node>,
    next: u32,
    serial: u64,
}

type Shared = Arc<Mutex<Registry>>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn register(State(reg): State<Shared>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let (Some(hostname), Some(Ok(host_ip))) = (
        body["hostname"].as_str(),
        body["host_ip"].as_str().map(str::parse::<Ipv4Addr>),
    ) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "hostname and host_ip required"})),
        );
    };
    let mut reg = reg.lock().unwrap();
    reg.next += 1;
    reg.serial += 1;
    let subnet = format!("10.42.{}.0/24", reg.next);
    let id = format!(
        "{:08x}-0000-4000-8000-{:012x}",
        reg.serial * 7919,
        reg.serial
    );
    reg.nodes.insert(
        id.clone(),
        Node {
            hostname: hostname.to_string(),
            host_ip,
            subnet: subnet.clone(),
            cpu_cores: body["cpu_cores"].as_u64().unwrap_or(0),
            ram_mb: body["ram_mb"].as_u64().unwrap_or(0),
            up: true,
            registered_at: now(),
            last_heartbeat: now(),
        },
    );
    eprintln!("registered {id} {hostname} {host_ip} {subnet}");
    (
        StatusCode::OK,
        Json(json!({"node_id": id, "subnet": subnet})),
    )
}

fn set_up(reg: &Shared, id: &str, up: bool) -> StatusCode {
    let mut reg = reg.lock().unwrap();
    match reg.nodes.get_mut(id) {
        Some(node) => {
            node.up = up;
            if up {
                node.last_heartbeat = now();
            }
            StatusCode::OK
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn heartbeat(State(reg): State<Shared>, Path(id): Path<String>) -> StatusCode {
    set_up(&reg, &id, true)
}

async fn deregister(State(reg): State<Shared>, Path(id): Path<String>) -> StatusCode {
    eprintln!("deregistered {id}");
    set_up(&reg, &id, false)
}

async fn list(State(reg): State<Shared>) -> Json<Value> {
    let reg = reg.lock().unwrap();
    let nodes: Vec<Value> = reg
        .nodes
        .iter()
        .map(|(id, n)| {
            json!({
                "node_id": id, "hostname": n.hostname, "host_ip": n.host_ip.to_string(),
                "subnet": n.subnet, "cpu_cores": n.cpu_cores, "ram_mb": n.ram_mb,
                "status": if n.up { "up" } else { "down" },
                "registered_at": n.registered_at, "last_heartbeat": n.last_heartbeat,
            })
        })
        .collect();
    Json(json!({ "nodes": nodes }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let reg: Shared = Arc::default();
    let timeout = args.heartbeat_timeout.as_secs().max(1);
    let monitor = reg.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let cutoff = now().saturating_sub(timeout);
            for node in monitor.lock().unwrap().nodes.values_mut() {
                if node.last_heartbeat < cutoff {
                    node.up = false;
                }
            }
        }
    });
    let app = Router::new()
        .route("/api/nodes/register", post(register))
        .route("/api/nodes", get(list))
        .route("/api/nodes/{id}/heartbeat", post(heartbeat))
        .route("/api/nodes/{id}/deregister", post(deregister))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(reg);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .expect("bind");
    eprintln!("original-control stand-in on {}", args.listen);
    axum::serve(listener, app).await.expect("serve");
}
