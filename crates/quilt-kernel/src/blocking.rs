//! The daemons' one rule for blocking work (a SQLite call, a blocking netlink socket): it
//! never holds up a tokio worker's other tasks. [`off_the_worker`] runs it under
//! [`tokio::task::block_in_place`] on a multi-thread runtime, so the worker's queue moves
//! to another worker while this one waits; on a current-thread runtime (tests, the lab's
//! one-shot calls), where no other worker exists, and outside any runtime, it runs inline.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs blocking `work` by the rule above and answers its result.
pub fn off_the_worker<T>(work: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::off_the_worker;

    #[test]
    fn runs_outside_a_runtime() {
        assert_eq!(off_the_worker(|| 7), 7);
    }

    #[tokio::test]
    async fn runs_inline_on_a_current_thread_runtime() {
        assert_eq!(off_the_worker(|| 8), 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_on_a_multi_thread_runtime() {
        assert_eq!(off_the_worker(|| 9), 9);
    }
}
