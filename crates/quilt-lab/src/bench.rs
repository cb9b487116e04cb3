//! Measurements on a running lab: how fast a new host joins the mesh (convergence), and
//! what the overlay costs against the underlay (iperf3 throughput, ping round trips).
//! They measure and answer numbers; printing them is the caller's business.

use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::LabError;
use crate::lab::{Lab, endpoints};
use crate::process::{command_in, run_bounded};
use crate::remote;

/// One new host joining the mesh, timed from the start of its agent.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinTiming {
    pub host: u16,
    /// The host's runtime holds a node subnet (registered, device built, configured).
    pub configured: Duration,
    /// Its container is attached with quilt-cni.
    pub attached: Duration,
    /// Every container that existed before answered by a ping to the new container.
    pub converged: Duration,
    /// How many containers pinged the new one.
    pub sources: usize,
}

/// Adds a host to `lab` (namespace, underlay, runtime), then starts its agent and times:
/// the runtime configured, the container attached, and the first successful ping from
/// every existing container to the new host's first container. Pings run from all
/// sources at once, every 10 ms each, so the figure is exact to about 10 ms.
pub fn join_new_host(lab: &mut Lab, timeout: Duration) -> Result<JoinTiming, LabError> {
    let sources = endpoints(lab.state());
    let host = lab.add_host()?;
    let netns = lab.state().host(host).expect("just added").netns.clone();
    let started = Instant::now();
    let deadline = started + timeout;
    lab.start_agent(host)?;
    let address = lab.state().runtime_address(host);
    while !remote::runtime_subnet(&netns, &address).is_ok_and(|s| !s.is_empty()) {
        if Instant::now() >= deadline {
            return Err(timeout_error("the new host's runtime configured", timeout));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let configured = started.elapsed();
    lab.attach_containers_of(host)?;
    let attached = started.elapsed();
    let target = lab
        .state()
        .containers
        .iter()
        .find(|c| c.host == host)
        .and_then(|c| c.address)
        .ok_or_else(|| LabError::setup(format!("join h{host}"), "no container attached"))?
        .addr();
    let left = deadline.saturating_duration_since(Instant::now());
    let mut pings: Vec<(String, Child)> = Vec::new();
    for s in &sources {
        pings.push((s.name.clone(), spawn_until_answer(&s.netns, target, left)?));
    }
    let mut converged = attached;
    for (name, mut child) in pings {
        let status = loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                break status;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if !status.success() {
            return Err(timeout_error(&format!("{name} reaching {target}"), timeout));
        }
        converged = converged.max(started.elapsed());
    }
    Ok(JoinTiming {
        host,
        configured,
        attached,
        converged,
        sources: sources.len(),
    })
}

/// A ping from `netns` to `to` every 10 ms until the first answer, for at most `limit`.
/// The waiting caller observes the exit within a millisecond of the answer.
fn spawn_until_answer(netns: &str, to: Ipv4Addr, limit: Duration) -> Result<Child, LabError> {
    let seconds = limit.as_secs().max(1).to_string();
    command_in(netns, "ping")
        .args(["-n", "-q", "-c", "1", "-i", "0.01", "-w", &seconds])
        .arg(to.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| LabError::setup(format!("ping from {netns}"), e))
}

fn timeout_error(what: &str, timeout: Duration) -> LabError {
    LabError::Timeout {
        what: what.to_string(),
        seconds: timeout.as_secs_f64(),
        detail: "see the daemon logs".to_string(),
    }
}

/// The `q`-quantile (0..=1) of `values` by the nearest-rank method.
pub fn quantile(values: &[Duration], q: f64) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank - 1).copied()
}

/// One TCP stream of `seconds` from `client_netns` to an iperf3 server started for
/// it in `server_netns` at `server`; answers the receiver's bits per second.
pub fn iperf3(
    client_netns: &str,
    server_netns: &str,
    server: Ipv4Addr,
    seconds: u32,
) -> Result<f64, LabError> {
    let operation = || format!("iperf3 from {client_netns} to {server}");
    let mut daemon = command_in(server_netns, "iperf3");
    daemon
        .args(["-s", "-p", "5201"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _daemon = KillOnDrop(daemon.spawn().map_err(|e| {
        LabError::setup(operation(), format!("server: {e} (is iperf3 installed?)"))
    })?);
    // No probe connection (the server would count it as a failed test): the client
    // retries while nothing listens yet.
    let mut last = String::new();
    for _ in 0..25 {
        let mut client = command_in(client_netns, "iperf3");
        client.args(["-c", &server.to_string(), "-p", "5201", "-J"]);
        client.args(["-t", &seconds.to_string()]);
        let out = run_bounded(client, None, Duration::from_secs(u64::from(seconds) + 20))
            .map_err(|e| LabError::setup(operation(), e))?;
        let json: serde_json::Value = serde_json::from_str(&out.stdout).map_err(|e| {
            LabError::setup(operation(), format!("cannot parse: {e}: {}", out.stderr))
        })?;
        if let Some(bps) = json
            .pointer("/end/sum_received/bits_per_second")
            .and_then(serde_json::Value::as_f64)
        {
            return Ok(bps);
        }
        last = json
            .get("error")
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no end.sum_received in the answer".into());
        if !last.contains("unable to connect") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(LabError::setup(operation(), last))
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Round-trip times of `count` pings 10 ms apart, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rtt {
    pub min_ms: f64,
    pub avg_ms: f64,
    pub max_ms: f64,
}

/// Pings `to` from `netns` `count` times, 10 ms apart; every ping must be answered.
pub fn rtt(netns: &str, to: Ipv4Addr, count: u32) -> Result<Rtt, LabError> {
    let mut ping = command_in(netns, "ping");
    ping.args([
        "-n",
        "-q",
        "-i",
        "0.01",
        "-W",
        "1",
        "-c",
        &count.to_string(),
    ])
    .arg(to.to_string());
    let out = run_bounded(ping, None, Duration::from_secs(u64::from(count) / 10 + 10))
        .map_err(|e| LabError::setup(format!("ping from {netns}"), e))?;
    if !out.status.success() {
        return Err(LabError::setup(
            format!("ping {to} from {netns}"),
            format!("{}{}", out.stdout.trim(), out.stderr.trim()),
        ));
    }
    parse_rtt(&out.stdout).ok_or_else(|| {
        LabError::setup(
            format!("ping {to} from {netns}"),
            format!("no rtt line in {:?}", out.stdout),
        )
    })
}

/// Reads `rtt min/avg/max/mdev = 0.041/0.052/0.089/0.010 ms`.
fn parse_rtt(text: &str) -> Option<Rtt> {
    let numbers = text.lines().find(|l| l.contains("min/avg/max"))?;
    let values: Vec<f64> = numbers
        .split('=')
        .nth(1)?
        .trim()
        .trim_end_matches("ms")
        .split('/')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    Some(Rtt {
        min_ms: *values.first()?,
        avg_ms: *values.get(1)?,
        max_ms: *values.get(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let ms = |v: u64| Duration::from_millis(v);
        let runs: Vec<Duration> = (1..=10).rev().map(|v| ms(v * 10)).collect();
        assert_eq!(quantile(&runs, 0.5), Some(ms(50)));
        assert_eq!(quantile(&runs, 0.99), Some(ms(100)));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[ms(7)], 0.99), Some(ms(7)));
    }

    #[test]
    fn reads_ping_summaries() {
        let text = "--- 10.42.2.2 ping statistics ---\n20 packets transmitted, 20 received, 0% packet loss, time 199ms\nrtt min/avg/max/mdev = 0.041/0.052/0.089/0.010 ms\n";
        assert_eq!(
            parse_rtt(text),
            Some(Rtt {
                min_ms: 0.041,
                avg_ms: 0.052,
                max_ms: 0.089
            })
        );
        assert_eq!(parse_rtt("nothing"), None);
    }
}
