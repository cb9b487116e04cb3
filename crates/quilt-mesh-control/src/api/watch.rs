//! `GET /api/nodes/watch?since=REV`: a chunked stream of NDJSON events, one per change
//! after `since`, in revision order, until the client leaves or the server stops; a bare
//! newline (keepalive) whenever nothing was sent for `--watch-keepalive`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use quilt_api::types::KEEPALIVE_HEADER;
use quilt_common::cluster::excerpt;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch as signal};
use tokio::time::Instant;

use super::AppState;
use crate::error::ApiError;
use crate::metrics::WatcherGuard;
use crate::serve::ClientAddr;
use crate::store::Revision;
use crate::watch::{Event, Hub, WatchError};

/// Reads `since` from the query string; other parameters are ignored.
fn since(query: Option<&str>) -> Result<Option<Revision>, ApiError> {
    let Some(query) = query else { return Ok(None) };
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "since" {
            return value.parse().map(Some).map_err(|_| {
                ApiError::BadRequest(format!(
                    "since {:?} is not a revision number",
                    excerpt(value)
                ))
            });
        }
    }
    Ok(None)
}

/// The caps on open watch streams, in all and per client address.
#[derive(Debug)]
pub struct WatchSlots {
    max: usize,
    max_per_client: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open watch stream's place in [`WatchSlots`], given back when the stream ends.
struct WatchSlot {
    slots: Arc<WatchSlots>,
    client: Option<IpAddr>,
}

impl WatchSlots {
    pub fn new(max: usize, max_per_client: usize) -> Self {
        Self {
            max,
            max_per_client,
            open: Mutex::default(),
        }
    }

    /// A place for one more stream from `client` (unknown when the router is called
    /// without the server loop, which counts only toward the total).
    fn take(self: &Arc<Self>, client: Option<IpAddr>) -> Result<WatchSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.max {
            return Err(ApiError::TooManyWatchers(self.max));
        }
        if let Some(client) = client {
            let mine = open.1.entry(client).or_default();
            if *mine >= self.max_per_client {
                return Err(ApiError::TooManyWatchersFromClient {
                    client,
                    limit: self.max_per_client,
                });
            }
            *mine += 1;
        }
        open.0 += 1;
        Ok(WatchSlot {
            slots: self.clone(),
            client,
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(client) = self.client
            && let Some(n) = open.1.get_mut(&client)
        {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&client);
            }
        }
    }
}

struct Watcher {
    hub: Arc<Hub>,
    backlog: VecDeque<Arc<Event>>,
    live: broadcast::Receiver<Arc<Event>>,
    seen: Revision,
    stopping: signal::Receiver<bool>,
    /// How long the stream may be silent before a keepalive line.
    keepalive: Duration,
    /// When the last line (event or keepalive) was sent.
    sent_at: Instant,
    _counted: WatcherGuard,
    _slot: WatchSlot,
}

/// The keepalive line: an empty line, which NDJSON readers skip.
const KEEPALIVE_LINE: &[u8] = b"\n";

impl Watcher {
    /// The next line to send, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Bytes> {
        let line = self.next_line().await;
        self.sent_at = Instant::now();
        line
    }

    /// The next event's line, or a keepalive once nothing was sent for the interval.
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                self.seen = event.revision;
                return Some(event.line.clone());
            }
            tokio::select! {
                received = self.live.recv() => match received {
                    Ok(event) if event.revision <= self.seen => continue,
                    Ok(event) => {
                        self.seen = event.revision;
                        return Some(event.line.clone());
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Fell behind the live feed: catch up from the history if it still
                        // holds what we missed; otherwise end, and the client resumes (410).
                        match self.hub.subscribe(Some(self.seen)) {
                            Ok(sub) => {
                                self.backlog = sub.backlog;
                                self.live = sub.live;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "watcher fell behind the retained history; closing its stream");
                                return None;
                            }
                        }
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = self.stopping.wait_for(|stop| *stop) => return None,
                () = tokio::time::sleep_until(self.sent_at + self.keepalive) => {
                    return Some(Bytes::from_static(KEEPALIVE_LINE));
                }
            }
        }
    }
}

pub async fn watch(
    State(state): State<AppState>,
    client: Option<Extension<ClientAddr>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let since = since(query.as_deref())?;
    let slot = state
        .watch_slots
        .take(client.map(|Extension(ClientAddr(ip))| ip))?;
    let hub = state.registry.hub().clone();
    // No `since`: from the store's current revision (which a hub fed from etcd, still
    // reading its start-up replay or another replica's latest change, may not have reached).
    let since = match since {
        Some(since) => since,
        None => state.registry.revision().await?,
    };
    let sub = match hub.subscribe(Some(since)) {
        // Ahead of this hub but not of the store: another replica's change that the feed
        // has not brought here yet. The watch starts there.
        Err(WatchError::Future { since, .. }) if since <= state.registry.revision().await? => {
            hub.subscribe_ahead(since)
        }
        other => other?,
    };
    let from = sub.from;
    let watcher = Watcher {
        hub,
        backlog: sub.backlog,
        live: sub.live,
        seen: sub.from,
        stopping: state.stopping.clone(),
        keepalive: state.watch_keepalive,
        sent_at: Instant::now(),
        _counted: WatcherGuard::new(&state.metrics),
        _slot: slot,
    };
    let stream = futures::stream::unfold(watcher, |mut w| async move {
        w.next().await.map(|line| (Ok::<_, Infallible>(line), w))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (header::CACHE_CONTROL, "no-cache".to_string()),
            (
                header::HeaderName::from_static("x-quilt-revision"),
                from.to_string(),
            ),
            (
                header::HeaderName::from_static(KEEPALIVE_HEADER),
                state.watch_keepalive.as_millis().to_string(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_since() {
        assert_eq!(since(None).unwrap(), None);
        assert_eq!(since(Some("since=5")).unwrap(), Some(5));
        assert_eq!(since(Some("x=1&since=0")).unwrap(), Some(0));
        assert!(
            since(Some("since=abc"))
                .unwrap_err()
                .to_string()
                .contains("\"abc\"")
        );
        assert!(since(Some("since=")).is_err());
    }
}
