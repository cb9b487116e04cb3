//! Whether the store's writes work. While they fail (a full disk, an I/O error) the store
//! keeps deciding liveness in memory; this is what `/health` reports and what the log
//! says: the first failure at once, then at most every 30 s, and the recovery.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a write failure that goes on is logged again.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// A shared view of the store's writes; clones see the same state.
#[derive(Debug, Clone, Default)]
pub struct WriteHealth(Arc<Mutex<Option<Failure>>>);

#[derive(Debug)]
struct Failure {
    since: Instant,
    error: String,
    attempts: u64,
    logged: Instant,
}

impl WriteHealth {
    /// A write failed with `error`.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let error = error.to_string();
        match state.as_mut() {
            None => {
                tracing::error!(%error, "database writes fail; deciding liveness in memory and publishing it until they work again");
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
                    tracing::error!(error = %f.error, failing_for = ?f.since.elapsed(), attempts = f.attempts, "database writes still fail");
                    f.logged = Instant::now();
                }
            }
        }
    }

    /// A write worked.
    pub fn worked(&self) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = state.take() {
            tracing::warn!(failed_for = ?f.since.elapsed(), attempts = f.attempts, "database writes work again; what was decided meanwhile is written");
        }
    }

    /// Why the store is degraded, if it is.
    pub fn problem(&self) -> Option<String> {
        let state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.as_ref().map(|f| {
            format!(
                "database writes have failed for {} s ({} attempts): {}; node liveness is decided in memory, registrations and deletions fail until writes work again",
                f.since.elapsed().as_secs(),
                f.attempts,
                f.error
            )
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
        h.worked();
        assert_eq!(h.problem(), None);
    }
}
