//! Accepted connections with their caller: the unix socket's `SO_PEERCRED`, and on TCP
//! the kernel's socket diagnostics (the uid owning the client's end of the connection,
//! as `ss -e` shows it). A caller whose uid cannot be learnt is refused (fail closed).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::server::Connected;

use super::{Caller, Transport, TrustPolicy, Verdict};

/// How many accepted connections may be identified at once (a group lookup may wait on
/// the system's user database).
const IDENTIFYING_AT_ONCE: usize = 16;

/// A connection and the caller behind it, which every request on it carries.
pub struct IdentifiedStream<S> {
    inner: S,
    caller: Caller,
}

impl<S> Connected for IdentifiedStream<S> {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdentifiedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdentifiedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connections of the unix socket, each with its caller from `SO_PEERCRED`.
pub fn unix_incoming(
    listener: UnixListener,
    policy: Arc<TrustPolicy>,
) -> impl Stream<Item = io::Result<IdentifiedStream<UnixStream>>> {
    UnixListenerStream::new(listener)
        .map(move |accepted| {
            let policy = policy.clone();
            async move {
                let stream = accepted?;
                let caller = identify_unix(&stream, &policy).await;
                Ok(IdentifiedStream {
                    inner: stream,
                    caller,
                })
            }
        })
        .buffer_unordered(IDENTIFYING_AT_ONCE)
}

/// The connections of the TCP listener (Nagle off: a gRPC answer is one small write, and
/// waiting for the peer's delayed ACK would add up to 40 ms to it), each with its caller
/// from the kernel's socket diagnostics.
pub fn tcp_incoming(
    listener: TcpListener,
    policy: Arc<TrustPolicy>,
) -> impl Stream<Item = io::Result<IdentifiedStream<TcpStream>>> {
    TcpListenerStream::new(listener)
        .map(move |accepted| {
            let policy = policy.clone();
            async move {
                let stream = accepted?;
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
                let caller = identify_tcp(&stream, &policy).await;
                Ok(IdentifiedStream {
                    inner: stream,
                    caller,
                })
            }
        })
        .buffer_unordered(IDENTIFYING_AT_ONCE)
}

async fn identify_unix(stream: &UnixStream, policy: &TrustPolicy) -> Caller {
    match stream.peer_cred() {
        Ok(cred) => Caller {
            transport: Transport::Unix,
            peer: cred
                .pid()
                .map_or_else(|| "pid unknown".to_string(), |pid| format!("pid {pid}")),
            uid: Some(cred.uid()),
            verdict: policy.judge(cred.uid(), Some(cred.gid())).await,
        },
        Err(e) => Caller {
            transport: Transport::Unix,
            peer: "unknown".into(),
            uid: None,
            verdict: Verdict::Refused(format!("SO_PEERCRED failed: {e}")),
        },
    }
}

async fn identify_tcp(stream: &TcpStream, policy: &TrustPolicy) -> Caller {
    let ends = stream
        .local_addr()
        .and_then(|l| Ok((l, stream.peer_addr()?)));
    let (local, peer) = match ends {
        Ok(ends) => ends,
        Err(e) => {
            return Caller {
                transport: Transport::Tcp,
                peer: "unknown".into(),
                uid: None,
                verdict: Verdict::Refused(format!("the connection's addresses are unknown: {e}")),
            };
        }
    };
    // The client's socket is the one whose local end is the peer's address.
    let uid = quilt_kernel::sock_diag::tcp_socket_uid(peer, local);
    let (uid, verdict) = match uid {
        Ok(Some(uid)) => (Some(uid), policy.judge(uid, None).await),
        Ok(None) => (
            None,
            Verdict::Refused(format!(
                "no socket of this host connects from {peer} to {local}, so the caller's uid is unknown"
            )),
        ),
        Err(e) => (
            None,
            Verdict::Refused(format!("the caller's uid is unknown: {e}")),
        ),
    };
    Caller {
        transport: Transport::Tcp,
        peer: peer.to_string(),
        uid,
        verdict,
    }
}
