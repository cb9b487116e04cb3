//! Connectivity between lab containers: pings from every container to every other,
//! in parallel with bounded concurrency, and the matrix they make.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::process::{command_in, run_bounded};

/// How many pings run at once.
const CONCURRENCY: usize = 16;

/// One endpoint of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
}

/// `ok[i][j]`: endpoint i reached endpoint j's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matrix {
    pub endpoints: Vec<Endpoint>,
    pub ok: Vec<Vec<bool>>,
}

impl Matrix {
    /// A matrix of `endpoints` with nothing reached yet.
    pub fn empty(endpoints: Vec<Endpoint>) -> Self {
        let n = endpoints.len();
        Self {
            endpoints,
            ok: vec![vec![false; n]; n],
        }
    }

    pub fn reached(&self) -> usize {
        self.ok.iter().flatten().filter(|b| **b).count()
    }

    pub fn pairs(&self) -> usize {
        self.endpoints.len() * self.endpoints.len()
    }

    pub fn full(&self) -> bool {
        self.reached() == self.pairs()
    }

    /// Pings again every pair not reached yet.
    pub fn retry_failed(&mut self) {
        let todo: Vec<(usize, usize)> = (0..self.endpoints.len())
            .flat_map(|i| (0..self.endpoints.len()).map(move |j| (i, j)))
            .filter(|(i, j)| !self.ok[*i][*j])
            .collect();
        let results = ping_pairs(&self.endpoints, &todo);
        for ((i, j), ok) in todo.into_iter().zip(results) {
            self.ok[i][j] = ok;
        }
    }

    /// The matrix as text: rows are sources, columns destinations; `ok` or `--`.
    pub fn render(&self) -> String {
        let names = self
            .endpoints
            .iter()
            .map(|e| e.name.len())
            .max()
            .unwrap_or(2);
        let first = names.max("from\\to".len());
        let width = names.max(2);
        let mut out = format!("{:first$}", "from\\to");
        for e in &self.endpoints {
            let _ = write!(out, " {:>width$}", e.name);
        }
        out.push('\n');
        for (i, e) in self.endpoints.iter().enumerate() {
            let _ = write!(out, "{:first$}", e.name);
            for ok in &self.ok[i] {
                let _ = write!(out, " {:>width$}", if *ok { "ok" } else { "--" });
            }
            out.push('\n');
        }
        out
    }
}

/// Pings each `(from, to)` pair once (1 s to answer), `CONCURRENCY` at a time.
pub fn ping_pairs(endpoints: &[Endpoint], pairs: &[(usize, usize)]) -> Vec<bool> {
    let results: Vec<std::sync::atomic::AtomicBool> = pairs
        .iter()
        .map(|_| std::sync::atomic::AtomicBool::new(false))
        .collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..CONCURRENCY.min(pairs.len()) {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some((i, j)) = pairs.get(k) else { break };
                    let ok = ping(&endpoints[*i].netns, endpoints[*j].address);
                    results[k].store(ok, Ordering::Relaxed);
                }
            });
        }
    });
    results.into_iter().map(|r| r.into_inner()).collect()
}

/// One ping from inside `netns` to `to`, 1 s to answer.
pub fn ping(netns: &str, to: Ipv4Addr) -> bool {
    let mut command: Command = command_in(netns, "ping");
    command.args(["-n", "-q", "-c", "1", "-W", "1", "-w", "2", &to.to_string()]);
    run_bounded(command, None, Duration::from_secs(5))
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_counts() {
        let e = |n: &str, a: u8| Endpoint {
            name: n.into(),
            netns: format!("x-{n}"),
            address: Ipv4Addr::new(10, 42, a, 2),
        };
        let mut m = Matrix::empty(vec![e("c1-1", 1), e("c2-1", 2)]);
        m.ok[0][0] = true;
        m.ok[1][1] = true;
        m.ok[0][1] = true;
        assert_eq!(m.reached(), 3);
        assert!(!m.full());
        let text = m.render();
        assert_eq!(
            text,
            "from\\to c1-1 c2-1\nc1-1      ok   ok\nc2-1      --   ok\n"
        );
        m.ok[1][0] = true;
        assert!(m.full());
    }
}
