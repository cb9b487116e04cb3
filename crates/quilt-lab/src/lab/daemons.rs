//! Each daemon operation of a lab, written once over its [`LabState`]: start a control-plane
//! replica, an etcd member, a runtime or an agent with its flags; stop one; reap exited
//! children.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use quilt_common::flags::{agent, arg, control, runtime};

use super::host_of;
use super::spec::{AGENT_BIN, CONTROL_BIN, ETCD_BIN, RUNTIME_BIN};
use crate::LabError;
use crate::layout::{CONTROL_PORT, RUNTIME_ADDR, UNDERLAY_IF};
use crate::process::{self};
use crate::state::LabState;

/// Stops host `host`'s agent and records that it no longer runs.
pub fn stop_agent_of(
    state: &mut LabState,
    host: u16,
    children: &mut [Child],
) -> Result<(), LabError> {
    let h = host_of(state, host)?;
    if let Some(pid) = h.agent_pid {
        stop_process(pid, &h.netns, AGENT_BIN, children)?;
    }
    state.hosts[usize::from(host - 1)].agent_pid = None;
    state.save()
}

/// Kills host `host`'s agent with SIGKILL (a crash: nothing runs on its way out) and
/// records that it no longer runs.
pub fn kill_agent_of(
    state: &mut LabState,
    host: u16,
    children: &mut [Child],
) -> Result<(), LabError> {
    let h = host_of(state, host)?;
    if let Some(pid) = h.agent_pid
        && !process::kill_now(pid, &h.netns, &mut |p| reap(children, p))
    {
        return Err(LabError::setup(
            format!("kill quilt-mesh-agent of h{host}"),
            format!("pid {pid} did not exit"),
        ));
    }
    state.hosts[usize::from(host - 1)].agent_pid = None;
    state.save()
}

/// Stops host `host`'s runtime and records that it no longer runs.
pub fn stop_runtime_of(
    state: &mut LabState,
    host: u16,
    children: &mut [Child],
) -> Result<(), LabError> {
    let h = host_of(state, host)?;
    if let Some(pid) = h.runtime_pid {
        stop_process(pid, &h.netns, RUNTIME_BIN, children)?;
    }
    state.hosts[usize::from(host - 1)].runtime_pid = None;
    state.save()
}

/// Stops host `host`'s control-plane replica and records that it no longer runs.
pub fn stop_control_of(
    state: &mut LabState,
    host: u16,
    children: &mut [Child],
) -> Result<(), LabError> {
    let h = host_of(state, host)?;
    if let Some(pid) = h.control_pid {
        stop_process(pid, &h.netns, CONTROL_BIN, children)?;
    }
    state.hosts[usize::from(host - 1)].control_pid = None;
    state.save()
}

/// Kills host `host`'s control-plane replica with SIGKILL (a machine lost) and records
/// that it no longer runs.
pub fn kill_control_of(
    state: &mut LabState,
    host: u16,
    children: &mut [Child],
) -> Result<(), LabError> {
    let h = host_of(state, host)?;
    if let Some(pid) = h.control_pid
        && !process::kill_now(pid, &h.netns, &mut |p| reap(children, p))
    {
        return Err(LabError::setup(
            format!("kill quilt-mesh-control of h{host}"),
            format!("pid {pid} did not exit"),
        ));
    }
    state.hosts[usize::from(host - 1)].control_pid = None;
    state.save()
}

/// Kills host `host`'s etcd member with SIGKILL and records that it no longer runs; its
/// data stays for [`start_etcd_of`].
pub fn kill_etcd_of(
    state: &mut LabState,
    host: u16,
    children: &mut [Child],
) -> Result<(), LabError> {
    let h = host_of(state, host)?;
    if let Some(pid) = h.etcd_pid
        && !process::kill_now(pid, &h.netns, &mut |p| reap(children, p))
    {
        return Err(LabError::setup(
            format!("kill etcd of h{host}"),
            format!("pid {pid} did not exit"),
        ));
    }
    state.hosts[usize::from(host - 1)].etcd_pid = None;
    state.save()
}

/// Starts host `host`'s etcd member (a new one, or again over its data) in the host's
/// namespace, its log appended to `hN-etcd.log`, and records its pid.
pub(super) fn start_etcd_of(state: &mut LabState, host: u16) -> Result<Child, LabError> {
    let h = host_of(state, host)?;
    let members = state.etcd_members();
    let member = members
        .iter()
        .find(|m| m.client.ip() == std::net::IpAddr::V4(h.host_ip))
        .ok_or_else(|| {
            LabError::setup(
                format!("start etcd on h{host}"),
                "the host runs no control-plane replica",
            )
        })?;
    let token = format!("quilt-lab-{}", state.name);
    let args = quilt_etcd::member::args(member, &members, &token);
    let log = state.log_dir.join(format!("h{host}-etcd.log"));
    let child = process::spawn_daemon(&h.netns, std::path::Path::new(ETCD_BIN), &args, &log)?;
    state.hosts[usize::from(host - 1)].etcd_pid = Some(child.id());
    state.save()?;
    Ok(child)
}

/// SIGTERM to `pid` if it still runs in `netns`, SIGKILL after 5 s.
fn stop_process(pid: u32, netns: &str, what: &str, children: &mut [Child]) -> Result<(), LabError> {
    let left = process::stop_all(
        &[(pid, netns.to_string())],
        Duration::from_secs(5),
        &mut |p| reap(children, p),
    );
    if left.is_empty() {
        Ok(())
    } else {
        Err(LabError::setup(
            format!("stop {what} in {netns}"),
            format!("pid {pid} did not exit"),
        ))
    }
}

/// The lab's join token in a file only root can read, written if missing, for the
/// daemons' `--join-token-file`: a token on a command line is readable by every user.
fn join_token_file(state: &LabState) -> Result<PathBuf, LabError> {
    let dir = state.dir.join("data");
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::setup(format!("create {}", dir.display()), e))?;
    let path = dir.join("join-token");
    if !path.exists() {
        quilt_common::secret_file::write(&path, state.join_token.as_bytes())
            .map_err(|e| LabError::setup("write the lab's join token", e))?;
    }
    Ok(path)
}

/// The lab's CA and certificates, unless insecure: `control` naming every replica host's
/// address,
/// `hN` naming host N's (what each agent presents), and `lab` for the lab's own calls.
pub(super) fn make_certificates(state: &LabState) -> Result<(), LabError> {
    let Some(dir) = &state.pki_dir else {
        return Ok(());
    };
    crate::pki::init(dir, crate::pki::CA_DAYS, true)
        .map_err(|e| LabError::setup("make the lab's CA", e))?;
    issue_control_certificate(state)?;
    for h in &state.hosts {
        issue_host_certificate(state, h.index)?;
    }
    issue(dir, "lab".into(), Vec::new(), vec!["quilt-lab".into()])?;
    Ok(())
}

/// The control plane's certificate (`control`, naming every replica host's address),
/// unless the lab is insecure.
pub(super) fn issue_control_certificate(state: &LabState) -> Result<(), LabError> {
    let Some(dir) = &state.pki_dir else {
        return Ok(());
    };
    issue(
        dir,
        "control".into(),
        state.replica_hosts().map(|h| h.host_ip.into()).collect(),
        Vec::new(),
    )
}

/// Host `host`'s certificate (`hN`, naming its address: what its agent presents), unless
/// the lab is insecure.
pub(super) fn issue_host_certificate(state: &LabState, host: u16) -> Result<(), LabError> {
    let (Some(dir), Ok(h)) = (&state.pki_dir, host_of(state, host)) else {
        return Ok(());
    };
    issue(dir, format!("h{host}"), vec![h.host_ip.into()], Vec::new())
}

fn issue(
    dir: &std::path::Path,
    name: String,
    ips: Vec<std::net::IpAddr>,
    dns: Vec<String>,
) -> Result<(), LabError> {
    let subject = crate::pki::Subject {
        name,
        ips,
        dns,
        days: crate::pki::CERT_DAYS,
    };
    crate::pki::issue(dir, &subject, true)
        .map(|_| ())
        .map_err(|e| LabError::setup(format!("issue the lab's certificate {}", subject.name), e))
}

/// The control plane's TLS flags (mutual TLS with the lab's CA), none when insecure.
fn control_tls_args(state: &LabState) -> Vec<OsString> {
    let Some(dir) = &state.pki_dir else {
        return Vec::new();
    };
    let id = state.identity("control");
    vec![
        arg(control::TLS_CERT).into(),
        id.cert.into(),
        arg(control::TLS_KEY).into(),
        id.key.into(),
        arg(control::TLS_CA).into(),
        dir.join(crate::pki::CA_CERT).into(),
    ]
}

/// Host `host`'s agent's TLS flags toward the control plane, none when insecure.
fn agent_tls_args(state: &LabState, host: u16) -> Vec<OsString> {
    let Some(dir) = &state.pki_dir else {
        return Vec::new();
    };
    let id = state.identity(&format!("h{host}"));
    vec![
        arg(agent::TLS_CA).into(),
        dir.join(crate::pki::CA_CERT).into(),
        arg(agent::TLS_CERT).into(),
        id.cert.into(),
        arg(agent::TLS_KEY).into(),
        id.key.into(),
    ]
}

/// The log of host `host`'s control-plane replica (`control.log` for host 1, as before
/// replicas).
pub(super) fn control_log(host: u16) -> String {
    if host == 1 {
        "control.log".into()
    } else {
        format!("h{host}-control.log")
    }
}

/// Starts the control-plane replica of host `host` (its log is appended to) and records
/// its pid: over SQLite with one replica, over the lab's etcd with several.
pub(super) fn start_control_of(state: &mut LabState, host: u16) -> Result<Child, LabError> {
    let h = host_of(state, host)?;
    let listen = SocketAddr::from((h.host_ip, CONTROL_PORT));
    let dir = state.dir.join("data").join("control");
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::setup(format!("create {}", dir.display()), e))?;
    let mut args: Vec<OsString> = vec![arg(control::LISTEN).into(), listen.to_string().into()];
    if state.uses_etcd() {
        args.extend([
            arg(control::STORE).into(),
            "etcd".into(),
            arg(control::ETCD_ENDPOINTS).into(),
            state.etcd_endpoints().join(",").into(),
        ]);
    } else {
        args.extend([arg(control::DB_PATH).into(), dir.join("control.db").into()]);
    }
    args.extend::<[OsString; 6]>([
        arg(control::HEARTBEAT_TIMEOUT).into(),
        format!("{}ms", state.heartbeat_timeout_ms).into(),
        arg(control::JOIN_TOKEN_FILE).into(),
        join_token_file(state)?.into(),
        arg(control::LOG_LEVEL).into(),
        state.log_level.clone().into(),
    ]);
    args.extend(control_tls_args(state));
    let log = state.log_dir.join(control_log(host));
    let program = state
        .control_program
        .clone()
        .unwrap_or_else(|| state.binaries_dir.join(CONTROL_BIN));
    let child = process::spawn_daemon(&h.netns, &program, &args, &log)?;
    state.hosts[usize::from(host - 1)].control_pid = Some(child.id());
    state.save()?;
    Ok(child)
}

/// Starts host `host`'s runtime (its log is appended to) and records its pid.
pub(super) fn start_runtime_of(state: &mut LabState, host: u16) -> Result<Child, LabError> {
    let h = host_of(state, host)?;
    let state_dir = state.runtime_dir(host);
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| LabError::setup(format!("create {}", state_dir.display()), e))?;
    let args: Vec<OsString> = vec![
        arg(runtime::GRPC_ADDR).into(),
        RUNTIME_ADDR.into(),
        arg(runtime::GRPC_SOCKET).into(),
        state.runtime_socket(host).into(),
        arg(runtime::STATE_DIR).into(),
        state_dir.into(),
        arg(runtime::RECONCILE_INTERVAL).into(),
        format!("{}ms", state.reconcile_interval_ms).into(),
        arg(runtime::LOG_LEVEL).into(),
        state.log_level.clone().into(),
    ];
    let log = state.log_dir.join(format!("h{host}-runtime.log"));
    let child =
        process::spawn_daemon(&h.netns, &state.binaries_dir.join(RUNTIME_BIN), &args, &log)?;
    state.hosts[usize::from(host - 1)].runtime_pid = Some(child.id());
    state.save()?;
    Ok(child)
}

/// Starts host `host`'s agent (its log is appended to) and records its pid.
pub fn start_agent_of(state: &mut LabState, host: u16) -> Result<Child, LabError> {
    let h = host_of(state, host)?;
    if let Some(pid) = h.agent_pid
        && process::runs_in(pid, &h.netns)
    {
        return Err(LabError::setup(
            format!("start quilt-mesh-agent of h{host}"),
            format!("it already runs (pid {pid})"),
        ));
    }
    let state_dir = state.dir.join("data").join(format!("h{host}/agent"));
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| LabError::setup(format!("create {}", state_dir.display()), e))?;
    let mut args: Vec<OsString> = vec![
        arg(agent::CONTROL_PLANE).into(),
        state.control_urls().join(",").into(),
        arg(agent::HOST_IP).into(),
        h.host_ip.to_string().into(),
        arg(agent::HOSTNAME).into(),
        h.hostname.clone().into(),
        arg(agent::RUNTIME_ADDR).into(),
        state.runtime_address(host).into(),
        arg(agent::UNDERLAY_INTERFACE).into(),
        UNDERLAY_IF.into(),
        arg(agent::STATE_DIR).into(),
        state_dir.into(),
        arg(agent::JOIN_TOKEN_FILE).into(),
        join_token_file(state)?.into(),
        arg(agent::HEARTBEAT_INTERVAL).into(),
        format!("{}ms", state.heartbeat_interval_ms).into(),
        arg(agent::RESYNC_INTERVAL).into(),
        format!("{}ms", state.resync_interval_ms).into(),
        arg(agent::LOG_LEVEL).into(),
        state.log_level.clone().into(),
    ];
    args.extend(agent_tls_args(state, host));
    if let Some(extra) = state.agent_args.get(&host) {
        args.extend(extra.iter().map(OsString::from));
    }
    let log = state.log_dir.join(format!("h{host}-agent.log"));
    let child = process::spawn_daemon(&h.netns, &state.binaries_dir.join(AGENT_BIN), &args, &log)?;
    state.hosts[usize::from(host - 1)].agent_pid = Some(child.id());
    state.save()?;
    Ok(child)
}

pub(super) fn reap(children: &mut [Child], pid: u32) -> bool {
    children
        .iter_mut()
        .find(|c| c.id() == pid)
        .map(|c| matches!(c.try_wait(), Ok(Some(_))))
        .unwrap_or(false)
}
