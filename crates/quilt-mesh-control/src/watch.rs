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
    /// Replaced when the hub starts over, which ends every live stream.
    sender: broadcast::Sender<Arc<Event>>,
}

#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
    capacity: usize,
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
                sender,
            }),
            capacity,
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
            let _ = inner.sender.send(event);
        }
    }

    /// Moves the current revision up to `revision` without an event: the store went on
    /// with writes watchers are not told about (such as heartbeats).
    pub fn advance(&self, revision: Revision) {
        let mut inner = self.lock();
        inner.current = inner.current.max(revision);
    }

    /// Starts over at `revision` after changes were lost (the store's history was
    /// compacted before they were read): the retained history is dropped, every live
    /// stream ends, and a `since` before `revision` answers 410, so watchers list again.
    pub fn restart_at(&self, revision: Revision) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.floor = revision;
        inner.current = inner.current.max(revision);
        let (sender, _) = broadcast::channel(self.capacity);
        inner.sender = sender;
    }

    /// Starts a watch after `since`, which is ahead of what this hub has published but
    /// not of the store (the caller checked): the changes up to `since` that are still to
    /// come through are skipped, the ones after it sent.
    pub fn subscribe_ahead(&self, since: Revision) -> Subscription {
        let inner = self.lock();
        Subscription {
            backlog: VecDeque::new(),
            live: inner.sender.subscribe(),
            from: since.max(inner.current),
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
            live: inner.sender.subscribe(),
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
    async fn a_restart_ends_live_streams_and_refuses_what_was_lost() {
        let hub = Hub::new(0, 100);
        hub.publish([change(1)]);
        let mut sub = hub.subscribe(Some(1)).unwrap();
        hub.restart_at(50);
        assert!(matches!(
            sub.live.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
        assert!(matches!(
            hub.subscribe(Some(1)),
            Err(WatchError::Gone { .. })
        ));
        hub.advance(60);
        assert_eq!(hub.current(), 60);
        let mut ahead = hub.subscribe_ahead(70);
        assert_eq!(ahead.from, 70);
        hub.publish([change(71)]);
        assert_eq!(ahead.live.recv().await.unwrap().revision, 71);
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
