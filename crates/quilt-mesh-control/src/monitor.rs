//! The heartbeat monitor: marks down nodes not heard from within the timeout.
//!
//! It checks every quarter of the timeout, so a silent node is marked down at most
//! 1.25 x the timeout after its last heartbeat. Right after a start it waits one full
//! timeout before judging anyone, so a control-plane restart does not mark every node
//! down before it had a chance to send a heartbeat.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch as signal;

use crate::metrics::Metrics;
use crate::model::now_ms;
use crate::registry::Registry;

/// How often the monitor checks for a given timeout.
pub fn check_interval(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_millis(5))
}

/// Runs until `stopping` turns true (or its sender goes away).
pub async fn run(
    registry: Registry,
    metrics: Arc<Metrics>,
    timeout: Duration,
    mut stopping: signal::Receiver<bool>,
) {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let started_ms = now_ms();
    let mut ticker = tokio::time::interval(check_interval(timeout));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopping.wait_for(|stop| *stop) => break,
        }
        let now = now_ms();
        if now < started_ms.saturating_add(timeout_ms) {
            continue;
        }
        match registry.mark_down_before(now - timeout_ms).await {
            Ok(down) => {
                for node in &down {
                    tracing::warn!(node = %node.id, host_ip = %node.host_ip, timeout = ?timeout, "no heartbeat within the timeout; node marked down");
                }
                metrics.nodes_marked_down.inc_by(down.len() as u64);
            }
            Err(e) => tracing::error!(error = %e, "heartbeat monitor cannot check nodes"),
        }
    }
    tracing::debug!("heartbeat monitor stopped");
}
