//! `quiltctl lab`: the commands over the `quilt-lab` library, and how their results print.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, anyhow};
use quilt_lab::lab::{self as qlab, LabStatus};
use quilt_lab::{Lab, LabSpec, LabState, Matrix};
use serde::Serialize;

use crate::cli::{LabCommand, LabUpArgs};
use crate::table;

pub fn run(command: LabCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::Up(args) => up(args, json),
        LabCommand::Status { target, ping } => {
            let state = LabState::load(&target.root, &target.name)?;
            let status = qlab::status(&state);
            let matrix = ping.then(|| qlab::ping_matrix(&state));
            if json {
                print_json(&Summary {
                    status: &status,
                    matrix: matrix.as_ref(),
                    full_mesh_seconds: None,
                    fully_connected: matrix.as_ref().map(Matrix::full),
                })?;
            } else {
                print_status(&status);
                if let Some(m) = &matrix {
                    print_matrix(m);
                }
            }
            Ok(match matrix {
                Some(m) if !m.full() => ExitCode::FAILURE,
                _ => ExitCode::SUCCESS,
            })
        }
        LabCommand::Exec {
            target,
            member,
            command,
        } => {
            let state = LabState::load(&target.root, &target.name)?;
            let netns = state.resolve_netns(&member)?;
            // Interactive: inherits the terminal, no time bound (the user stops it).
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &netns])
                .args(&command)
                .status()
                .with_context(|| format!("cannot run ip netns exec {netns}"))?;
            Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
        LabCommand::Down {
            target,
            remove_logs,
        } => {
            let state = qlab::down(&target.root, &target.name, remove_logs)?;
            if json {
                print_json(&serde_json::json!({"name": state.name, "down": true,
                    "logs": (!remove_logs).then_some(&state.log_dir)}))?;
            } else {
                println!(
                    "lab {}: every process stopped, {} namespaces deleted",
                    state.name,
                    state.namespaces.len()
                );
                if !remove_logs {
                    println!("logs kept in {}", state.log_dir.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Agent {
            target,
            action,
            host,
        } => {
            let mut state = LabState::load(&target.root, &target.name)?;
            let index: u16 = host
                .trim_start_matches('h')
                .parse()
                .map_err(|_| anyhow!("host {host:?} is not a host number (2 or h2)"))?;
            if action == "stop" {
                qlab::stop_agent_of(&mut state, index, &mut [])?;
                println!("h{index}: quilt-mesh-agent stopped");
            } else {
                let child = qlab::start_agent_of(&mut state, index)?;
                println!("h{index}: quilt-mesh-agent started (pid {})", child.id());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The folder of the quiltctl binary, where the daemons are by default.
pub(crate) fn default_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the quiltctl binary's folder")?;
    Ok(exe
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".")))
}

fn up(args: LabUpArgs, json: bool) -> anyhow::Result<ExitCode> {
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => default_bin_dir()?,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    watch_for_interrupt(cancel.clone());
    let spec = LabSpec {
        name: args.target.name.clone(),
        nodes: args.nodes,
        containers_per_node: args.containers_per_node,
        binaries_dir: bin_dir,
        root: args.target.root.clone(),
        log_dir: args.log_dir,
        heartbeat_timeout: args.heartbeat_timeout,
        heartbeat_interval: args.heartbeat_interval,
        resync_interval: args.resync_interval,
        reconcile_interval: args.reconcile_interval,
        start_agents: !args.no_agents,
        converge_timeout: args.timeout,
        log_level: args.daemon_log_level,
        cancel: Some(cancel),
        insecure: args.insecure,
        control_program: None,
        agent_args: Default::default(),
        control_replicas: args.control_replicas,
        outside: args.outside,
        forward_drop_hosts: args.forward_drop_hosts.iter().copied().collect(),
        underlay_mtu: args.underlay_mtu,
    };
    let mut progress = |p: &quilt_lab::Progress| {
        if json {
            eprintln!("{p}");
        } else {
            println!("{p}");
        }
    };
    let lab = match Lab::up(spec, &mut progress) {
        Ok(lab) => lab,
        Err(quilt_lab::LabError::Interrupted) => {
            eprintln!("interrupted: the lab was torn down");
            return Ok(ExitCode::from(130));
        }
        Err(e) => return Err(e.into()),
    };
    let status = lab.status();
    let expect_mesh = !args.no_agents && args.containers_per_node > 0;
    let full_mesh = lab.full_mesh_after();
    let fully_connected = !expect_mesh || full_mesh.is_some();
    if json {
        print_json(&Summary {
            status: &status,
            matrix: lab.matrix(),
            full_mesh_seconds: full_mesh.map(|d| d.as_secs_f64()),
            fully_connected: Some(fully_connected),
        })?;
    } else {
        println!();
        print_status(&status);
        if let Some(m) = lab.matrix() {
            print_matrix(m);
        }
        match full_mesh {
            Some(t) => println!("\ntime from start to full mesh: {:.2} s", t.as_secs_f64()),
            None if expect_mesh => println!("\nthe mesh is NOT fully connected"),
            None => {}
        }
        let name = &lab.state().name;
        let first_addr = lab
            .state()
            .containers
            .iter()
            .rev()
            .find_map(|c| c.address.map(|a| a.addr()));
        println!("logs: {}", lab.state().log_dir.display());
        if let Some(addr) = first_addr {
            println!("try:  sudo quiltctl lab exec --name {name} c1-1 -- ping -c 3 {addr}");
        }
        println!("stop: sudo quiltctl lab down --name {name}");
    }
    // The lab stays up for the user; `lab down` removes it.
    lab.keep_running();
    Ok(if fully_connected {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Sets `cancel` on SIGINT or SIGTERM, so `up` stops between steps and tears down.
pub(crate) fn watch_for_interrupt(cancel: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(quilt_common::shutdown::signal_received());
                cancel.store(true, Ordering::Relaxed);
                eprintln!("stopping: tearing the lab down (this takes a few seconds)");
            }
        });
}

#[derive(Serialize)]
struct Summary<'a> {
    status: &'a LabStatus,
    matrix: Option<&'a Matrix>,
    full_mesh_seconds: Option<f64>,
    fully_connected: Option<bool>,
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1}", k as f64 / 1024.0))
        .unwrap_or_else(|| "-".into())
}

fn print_status(s: &LabStatus) {
    println!(
        "lab {}: underlay {}, control plane {} ({})",
        s.name,
        s.underlay,
        s.control_url,
        if s.control.running {
            "running"
        } else {
            "NOT running"
        }
    );
    if let Some(e) = &s.control_error {
        println!("control plane did not answer: {e}");
    }
    if s.replicas.len() > 1 {
        println!("\ncontrol-plane replicas");
        let rows: Vec<Vec<String>> = s
            .replicas
            .iter()
            .map(|r| {
                vec![
                    r.host.clone(),
                    r.url.clone(),
                    running(r.control.running),
                    mib(r.control.rss_kib),
                    r.etcd_url.clone().unwrap_or_else(|| "-".into()),
                    r.etcd
                        .as_ref()
                        .map(|e| running(e.running))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print!(
            "{}",
            table::render(
                &[
                    "HOST",
                    "CONTROL PLANE",
                    "RUNNING",
                    "MiB",
                    "ETCD MEMBER",
                    "ETCD"
                ],
                &rows
            )
        );
    }
    println!("\nnodes");
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            let d = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            vec![
                n.host.clone(),
                d(n.node_id.clone()),
                n.hostname.clone(),
                d(n.subnet.map(|s| s.to_string())),
                format!("{} / {}", n.host_ip, d(n.vtep_mac.clone())),
                d(n.status.clone()),
                running(n.runtime.running),
                running(n.agent.running),
                mib(n.runtime.rss_kib),
                mib(n.agent.rss_kib),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "HOST",
                "NODE",
                "HOSTNAME",
                "SUBNET",
                "VTEP (IP / MAC)",
                "STATUS",
                "RUNTIME",
                "AGENT",
                "RT MiB",
                "AG MiB"
            ],
            &rows
        )
    );
    if !s.containers.is_empty() {
        println!("\ncontainers");
        let rows: Vec<Vec<String>> = s
            .containers
            .iter()
            .map(|c| {
                vec![
                    c.name.clone(),
                    format!("h{}", c.host),
                    c.address
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "(not attached)".into()),
                    c.netns.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            table::render(&["CONTAINER", "HOST", "ADDRESS", "NAMESPACE"], &rows)
        );
    }
    let per_node: Vec<u64> = s
        .nodes
        .iter()
        .filter_map(|n| Some(n.runtime.rss_kib? + n.agent.rss_kib.unwrap_or(0)))
        .collect();
    if !per_node.is_empty() {
        let avg = per_node.iter().sum::<u64>() / per_node.len() as u64;
        let max = per_node.iter().max().copied();
        println!(
            "\nmemory (RSS): control plane {} MiB; per node (runtime + agent) avg {} MiB, max {} MiB over {} nodes",
            mib(s.control.rss_kib),
            mib(Some(avg)),
            mib(max),
            per_node.len()
        );
    }
    println!(
        "namespaces: {} of {} present; logs in {}",
        s.namespaces_present,
        s.namespaces_planned,
        s.log_dir.display()
    );
}

fn running(b: bool) -> String {
    if b { "running" } else { "stopped" }.to_string()
}

fn print_matrix(m: &Matrix) {
    println!(
        "\nconnectivity (ping from row to column): {} of {} pairs answer",
        m.reached(),
        m.pairs()
    );
    print!("{}", m.render());
}
