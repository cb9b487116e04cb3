//! The control plane's HTTP API as the agent uses it: register, list, watch, heartbeat,
//! leave. Several URLs may be given; each call tries them in order, starting with the
//! one that answered last.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use quilt_mesh_control::api::types::{NodeList, RegisterRequest, RegisterResponse, WatchEvent};
use reqwest::StatusCode;

/// Why a control-plane call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no control plane answered ({0})")]
    Unreachable(String),
    #[error("control plane refused {what}: {status} {message}")]
    Refused {
        what: &'static str,
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
    Gone(u64),
    #[error("control plane answered {what} with a body that does not parse: {message}")]
    BadAnswer { what: &'static str, message: String },
}

/// A client of one or more control-plane replicas.
pub struct ControlPlane {
    urls: Vec<String>,
    preferred: AtomicUsize,
    http: reqwest::Client,
    join_token: Option<String>,
}

impl ControlPlane {
    pub fn new(urls: Vec<String>, join_token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            urls: urls
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            preferred: AtomicUsize::new(0),
            http,
            join_token,
        }
    }

    /// Sends the request `build` makes for each URL in turn until one answers at all.
    async fn send(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ControlError> {
        let start = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for offset in 0..self.urls.len() {
            let index = (start + offset) % self.urls.len();
            let url = &self.urls[index];
            match build(&self.http, url).send().await {
                Ok(response) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(e) => failures.push(format!("{url}: {e}")),
            }
        }
        Err(ControlError::Unreachable(failures.join("; ")))
    }

    async fn refusal(what: &'static str, response: reqwest::Response) -> ControlError {
        let status = response.status();
        let message = response
            .json::<quilt_mesh_control::api::types::ErrorBody>()
            .await
            .map(|b| b.error)
            .unwrap_or_default();
        ControlError::Refused {
            what,
            status,
            message,
        }
    }

    /// Registers (or renews the registration of) this node.
    pub async fn register(
        &self,
        request: &RegisterRequest,
    ) -> Result<RegisterResponse, ControlError> {
        let response = self
            .send(|http, url| {
                let builder = http.post(format!("{url}/api/nodes/register")).json(request);
                match &self.join_token {
                    Some(token) => builder.bearer_auth(token),
                    None => builder,
                }
            })
            .await?;
        if !response.status().is_success() {
            return Err(Self::refusal("the registration", response).await);
        }
        response.json().await.map_err(|e| ControlError::BadAnswer {
            what: "the registration",
            message: e.to_string(),
        })
    }

    /// Every node, and the revision to watch from.
    pub async fn list(&self) -> Result<NodeList, ControlError> {
        let response = self
            .send(|http, url| http.get(format!("{url}/api/nodes")))
            .await?;
        if !response.status().is_success() {
            return Err(Self::refusal("the node list", response).await);
        }
        response.json().await.map_err(|e| ControlError::BadAnswer {
            what: "the node list",
            message: e.to_string(),
        })
    }

    /// Tells the control plane this node is alive.
    pub async fn heartbeat(&self, node_id: &str, token: &str) -> Result<(), ControlError> {
        let response = self
            .send(|http, url| {
                http.post(format!("{url}/api/nodes/{node_id}/heartbeat"))
                    .bearer_auth(token)
                    .timeout(Duration::from_secs(5))
            })
            .await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(ControlError::UnknownNode(node_id.to_string())),
            // The token was rotated by a newer registration of this host: register again.
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(ControlError::StaleToken(node_id.to_string()))
            }
            _ => Err(Self::refusal("the heartbeat", response).await),
        }
    }

    /// Deregisters this node; its subnet becomes free.
    pub async fn leave(&self, node_id: &str, token: &str) -> Result<(), ControlError> {
        let response = self
            .send(|http, url| {
                http.delete(format!("{url}/api/nodes/{node_id}"))
                    .bearer_auth(token)
            })
            .await?;
        match response.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            _ => Err(Self::refusal("leaving", response).await),
        }
    }

    /// The stream of changes after `since`, one event per line, until the connection
    /// ends. A revision no longer in the history is [`ControlError::Gone`].
    pub async fn watch(
        &self,
        since: u64,
    ) -> Result<impl Stream<Item = Result<WatchEvent, ControlError>> + use<>, ControlError> {
        let response = self
            .send(|http, url| http.get(format!("{url}/api/nodes/watch?since={since}")))
            .await?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::GONE => return Err(ControlError::Gone(since)),
            _ => return Err(Self::refusal("the watch", response).await),
        }
        Ok(lines(response.bytes_stream()).map(|line| {
            let line = line?;
            serde_json::from_slice::<WatchEvent>(&line).map_err(|e| ControlError::BadAnswer {
                what: "a watch event",
                message: e.to_string(),
            })
        }))
    }
}

/// Splits a byte stream into non-empty lines.
fn lines<S, B, E>(bytes: S) -> impl Stream<Item = Result<Vec<u8>, ControlError>>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    futures::stream::unfold(
        (bytes, Vec::<u8>::new(), false),
        |(mut bytes, mut buffer, done)| async move {
            loop {
                if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).take(end).collect();
                    if line.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    return Some((Ok(line), (bytes, buffer, done)));
                }
                if done {
                    return None;
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(chunk.as_ref()),
                    Some(Err(e)) => {
                        let error = ControlError::Unreachable(format!("watch stream broke: {e}"));
                        return Some((Err(error), (bytes, Vec::new(), true)));
                    }
                    None => return None,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_across_chunks() {
        let chunks: Vec<Result<&[u8], String>> =
            vec![Ok(b"{\"a\":1}\n{\"b\""), Ok(b":2}\n\n"), Ok(b"{\"c\":3}\n")];
        let got: Vec<_> = lines(futures::stream::iter(chunks))
            .map(|l| String::from_utf8(l.unwrap()).unwrap())
            .collect()
            .await;
        assert_eq!(got, vec!["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
    }
}
