//! The etcd cluster of `quiltctl bench control --store etcd`: members of Debian's `etcd`
//! (`apt-get install etcd-server`) on free loopback ports, started with
//! [`quilt_etcd::member::args`], their data dirs and logs in the run's temporary folder.
//! They stop with SIGTERM when the benchmark ends or is interrupted; a run killed outright
//! leaves them behind, and the next run kills them (their command line names the killed
//! run's folder, see [`super::scratch`]).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quilt_etcd::EtcdClient;
use quilt_etcd::member::{MemberSpec, args};
use quilt_lab::process::status_kib;

use super::scratch;

/// A running etcd cluster of the benchmark.
pub(super) struct EtcdMembers {
    members: Vec<MemberSpec>,
    children: Vec<Child>,
    dir: PathBuf,
    client: EtcdClient,
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?)
}

impl EtcdMembers {
    /// Starts `size` members with data dirs under `dir` and waits until the cluster has
    /// a leader and answers reads that need quorum.
    pub(super) fn start(
        dir: &Path,
        size: usize,
        rt: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Self> {
        let version = Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !version.is_ok_and(|s| s.success()) {
            bail!("the etcd binary is not on PATH; install it: apt-get install etcd-server");
        }
        let members = (1..=size)
            .map(|i| {
                Ok(MemberSpec {
                    name: format!("etcd-{i}"),
                    data_dir: dir.join(format!("etcd-{i}")),
                    client: free_port()?,
                    peer: free_port()?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let urls: Vec<String> = members.iter().map(MemberSpec::client_url).collect();
        let client = {
            let _runtime = rt.enter(); // the client's connections live on it
            EtcdClient::new(&urls, Default::default())?
        };
        let token = format!("quilt-bench-{}", std::process::id());
        let mut cluster = EtcdMembers {
            children: Vec::new(),
            members,
            dir: dir.to_path_buf(),
            client,
        };
        for member in &cluster.members {
            let log_path = cluster.log(member);
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("cannot create {}", log_path.display()))?;
            let child = Command::new("etcd")
                .args(args(member, &cluster.members, &token))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start etcd member {}", member.name))?;
            scratch::track_child(child.id());
            cluster.children.push(child);
        }
        rt.block_on(cluster.wait_serving(Duration::from_secs(30)))?;
        Ok(cluster)
    }

    fn log(&self, member: &MemberSpec) -> PathBuf {
        self.dir.join(format!("{}.log", member.name))
    }

    async fn wait_serving(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let error = match self.revision().await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            for (child, member) in self.children.iter_mut().zip(&self.members) {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "etcd member {} exited with {status}; its log: {}",
                        member.name,
                        tail(&self.dir.join(format!("{}.log", member.name)))
                    );
                }
            }
            if start.elapsed() > limit {
                bail!("the etcd cluster does not serve after {limit:?}: {error}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The client URLs, comma-separated, as `--etcd-endpoints` takes them. Every replica
    /// gets them in one order: sending every replica's calls to other members first was
    /// slower here (followers forward writes to the leader and ask it for every read).
    pub(super) fn endpoints_flag(&self) -> String {
        self.members
            .iter()
            .map(MemberSpec::client_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The baseline of the registrations over etcd, measured on the same cluster: `count`
    /// transactions shaped like a new node's (two create-if-absent compares, five puts of
    /// a node's size), `concurrency` at a time, straight from one client. Answers them
    /// per second.
    pub(super) async fn registration_shaped_txns(
        &self,
        count: usize,
        concurrency: usize,
    ) -> anyhow::Result<f64> {
        use quilt_etcd::ops::{absent, put};
        let value = vec![b'x'; 400];
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = std::time::Instant::now();
        let workers: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                let (client, next, value) = (self.client.clone(), next.clone(), value.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= count {
                            return anyhow::Ok(());
                        }
                        let key = |kind: &str| format!("/bench-baseline/{kind}/{i:010}");
                        let txn = quilt_etcd::pb::TxnRequest {
                            compare: vec![absent(key("host")), absent(key("lease"))],
                            success: vec![
                                put(key("node"), value.clone()),
                                put(key("host"), i.to_string()),
                                put(key("lease"), i.to_string()),
                                put(key("heartbeat"), i.to_string()),
                                put(key("mac"), i.to_string()),
                            ],
                            failure: vec![],
                        };
                        client.txn(txn).await?;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await??;
        }
        Ok(count as f64 / started.elapsed().as_secs_f64())
    }

    /// etcd's current revision: it grows by one with every write transaction.
    pub(super) async fn revision(&self) -> anyhow::Result<i64> {
        let read = quilt_etcd::pb::RangeRequest {
            count_only: true,
            ..quilt_etcd::ops::get("/")
        };
        let answer = self.client.range(read).await?;
        Ok(answer.header.map_or(0, |h| h.revision))
    }

    /// The members' RSS, added up (KiB).
    pub(super) fn rss_kib(&self) -> u64 {
        self.children
            .iter()
            .filter_map(|c| status_kib(c.id(), "VmRSS").ok())
            .sum()
    }

    /// Stops every member.
    pub(super) fn stop(&mut self) {
        for child in &mut self.children {
            scratch::stop(child);
        }
        self.children.clear();
    }
}

impl Drop for EtcdMembers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last lines of a log, on one line.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut last: Vec<&str> = text.lines().rev().take(5).collect();
    last.reverse();
    last.join(" | ")
}
