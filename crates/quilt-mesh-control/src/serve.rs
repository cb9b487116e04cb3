//! The HTTP/1.1 server loop: accepts connections within [`Limits`] (a cap in all and per
//! client address, each refusal a `503` with a JSON error), closes connections that send
//! no complete request head in time (idle keep-alives and slow headers alike), drops
//! connections to clients that stopped acknowledging (TCP_USER_TIMEOUT), and on shutdown
//! lets the requests in flight finish.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::tls::{Peer, ServerTls};

/// The address a request's connection comes from, as an extension of every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Serves HTTP/1.1 on one accepted `stream` (plain or TLS) until it closes, each request
/// carrying `peer` as an extension; the slot is given back at the end.
async fn serve_on<S>(
    stream: S,
    peer: Peer,
    app: Router,
    http: hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    client: SocketAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::Service;
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer.clone());
            request.extensions_mut().insert(ClientAddr(client.ip()));
            let mut app = app.clone();
            async move { app.call(request).await }
        });
    let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
    if let Err(e) = connection.await {
        tracing::debug!(%client, error = %e, "connection ended with an error");
    }
}

/// How many connections the server keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_client: usize,
    /// A connection that has not sent a whole request head for this long (idle between
    /// requests, or sending its headers slowly) is closed.
    pub idle_timeout: Duration,
    /// A connection whose client leaves sent data unacknowledged this long is dropped by
    /// the kernel (TCP_USER_TIMEOUT): a watch to a dead client ends, as its keepalive
    /// lines go unanswered. See [`dead_client_after`].
    pub dead_client_after: Duration,
}

/// The shortest [`Limits::dead_client_after`]: a client that is slow to acknowledge for
/// a moment (a busy host, a lossy link) keeps its connection.
const MIN_DEAD_CLIENT_AFTER: Duration = Duration::from_secs(3);

/// How long a client may leave data unacknowledged when watch streams send a keepalive
/// line every `keepalive`: two intervals, at least 3 s. A client that dies is sent its
/// next keepalive within one interval, and two more without an acknowledgment drop the
/// connection: three intervals from its death in all, the silence after which clients
/// give up on a server.
pub fn dead_client_after(keepalive: Duration) -> Duration {
    (keepalive * 2).max(MIN_DEAD_CLIENT_AFTER)
}

/// Sets TCP_USER_TIMEOUT on an accepted connection; a failure is logged, not fatal (the
/// connection works, only a dead client is noticed later).
fn set_user_timeout(stream: &TcpStream, limit: Duration, client: SocketAddr) {
    use nix::sys::socket::{setsockopt, sockopt::TcpUserTimeout};
    let ms = u32::try_from(limit.as_millis()).unwrap_or(u32::MAX);
    if let Err(e) = setsockopt(stream, TcpUserTimeout, &ms) {
        tracing::debug!(%client, error = %e, "cannot set TCP_USER_TIMEOUT");
    }
}

/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often a refusal of a connection is logged at most (the rest are counted).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(5);

/// Open connections, in all and by client address.
#[derive(Default)]
struct Open {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// One accepted connection's place in [`Open`], given back when dropped.
struct Slot {
    open: Arc<Mutex<Open>>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&self.client);
            }
        }
    }
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Full(usize),
    ClientFull(usize),
}

impl Refusal {
    fn message(self) -> String {
        match self {
            Refusal::Full(n) => {
                format!("the control plane holds its limit of {n} connections; try again shortly")
            }
            Refusal::ClientFull(n) => format!(
                "this client address holds the limit of {n} connections; close some and try again"
            ),
        }
    }
}

fn take_slot(open: &Arc<Mutex<Open>>, client: IpAddr, limits: &Limits) -> Result<Slot, Refusal> {
    let mut guard = open.lock().unwrap_or_else(|e| e.into_inner());
    if guard.total >= limits.max_connections {
        return Err(Refusal::Full(limits.max_connections));
    }
    let mine = guard.by_client.entry(client).or_default();
    if *mine >= limits.max_connections_per_client {
        return Err(Refusal::ClientFull(limits.max_connections_per_client));
    }
    *mine += 1;
    guard.total += 1;
    Ok(Slot {
        open: open.clone(),
        client,
    })
}

/// Serves `app` on `listener` (over TLS when `tls` is given; the handshake must finish
/// within the idle timeout) until `shutdown` completes, then waits up to 10 s for the
/// requests in flight (watch streams end on their own when the server stops). Every
/// request carries the connection's [`Peer`] as an extension.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let open = Arc::new(Mutex::new(Open::default()));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .keep_alive(true);
    let mut refusals = RefusalLog::default();
    let refusals_in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, and go on.
                    tracing::error!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match take_slot(&open, peer.ip(), &limits) {
            Ok(slot) => slot,
            Err(refusal) => {
                refusals.note(peer, refusal);
                refuse(stream, refusal, &refusals_in_flight);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        set_user_timeout(&stream, limits.dead_client_after, peer);
        let (app, http, watcher) = (app.clone(), http.clone(), graceful.watcher());
        let acceptor = tls.as_ref().map(ServerTls::acceptor);
        let handshake_limit = limits.idle_timeout;
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                serve_on(stream, Peer::Unverified, app, http, watcher, peer).await;
                drop(slot);
                return;
            };
            match tokio::time::timeout(handshake_limit, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let client = Peer::of_certificate(
                        stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(<[_]>::first),
                    );
                    serve_on(stream, client, app, http, watcher, peer).await;
                }
                Ok(Err(e)) => tracing::info!(client = %peer, error = %e, "TLS handshake refused"),
                Err(_) => {
                    tracing::info!(client = %peer, "TLS handshake not finished in time; closed")
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {SHUTDOWN_GRACE:?}; closing their connections"
        );
    }
    Ok(())
}

/// Refused connections still being answered; past this many, one is just closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// Answers `503` with a JSON error and closes: after the client's request head has
/// arrived (so a client sees an answer to its request, not bytes it did not ask for),
/// or after a second. What the client sends meanwhile is read and dropped, so the close is
/// a clean one (closing over unread data would reset the connection and lose the answer).
fn refuse(stream: TcpStream, refusal: Refusal, in_flight: &Arc<tokio::sync::Semaphore>) {
    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
        return;
    };
    let body = serde_json::json!({ "error": refusal.message() }).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let answered = async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            while stream.read(&mut buf).await? > 0 {}
            std::io::Result::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), answered).await;
        drop(permit);
    });
}

/// Logs refused connections at most every few seconds, with the count in between.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    since: u64,
}

impl RefusalLog {
    fn note(&mut self, peer: SocketAddr, refusal: Refusal) {
        self.since += 1;
        if self.last.is_some_and(|t| t.elapsed() < REFUSAL_LOG_EVERY) {
            return;
        }
        tracing::warn!(client = %peer, refused = self.since, "connection refused: {}", refusal.message());
        self.last = Some(Instant::now());
        self.since = 0;
    }
}

/// Raises the soft open-file limit to the hard one, so the connection cap, not the file
/// limit, is what turns clients away; answers the soft limit now in force.
pub fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_in_all_and_by_client_and_come_back() {
        let open = Arc::new(Mutex::new(Open::default()));
        let limits = Limits {
            max_connections: 3,
            max_connections_per_client: 2,
            idle_timeout: Duration::from_secs(1),
            dead_client_after: Duration::from_secs(3),
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = take_slot(&open, a, &limits).unwrap();
        let _a2 = take_slot(&open, a, &limits).unwrap();
        assert_eq!(
            take_slot(&open, a, &limits).err(),
            Some(Refusal::ClientFull(2))
        );
        let _b1 = take_slot(&open, b, &limits).unwrap();
        assert_eq!(take_slot(&open, b, &limits).err(), Some(Refusal::Full(3)));
        drop(a1);
        assert!(take_slot(&open, b, &limits).is_ok());
    }

    #[test]
    fn a_dead_client_is_two_unacknowledged_keepalives_but_never_under_3_s() {
        assert_eq!(
            dead_client_after(Duration::from_secs(3)),
            Duration::from_secs(6)
        );
        assert_eq!(
            dead_client_after(Duration::from_millis(300)),
            Duration::from_secs(3)
        );
    }
}
