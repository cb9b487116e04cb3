//! The agent's Prometheus metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::peers::Peer;

/// Every metric the agent exports.
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub peers: Gauge,
    pub peers_without_vtep_mac: Gauge,
    pub watch_reconnects: Counter,
    pub repairs: Counter,
    pub peer_convergence_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("quilt_agent");
        let peers = Gauge::default();
        let peers_without_vtep_mac = Gauge::default();
        let watch_reconnects = Counter::default();
        let repairs = Counter::default();
        // 100 µs .. ~3 s
        let peer_convergence_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "peers",
            "Peers with entries and a route in place",
            peers.clone(),
        );
        registry.register(
            "peers_without_vtep_mac",
            "Peers in place that registered no VTEP MAC (original agents), reached by flooding",
            peers_without_vtep_mac.clone(),
        );
        registry.register(
            "watch_reconnects",
            "Times the watch stream was opened again",
            watch_reconnects.clone(),
        );
        registry.register(
            "repairs",
            "Kernel or runtime changes made by a resync that the watch had not made",
            repairs.clone(),
        );
        registry.register(
            "peer_convergence_seconds",
            "Time from a peer event arriving to its entries and route being in place",
            peer_convergence_seconds.clone(),
        );
        Self {
            registry: Arc::new(registry),
            peers,
            peers_without_vtep_mac,
            watch_reconnects,
            repairs,
            peer_convergence_seconds,
        }
    }

    /// Sets the peer gauges from the peers in place.
    pub fn count_peers(&self, applied: &BTreeMap<String, Peer>) {
        self.peers.set(applied.len() as i64);
        let flooded = applied.values().filter(|p| p.vtep_mac.is_none()).count();
        self.peers_without_vtep_mac.set(flooded as i64);
    }
}
