//! The heartbeat monitor: marks down nodes not heard from within the timeout.
//!
//! It checks every quarter of the timeout, so a silent node is marked down at most
//! 1.25 x the timeout after its last heartbeat. Nodes get one full timeout of grace
//! before anyone is judged: after a start (a restart must not mark every node down before
//! it had a chance to send a heartbeat), and after a stall of the control plane itself
//! (the process paused, the machine suspended, the clock jumped): heartbeats sent during
//! a stall were not read, so their absence says nothing about the nodes. Likewise after
//! the store failed a check (etcd lost): heartbeats may have failed to land meanwhile.
//!
//! With etcd every replica runs its monitor; a node is marked down by whichever replica
//! wins the compare-and-set (see [`crate::store::etcd`]), exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch as signal;

use crate::metrics::Metrics;
use crate::model::now_ms;
use crate::registry::Registry;

/// How often the monitor checks for a given timeout.
pub fn check_interval(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_millis(5))
}

/// When the monitor may judge, decided from the clocks it sees at each check.
#[derive(Debug)]
pub struct Grace {
    timeout_ms: u64,
    /// A gap between two checks longer than this is a stall of our own.
    stall_ms: u64,
    /// No node is marked down before this wall-clock time (unix ms).
    until_ms: u64,
    last_wall_ms: u64,
}

/// What a check may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Mark down the up nodes last heard from before this time (unix ms).
    MarkDownBefore(u64),
    /// Judge nobody yet.
    Wait,
    /// The control plane itself stalled for this long: judge nobody for one timeout.
    Stalled(Duration),
}

impl Grace {
    /// The grace at a start at wall-clock `now_ms`.
    pub fn starting(timeout: Duration, now_ms: u64) -> Self {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let interval_ms = u64::try_from(check_interval(timeout).as_millis()).unwrap_or(u64::MAX);
        Self {
            timeout_ms,
            stall_ms: interval_ms.saturating_mul(2).max(1000),
            until_ms: now_ms.saturating_add(timeout_ms),
            last_wall_ms: now_ms,
        }
    }

    /// Judges nobody for one timeout from `now_ms`: the store works again after it could
    /// not be read or written (etcd lost), so heartbeats sent meanwhile were not recorded.
    pub fn hold(&mut self, now_ms: u64) {
        self.until_ms = self.until_ms.max(now_ms.saturating_add(self.timeout_ms));
    }

    /// A check at wall-clock `now_ms`, `since_last` after the previous one by the
    /// monotonic clock.
    pub fn check(&mut self, now_ms: u64, since_last: Duration) -> Verdict {
        let wall_gap = now_ms.abs_diff(self.last_wall_ms);
        let mono_gap = u64::try_from(since_last.as_millis()).unwrap_or(u64::MAX);
        self.last_wall_ms = now_ms;
        let gap = wall_gap.max(mono_gap);
        if gap > self.stall_ms {
            self.until_ms = now_ms.saturating_add(self.timeout_ms);
            return Verdict::Stalled(Duration::from_millis(gap));
        }
        if now_ms < self.until_ms {
            return Verdict::Wait;
        }
        Verdict::MarkDownBefore(now_ms - self.timeout_ms)
    }
}

/// Runs until `stopping` turns true (or its sender goes away).
pub async fn run(
    registry: Registry,
    metrics: Arc<Metrics>,
    timeout: Duration,
    mut stopping: signal::Receiver<bool>,
) {
    let mut grace = Grace::starting(timeout, now_ms());
    let mut last = Instant::now();
    let mut ticker = tokio::time::interval(check_interval(timeout));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set when a check failed: until the store answers again, checks only ask whether it
    // does, and the grace starts when it does (not when it failed).
    let mut store_failed = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopping.wait_for(|stop| *stop) => break,
        }
        let since_last = last.elapsed();
        last = Instant::now();
        let verdict = grace.check(now_ms(), since_last);
        if store_failed {
            if registry.revision().await.is_ok() {
                store_failed = false;
                grace.hold(now_ms());
                tracing::warn!(grace = ?timeout, "the store works again; no node is marked down for one full timeout, so every node's heartbeats land first");
            }
            continue;
        }
        let cutoff = match verdict {
            Verdict::MarkDownBefore(cutoff) => cutoff,
            Verdict::Wait => continue,
            Verdict::Stalled(gap) => {
                tracing::warn!(stalled = ?gap, grace = ?timeout, "the control plane itself stalled (paused, suspended, or its clock jumped); no node is marked down until every node had one full timeout to send a heartbeat");
                continue;
            }
        };
        match registry.mark_down_before(cutoff).await {
            Ok(down) => {
                for node in &down {
                    tracing::warn!(node = %node.id, host_ip = %node.host_ip, timeout = ?timeout, "no heartbeat within the timeout; node marked down");
                }
                metrics.nodes_marked_down.inc_by(down.len() as u64);
            }
            Err(e) => {
                // Heartbeats may have failed to land as well: every node gets a full
                // timeout once the store works again.
                store_failed = true;
                tracing::error!(error = %e, "heartbeat monitor cannot check nodes; no node is marked down until one full timeout after the store works again");
            }
        }
    }
    tracing::debug!("heartbeat monitor stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(8);
    const TICK: Duration = Duration::from_secs(2);

    #[test]
    fn nobody_is_judged_for_one_timeout_after_a_start() {
        let mut g = Grace::starting(T, 100_000);
        assert_eq!(g.check(102_000, TICK), Verdict::Wait);
        assert_eq!(g.check(104_000, TICK), Verdict::Wait);
        assert_eq!(g.check(106_000, TICK), Verdict::Wait);
        assert_eq!(g.check(108_000, TICK), Verdict::MarkDownBefore(100_000));
    }

    #[test]
    fn a_stall_of_our_own_gives_every_node_a_full_timeout_again() {
        let mut g = Grace::starting(T, 0);
        for now in [2_000, 4_000, 6_000] {
            assert_eq!(g.check(now, TICK), Verdict::Wait);
        }
        assert_eq!(g.check(8_000, TICK), Verdict::MarkDownBefore(0));
        // Paused for 20 s: both clocks moved.
        assert_eq!(
            g.check(28_000, Duration::from_secs(20)),
            Verdict::Stalled(Duration::from_secs(20))
        );
        for now in [30_000, 32_000, 34_000] {
            assert_eq!(g.check(now, TICK), Verdict::Wait);
        }
        assert_eq!(g.check(36_000, TICK), Verdict::MarkDownBefore(28_000));
        // The wall clock jumps forward an hour while the monotonic clock does not.
        assert!(matches!(g.check(3_636_000, TICK), Verdict::Stalled(_)));
        assert_eq!(g.check(3_638_000, TICK), Verdict::Wait);
    }

    #[test]
    fn a_store_failure_holds_judgement_for_one_timeout() {
        let mut g = Grace::starting(T, 0);
        for now in [2_000, 4_000, 6_000] {
            assert_eq!(g.check(now, TICK), Verdict::Wait);
        }
        g.hold(7_000);
        for now in [8_000, 10_000, 12_000, 14_000] {
            assert_eq!(g.check(now, TICK), Verdict::Wait);
        }
        assert_eq!(g.check(16_000, TICK), Verdict::MarkDownBefore(8_000));
    }
}
