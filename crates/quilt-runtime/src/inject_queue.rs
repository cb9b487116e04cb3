//! Coalescing of concurrent InjectRoute calls: calls that arrive while a batch is being
//! applied wait in a queue and go to the kernel and the store together, as one batch
//! with one transaction. One call at a time costs a channel hop; many at once cost
//! about as much as a single InjectRoutes.

use std::sync::Arc;

use quilt_kernel::Kernel;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::RuntimeError;
use crate::request::RouteRequest;
use crate::runtime::{RouteChange, Runtime};

/// Most calls one batch takes from the queue.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<RouteChange, RuntimeError>>;

/// The sending side; clone it into every handler. The worker stops once every sender
/// is gone and the queue is drained, so in-flight calls always get their answer.
#[derive(Clone)]
pub struct InjectQueue {
    sender: mpsc::Sender<(RouteRequest, Reply)>,
}

impl InjectQueue {
    /// Starts the worker that applies queued routes through `runtime`.
    pub fn start<K: Kernel>(runtime: Arc<Runtime<K>>) -> (Self, JoinHandle<()>) {
        let (sender, mut receiver) = mpsc::channel::<(RouteRequest, Reply)>(4 * MAX_BATCH);
        let worker = tokio::spawn(async move {
            let mut jobs = Vec::with_capacity(MAX_BATCH);
            while receiver.recv_many(&mut jobs, MAX_BATCH).await > 0 {
                let (routes, replies): (Vec<_>, Vec<_>) = jobs.drain(..).unzip();
                let results = runtime.inject_routes(&routes).await;
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
        });
        (Self { sender }, worker)
    }

    /// Applies one route as part of the next batch and answers its own result.
    pub async fn inject(&self, route: RouteRequest) -> Result<RouteChange, RuntimeError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || RuntimeError::NotRecorded("the runtime is shutting down".into());
        self.sender
            .send((route, reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
