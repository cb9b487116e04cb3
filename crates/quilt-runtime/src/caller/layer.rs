//! The one place calls are admitted: a tower layer in front of every service, which
//! refuses each QuiltRuntime call of an untrusted caller with PERMISSION_DENIED (logged at
//! warn with the uid, the transport and the RPC) before any handler runs. Health and
//! reflection pass.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tonic::Status;
use tonic::codegen::http;
use tonic::transport::server::TlsConnectInfo;
use tower::{Layer, Service};

use super::{Caller, TrustPolicy, Verdict};
use crate::metrics::Metrics;

/// The path prefix of the calls that are checked (every QuiltRuntime RPC changes or
/// reveals state).
const CHECKED_PREFIX: &str = "/quilt.QuiltRuntime/";

/// Builds [`CallerCheck`] around the server's routes.
#[derive(Clone)]
pub struct CallerCheckLayer {
    policy: Arc<TrustPolicy>,
    metrics: Arc<Metrics>,
}

impl CallerCheckLayer {
    /// Refusals are counted in `metrics` (`rpc_denied_total`).
    pub fn new(policy: Arc<TrustPolicy>, metrics: Arc<Metrics>) -> Self {
        Self { policy, metrics }
    }
}

impl<S> Layer<S> for CallerCheckLayer {
    type Service = CallerCheck<S>;

    fn layer(&self, inner: S) -> CallerCheck<S> {
        CallerCheck {
            inner,
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`CallerCheckLayer`].
#[derive(Clone)]
pub struct CallerCheck<S> {
    inner: S,
    policy: Arc<TrustPolicy>,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<http::Request<B>> for CallerCheck<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(rpc) = request.uri().path().strip_prefix(CHECKED_PREFIX)
            && let Err((status, transport)) = admit(request.extensions(), &self.policy, rpc)
        {
            self.metrics.observe_denied(rpc, transport);
            return Either::Left(ready(Ok(status.into_http())));
        }
        Either::Right(self.inner.call(request))
    }
}

/// Admits a call to `rpc` from the caller its connection recorded, or answers the
/// PERMISSION_DENIED status (after logging the refusal) with the transport it came over
/// (`unknown` without a caller), for metrics.
fn admit(
    extensions: &http::Extensions,
    policy: &TrustPolicy,
    rpc: &str,
) -> Result<(), (Status, &'static str)> {
    // Over TLS tonic records both the TLS information and the caller beneath it.
    let (caller, certified) = match (
        extensions.get::<TlsConnectInfo<Caller>>(),
        extensions.get::<Caller>(),
    ) {
        (Some(tls), _) => (
            tls.get_ref(),
            tls.peer_certs().is_some_and(|certs| !certs.is_empty()),
        ),
        (None, Some(caller)) => (caller, false),
        (None, None) => {
            tracing::warn!(rpc, "call refused: the connection has no caller identity");
            return Err((
                Status::permission_denied(format!(
                    "{rpc} refused: the caller could not be identified"
                )),
                "unknown",
            ));
        }
    };
    let reason = match &caller.verdict {
        Verdict::Trusted(_) => return Ok(()),
        // The TLS layer required and verified the certificate against --tls-ca.
        Verdict::Refused(_) if certified && policy.certificates => return Ok(()),
        Verdict::Refused(reason) => reason,
    };
    tracing::warn!(
        uid = ?caller.uid,
        transport = %caller.transport,
        peer = %caller.peer,
        rpc,
        reason = %reason,
        "call refused: the caller is not trusted"
    );
    let who = caller.uid.map_or_else(
        || "a caller of unknown uid".to_string(),
        |uid| format!("uid {uid}"),
    );
    Err((
        Status::permission_denied(format!(
            "{rpc} refused for {who} over {}: {reason}; only root and members of group {} may call quilt-runtime{}",
            caller.transport,
            policy.group,
            if policy.certificates {
                " (over TLS also holders of a client certificate from --tls-ca)"
            } else {
                ""
            }
        )),
        caller.transport.as_str(),
    ))
}
