//! Real etcd clusters for tests: [`EtcdCluster`] starts N members of Debian's `etcd` on
//! loopback ports, each with its own data dir in a temporary folder, and kills them on drop.
//! Members can be killed and restarted (with their data) to take quorum away and give it
//! back. A run that was killed leaves members behind; the next [`EtcdCluster::start`]
//! kills those whose test process is gone.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quilt_etcd::EtcdClient;
use quilt_etcd::member::{MemberSpec, args};

/// Data dirs are named `qetcd-<test pid>-...`, so a leftover member names its test.
const DIR_PREFIX: &str = "qetcd-";

/// Whether the `etcd` binary is here; without it a test skips, unless
/// `QUILT_REQUIRE_NETNS=1` (as CI sets it), when it panics: CI installs etcd-server.
pub fn etcd_or_skip(test: &str) -> bool {
    if Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return true;
    }
    if std::env::var("QUILT_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!(
            "{test}: the etcd binary is missing (apt-get install etcd-server) and QUILT_REQUIRE_NETNS=1"
        );
    }
    eprintln!("skipping {test}: the etcd binary is missing (apt-get install etcd-server)");
    false
}

/// A running etcd cluster; every member is killed when it drops.
pub struct EtcdCluster {
    pub members: Vec<MemberSpec>,
    children: Vec<Option<Child>>,
    token: String,
    dir: tempfile::TempDir,
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("local address")
}

/// Kills etcd members left by test processes that no longer run.
fn kill_leftovers() {
    for line in crate::leaks::processes_mentioning(&format!("/{DIR_PREFIX}")) {
        let Some((pid, cmdline)) = line.split_once(": ") else {
            continue;
        };
        let owner = cmdline
            .split(&format!("/{DIR_PREFIX}"))
            .nth(1)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok());
        let Some(owner) = owner else { continue };
        if std::path::Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        if let Ok(pid) = pid.trim().parse::<i32>() {
            eprintln!("killing etcd member {pid} left behind by test process {owner}");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster has a leader and serves writes.
    pub async fn start(size: usize) -> EtcdCluster {
        kill_leftovers();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("temp dir");
        let members: Vec<MemberSpec> = (1..=size)
            .map(|i| MemberSpec {
                name: format!("etcd-{i}"),
                data_dir: dir.path().join(format!("etcd-{i}")),
                client: free_port(),
                peer: free_port(),
            })
            .collect();
        let token = format!("quilt-test-{}", std::process::id());
        let mut cluster = EtcdCluster {
            children: members.iter().map(|_| None).collect(),
            members,
            token,
            dir,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_serving(Duration::from_secs(30)).await;
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let member = &self.members[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", member.name)))
            .expect("etcd log file");
        let child = Command::new("etcd")
            .args(args(member, &self.members, &self.token))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.children[i] = Some(child);
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(MemberSpec::client_url).collect()
    }

    /// The client URLs, comma-separated, as `--etcd-endpoints` takes them.
    pub fn endpoints_flag(&self) -> String {
        self.endpoints().join(",")
    }

    pub fn client(&self) -> EtcdClient {
        EtcdClient::new(&self.endpoints(), Default::default()).expect("etcd client")
    }

    /// Kills member `i` (SIGKILL) and waits for it to be gone; its data stays.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again over its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Waits until a write through the cluster works (a leader, quorum).
    pub async fn wait_serving(&self, limit: Duration) {
        let client = self.client();
        let start = Instant::now();
        loop {
            let probe = quilt_etcd::pb::TxnRequest {
                success: vec![quilt_etcd::ops::put("/quilt-test-probe", "1")],
                ..Default::default()
            };
            match client.txn(probe).await {
                Ok(_) => return,
                Err(e) if start.elapsed() > limit => {
                    let logs: String = self
                        .members
                        .iter()
                        .map(|m| {
                            let path = self.dir.path().join(format!("{}.log", m.name));
                            let text = std::fs::read_to_string(path).unwrap_or_default();
                            let tail: Vec<&str> = text.lines().rev().take(5).collect();
                            format!("{}: {}", m.name, tail.join(" | "))
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    panic!("etcd cluster does not serve after {limit:?}: {e}\n{logs}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}
