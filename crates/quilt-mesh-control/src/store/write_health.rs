//! Whether the store's writes work, for `/health` and the log: the first failure at once,
//! then at most every 30 s, and the recovery. What a failure means depends on the
//! [`Backend`]: SQLite keeps deciding liveness in memory (degraded, still serving), while a
//! replica that lost etcd refuses changes with 503 (not ready).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a write failure that goes on is logged again.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Which store's writes these are: it decides the words and what a failure means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    #[default]
    Sqlite,
    Etcd,
}

/// A shared view of the store's writes; clones see the same state.
#[derive(Debug, Clone, Default)]
pub struct WriteHealth {
    backend: Backend,
    failure: Arc<Mutex<Option<Failure>>>,
}

#[derive(Debug)]
struct Failure {
    since: Instant,
    error: String,
    attempts: u64,
    logged: Instant,
}

impl WriteHealth {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            failure: Arc::default(),
        }
    }

    /// Whether the replica can serve changes now: true unless it lost etcd.
    pub fn ready(&self) -> bool {
        self.backend == Backend::Sqlite || self.problem().is_none()
    }

    /// A write failed with `error`.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        let mut state = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        let error = error.to_string();
        match state.as_mut() {
            None => {
                match self.backend {
                    Backend::Sqlite => {
                        tracing::error!(%error, "database writes fail; deciding liveness in memory and publishing it until they work again")
                    }
                    Backend::Etcd => {
                        tracing::error!(%error, "etcd is unavailable; registrations, heartbeats and deletions answer 503 until it is back (the data plane keeps forwarding)")
                    }
                }
                *state = Some(Failure {
                    since: Instant::now(),
                    error,
                    attempts: 1,
                    logged: Instant::now(),
                });
            }
            Some(f) => {
                f.attempts += 1;
                f.error = error;
                if f.logged.elapsed() >= LOG_EVERY {
                    tracing::error!(error = %f.error, failing_for = ?f.since.elapsed(), attempts = f.attempts, store = ?self.backend, "store writes still fail");
                    f.logged = Instant::now();
                }
            }
        }
    }

    /// A write worked.
    pub fn worked(&self) {
        let mut state = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = state.take() {
            match self.backend {
                Backend::Sqlite => {
                    tracing::warn!(failed_for = ?f.since.elapsed(), attempts = f.attempts, "database writes work again; what was decided meanwhile is written")
                }
                Backend::Etcd => {
                    tracing::warn!(failed_for = ?f.since.elapsed(), attempts = f.attempts, "etcd is available again; serving changes")
                }
            }
        }
    }

    /// Why the store is degraded, if it is.
    pub fn problem(&self) -> Option<String> {
        let state = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        state.as_ref().map(|f| match self.backend {
            Backend::Etcd => format!(
                "etcd has been unavailable for {} s ({} attempts): {}; registrations, heartbeats and deletions answer 503 until it is back",
                f.since.elapsed().as_secs(),
                f.attempts,
                f.error
            ),
            Backend::Sqlite => format!(
                "database writes have failed for {} s ({} attempts): {}; node liveness is decided in memory, registrations and deletions fail until writes work again",
                f.since.elapsed().as_secs(),
                f.attempts,
                f.error
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_reported_until_a_write_works() {
        let h = WriteHealth::default();
        assert_eq!(h.problem(), None);
        h.failed(&"database or disk is full");
        h.clone().failed(&"database or disk is full");
        let problem = h.problem().unwrap();
        assert!(
            problem.contains("(2 attempts): database or disk is full"),
            "{problem}"
        );
        assert!(
            h.ready(),
            "sqlite stays ready: it decides liveness in memory"
        );
        h.worked();
        assert_eq!(h.problem(), None);
        let etcd = WriteHealth::new(Backend::Etcd);
        etcd.failed(&"no leader");
        assert!(!etcd.ready());
        assert!(
            etcd.problem()
                .unwrap()
                .contains("etcd has been unavailable")
        );
        etcd.worked();
        assert!(etcd.ready());
    }
}
