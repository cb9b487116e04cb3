//! [`ControlClient`]: the control plane's HTTP API as every Quilt Mesh program calls it.
//!
//! Several URLs may be given (replicas); each call tries them in order, starting with the
//! one that answered last. A replica that does not connect, does not answer within the
//! failover timeout (2 s; the last one tried gets the whole request timeout) or answers
//! 502, 503 or 504 is left at once for the next. Any other answer that is an error is
//! final and comes back typed: [`ControlError`]. A watch stream whose server names a
//! keepalive interval ends with [`ControlError::WatchSilent`] after three silent ones.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::lines::lines;
use crate::replicas::Replicas;
use crate::silence::{self, Break};
use crate::types::{
    ErrorBody, Health, HeartbeatRequest, NodeCondition, NodeInfo, NodeList, RegisterRequest,
    RegisterResponse, Revision, WatchEvent,
};

/// How long calls may take. The watch stream has no overall limit: it lasts until the
/// server or the caller ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To open a TCP connection to one URL before trying the next.
    pub connect: Duration,
    /// For a whole unary call (list, register, heartbeat, leave, ...), and for a watch's
    /// answer to begin.
    pub request: Duration,
    /// For a replica other than the last one tried to begin its answer before the next
    /// is tried (capped by `request`).
    pub failover: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(10),
            failover: Duration::from_secs(2),
        }
    }
}

/// Why a control-plane call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no control plane url given")]
    NoUrl,
    #[error("control plane url {0:?} is not an http:// or https:// url")]
    BadUrl(String),
    #[error("cannot build the http client: {0}")]
    Client(String),
    #[error("no control plane answered ({0})")]
    Unreachable(String),
    #[error("control plane {url} refused {what}: {status} {message}")]
    Refused {
        what: &'static str,
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("node {0} is not registered (any more)")]
    UnknownNode(String),
    #[error(
        "the control plane no longer accepts this node's token for {0} (a newer registration rotated it)"
    )]
    StaleToken(String),
    #[error("watch history no longer holds revision {0}; list again")]
    Gone(Revision),
    #[error(
        "watch stream from {url} sent nothing for {silent:?} (3 keepalive intervals): the replica or the connection is dead; watch again"
    )]
    WatchSilent { url: String, silent: Duration },
    #[error("control plane answered {what} with a body that does not parse: {message}")]
    BadAnswer { what: &'static str, message: String },
}

impl ControlError {
    /// The HTTP status of a refusal, if this is one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ControlError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one or more control-plane replicas. Clones share the connection pool and
/// the preferred replica.
#[derive(Clone)]
pub struct ControlClient {
    replicas: Arc<Replicas>,
    http: reqwest::Client,
    join_token: Option<String>,
    timeouts: Timeouts,
}

/// Options for [`ControlClient`], from [`ControlClient::builder`].
pub struct ControlClientBuilder {
    urls: Vec<String>,
    join_token: Option<String>,
    timeouts: Timeouts,
    system_proxy: bool,
    tls: Option<ClientTls>,
}

/// How an `https://` control plane is trusted, and what this client presents to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA that issued the control plane's certificate.
    pub ca: std::path::PathBuf,
    /// A certificate and key to present (a control plane with `--tls-ca` asks for one).
    pub identity: Option<quilt_tls::Identity>,
}

impl ControlClientBuilder {
    /// Sent as `Authorization: Bearer` where the join token is what the server asks for:
    /// registering, and an operator deleting a node.
    pub fn join_token(mut self, token: Option<String>) -> Self {
        self.join_token = token.filter(|t| !t.is_empty());
        self
    }

    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Trust `https://` control planes by `tls.ca`, presenting `tls.identity` if any.
    /// Without it an `https://` URL is checked against the system's CAs.
    pub fn tls(mut self, tls: Option<ClientTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Ignore `HTTP_PROXY` and the like: for callers that reach the control plane over
    /// a network no proxy serves (the lab's namespaces).
    pub fn no_proxy(mut self) -> Self {
        self.system_proxy = false;
        self
    }

    /// Checks the URLs (at least one, each http:// or https://) and builds the client.
    pub fn build(self) -> Result<ControlClient, ControlError> {
        let urls: Vec<String> = self
            .urls
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(ControlError::NoUrl);
        }
        if let Some(bad) = urls
            .iter()
            .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(ControlError::BadUrl(bad.clone()));
        }
        quilt_tls::install_default_provider();
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.timeouts.connect)
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(tls) = &self.tls {
            let config = quilt_tls::client_config(&tls.ca, tls.identity.as_ref())
                .map_err(|e| ControlError::Client(e.to_string()))?;
            http = http.tls_backend_preconfigured(config);
        }
        if !self.system_proxy {
            http = http.no_proxy();
        }
        let http = http
            .build()
            .map_err(|e| ControlError::Client(error_chain(&e)))?;
        Ok(ControlClient {
            replicas: Arc::new(Replicas::new(urls)),
            http,
            join_token: self.join_token,
            timeouts: self.timeouts,
        })
    }
}

impl ControlClient {
    /// A client of the replicas at `urls` (`http://HOST:PORT`, tried in order).
    pub fn builder<I, S>(urls: I) -> ControlClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ControlClientBuilder {
            urls: urls.into_iter().map(Into::into).collect(),
            join_token: None,
            timeouts: Timeouts::default(),
            system_proxy: true,
            tls: None,
        }
    }

    /// The URLs this client tries, as given (trimmed).
    pub fn urls(&self) -> &[String] {
        self.replicas.urls()
    }

    /// The URL the next call tries first: the replica that answered last.
    pub fn preferred_url(&self) -> &str {
        &self.urls()[self.replicas.preferred()]
    }

    /// Sends the request `build` makes to each replica in turn, the preferred one first,
    /// until one answers something other than 502, 503 or 504: a replica that does not
    /// connect, or does not begin its answer within the failover timeout (the last one
    /// tried: the request timeout), is left for the next. Answers the replica's index,
    /// the URL and the response; when every replica failed and some answered 502-504, the
    /// last of those answers (the caller reads it as the refusal it is).
    async fn send(
        &self,
        method: Method,
        path: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<(usize, String, Response), ControlError> {
        let start = self.replicas.preferred();
        let count = self.urls().len();
        let mut failures = Vec::new();
        let mut unavailable = None;
        for (tried, index) in self.replicas.order(start).enumerate() {
            let url = format!("{}{path}", self.urls()[index]);
            let limit = if tried + 1 == count {
                self.timeouts.request
            } else {
                self.timeouts.failover.min(self.timeouts.request)
            };
            let request = build(self.http.request(method.clone(), &url)).send();
            match tokio::time::timeout(limit, request).await {
                Ok(Ok(response)) if is_unavailable(response.status()) => {
                    failures.push(format!("{url}: answered {}", response.status()));
                    unavailable = Some((index, url, response));
                }
                Ok(Ok(response)) => {
                    self.replicas.answered(start, index, &failures);
                    return Ok((index, url, response));
                }
                Ok(Err(e)) => failures.push(format!("{url}: {}", error_chain(&e))),
                Err(_) => failures.push(format!("{url}: no answer within {limit:?}")),
            }
        }
        unavailable.ok_or_else(|| ControlError::Unreachable(failures.join("; ")))
    }

    /// A unary call: bounded by the request timeout.
    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
    ) -> Result<(String, Response), ControlError> {
        let timeout = self.timeouts.request;
        let (_, url, response) = self
            .send(method, path, |builder| {
                let builder = builder.timeout(timeout);
                match bearer {
                    Some(token) => with_token(builder, token),
                    None => builder,
                }
            })
            .await?;
        Ok((url, response))
    }

    async fn refusal(what: &'static str, url: String, response: Response) -> ControlError {
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        let message = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => b.error,
            Err(_) if body.is_empty() => "no error message".to_string(),
            Err(_) => excerpt(&String::from_utf8_lossy(&body)),
        };
        ControlError::Refused {
            what,
            url,
            status,
            message,
        }
    }

    /// Success for a call about this node that a node no longer known (404) makes moot.
    async fn done_or_gone(
        what: &'static str,
        (url, response): (String, Response),
    ) -> Result<(), ControlError> {
        match response.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            _ => Err(Self::refusal(what, url, response).await),
        }
    }

    /// The body of a successful answer; any other answer is a refusal.
    async fn answer_body(
        what: &'static str,
        (url, response): (String, Response),
    ) -> Result<Vec<u8>, ControlError> {
        if !response.status().is_success() {
            return Err(Self::refusal(what, url, response).await);
        }
        match response.bytes().await {
            Ok(body) => Ok(body.to_vec()),
            Err(e) => Err(ControlError::BadAnswer {
                what,
                message: error_chain(&e),
            }),
        }
    }

    async fn parse<T: DeserializeOwned>(
        what: &'static str,
        answer: (String, Response),
    ) -> Result<T, ControlError> {
        let body = Self::answer_body(what, answer).await?;
        serde_json::from_slice(&body).map_err(|e| bad_answer(what, &e, &body))
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, ControlError> {
        let answer = self.call(Method::GET, "/health", None).await?;
        Self::parse("the health check", answer).await
    }

    /// Registers (or renews the registration of) a node, with the join token if given.
    pub async fn register(
        &self,
        request: &RegisterRequest,
    ) -> Result<RegisterResponse, ControlError> {
        let timeout = self.timeouts.request;
        let (_, url, response) = self
            .send(Method::POST, "/api/nodes/register", |builder| {
                let builder = builder.timeout(timeout).json(request);
                match &self.join_token {
                    Some(token) => builder.bearer_auth(token),
                    None => builder,
                }
            })
            .await?;
        let what = "the registration";
        let body = Self::answer_body(what, (url, response)).await?;
        RegisterResponse::from_answer(&body, request).map_err(|e| bad_answer(what, &e, &body))
    }

    /// Every node, and the revision to watch from.
    pub async fn list(&self) -> Result<NodeList, ControlError> {
        let answer = self.call(Method::GET, "/api/nodes", None).await?;
        Self::parse("the node list", answer).await
    }

    /// Tells the control plane node `node_id` is alive, with its own token, and what is
    /// wrong with it if anything (`condition`; none sends the original empty body). A 404
    /// is [`ControlError::UnknownNode`]; a refused token (401/403) is
    /// [`ControlError::StaleToken`]: register again.
    pub async fn heartbeat(
        &self,
        node_id: &str,
        token: &str,
        condition: Option<&NodeCondition>,
    ) -> Result<(), ControlError> {
        let path = format!("/api/nodes/{node_id}/heartbeat");
        let timeout = self.timeouts.request;
        let (_, url, response) = self
            .send(Method::POST, &path, |builder| {
                let builder = with_token(builder.timeout(timeout), token);
                match condition {
                    Some(condition) => builder.json(&HeartbeatRequest {
                        condition: Some(condition.clone()),
                    }),
                    None => builder,
                }
            })
            .await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(ControlError::UnknownNode(node_id.to_string())),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(ControlError::StaleToken(node_id.to_string()))
            }
            _ => Err(Self::refusal("the heartbeat", url, response).await),
        }
    }

    /// Deregisters node `node_id` with its own token; a node already gone is fine.
    pub async fn leave(&self, node_id: &str, token: &str) -> Result<(), ControlError> {
        let path = format!("/api/nodes/{node_id}");
        let answer = self.call(Method::DELETE, &path, Some(token)).await?;
        Self::done_or_gone("leaving", answer).await
    }

    /// Marks node `node_id` down at once with its own token (`POST .../deregister`):
    /// peers withdraw their routes now; the node keeps its subnet and comes back with
    /// its next heartbeat. A node the control plane does not know is fine.
    pub async fn deregister(&self, node_id: &str, token: &str) -> Result<(), ControlError> {
        let path = format!("/api/nodes/{node_id}/deregister");
        let answer = self.call(Method::POST, &path, Some(token)).await?;
        Self::done_or_gone("deregistering", answer).await
    }

    /// An operator deletes node `node_id` (with the join token, if given); answers the
    /// node as it was.
    pub async fn delete_node(&self, node_id: &str) -> Result<NodeInfo, ControlError> {
        let path = format!("/api/nodes/{node_id}");
        let answer = self
            .call(Method::DELETE, &path, self.join_token.as_deref())
            .await?;
        Self::parse("deleting the node", answer).await
    }

    /// The stream of changes after `since`, one event per line (keepalive lines
    /// skipped), until the connection ends. A revision no longer in the history is
    /// [`ControlError::Gone`]. A stream that breaks, or that is silent for three of the
    /// keepalive intervals its server names, ends with an error after which the next
    /// call starts with the next replica: watch again from the last revision seen.
    pub async fn watch(
        &self,
        since: Revision,
    ) -> Result<impl Stream<Item = Result<WatchEvent, ControlError>> + use<>, ControlError> {
        let path = format!("/api/nodes/watch?since={since}");
        let (index, url, response) = self.send(Method::GET, &path, |builder| builder).await?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::GONE => return Err(ControlError::Gone(since)),
            _ => return Err(Self::refusal("the watch", url, response).await),
        }
        let limit = silence::limit_of(response.headers());
        let replicas = self.replicas.clone();
        let bytes = Box::pin(silence::limited(response.bytes_stream(), limit));
        let broken = move |why: Break<reqwest::Error>| {
            let e = match why {
                Break::Transport(e) => ControlError::Unreachable(format!(
                    "watch stream from {url} broke: {}",
                    error_chain(&e)
                )),
                Break::Silent(silent) => ControlError::WatchSilent {
                    url: url.clone(),
                    silent,
                },
            };
            replicas.leave(index, &e.to_string());
            e
        };
        Ok(events(lines(bytes), broken))
    }
}

/// Watch events from the stream's `lines`; a break of the stream is made an error by
/// `broken`.
fn events<E>(
    lines: impl Stream<Item = Result<Vec<u8>, E>>,
    broken: impl Fn(E) -> ControlError,
) -> impl Stream<Item = Result<WatchEvent, ControlError>> {
    lines.map(move |line| {
        let line = line.map_err(&broken)?;
        serde_json::from_slice::<WatchEvent>(&line)
            .map_err(|e| bad_answer("a watch event", &e, &line))
    })
}

/// An answer that says "this replica cannot serve now; another may": 502, 503, 504.
fn is_unavailable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// `builder` with `Authorization: Bearer <token>`, unless there is no token (a control
/// plane that issues none, as the original, gets no header rather than an empty one).
fn with_token(builder: RequestBuilder, token: &str) -> RequestBuilder {
    if token.is_empty() {
        builder
    } else {
        builder.bearer_auth(token)
    }
}

/// An error with its sources, `outer: inner: innermost`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let chain: Vec<String> = std::iter::successors(Some(e), |e| e.source())
        .map(ToString::to_string)
        .collect();
    chain.join(": ")
}

/// An answer that does not parse: why, and what it was.
fn bad_answer(what: &'static str, e: &serde_json::Error, body: &[u8]) -> ControlError {
    ControlError::BadAnswer {
        what,
        message: format!(
            "{e}; the body was {:?}",
            excerpt(&String::from_utf8_lossy(body))
        ),
    }
}

/// At most 200 characters of a body that is not the documented error shape.
fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_when_the_client_is_built() {
        assert!(matches!(
            ControlClient::builder([" ", ""]).build(),
            Err(ControlError::NoUrl)
        ));
        match ControlClient::builder(["http://a:1", "a:2"]).build() {
            Err(ControlError::BadUrl(u)) => assert_eq!(u, "a:2"),
            other => panic!("{:?}", other.err()),
        }
        let c = ControlClient::builder(["http://a:1/ ", "https://b:2"])
            .build()
            .unwrap();
        assert_eq!(c.urls(), ["http://a:1", "https://b:2"]);
    }

    #[tokio::test]
    async fn a_replica_that_does_not_answer_is_skipped_and_named() {
        // Port 9 (discard) on loopback: nothing listens there in a test environment.
        let c = ControlClient::builder(["http://127.0.0.1:9", "http://127.0.0.2:9"])
            .no_proxy()
            .build()
            .unwrap();
        let e = c.list().await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ControlError::Unreachable(_)), "{text}");
        assert!(
            text.contains("http://127.0.0.1:9/api/nodes") && text.contains("127.0.0.2:9"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn keepalive_lines_are_skipped_by_the_watch_parsing() {
        let event = WatchEvent {
            revision: 7,
            kind: crate::types::EventType::Added,
            node: NodeInfo {
                node_id: "node-1".into(),
                hostname: "a".into(),
                host_ip: "192.168.1.1".parse().unwrap(),
                subnet: "10.42.1.0/24".parse().unwrap(),
                cpu_cores: 2,
                ram_mb: 1024,
                status: crate::types::Status::Up,
                registered_at: 1,
                last_heartbeat: 1,
                vtep_mac: None,
                vxlan_port: None,
                vni: None,
                condition: None,
            },
        };
        let line = serde_json::to_string(&event).unwrap();
        let second = line.replace("\"revision\":7", "\"revision\":8");
        // Keepalives alone, between events, and in the middle of a chunk.
        let body = format!("\n\n{line}\n\n{}\n\n", second);
        let (head, tail) = body.split_at(body.len() / 2);
        let chunks: Vec<Result<Vec<u8>, String>> = vec![
            Ok(b"\n".to_vec()),
            Ok(head.as_bytes().to_vec()),
            Ok(b"".to_vec()),
            Ok(tail.as_bytes().to_vec()),
            Ok(b"\n".to_vec()),
        ];
        let got: Vec<_> = events(lines(futures::stream::iter(chunks)), |e: String| {
            ControlError::Unreachable(e)
        })
        .collect()
        .await;
        let revisions: Vec<_> = got.into_iter().map(|e| e.unwrap().revision).collect();
        assert_eq!(revisions, [7, 8]);
    }

    #[test]
    fn only_502_503_and_504_move_on_to_the_next_replica() {
        for (status, moves) in [
            (502, true),
            (503, true),
            (504, true),
            (500, false),
            (429, false),
            (404, false),
        ] {
            assert_eq!(
                is_unavailable(StatusCode::from_u16(status).unwrap()),
                moves,
                "{status}"
            );
        }
    }

    #[test]
    fn long_bodies_are_cut() {
        let long = "x".repeat(1000);
        assert_eq!(excerpt(&long).len(), 203);
        assert_eq!(excerpt("short"), "short");
    }
}
