//! Node handlers: register, heartbeat, deregister, list, get, delete.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::{Extension, Json};

use super::AppState;
use super::request;
use super::types::{HeartbeatResponse, NodeInfo, NodeList, RegisterResponse, node_info};
use crate::auth::{AuthError, bearer};
use crate::error::ApiError;
use crate::model::{Node, NodeId, NodeToken};
use crate::registry::RegistryError;
use crate::store::StoreError;
use crate::tls::Peer;

/// The node id in a request's path. Anything that is not of the form `node-<n>` (with
/// `n` a number a store can hold), including bytes that are not UTF-8 once decoded, is an
/// unknown node: 404 with a JSON error, like any other.
pub struct PathNodeId(pub NodeId);

impl<S: Send + Sync> FromRequestParts<S> for PathNodeId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let unknown = |shown: &str| {
            ApiError::NotFound(format!(
                "node {:?} not found",
                quilt_common::cluster::excerpt(shown)
            ))
        };
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(raw)) => raw.parse().map(PathNodeId).map_err(|_| unknown(&raw)),
            Err(_) => {
                let raw = parts.uri.path().rsplit('/').next().unwrap_or_default();
                Err(unknown(raw))
            }
        }
    }
}

/// The check of a call a node makes as itself (heartbeat, deregister): its own token
/// (none needed when the server runs open) and, under mutual TLS, a certificate naming
/// its host IP. A malformed `Authorization` header is refused before anything is read.
fn the_node_itself(
    state: &AppState,
    peer: Option<Extension<Peer>>,
    headers: &HeaderMap,
) -> Result<impl FnOnce(&Node) -> Result<(), AuthError> + Send + 'static, ApiError> {
    let presented = bearer(headers.get(AUTHORIZATION))?;
    let policy = state.policy.clone();
    let peer = peer_of(peer);
    Ok(move |node: &Node| {
        policy.heartbeat(node, presented.as_deref())?;
        AuthError::check_certificate(&peer, node.host_ip)
    })
}

/// The connection's [`Peer`] (none when the router is called without the server loop).
fn peer_of(peer: Option<Extension<Peer>>) -> Peer {
    peer.map(|Extension(p)| p).unwrap_or_default()
}

pub async fn register(
    State(state): State<AppState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RegisterResponse>, ApiError> {
    let result = async {
        let presented = bearer(headers.get(AUTHORIZATION))?;
        state.policy.register(presented.as_deref())?;
        let new = request::register(&request::body(body)?, &state.plan)?;
        AuthError::check_certificate(&peer_of(peer), new.host_ip)?;
        let wish = new.wanted_subnet;
        let token = NodeToken::generate()
            .map_err(|e| ApiError::Internal(format!("cannot read /dev/urandom: {e}")))?;
        let registration = state.registry.register(new, token.clone()).await?;
        Ok::<_, ApiError>((registration, wish, token))
    }
    .await;
    let (registration, new_wish, token) = match result {
        Ok(r) => r,
        Err(e) => {
            state.metrics.registered("refused");
            return Err(e);
        }
    };
    state.metrics.registered(if registration.created {
        "created"
    } else {
        "renewed"
    });
    let n = &registration.node;
    if let Some(wanted) = new_wish
        && wanted != n.subnet
    {
        tracing::info!(node = %n.id, host_ip = %n.host_ip, %wanted, subnet = %n.subnet, "the subnet the node asked for is taken; it keeps its lease");
    }
    if registration.created {
        tracing::info!(node = %n.id, host_ip = %n.host_ip, subnet = %n.subnet, "node registered");
    } else {
        tracing::info!(node = %n.id, host_ip = %n.host_ip, subnet = %n.subnet, "node registered again");
    }
    Ok(Json(RegisterResponse {
        node: node_info(n),
        node_token: token.as_str().to_string(),
        cluster_cidr: Some(state.plan.cidr()),
        heartbeat_timeout_ms: Some(
            u64::try_from(state.heartbeat_timeout.as_millis()).unwrap_or(u64::MAX),
        ),
        created: registration.created,
    }))
}

pub async fn heartbeat(
    State(state): State<AppState>,
    PathNodeId(id): PathNodeId,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let authorize = the_node_itself(&state, peer, &headers)?;
    let condition = request::heartbeat(&request::body(body)?)?;
    let node = state.registry.heartbeat(id, condition, authorize).await?;
    state.metrics.heartbeats.inc();
    let info = node_info(&node);
    Ok(Json(HeartbeatResponse {
        node_id: info.node_id,
        status: info.status,
        last_heartbeat: info.last_heartbeat,
    }))
}

/// `POST /api/nodes/{id}/deregister` (the original agents' graceful shutdown): the node
/// is marked down at once, so peers withdraw their routes to it now rather than after the
/// heartbeat timeout; it stays listed with its lease, and its next heartbeat or
/// registration brings it back. Authorized as a heartbeat is; any body is ignored.
pub async fn deregister(
    State(state): State<AppState>,
    PathNodeId(id): PathNodeId,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<NodeInfo>, ApiError> {
    let authorize = the_node_itself(&state, peer, &headers)?;
    request::body(body)?;
    let node = state.registry.deregister(id, authorize).await?;
    tracing::info!(node = %node.id, host_ip = %node.host_ip, subnet = %node.subnet, "node deregistered: marked down, lease kept");
    Ok(Json(node_info(&node)))
}

pub async fn list(State(state): State<AppState>) -> Result<Json<NodeList>, ApiError> {
    let (nodes, revision) = state.registry.list().await?;
    Ok(Json(NodeList {
        nodes: nodes.iter().map(node_info).collect(),
        revision,
    }))
}

pub async fn get(
    State(state): State<AppState>,
    PathNodeId(id): PathNodeId,
) -> Result<Json<NodeInfo>, ApiError> {
    match state.registry.get(id).await? {
        Some(node) => Ok(Json(node_info(&node))),
        None => Err(RegistryError::Store(StoreError::NotFound(id)).into()),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    PathNodeId(id): PathNodeId,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Result<Json<NodeInfo>, ApiError> {
    let presented = bearer(headers.get(AUTHORIZATION))?;
    let policy = state.policy.clone();
    let peer = peer_of(peer);
    let node = state
        .registry
        .delete(id, move |node| {
            // The operator's join token deletes any node; a node leaves only as itself.
            if policy.is_join_token_of_operator(presented.as_deref()) {
                return Ok(());
            }
            policy.delete(node, presented.as_deref())?;
            AuthError::check_certificate(&peer, node.host_ip)
        })
        .await?;
    tracing::info!(node = %node.id, host_ip = %node.host_ip, subnet = %node.subnet, "node left; subnet is free");
    Ok(Json(node_info(&node)))
}
