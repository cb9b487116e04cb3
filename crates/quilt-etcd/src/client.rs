//! [`EtcdClient`]: calls to the members of one etcd cluster, each call tried on the member
//! that answered last, then on the others, each attempt bounded in time.
//!
//! A member that cannot be reached, has no leader (it lost quorum or is cut off) or does
//! not answer in time is left for the next one; only when every member fails is the call
//! [`EtcdError::Unavailable`]. Transactions are safe to try again on another member
//! because every write Quilt Mesh makes is guarded by compares: a write that was applied
//! before its answer was lost fails its compares the second time, and the caller reads
//! again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::pb::{
    self, RangeRequest, RangeResponse, StatusRequest, StatusResponse, TxnRequest, TxnResponse,
    WatchCreateRequest, WatchRequest, WatchResponse, kv_client::KvClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient,
};

/// Why an etcd call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd endpoint {0:?} is not an http:// URL (like http://127.0.0.1:2379)")]
    BadEndpoint(String),
    #[error("no etcd endpoint given")]
    NoEndpoint,
    /// No member could serve the call: all down, cut off, or without quorum.
    #[error("etcd is unavailable ({0})")]
    Unavailable(String),
    /// A member answered and refused the call.
    #[error("etcd refused {what}: {message}")]
    Refused { what: &'static str, message: String },
    /// A watch asked for a revision etcd no longer keeps.
    #[error("etcd compacted its history past the requested revision; oldest kept is {0}")]
    Compacted(i64),
}

/// How long one attempt on one member may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_millis(500),
            request: Duration::from_secs(2),
        }
    }
}

struct Member {
    url: String,
    channel: Channel,
}

/// A client of one etcd cluster; cheap to clone.
#[derive(Clone)]
pub struct EtcdClient {
    members: Arc<Vec<Member>>,
    preferred: Arc<AtomicUsize>,
    timeouts: Timeouts,
}

/// Whether a failure on one member is worth trying on the next.
fn worth_another_member(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

impl EtcdClient {
    /// A client of the members at `urls` (`http://HOST:PORT`). Connections open on first
    /// use; nothing is checked against the network here.
    pub fn new(urls: &[String], timeouts: Timeouts) -> Result<Self, EtcdError> {
        let mut members = Vec::new();
        for url in urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
            if !url.starts_with("http://") {
                return Err(EtcdError::BadEndpoint(url.to_string()));
            }
            let endpoint = Endpoint::from_shared(url.to_string())
                .map_err(|_| EtcdError::BadEndpoint(url.to_string()))?
                .connect_timeout(timeouts.connect)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(Duration::from_secs(2))
                .keep_alive_while_idle(true);
            members.push(Member {
                url: url.trim_end_matches('/').to_string(),
                channel: endpoint.connect_lazy(),
            });
        }
        if members.is_empty() {
            return Err(EtcdError::NoEndpoint);
        }
        Ok(Self {
            members: Arc::new(members),
            preferred: Arc::new(AtomicUsize::new(0)),
            timeouts,
        })
    }

    /// The member URLs, as given.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url.clone()).collect()
    }

    /// Runs `call` on the preferred member, then on each other one, until one answers.
    async fn on_some_member<T, F, Fut>(&self, what: &'static str, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for offset in 0..self.members.len() {
            let index = (start + offset) % self.members.len();
            let member = &self.members[index];
            match tokio::time::timeout(self.timeouts.request, call(member.channel.clone())).await {
                Ok(Ok(answer)) => {
                    if index != start {
                        tracing::info!(member = %member.url, "etcd calls now go to this member");
                        self.preferred.store(index, Ordering::Relaxed);
                    }
                    return Ok(answer);
                }
                Ok(Err(status)) if worth_another_member(&status) => {
                    failures.push(format!("{}: {}", member.url, status.message()));
                }
                Ok(Err(status)) => {
                    return Err(EtcdError::Refused {
                        what,
                        message: status.message().to_string(),
                    });
                }
                Err(_) => failures.push(format!(
                    "{}: no answer within {:?}",
                    member.url, self.timeouts.request
                )),
            }
        }
        Err(EtcdError::Unavailable(failures.join("; ")))
    }

    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.on_some_member("a read", |channel| {
            let request = request.clone();
            async move { Ok(KvClient::new(channel).range(request).await?.into_inner()) }
        })
        .await
    }

    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.on_some_member("a transaction", |channel| {
            let request = request.clone();
            async move { Ok(KvClient::new(channel).txn(request).await?.into_inner()) }
        })
        .await
    }

    /// The status of the member at `url` alone (no failover): its version, its leader.
    pub async fn member_status(&self, url: &str) -> Result<StatusResponse, EtcdError> {
        let member = self
            .members
            .iter()
            .find(|m| m.url == url)
            .ok_or_else(|| EtcdError::BadEndpoint(url.to_string()))?;
        let mut maintenance = MaintenanceClient::new(member.channel.clone());
        let call = maintenance.status(StatusRequest {});
        match tokio::time::timeout(self.timeouts.request, call).await {
            Ok(Ok(answer)) => Ok(answer.into_inner()),
            Ok(Err(status)) => Err(EtcdError::Unavailable(format!(
                "{url}: {}",
                status.message()
            ))),
            Err(_) => Err(EtcdError::Unavailable(format!(
                "{url}: no answer within {:?}",
                self.timeouts.request
            ))),
        }
    }

    /// Makes the leader the member calls go to first, when a member names one: the leader
    /// serves writes and linearizable reads without the extra hop a follower adds. Answers
    /// the leader's URL. Members are asked at once; one that does not answer is skipped.
    pub async fn prefer_leader(&self) -> Option<String> {
        let statuses =
            futures::future::join_all(self.members.iter().map(|m| self.member_status(&m.url)))
                .await;
        let leader = statuses
            .iter()
            .flatten()
            .map(|s| s.leader)
            .find(|id| *id != 0)?;
        let index = statuses.iter().position(|s| {
            s.as_ref()
                .ok()
                .and_then(|s| s.header.as_ref())
                .is_some_and(|h| h.member_id == leader)
        })?;
        if self.preferred.swap(index, Ordering::Relaxed) != index {
            tracing::info!(member = %self.members[index].url, "etcd calls now go to the leader first");
        }
        Some(self.members[index].url.clone())
    }

    /// Opens a watch on some member that has a leader; etcd ends the stream if that member
    /// loses its leader later (the `hasleader` requirement), so a watch never goes quietly
    /// stale on a member cut off from the others.
    pub async fn watch(&self, create: WatchCreateRequest) -> Result<WatchStream, EtcdError> {
        let opened = self
            .on_some_member("a watch", |channel| {
                let create = create.clone();
                async move {
                    let (requests, receiver) = mpsc::channel(4);
                    let _ = requests
                        .send(WatchRequest {
                            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                                create,
                            )),
                        })
                        .await;
                    let mut request =
                        tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
                    request.metadata_mut().insert(
                        "hasleader",
                        tonic::metadata::MetadataValue::from_static("true"),
                    );
                    let mut responses =
                        WatchClient::new(channel).watch(request).await?.into_inner();
                    // The first answer says whether the watch was created.
                    let first = responses
                        .message()
                        .await?
                        .ok_or_else(|| Status::unavailable("watch stream closed at once"))?;
                    Ok((requests, responses, first))
                }
            })
            .await?;
        let (requests, responses, first) = opened;
        if first.canceled {
            if first.compact_revision > 0 {
                return Err(EtcdError::Compacted(first.compact_revision));
            }
            return Err(EtcdError::Refused {
                what: "a watch",
                message: first.cancel_reason,
            });
        }
        Ok(WatchStream {
            _requests: requests,
            responses,
            pending: (!first.events.is_empty()).then_some(first),
        })
    }
}

/// An open watch: its answers, in revision order.
pub struct WatchStream {
    /// Kept open: closing the request side ends the watch.
    _requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
    pending: Option<WatchResponse>,
}

impl WatchStream {
    /// The next answer with events; `Err` when the stream broke or etcd cancelled it
    /// ([`EtcdError::Compacted`] when the history was compacted away).
    pub async fn next(&mut self) -> Result<WatchResponse, EtcdError> {
        if let Some(pending) = self.pending.take() {
            return Ok(pending);
        }
        loop {
            let answer = self
                .responses
                .message()
                .await
                .map_err(|s| {
                    EtcdError::Unavailable(format!("watch stream broke: {}", s.message()))
                })?
                .ok_or_else(|| EtcdError::Unavailable("watch stream closed".into()))?;
            if answer.canceled {
                if answer.compact_revision > 0 {
                    return Err(EtcdError::Compacted(answer.compact_revision));
                }
                return Err(EtcdError::Unavailable(format!(
                    "watch cancelled: {}",
                    answer.cancel_reason
                )));
            }
            if !answer.events.is_empty() {
                return Ok(answer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_are_checked_when_the_client_is_made() {
        let t = Timeouts::default();
        assert!(matches!(
            EtcdClient::new(&["127.0.0.1:2379".into()], t),
            Err(EtcdError::BadEndpoint(_))
        ));
        assert!(matches!(
            EtcdClient::new(&[" ".into()], t),
            Err(EtcdError::NoEndpoint)
        ));
        let c = EtcdClient::new(&["http://127.0.0.1:1/".into()], t).unwrap();
        assert_eq!(c.urls(), ["http://127.0.0.1:1"]);
    }

    #[tokio::test]
    async fn no_member_answering_is_unavailable_naming_each() {
        let urls = [
            "http://127.0.0.1:9".to_string(),
            "http://127.0.0.1:7".to_string(),
        ];
        let c = EtcdClient::new(&urls, Timeouts::default()).unwrap();
        let err = c.range(crate::ops::get("x")).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, EtcdError::Unavailable(_)), "{text}");
        assert!(
            text.contains("127.0.0.1:9") && text.contains("127.0.0.1:7"),
            "{text}"
        );
    }
}
