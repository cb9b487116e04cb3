//! Waiting for something a test expects to happen soon, with a bound.

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it holds; panics naming `what` after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} did not happen within {limit:?}");
}
