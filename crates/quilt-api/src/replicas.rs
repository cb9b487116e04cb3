//! Which control-plane replica a client tries first, and leaving one: the replica that
//! answered last is preferred, and each switch is logged once (the replica left, why,
//! and the one used now), not once per call.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The replicas' URLs and the one preferred now; shared by a client and its watch streams.
#[derive(Debug)]
pub(crate) struct Replicas {
    urls: Vec<String>,
    preferred: AtomicUsize,
}

impl Replicas {
    /// `urls` must not be empty (the client's builder checks it).
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            preferred: AtomicUsize::new(0),
        }
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The replica to try first.
    pub fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed)
    }

    /// Every replica's index in the order a call tries them: the preferred one first,
    /// then the others in the order given.
    pub fn order(&self, start: usize) -> impl Iterator<Item = usize> + use<> {
        let n = self.urls.len();
        (0..n).map(move |offset| (start + offset) % n)
    }

    /// Replica `index` answered a call that started with `start`, after the failures
    /// `why` of the replicas tried before it: it becomes preferred. Logged when this call
    /// is the one that moved the preference (concurrent calls switch, and say so, once).
    pub fn answered(&self, start: usize, index: usize, why: &[String]) {
        if index == start {
            return;
        }
        if self
            .preferred
            .compare_exchange(start, index, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                left = %self.urls[start],
                now = %self.urls[index],
                reason = %why.join("; "),
                "left a control plane replica; using the next one"
            );
        }
    }

    /// Replica `index` failed after it answered (a watch stream that broke or went
    /// silent): when it is still preferred, the next call starts with the next replica.
    /// Answers whether the preference moved.
    pub fn leave(&self, index: usize, why: &str) -> bool {
        let n = self.urls.len();
        if n < 2 {
            return false;
        }
        let next = (index + 1) % n;
        let moved = self
            .preferred
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if moved {
            tracing::warn!(
                left = %self.urls[index],
                next = %self.urls[next],
                reason = why,
                "left a control plane replica; the next call tries the next one"
            );
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Replicas {
        Replicas::new(vec![
            "http://a".into(),
            "http://b".into(),
            "http://c".into(),
        ])
    }

    #[test]
    fn calls_start_with_the_preferred_replica_and_wrap_around() {
        let r = three();
        assert_eq!(r.order(r.preferred()).collect::<Vec<_>>(), [0, 1, 2]);
        r.answered(0, 2, &["http://a: refused".into(), "http://b: 503".into()]);
        assert_eq!(r.preferred(), 2);
        assert_eq!(r.order(r.preferred()).collect::<Vec<_>>(), [2, 0, 1]);
    }

    #[test]
    fn a_switch_made_by_another_call_is_not_undone() {
        let r = three();
        r.answered(0, 1, &[]);
        // A call that also started at 0 and ended at 2 does not move the preference again.
        r.answered(0, 2, &[]);
        assert_eq!(r.preferred(), 1);
    }

    #[test]
    fn leaving_moves_on_only_from_the_preferred_replica() {
        let r = three();
        assert!(r.leave(0, "watch silent"));
        assert_eq!(r.preferred(), 1);
        // A second stream of the same replica breaking changes nothing more.
        assert!(!r.leave(0, "watch silent"));
        assert_eq!(r.preferred(), 1);
        assert!(r.leave(1, "reset"));
        assert!(r.leave(2, "reset"));
        assert_eq!(r.preferred(), 0);
        let one = Replicas::new(vec!["http://a".into()]);
        assert!(!one.leave(0, "reset"));
    }
}
