//! The change feed: etcd's watch on the cluster's keys, turned into [`Change`]s for the
//! watch hub, in revision order, whichever replica made them. It also lowers the free-lease
//! hint when any replica lets a lease go, and probes etcd every second for `/health`.
//!
//! It starts a little in the past (the last 20,000 etcd revisions, which etcd keeps unless
//! it compacted them), so a replica that just started can resume a watcher from a revision
//! another replica handed out before.
//!
//! When the watch breaks (a member died, lost its leader, or etcd is unreachable) it is
//! opened again from the revision after the last one seen, on whichever member serves;
//! nothing is missed or sent twice. If etcd compacted its history past that revision, the
//! changes in between are lost to this replica: the hub starts over at the oldest revision
//! etcd still holds, its watchers' streams end, and they list again (410).

use std::sync::Arc;
use std::time::Duration;

use quilt_etcd::pb::{Event, EventType, WatchCreateRequest};
use quilt_etcd::{EtcdClient, EtcdError, ops};
use tokio::sync::watch as signal;

use super::keys::{KeyKind, Keys};
use super::known::{Known, Seen};
use super::{Hint, decode_node, decode_number};
use crate::model::NodeId;
use crate::store::{Change, ChangeKind, Revision, WriteHealth};
use crate::watch::Hub;

/// How long the feed waits before opening a broken watch again.
const RETRY: Duration = Duration::from_millis(250);

/// How often etcd is probed for `/health` (a read that needs quorum).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The feed of one store, from [`super::EtcdStore::open`]; [`Feed::run`] runs it.
pub struct Feed {
    client: EtcdClient,
    keys: Keys,
    base: i64,
    /// The feed sends what comes after this etcd revision (a little before the store was
    /// opened: the replay).
    after: i64,
    hint: Arc<Hint>,
    known: Arc<Known>,
    health: WriteHealth,
}

impl Feed {
    pub(super) fn new(
        client: EtcdClient,
        keys: Keys,
        base: i64,
        after: i64,
        hint: Arc<Hint>,
        known: Arc<Known>,
        health: WriteHealth,
    ) -> Self {
        Self {
            client,
            keys,
            base,
            after,
            hint,
            known,
            health,
        }
    }

    fn api_revision(&self, etcd_revision: i64) -> Revision {
        u64::try_from(etcd_revision.saturating_add(self.base)).unwrap_or(0)
    }

    /// The revision the hub starts at: every change after it comes through the feed.
    pub fn start_revision(&self) -> Revision {
        self.api_revision(self.after)
    }

    /// Feeds `hub` until `stopping` turns true.
    pub async fn run(self, hub: Arc<Hub>, mut stopping: signal::Receiver<bool>) {
        let probe = tokio::spawn(probe(
            self.client.clone(),
            self.keys.clone(),
            self.health.clone(),
            stopping.clone(),
        ));
        let mut next = self.after + 1;
        let mut broken = false;
        let all = self.keys.all();
        loop {
            let create = WatchCreateRequest {
                range_end: ops::prefix_end(all.as_bytes()),
                key: all.clone().into_bytes(),
                start_revision: next,
                prev_kv: true,
                ..Default::default()
            };
            let opened = tokio::select! {
                opened = self.client.watch(create) => opened,
                _ = stopping.wait_for(|stop| *stop) => break,
            };
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(e) => {
                    next = self.after_failure(&e, next, &hub, &mut broken);
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => continue,
                        _ = stopping.wait_for(|stop| *stop) => break,
                    }
                }
            };
            if broken {
                tracing::info!(
                    from = next,
                    "etcd watch open again; changes flow to watchers"
                );
                broken = false;
            }
            loop {
                let answer = tokio::select! {
                    answer = stream.next() => answer,
                    _ = stopping.wait_for(|stop| *stop) => {
                        probe.abort();
                        return;
                    }
                };
                match answer {
                    Ok(answer) => {
                        let mut last = next - 1;
                        for event in &answer.events {
                            last = last.max(self.apply(event, &hub));
                        }
                        next = last + 1;
                        hub.advance(self.api_revision(last));
                    }
                    Err(e) => {
                        next = self.after_failure(&e, next, &hub, &mut broken);
                        break;
                    }
                }
            }
        }
        probe.abort();
    }

    /// Logs a broken watch (once until it works again) and answers where to resume.
    fn after_failure(&self, e: &EtcdError, next: i64, hub: &Hub, broken: &mut bool) -> i64 {
        if let EtcdError::Compacted(oldest) = e {
            tracing::warn!(
                wanted = next,
                oldest,
                "etcd compacted the changes this replica had not seen yet; its watchers list again"
            );
            hub.restart_at(self.api_revision(oldest - 1));
            return *oldest;
        }
        if !*broken {
            tracing::warn!(error = %e, from = next, "etcd watch broke; opening it again");
            *broken = true;
        }
        next
    }

    /// Publishes what `event` means for watchers; answers its etcd revision.
    fn apply(&self, event: &Event, hub: &Hub) -> i64 {
        let Some(kv) = &event.kv else { return 0 };
        let deleted = event.r#type == EventType::Delete as i32;
        match self.keys.kind(&kv.key) {
            KeyKind::Node(id) => {
                let previous = event.prev_kv.as_ref().and_then(|p| decode_node(p).ok());
                let change = if deleted {
                    previous.map(|node| (ChangeKind::Deleted, node))
                } else {
                    match decode_node(kv) {
                        Ok(node) => match previous {
                            None => Some((ChangeKind::Added, node)),
                            Some(old) if old.differs_for_watchers(&node) => {
                                Some((ChangeKind::Updated, node))
                            }
                            Some(_) => None,
                        },
                        Err(e) => {
                            tracing::error!(node = %id, error = %e, "etcd holds a node this replica cannot read; watchers are not told about this change");
                            None
                        }
                    }
                };
                if let Some((kind, node)) = change {
                    hub.publish([Change {
                        revision: self.api_revision(kv.mod_revision),
                        kind,
                        node,
                    }]);
                }
            }
            KeyKind::Lease(index) => {
                if deleted {
                    self.hint.freed(index);
                }
                self.known
                    .apply(Seen::Lease(index), !deleted, kv.mod_revision);
            }
            KeyKind::Host(ip) => {
                let id = NodeId::new(decode_number(kv).unwrap_or_default());
                self.known
                    .apply(Seen::Host(ip, id), !deleted, kv.mod_revision);
            }
            KeyKind::Mac(mac) => {
                let id = NodeId::new(decode_number(kv).unwrap_or_default());
                self.known
                    .apply(Seen::Mac(mac, id), !deleted, kv.mod_revision);
            }
            KeyKind::Other => {}
        }
        kv.mod_revision
    }
}

/// How many probes apart the leader is looked up again.
const LEADER_EVERY: u32 = 5;

/// Reads from etcd every second (a read that needs quorum) and records in `health`
/// whether that works, so `/health` tells within a second when etcd is lost or back; every
/// few seconds it also points the client at the current leader.
async fn probe(
    client: EtcdClient,
    keys: Keys,
    health: WriteHealth,
    mut stopping: signal::Receiver<bool>,
) {
    for round in 0u32.. {
        if round % LEADER_EVERY == 0 {
            client.prefer_leader().await;
        }
        let read = quilt_etcd::pb::RangeRequest {
            count_only: true,
            ..ops::get(keys.plan())
        };
        match client.range(read).await {
            Ok(_) => health.worked(),
            Err(e) => health.failed(&e),
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}
