//! Coalescing of concurrent InjectRoute calls: calls that arrive while a batch is being
//! applied wait, and the next turn takes all of them as one batch with one kernel write
//! and one transaction. A turn that carries other callers' routes runs on a task that
//! owns every reply of its batch, so a cancelled call never cuts their batch in half
//! between the kernel and the store. A call alone in its turn (the common case) is
//! applied on its own task, without that hand-off; if it is cancelled half-way, a
//! reconcile pass puts the kernel back as the store records it.

use std::sync::{Arc, Mutex};

use quilt_kernel::Kernel;
use tokio::sync::oneshot;

use crate::RuntimeError;
use crate::core::Runtime;
use crate::model::{ManagedRoute, RouteChange};

/// Most calls one batch takes.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<RouteChange, RuntimeError>>;

/// Shared by every handler (cheap to clone).
pub struct InjectQueue<K> {
    runtime: Arc<Runtime<K>>,
    waiting: Arc<Mutex<Vec<(ManagedRoute, Reply)>>>,
    applying: Arc<tokio::sync::Mutex<()>>,
}

impl<K> Clone for InjectQueue<K> {
    fn clone(&self) -> Self {
        Self {
            runtime: self.runtime.clone(),
            waiting: self.waiting.clone(),
            applying: self.applying.clone(),
        }
    }
}

impl<K: Kernel> InjectQueue<K> {
    pub fn new(runtime: Arc<Runtime<K>>) -> Self {
        Self {
            runtime,
            waiting: Arc::default(),
            applying: Arc::default(),
        }
    }

    /// Applies one route, alone or in a batch with the calls waiting beside it, and
    /// answers its own result.
    pub async fn inject(&self, route: ManagedRoute) -> Result<RouteChange, RuntimeError> {
        let (reply, mut answer) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((route, reply));
        // Every caller takes its turn at applying, so no call is ever left waiting with
        // nobody to apply it; a caller whose route was applied in an earlier turn finds
        // its answer ready. The turn is applied on a task of its own that owns every
        // reply: a caller that goes away (a cancelled RPC) cannot cut a batch in half
        // between the kernel and the store.
        let turn = self.applying.clone().lock_owned().await;
        if let Ok(result) = answer.try_recv() {
            return result;
        }
        let alone = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            // This call's route is still waiting (no earlier turn answered it), so a
            // queue of one holds only it.
            if waiting.len() == 1 {
                waiting.pop()
            } else {
                None
            }
        };
        if let Some((route, _own_reply)) = alone {
            let repair = RepairIfCancelled(Some(self.runtime.clone()));
            let result = self
                .runtime
                .inject_routes(std::slice::from_ref(&route))
                .await;
            repair.disarm();
            drop(turn);
            return result
                .into_iter()
                .next()
                .unwrap_or(Err(RuntimeError::Internal("no result for this route")));
        }
        let runtime = self.runtime.clone();
        let waiting = self.waiting.clone();
        let applied = tokio::spawn(async move {
            let _turn = turn;
            loop {
                let batch: Vec<(ManagedRoute, Reply)> = {
                    let mut waiting = waiting.lock().unwrap_or_else(|p| p.into_inner());
                    let take = waiting.len().min(MAX_BATCH);
                    waiting.drain(..take).collect()
                };
                if batch.is_empty() {
                    return;
                }
                let (routes, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let results = runtime.inject_routes(&routes).await;
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
        });
        if applied.await.is_err() {
            return Err(RuntimeError::Internal("applying the batch failed"));
        }
        answer
            .try_recv()
            .unwrap_or(Err(RuntimeError::Internal("no result for this route")))
    }
}

/// Armed while a lone call applies its route: dropped armed (the call was cancelled
/// between the kernel and the store), it starts a reconcile pass, which makes the kernel
/// what the store records again.
struct RepairIfCancelled<K: Kernel>(Option<Arc<Runtime<K>>>);

impl<K: Kernel> RepairIfCancelled<K> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl<K: Kernel> Drop for RepairIfCancelled<K> {
    fn drop(&mut self) {
        let Some(runtime) = self.0.take() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        tracing::info!(
            "an InjectRoute call was cancelled while applied; reconciling the kernel with the store"
        );
        handle.spawn(async move {
            if let Err(e) = runtime.reconcile().await {
                tracing::warn!(error = %e, "reconcile after a cancelled InjectRoute failed; the next pass retries");
            }
        });
    }
}
