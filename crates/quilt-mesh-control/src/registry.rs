//! The registry: the one thread that owns the [`Store`] and publishes its changes.
//!
//! Every read and write is a job run on that thread, in arrival order. A write and the
//! publication of its change happen together there, so watchers see changes in revision
//! order, and a request whose client went away still finishes what it started (the job
//! runs to the end; nobody is left half-published). A store shared by several replicas
//! (etcd) has its changes published by its own feed instead ([`Publication::ByFeed`]),
//! which also carries the other replicas' changes. Such a store may also hand the registry
//! more handles on itself ([`Store::more_handles`]): then several threads take jobs from
//! the one queue and run them at once, since that store guards every write against
//! concurrent writers anyway (the other replicas).

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::auth::AuthError;
use crate::model::{Condition, MacAddr, NewNode, Node, NodeId, NodeToken, now_ms};
use crate::store::{MarkDown, Registration, Revision, Store, StoreError, WriteHealth};
use crate::watch::Hub;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Denied(#[from] AuthError),
    #[error(
        "vtep_mac {mac} is already {holder}'s (host {holder_ip}); every node needs a VXLAN device MAC of its own"
    )]
    MacTaken {
        mac: MacAddr,
        holder: NodeId,
        holder_ip: std::net::Ipv4Addr,
    },
    #[error("the registry is shutting down")]
    Stopped,
}

/// How long the registry waits idle before it lets the store write what it held back.
const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

/// How many jobs run at once on a store that offers more handles (each round trip to
/// etcd takes a millisecond or more; one at a time, a replica would mostly wait).
const JOBS_AT_ONCE: usize = 16;

/// Who tells watchers about the store's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publication {
    /// The registry, as each write returns: the store has this one writer.
    ByRegistry,
    /// The store's change feed: other replicas write to the same store.
    ByFeed,
}

/// Publishes the registry's changes to the hub, unless a feed does.
pub struct Publisher {
    hub: Arc<Hub>,
    publication: Publication,
}

impl Publisher {
    pub fn publish(&self, changes: impl IntoIterator<Item = crate::store::Change>) {
        if self.publication == Publication::ByRegistry {
            self.hub.publish(changes);
        }
    }
}

type Job = Box<dyn FnOnce(&mut dyn Store, &Publisher) + Send>;

enum Message {
    Job(Job),
    Stop,
}

/// A handle to the registry thread; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    sender: mpsc::Sender<Message>,
    hub: Arc<Hub>,
    write_health: WriteHealth,
}

/// Owns the registry threads: [`RegistryThread::stop`] ends them after the jobs already
/// queued.
pub struct RegistryThread {
    sender: mpsc::Sender<Message>,
    handles: Vec<JoinHandle<()>>,
}

impl RegistryThread {
    /// Stops the threads and waits for them; the store is closed when this returns.
    pub async fn stop(self) {
        // One stop for each thread, queued after every job already sent.
        for _ in &self.handles {
            let _ = self.sender.send(Message::Stop);
        }
        for handle in self.handles {
            match tokio::task::spawn_blocking(move || handle.join()).await {
                Ok(Ok(())) => {}
                _ => tracing::error!("registry thread panicked"),
            }
        }
    }
}

impl Registry {
    /// Starts the registry thread over `store` (and more threads on more handles when the
    /// store offers them and a feed publishes its changes); its changes reach `hub` as
    /// `publication` says.
    pub fn start(
        mut store: Box<dyn Store>,
        hub: Arc<Hub>,
        publication: Publication,
    ) -> std::io::Result<(Registry, RegistryThread)> {
        let (sender, receiver) = mpsc::channel::<Message>();
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        let write_health = store.write_health();
        // Publishing as jobs return needs them one at a time, in revision order.
        let more = match publication {
            Publication::ByFeed => store.more_handles(JOBS_AT_ONCE - 1),
            Publication::ByRegistry => Vec::new(),
        };
        let mut handles = Vec::new();
        for (i, mut store) in std::iter::once(store).chain(more).enumerate() {
            let receiver = receiver.clone();
            let publisher = Publisher {
                hub: hub.clone(),
                publication,
            };
            let name = match i {
                0 => "quilt-registry".to_string(),
                i => format!("quilt-registry-{i}"),
            };
            let handle = std::thread::Builder::new().name(name).spawn(move || {
                loop {
                    // One thread waits on the queue at a time; the job runs unlocked.
                    let message = match receiver.lock() {
                        Ok(queue) => queue.recv_timeout(IDLE_FLUSH),
                        Err(_) => break,
                    };
                    match message {
                        Ok(Message::Job(job)) => job(store.as_mut(), &publisher),
                        Ok(Message::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if let Err(e) = store.flush() {
                                tracing::error!(error = %e, "cannot flush the store");
                            }
                        }
                    }
                }
                tracing::debug!("registry thread stopped");
            });
            match handle {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    for _ in &handles {
                        let _ = sender.send(Message::Stop);
                    }
                    return Err(e);
                }
            }
        }
        Ok((
            Registry {
                sender: sender.clone(),
                hub,
                write_health,
            },
            RegistryThread { sender, handles },
        ))
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Whether the store's writes work (read without waiting for the registry thread).
    pub fn write_health(&self) -> &WriteHealth {
        &self.write_health
    }

    /// Runs `f` on the registry thread and returns its result.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Store, &Publisher) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |store, hub| {
            let _ = tx.send(f(store, hub));
        });
        self.sender
            .send(Message::Job(job))
            .map_err(|_| RegistryError::Stopped)?;
        rx.await.map_err(|_| RegistryError::Stopped)?
    }

    /// Registers or renews a node (see [`Store::register`]).
    pub async fn register(
        &self,
        new: NewNode,
        token: NodeToken,
    ) -> Result<Registration, RegistryError> {
        self.call(move |store, hub| {
            // Two nodes with one MAC would redirect each other's traffic on every peer.
            if let Some(mac) = new.vtep_mac
                && let Some(holder) = store.mac_holder(mac)?
                && holder.host_ip != new.host_ip
            {
                return Err(RegistryError::MacTaken {
                    mac,
                    holder: holder.id,
                    holder_ip: holder.host_ip,
                });
            }
            let registration = store.register(&new, token.hash(), now_ms())?;
            hub.publish(registration.change.clone());
            Ok(registration)
        })
        .await
    }

    /// Records a heartbeat from node `id`, with what it reports as wrong (`condition`),
    /// once `authorize` accepts the node.
    pub async fn heartbeat(
        &self,
        id: NodeId,
        condition: Option<Condition>,
        authorize: impl FnOnce(&Node) -> Result<(), AuthError> + Send + 'static,
    ) -> Result<Node, RegistryError> {
        self.call(move |store, hub| {
            let mut node = store.get(id)?.ok_or(StoreError::NotFound(id))?;
            authorize(&node)?;
            let now = now_ms();
            match store.heartbeat(id, now, condition.as_ref())? {
                Some(change) => {
                    if change.node.condition != node.condition {
                        match &change.node.condition {
                            Some(c) => tracing::warn!(
                                node = %id, reason = c.reason(), message = c.message(),
                                "node reports a condition"
                            ),
                            None => {
                                tracing::info!(node = %id, "node reports no condition any more")
                            }
                        }
                    }
                    node = change.node.clone();
                    hub.publish([change]);
                }
                None => node.last_heartbeat_ms = now,
            }
            Ok(node)
        })
        .await
    }

    /// Removes node `id` once `authorize` accepts the request; answers the node as it was.
    pub async fn delete(
        &self,
        id: NodeId,
        authorize: impl FnOnce(&Node) -> Result<(), AuthError> + Send + 'static,
    ) -> Result<Node, RegistryError> {
        self.call(move |store, hub| {
            let node = store.get(id)?.ok_or(StoreError::NotFound(id))?;
            authorize(&node)?;
            let change = store.delete(id)?;
            let node = change.node.clone();
            hub.publish([change]);
            Ok(node)
        })
        .await
    }

    /// Marks node `id` down at once, once `authorize` accepts the request (it leaves, for
    /// now: it stays listed and keeps its lease, and a heartbeat or a registration brings
    /// it back). Answers the node as it is now.
    pub async fn deregister(
        &self,
        id: NodeId,
        authorize: impl FnOnce(&Node) -> Result<(), AuthError> + Send + 'static,
    ) -> Result<Node, RegistryError> {
        self.call(move |store, hub| {
            let mut node = store.get(id)?.ok_or(StoreError::NotFound(id))?;
            authorize(&node)?;
            let changes = store.mark_down(MarkDown::Node(id))?;
            if let Some(change) = changes.first() {
                node = change.node.clone();
            }
            hub.publish(changes);
            Ok(node)
        })
        .await
    }

    pub async fn get(&self, id: NodeId) -> Result<Option<Node>, RegistryError> {
        self.call(move |store, _| Ok(store.get(id)?)).await
    }

    /// The store's revision (which a hub fed by another replica's writes may not have
    /// reached yet).
    pub async fn revision(&self) -> Result<Revision, RegistryError> {
        self.call(|store, _| Ok(store.revision()?)).await
    }

    pub async fn list(&self) -> Result<(Vec<Node>, Revision), RegistryError> {
        self.call(|store, _| Ok(store.list()?)).await
    }

    /// Marks down every up node not heard from since `cutoff_ms`; answers those nodes.
    pub async fn mark_down_before(&self, cutoff_ms: u64) -> Result<Vec<Node>, RegistryError> {
        self.call(move |store, hub| {
            let changes = store.mark_down(MarkDown::SilentSince(cutoff_ms))?;
            let nodes = changes.iter().map(|c| c.node.clone()).collect();
            hub.publish(changes);
            Ok(nodes)
        })
        .await
    }

    /// (up, down) node counts.
    pub async fn count_by_status(&self) -> Result<(u64, u64), RegistryError> {
        self.call(|store, _| Ok(store.count_by_status()?)).await
    }
}
