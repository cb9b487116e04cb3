//! The runtime's Prometheus metrics and the HTTP endpoint that serves them.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    pub method: String,
    pub transport: String,
}

fn latency_histogram() -> Histogram {
    // 25 µs .. ~0.8 s
    Histogram::new(exponential_buckets(0.000_025, 2.0, 16))
}

/// Every metric the runtime exports.
pub struct Metrics {
    /// Served at `/metrics` by [`quilt_common::metrics_endpoint`].
    pub registry: Arc<Registry>,
    pub rpc_requests: Family<RpcLabels, Counter>,
    pub rpc_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub managed_routes: Gauge,
    pub allocated_ips: Gauge,
    pub reconcile_runs: Counter,
    pub reconcile_repairs: Counter,
    /// Addresses the last reconcile pass found used by more than one owner.
    pub address_conflicts: Gauge,
    /// Calls refused because the caller is not trusted.
    pub rpc_denied: Family<DeniedLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("quilt_runtime");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let rpc_seconds =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let managed_routes = Gauge::default();
        let allocated_ips = Gauge::default();
        let reconcile_runs = Counter::default();
        let reconcile_repairs = Counter::default();
        let address_conflicts = Gauge::default();
        let rpc_denied = Family::<DeniedLabels, Counter>::default();
        registry.register(
            "rpc_requests",
            "gRPC calls by method and result (ok, refused)",
            rpc_requests.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "gRPC call latency by method",
            rpc_seconds.clone(),
        );
        registry.register(
            "managed_routes",
            "Routes the runtime manages (desired)",
            managed_routes.clone(),
        );
        registry.register(
            "allocated_ips",
            "Container addresses allocated",
            allocated_ips.clone(),
        );
        registry.register("reconcile_runs", "Reconcile passes", reconcile_runs.clone());
        registry.register(
            "reconcile_repairs",
            "Kernel changes made by reconcile passes",
            reconcile_repairs.clone(),
        );
        registry.register(
            "address_conflicts",
            "Container addresses used by more than one owner, as the last reconcile pass found",
            address_conflicts.clone(),
        );
        registry.register(
            "rpc_denied",
            "QuiltRuntime calls refused with PERMISSION_DENIED (untrusted caller), by method and transport",
            rpc_denied.clone(),
        );
        Self {
            registry: Arc::new(registry),
            rpc_requests,
            rpc_seconds,
            managed_routes,
            allocated_ips,
            reconcile_runs,
            reconcile_repairs,
            address_conflicts,
            rpc_denied,
        }
    }

    /// Records one call refused to an untrusted caller.
    pub fn observe_denied(&self, method: &str, transport: &str) {
        self.rpc_denied
            .get_or_create(&DeniedLabels {
                method: method.to_string(),
                transport: transport.to_string(),
            })
            .inc();
    }

    /// Records one RPC call.
    pub fn observe_rpc(&self, method: &str, success: bool, elapsed: Duration) {
        let result = if success { "ok" } else { "refused" };
        self.rpc_requests
            .get_or_create(&RpcLabels {
                method: method.to_string(),
                result: result.to_string(),
            })
            .inc();
        self.rpc_seconds
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        quilt_common::metrics_endpoint::encode(&self.registry)
    }
}
