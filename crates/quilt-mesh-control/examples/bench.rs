//! Benchmark of the control plane, against the real release binary on loopback.
//!
//! ```text
//! cargo build --release -p quilt-mesh-control --bin quilt-mesh-control --example bench
//! target/release/examples/bench            # or: --server-bin PATH
//! ```
//!
//! Starts `quilt-mesh-control` as a child process on 127.0.0.1 (port chosen by the
//! kernel) over a SQLite database in a fresh temporary directory, then measures, with
//! this process as the only client (sharing the machine's cores with the server):
//! 1. 1,000 registrations at concurrency 50 (registrations/s);
//! 2. heartbeats for 3 s at concurrency 50, each with its node's token (heartbeats/s);
//! 3. 1,000 open watch streams and one change (a registration): the time from sending
//!    the change to each watcher reading its event (p50/p99/max);
//! 4. the server's RSS (VmRSS from /proc/PID/status) with 1,000 nodes and 1,000 watchers.
//!
//! The server is stopped with SIGTERM and the directory removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

const NODES: usize = 1000;
const CONCURRENCY: usize = 50;
const WATCHERS: usize = 1000;
const HEARTBEAT_SECONDS: u64 = 3;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct ServerProcess(std::process::Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the server has written `IP:PORT` to its `--ready-file` at `path`.
fn wait_for_ready_file(path: &Path, child: &mut std::process::Child) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return Ok(text.trim().to_string());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "server exited with {status} before writing {}",
                path.display()
            );
        }
        if Instant::now() >= deadline {
            bail!("server did not start: no {} after 20 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn server_binary() -> anyhow::Result<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--server-bin" {
            return Ok(PathBuf::from(
                args.next().context("--server-bin needs a path")?,
            ));
        }
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/bench -> target/<profile>/quilt-mesh-control
    let candidate = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|profile| profile.join("quilt-mesh-control"))
        .context("cannot locate the target directory")?;
    if !candidate.exists() {
        bail!(
            "{} not found; build it first: cargo build --release -p quilt-mesh-control --bin quilt-mesh-control",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// Raises the soft open-file limit to the hard one: 1,000 watchers need 1,000 sockets here
/// and 1,000 in the server (which inherits the limit).
fn raise_fd_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < 2 * WATCHERS as u64 + 256 {
        bail!(
            "open file limit {soft} is too low for {WATCHERS} watchers; raise it (ulimit -n 8192)"
        );
    }
    Ok(soft)
}

fn rss_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed status line")?
        .parse()?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = server_binary()?;
    let fd_limit = raise_fd_limit()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let dir =
        TempDir(std::env::temp_dir().join(format!("qmc-bench-{}-{nanos}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let ready = dir.0.join("ready");

    let child = Command::new(&binary)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "info",
            "--node-prefix-len",
            "26",
        ])
        .args(["--heartbeat-timeout", "5m", "--db-path"])
        .arg(dir.0.join("bench.db"))
        .arg("--ready-file")
        .arg(&ready)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child.id();
    let mut server = ServerProcess(child);
    let addr = wait_for_ready_file(&ready, &mut server.0)?;
    let base = format!("http://{addr}");
    let rss_idle = rss_kib(pid, "VmRSS:")?;
    println!(
        "server {} pid {pid} on {base}; open file limit {fd_limit}",
        binary.display()
    );

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY * 2)
        .timeout(Duration::from_secs(60))
        .build()?;

    // 1. registrations
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let client = client.clone();
        let next = next.clone();
        let url = format!("{base}/api/nodes/register");
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= NODES {
                    return Ok::<_, anyhow::Error>(tokens);
                }
                let body = json!({
                    "hostname": format!("bench-{i}"),
                    "host_ip": format!("10.{}.{}.{}", 100 + i / 60000, (i / 250) % 240, i % 250 + 1),
                    "cpu_cores": 4, "ram_mb": 8192,
                    "vtep_mac": format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256),
                });
                let r = client.post(&url).json(&body).send().await?;
                if r.status() != 200 {
                    bail!("registration {i} answered {}", r.status());
                }
                let v: Value = r.json().await?;
                tokens.push((
                    v["node_id"].as_str().unwrap_or_default().to_string(),
                    v["node_token"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }));
    }
    let mut nodes = Vec::new();
    for t in tasks {
        nodes.extend(t.await??);
    }
    let reg_elapsed = started.elapsed();
    let reg_rate = NODES as f64 / reg_elapsed.as_secs_f64();

    // 2. heartbeats
    let nodes = Arc::new(nodes);
    let count = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(HEARTBEAT_SECONDS);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let client = client.clone();
        let nodes = nodes.clone();
        let count = count.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < deadline {
                let (id, token) = &nodes[i % nodes.len()];
                let r = client
                    .post(format!("{base}/api/nodes/{id}/heartbeat"))
                    .bearer_auth(token)
                    .send()
                    .await?;
                if r.status() != 200 {
                    bail!("heartbeat answered {}", r.status());
                }
                r.bytes().await?;
                count.fetch_add(1, Ordering::Relaxed);
                i += CONCURRENCY;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let hb_elapsed = started.elapsed();
    let hb_count = count.load(Ordering::Relaxed);
    let hb_rate = hb_count as f64 / hb_elapsed.as_secs_f64();

    // 3. fan-out: 1,000 watchers, one change
    let watch_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let ready = Arc::new(tokio::sync::Barrier::new(WATCHERS + 1));
    let (t0_tx, t0_rx) = tokio::sync::watch::channel::<Option<Instant>>(None);
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let client = watch_client.clone();
        let url = format!("{base}/api/nodes/watch");
        let ready = ready.clone();
        let mut t0_rx = t0_rx.clone();
        watchers.push(tokio::spawn(async move {
            let mut response = client.get(&url).send().await?;
            ready.wait().await;
            let chunk = response.chunk().await?.context("stream ended")?;
            let received = Instant::now();
            let t0 = t0_rx
                .wait_for(|t| t.is_some())
                .await?
                .context("no start time")?;
            let event: Value =
                serde_json::from_slice(chunk.split(|b| *b == b'\n').next().unwrap_or_default())?;
            if event["type"] != "added" {
                bail!("unexpected event {event}");
            }
            // keep the stream open until the RSS is read
            Ok::<_, anyhow::Error>((received.duration_since(t0), response))
        }));
    }
    ready.wait().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    t0_tx.send(Some(t0))?;
    let r = client
        .post(format!("{base}/api/nodes/register"))
        .json(&json!({"hostname": "the-change", "host_ip": "10.250.0.1"}))
        .send()
        .await?;
    if r.status() != 200 {
        bail!("the change answered {}", r.status());
    }
    let mut latencies = Vec::new();
    let mut open_streams = Vec::new();
    for w in watchers {
        let (latency, stream) = w.await??;
        latencies.push(latency);
        open_streams.push(stream);
    }
    latencies.sort();
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    let max = *latencies.last().unwrap_or(&Duration::ZERO);

    // 4. memory with 1,001 nodes and 1,000 open watchers
    let rss = rss_kib(pid, "VmRSS:")?;
    let hwm = rss_kib(pid, "VmHWM:")?;
    drop(open_streams);

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!(
        "{:<44} {:>14} {:>14} {:>7}",
        "measure", "result", "target", ""
    );
    println!(
        "{:<44} {:>14.0} {:>14} {:>7}",
        format!("registrations/s ({NODES} at concurrency {CONCURRENCY})"),
        reg_rate,
        ">= 2000",
        verdict(reg_rate >= 2000.0)
    );
    println!(
        "{:<44} {:>14.0} {:>14} {:>7}",
        format!(
            "heartbeats/s ({hb_count} in {:.1} s, conc. {CONCURRENCY})",
            hb_elapsed.as_secs_f64()
        ),
        hb_rate,
        ">= 10000",
        verdict(hb_rate >= 10000.0)
    );
    println!(
        "{:<44} {:>14} {:>14} {:>7}",
        format!("fan-out p50 to {WATCHERS} watchers"),
        format!("{:.1} ms", p50.as_secs_f64() * 1e3),
        "",
        ""
    );
    println!(
        "{:<44} {:>14} {:>14} {:>7}",
        format!("fan-out p99 to {WATCHERS} watchers"),
        format!("{:.1} ms", p99.as_secs_f64() * 1e3),
        "< 100 ms",
        verdict(p99 < Duration::from_millis(100))
    );
    println!(
        "{:<44} {:>14} {:>14} {:>7}",
        "fan-out max",
        format!("{:.1} ms", max.as_secs_f64() * 1e3),
        "",
        ""
    );
    println!(
        "{:<44} {:>14} {:>14} {:>7}",
        format!("server RSS, {} nodes + {WATCHERS} watchers", NODES + 1),
        format!("{:.1} MiB", mib(rss)),
        "< 50 MB",
        verdict(rss * 1024 < 50_000_000)
    );
    println!(
        "{:<44} {:>14} {:>14} {:>7}",
        "server peak RSS (VmHWM) / idle RSS at start",
        format!("{:.1} / {:.1} MiB", mib(hwm), mib(rss_idle)),
        "",
        ""
    );
    drop(server);
    Ok(())
}
