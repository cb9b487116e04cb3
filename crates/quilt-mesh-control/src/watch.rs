//! The watch hub: every change, in revision order, to every watcher.
//!
//! The hub keeps the last `history` events in memory so a watcher can resume from a
//! revision, and broadcasts new ones. Revisions come from the store (persisted there),
//! so they keep growing across restarts; after a restart the history starts empty and
//! a `since` before it answers 410 Gone: the client lists again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use tokio::sync::broadcast;

use crate::api::types::watch_event;
use crate::store::{Change, Revision};

/// One published change, rendered once as its NDJSON line for every watcher.
#[derive(Debug)]
pub struct Event {
    pub revision: Revision,
    pub line: Bytes,
}

/// Why a watch cannot start where it was asked to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error(
        "revision {since} is older than the retained history (oldest resumable revision is {oldest}); list the nodes again and watch from the list's revision"
    )]
    Gone { since: Revision, oldest: Revision },
    #[error(
        "revision {since} is newer than the current revision {current}; list the nodes again and watch from the list's revision"
    )]
    Future { since: Revision, current: Revision },
}

/// Where a new watcher starts: the retained events after its revision, then the live feed.
#[derive(Debug)]
pub struct Subscription {
    pub backlog: VecDeque<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The revision the watcher has seen up to (the `since` it asked for, or the current one).
    pub from: Revision,
}

#[derive(Debug)]
struct Inner {
    history: VecDeque<Arc<Event>>,
    /// The smallest `since` that can be served: everything after it is in `history`.
    floor: Revision,
    current: Revision,
}

#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
    capacity: usize,
    sender: broadcast::Sender<Arc<Event>>,
}

impl Hub {
    /// A hub that starts at the store's `revision` and retains `history` events (at least 1).
    pub fn new(revision: Revision, history: usize) -> Self {
        let capacity = history.max(1);
        let (sender, _) = broadcast::channel(capacity);
        Self {
            inner: Mutex::new(Inner {
                history: VecDeque::with_capacity(capacity.min(1024)),
                floor: revision,
                current: revision,
            }),
            capacity,
            sender,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The revision of the last published change.
    pub fn current(&self) -> Revision {
        self.lock().current
    }

    /// Publishes changes; callers publish in revision order (the registry thread does).
    pub fn publish(&self, changes: impl IntoIterator<Item = Change>) {
        let mut inner = self.lock();
        for change in changes {
            if change.revision <= inner.current {
                tracing::error!(
                    revision = change.revision,
                    current = inner.current,
                    "change published out of order; dropped"
                );
                continue;
            }
            let mut line = serde_json::to_vec(&watch_event(&change)).unwrap_or_default();
            line.push(b'\n');
            let event = Arc::new(Event {
                revision: change.revision,
                line: Bytes::from(line),
            });
            inner.current = change.revision;
            if inner.history.len() == self.capacity
                && let Some(old) = inner.history.pop_front()
            {
                inner.floor = old.revision;
            }
            inner.history.push_back(event.clone());
            // No receivers is fine: nobody is watching.
            let _ = self.sender.send(event);
        }
    }

    /// Starts a watch after `since` (or after the current revision).
    pub fn subscribe(&self, since: Option<Revision>) -> Result<Subscription, WatchError> {
        let inner = self.lock();
        let since = since.unwrap_or(inner.current);
        if since > inner.current {
            return Err(WatchError::Future {
                since,
                current: inner.current,
            });
        }
        if since < inner.floor {
            return Err(WatchError::Gone {
                since,
                oldest: inner.floor,
            });
        }
        let backlog = inner
            .history
            .iter()
            .filter(|e| e.revision > since)
            .cloned()
            .collect();
        // Subscribing under the lock: nothing published after the backlog is missed.
        Ok(Subscription {
            backlog,
            live: self.sender.subscribe(),
            from: since,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ChangeKind;

    fn change(revision: Revision) -> Change {
        Change {
            revision,
            kind: ChangeKind::Updated,
            node: crate::model::test_node(1, "t"),
        }
    }

    #[test]
    fn resumes_from_retained_history_and_refuses_older() {
        let hub = Hub::new(10, 3);
        hub.publish((11..=15).map(change));
        let sub = hub.subscribe(Some(13)).unwrap();
        let revs: Vec<_> = sub.backlog.iter().map(|e| e.revision).collect();
        assert_eq!(revs, [14, 15]);
        assert_eq!(hub.subscribe(Some(12)).unwrap().backlog.len(), 3);
        assert_eq!(
            hub.subscribe(Some(11)).unwrap_err(),
            WatchError::Gone {
                since: 11,
                oldest: 12
            }
        );
        assert!(matches!(
            hub.subscribe(Some(16)),
            Err(WatchError::Future { .. })
        ));
        let line = std::str::from_utf8(&sub.backlog[0].line).unwrap();
        assert!(
            line.starts_with(r#"{"revision":14,"type":"updated","node":{"node_id":"node-1""#),
            "{line}"
        );
        assert!(line.ends_with('\n') && !line.contains("token"));
    }

    #[test]
    fn a_fresh_hub_serves_only_from_its_start() {
        let hub = Hub::new(7, 100);
        assert!(hub.subscribe(Some(7)).unwrap().backlog.is_empty());
        assert!(matches!(
            hub.subscribe(Some(6)),
            Err(WatchError::Gone { .. })
        ));
        assert_eq!(hub.subscribe(None).unwrap().from, 7);
    }

    #[tokio::test]
    async fn live_events_follow_the_backlog() {
        let hub = Hub::new(0, 100);
        hub.publish([change(1)]);
        let mut sub = hub.subscribe(Some(0)).unwrap();
        hub.publish([change(2)]);
        assert_eq!(sub.backlog.pop_front().unwrap().revision, 1);
        assert_eq!(sub.live.recv().await.unwrap().revision, 2);
    }
}
