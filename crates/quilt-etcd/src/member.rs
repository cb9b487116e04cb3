//! The flags that start one real etcd member (Debian's `etcd-server`, 3.4 or later) of a
//! cluster whose members are all known up front, as the lab and the tests run them.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

/// One member of a statically configured cluster.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    /// Unique in the cluster, like `etcd-1`.
    pub name: String,
    pub data_dir: PathBuf,
    /// Where clients (the control plane) connect.
    pub client: SocketAddr,
    /// Where the other members connect.
    pub peer: SocketAddr,
}

impl MemberSpec {
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client)
    }

    pub fn peer_url(&self) -> String {
        format!("http://{}", self.peer)
    }
}

/// `name=peer-url,...` for every member: etcd's `--initial-cluster`.
pub fn initial_cluster(members: &[MemberSpec]) -> String {
    members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The arguments that start `member` of `members` (cluster `token`). A member restarted
/// with its data dir in place rejoins with what it holds; the initial-cluster flags are
/// then ignored by etcd. History is compacted automatically, keeping the last 10,000
/// revisions, so the watch history stays bounded however many heartbeats are written.
pub fn args(member: &MemberSpec, members: &[MemberSpec], token: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut flag = |name: &str, value: String| {
        args.push(format!("--{name}").into());
        args.push(value.into());
    };
    flag("name", member.name.clone());
    flag("data-dir", member.data_dir.display().to_string());
    flag("listen-client-urls", member.client_url());
    flag("advertise-client-urls", member.client_url());
    flag("listen-peer-urls", member.peer_url());
    flag("initial-advertise-peer-urls", member.peer_url());
    flag("initial-cluster", initial_cluster(members));
    flag("initial-cluster-state", "new".into());
    flag("initial-cluster-token", token.to_string());
    flag("auto-compaction-mode", "revision".into());
    flag("auto-compaction-retention", "10000".into());
    flag("logger", "zap".into());
    flag("log-level", "warn".into());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_is_named_with_its_peer_url() {
        let m = |i: u16| MemberSpec {
            name: format!("etcd-{i}"),
            data_dir: format!("/tmp/d{i}").into(),
            client: format!("127.0.0.1:{}", 2379 + i * 10).parse().unwrap(),
            peer: format!("127.0.0.1:{}", 2380 + i * 10).parse().unwrap(),
        };
        let members = [m(1), m(2)];
        assert_eq!(
            initial_cluster(&members),
            "etcd-1=http://127.0.0.1:2390,etcd-2=http://127.0.0.1:2400"
        );
        let args = args(&members[1], &members, "t");
        let text: Vec<_> = args
            .iter()
            .map(|a| a.to_string_lossy().to_string())
            .collect();
        let at = text
            .iter()
            .position(|a| a == "--listen-client-urls")
            .unwrap();
        assert_eq!(text[at + 1], "http://127.0.0.1:2399");
    }
}
