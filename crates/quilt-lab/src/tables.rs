//! A host's kernel tables as the mesh leaves them, read from outside the daemons: the
//! runtime's routes (protocol 158), the permanent neighbours and the FDB entries on the
//! overlay device; and a watch that records every change to them (`ip monitor`,
//! `bridge monitor`) while something restarts.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::LabError;
use crate::process::run_bounded;

/// The overlay device quilt-mesh-agent owns.
pub use quilt_common::defaults::OVERLAY_DEVICE;
/// The route protocol number quilt-runtime marks its routes with.
pub use quilt_common::defaults::ROUTE_PROTOCOL;

/// One snapshot of a host's tables, one line per entry as `ip` and `bridge` print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTables {
    /// `ip route show proto 158`.
    pub routes: Vec<String>,
    /// `ip neigh show dev vxlan100 nud permanent`.
    pub neighbours: Vec<String>,
    /// `bridge fdb show dev vxlan100`.
    pub fdb: Vec<String>,
}

impl HostTables {
    /// Reads the tables of namespace `netns`; fails when a command fails (for example
    /// while the overlay device does not exist).
    pub fn read(netns: &str) -> Result<Self, LabError> {
        Ok(Self {
            routes: lines(
                netns,
                "ip",
                &["-4", "route", "show", "proto", &ROUTE_PROTOCOL.to_string()],
            )?,
            neighbours: lines(
                netns,
                "ip",
                &[
                    "-4",
                    "neigh",
                    "show",
                    "dev",
                    OVERLAY_DEVICE,
                    "nud",
                    "permanent",
                ],
            )?,
            fdb: lines(netns, "bridge", &["fdb", "show", "dev", OVERLAY_DEVICE])?,
        })
    }

    /// The route toward `subnet`, if any.
    pub fn route_to(&self, subnet: Ipv4Net) -> Option<&str> {
        let want = subnet.to_string();
        find(&self.routes, |t| t.first() == Some(&want.as_str()))
    }

    /// The neighbour entry for `ip`, if any.
    pub fn neighbour(&self, ip: Ipv4Addr) -> Option<&str> {
        let want = ip.to_string();
        find(&self.neighbours, |t| t.first() == Some(&want.as_str()))
    }

    /// The FDB entry sending to `host_ip`, if any.
    pub fn fdb_to(&self, host_ip: Ipv4Addr) -> Option<&str> {
        let want = host_ip.to_string();
        find(&self.fdb, |t| {
            t.windows(2).any(|w| w[0] == "dst" && w[1] == want)
        })
    }

    /// Every entry toward the peer with `subnet` and `host_ip` (route, neighbour of
    /// the subnet's `.0`, FDB entry): empty when the host holds nothing for it.
    pub fn entries_for_peer(&self, subnet: Ipv4Net, host_ip: Ipv4Addr) -> Vec<String> {
        [
            self.route_to(subnet),
            self.neighbour(subnet.network()),
            self.fdb_to(host_ip),
        ]
        .into_iter()
        .flatten()
        .map(str::to_string)
        .collect()
    }
}

impl std::fmt::Display for HostTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (title, lines) in [
            ("routes", &self.routes),
            ("neighbours", &self.neighbours),
            ("fdb", &self.fdb),
        ] {
            writeln!(f, "{title}:")?;
            for l in lines {
                writeln!(f, "  {l}")?;
            }
        }
        Ok(())
    }
}

fn find(lines: &[String], matches: impl Fn(&[&str]) -> bool) -> Option<&str> {
    lines
        .iter()
        .find(|l| matches(&l.split_whitespace().collect::<Vec<_>>()))
        .map(String::as_str)
}

/// Runs `program -n NETNS ARGS` and answers its non-empty output lines, sorted (the
/// kernel lists neighbours in hash order, which is no state of ours).
fn lines(netns: &str, program: &str, args: &[&str]) -> Result<Vec<String>, LabError> {
    let mut command = Command::new(program);
    command.args(["-n", netns]).args(args);
    let shown = format!("{program} -n {netns} {}", args.join(" "));
    let out = run_bounded(command, None, Duration::from_secs(5))
        .map_err(|e| LabError::setup(&shown, e))?;
    if !out.status.success() {
        return Err(LabError::setup(shown, out.stderr.trim()));
    }
    let mut lines: Vec<String> = out
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    lines.sort();
    Ok(lines)
}

/// Records every route, neighbour and FDB change in a namespace until finished; the
/// monitors are killed when this value is dropped.
pub struct TableWatch {
    netns: String,
    children: Vec<Child>,
    files: Vec<PathBuf>,
}

impl TableWatch {
    /// Starts `ip -4 monitor route nexthop neigh` and `bridge monitor fdb` in `netns`
    /// (IPv4 only: the kernel's own IPv6 link-local routes are no business of ours),
    /// writing into
    /// files under `dir`. Waits a moment so the monitors are listening when it answers.
    pub fn start(netns: &str, dir: &Path) -> Result<Self, LabError> {
        let mut watch = Self {
            netns: netns.to_string(),
            children: Vec::new(),
            files: Vec::new(),
        };
        for (program, args, tag) in [
            (
                "ip",
                &["-4", "monitor", "route", "nexthop", "neigh"][..],
                "ip",
            ),
            ("bridge", &["monitor", "fdb"][..], "bridge"),
        ] {
            let file = dir.join(format!("monitor-{netns}-{tag}.log"));
            let out = std::fs::File::create(&file)
                .map_err(|e| LabError::setup(format!("create {}", file.display()), e))?;
            let child = Command::new(program)
                .args(["-n", netns])
                .args(args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| LabError::setup(format!("start {program} monitor in {netns}"), e))?;
            watch.children.push(child);
            watch.files.push(file);
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(watch)
    }

    /// Stops the monitors and answers every change they saw to the mesh's entries:
    /// lines naming the overlay device or the runtime's route protocol. Panics when a
    /// monitor died before the end, since its silence would prove nothing.
    pub fn finish(mut self) -> Vec<String> {
        // Events already in the kernel's socket buffer reach the files first.
        std::thread::sleep(Duration::from_millis(200));
        // A monitor that died early saw nothing: that must not read as "no change".
        for child in &mut self.children {
            assert!(
                matches!(child.try_wait(), Ok(None)),
                "a table monitor in {} stopped early; its silence proves nothing",
                self.netns
            );
        }
        self.stop();
        let mut changes = Vec::new();
        for file in &self.files {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            changes.extend(
                text.lines()
                    .filter(|l| {
                        l.contains(OVERLAY_DEVICE) || l.contains(&format!("proto {ROUTE_PROTOCOL}"))
                    })
                    .map(|l| format!("{}: {l}", self.netns)),
            );
            let _ = std::fs::remove_file(file);
        }
        changes
    }

    fn stop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for TableWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_entries_of_a_peer() {
        let t = HostTables {
            routes: vec!["10.42.3.0/24 via 10.42.3.0 dev vxlan100 proto 158 onlink".into()],
            neighbours: vec!["10.42.3.0 lladdr 02:aa:bb:cc:dd:03 PERMANENT".into()],
            fdb: vec!["02:aa:bb:cc:dd:03 dst 192.168.150.13 self permanent".into()],
        };
        let subnet: Ipv4Net = "10.42.3.0/24".parse().unwrap();
        let host = Ipv4Addr::new(192, 168, 150, 13);
        assert_eq!(t.entries_for_peer(subnet, host).len(), 3);
        let other: Ipv4Net = "10.42.30.0/24".parse().unwrap();
        assert!(
            t.entries_for_peer(other, Ipv4Addr::new(192, 168, 150, 1))
                .is_empty()
        );
    }
}
