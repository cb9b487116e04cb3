//! [`ReplicaProxy`]: a stand-in for one control-plane replica, in front of a real control
//! plane, switched between forwarding, answering 503 (a replica whose store lost quorum)
//! and silence (a paused or unplugged machine: connections stay open, nothing moves).
//! Several proxies in front of one server are replicas sharing one state, as replicas on
//! etcd do. Each proxy records the request lines it saw.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What a [`ReplicaProxy`] does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Passes bytes both ways to the control plane.
    Forward,
    /// Answers every request `503` with a JSON error and closes; open connections are cut.
    Unavailable,
    /// Accepts connections and moves no byte on any of them until the mode changes.
    Silent,
}

/// The error body of [`Mode::Unavailable`] answers.
pub const UNAVAILABLE_MESSAGE: &str = "store unavailable: etcd has no quorum (test fixture)";

/// A request line a proxy saw (`GET /api/nodes`), and the mode it was in then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub mode: Mode,
    pub request: String,
}

/// One replica stand-in on 127.0.0.1:0; stopped, with every connection, on drop.
pub struct ReplicaProxy {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    mode: watch::Sender<Mode>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl ReplicaProxy {
    /// A proxy in front of the control plane at `backend` (`http://IP:PORT`), forwarding.
    pub async fn start(backend: &str) -> ReplicaProxy {
        let backend: SocketAddr = backend
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("backend {backend:?} is not http://IP:PORT: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let (mode, modes) = watch::channel(Mode::Forward);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept(listener, backend, modes, seen.clone()));
        ReplicaProxy {
            base,
            mode,
            seen,
            task,
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Every request line seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The request lines seen so far that start with `prefix` (`POST /api/nodes/register`).
    pub fn requests(&self, prefix: &str) -> Vec<String> {
        self.seen()
            .into_iter()
            .map(|s| s.request)
            .filter(|r| r.starts_with(prefix))
            .collect()
    }
}

impl Drop for ReplicaProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections until aborted; each connection's task is owned by the set, so
/// aborting this task ends them all.
async fn accept(
    listener: TcpListener,
    backend: SocketAddr,
    modes: watch::Receiver<Mode>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                connections.spawn(connection(client, backend, modes.clone(), seen.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One client connection: held while silent, then answered 503 or forwarded.
async fn connection(
    client: TcpStream,
    backend: SocketAddr,
    mut modes: watch::Receiver<Mode>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let Ok(mode) = modes.wait_for(|m| *m != Mode::Silent).await.map(|m| *m) else {
        return;
    };
    match mode {
        Mode::Unavailable => unavailable(client, &seen).await,
        _ => forward(client, backend, modes, seen).await,
    }
}

/// Reads one request head, records its line, answers 503 and closes.
async fn unavailable(mut client: TcpStream, seen: &Mutex<Vec<Seen>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    record(seen, Mode::Unavailable, &head);
    let body = serde_json::json!({ "error": UNAVAILABLE_MESSAGE }).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        client.write_all(answer.as_bytes()).await?;
        client.shutdown().await?;
        // Read what else the client sends, so the close is clean (no reset).
        while client.read(&mut buf).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}

/// Passes bytes both ways until either side closes or the proxy turns unavailable (the
/// connection is cut); while silent, no byte moves.
async fn forward(
    client: TcpStream,
    backend: SocketAddr,
    mut modes: watch::Receiver<Mode>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let Ok(server) = TcpStream::connect(backend).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = pump(client_read, server_write, modes.clone(), Some(seen)) => {}
        () = pump(server_read, client_write, modes.clone(), None) => {}
        _ = modes.wait_for(|m| *m == Mode::Unavailable) => {}
    }
}

/// Copies `from` to `to` while the mode is not silent, recording request lines when
/// `seen` is given (the client's direction).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut modes: watch::Receiver<Mode>,
    seen: Option<Arc<Mutex<Vec<Seen>>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if modes.wait_for(|m| *m != Mode::Silent).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = modes.wait_for(|m| *m == Mode::Silent) => continue,
        };
        if let Some(seen) = &seen {
            record(seen, Mode::Forward, &buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Records every request line in `bytes` (lines that start with an HTTP method and end
/// with `HTTP/1.1`).
fn record(seen: &Mutex<Vec<Seen>>, mode: Mode, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let lines = text.split("\r\n").filter_map(|line| {
        let (method, rest) = line.split_once(' ')?;
        let target = rest.strip_suffix(" HTTP/1.1")?;
        ["GET", "POST", "DELETE", "PUT"]
            .contains(&method)
            .then(|| format!("{method} {target}"))
    });
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.extend(lines.map(|request| Seen { mode, request }));
}
