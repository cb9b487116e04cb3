//! Talking to the lab's daemons from inside their namespaces: the control plane's HTTP
//! API from host 1, each runtime's gRPC API from its host. Each call runs on a thread that
//! entered the namespace, with a current-thread tokio runtime of its own.

use std::time::Duration;

use quilt_api::ControlClient;
use quilt_api::types::NodeList;
use quilt_proto::quilt_runtime_client::QuiltRuntimeClient;
use tonic::transport::Channel;

/// Runs the future `f` makes inside `netns`.
pub fn block_on_in<T, F, Fut>(netns: &str, f: F) -> Result<T, String>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    quilt_kernel::netns::run_in(netns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot build a tokio runtime: {e}"))?;
        rt.block_on(f())
    })
    .map_err(|e| e.to_string())?
}

/// The lab's control plane (its replicas at `urls`, tried in order), reached without
/// proxies and with short timeouts (it is on the same machine).
fn control(urls: &[String], tls: Option<quilt_api::ClientTls>) -> Result<ControlClient, String> {
    ControlClient::builder(urls.iter().cloned())
        .no_proxy()
        .tls(tls)
        .timeouts(quilt_api::Timeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(3),
            failover: Duration::from_secs(1),
        })
        .build()
        .map_err(|e| e.to_string())
}

/// `GET /health` on the control plane, from inside `netns`.
pub fn control_health(
    netns: &str,
    url: &str,
    tls: Option<quilt_api::ClientTls>,
) -> Result<(), String> {
    block_on_in(netns, || async move {
        control(&[url.to_string()], tls)?
            .health()
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// A write through the etcd members at `endpoints` (a probe key), from inside `netns`:
/// whether the cluster has a leader and quorum.
pub fn etcd_write(netns: &str, endpoints: &[String]) -> Result<(), String> {
    block_on_in(netns, || async move {
        let client = quilt_etcd::EtcdClient::new(endpoints, Default::default())
            .map_err(|e| e.to_string())?;
        client
            .txn(quilt_etcd::pb::TxnRequest {
                success: vec![quilt_etcd::ops::put("/quilt-lab/probe", "1")],
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// `GET /api/nodes` from the first of the replicas at `urls` that answers, from inside
/// `netns`.
pub fn list_nodes(
    netns: &str,
    urls: &[String],
    tls: Option<quilt_api::ClientTls>,
) -> Result<NodeList, String> {
    block_on_in(netns, || async move {
        control(urls, tls)?.list().await.map_err(|e| e.to_string())
    })
}

/// Calls the runtime at `address` (a host's socket) from inside the host's namespace
/// `netns`.
pub fn runtime_call<T, F, Fut>(netns: &str, address: &str, f: F) -> Result<T, String>
where
    T: Send,
    F: FnOnce(QuiltRuntimeClient<Channel>) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    block_on_in(netns, || async move {
        let timeouts = quilt_proto::connect::Timeouts {
            connect: Duration::from_secs(1),
            call: Duration::from_secs(5),
        };
        let client = quilt_proto::connect::connect(address, timeouts)
            .await
            .map_err(|e| e.to_string())?;
        f(client)
            .await
            .map_err(|s| format!("quilt-runtime: {}", s.message()))
    })
}

/// The node subnet the runtime in `netns` was configured with (empty until the agent
/// configured it).
pub fn runtime_subnet(netns: &str, address: &str) -> Result<String, String> {
    runtime_call(netns, address, |mut c| async move {
        let r = c
            .list_allocations(quilt_proto::ListAllocationsRequest {})
            .await?
            .into_inner();
        Ok(r.subnet)
    })
}

/// Whether a unix socket at `path` accepts connections.
pub fn socket_open(path: &std::path::Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Whether something accepts TCP connections on `addr` inside `netns`.
pub fn tcp_open(netns: &str, addr: std::net::SocketAddr) -> bool {
    quilt_kernel::netns::run_in(netns, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
    })
    .unwrap_or(false)
}

/// The runtime's container allocations in `netns`: (owner, address), sorted.
pub fn runtime_allocations(netns: &str, address: &str) -> Result<Vec<(String, String)>, String> {
    runtime_call(netns, address, |mut c| async move {
        let r = c
            .list_allocations(quilt_proto::ListAllocationsRequest {})
            .await?
            .into_inner();
        let mut all: Vec<(String, String)> = r
            .allocations
            .into_iter()
            .map(|a| (a.owner, a.address))
            .collect();
        all.sort();
        Ok(all)
    })
}

/// Runs `commands` as one `nft -f -` script inside `netns`; answers nft's output.
pub fn nft(netns: &str, commands: &[&str]) -> Result<String, crate::LabError> {
    use std::io::Write;
    let what = format!("nft in {netns}: {}", commands.join("; "));
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| crate::LabError::setup(&what, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(commands.join("\n").as_bytes())
            .map_err(|e| crate::LabError::setup(&what, e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| crate::LabError::setup(&what, e))?;
    if !out.status.success() {
        return Err(crate::LabError::setup(
            &what,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `nft list ruleset` inside `netns`.
pub fn nft_ruleset(netns: &str) -> Result<String, crate::LabError> {
    let what = format!("nft list ruleset in {netns}");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "list", "ruleset"])
        .output()
        .map_err(|e| crate::LabError::setup(&what, e))?;
    if !out.status.success() {
        return Err(crate::LabError::setup(
            &what,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
