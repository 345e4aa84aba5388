//! `GET /v1/presence` (DESIGN §4a): a user's devices, each with its node, transport and since
//! when. With `--redis` the location registry answers for every node; otherwise this node's
//! core that owns the user does.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State, rejection::QueryRejection};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tracing::warn;

use super::Hub;
use super::admin::{ApiError, UserQuery, ask_core, retry_later, user_query};
use super::location::Present;
use crate::core::inbox::{CoreMsg, Inspect};

pub fn routes() -> Router<Arc<Hub>> {
    Router::new().route("/v1/presence", get(presence))
}

/// Which devices are online is personal data: with `--admin-token` this read needs it.
async fn presence(
    State(node): State<Arc<Hub>>,
    headers: HeaderMap,
    query: Result<Query<UserQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = user_query(&node, &headers, query)?;
    let (devices, scope) = match node.locations.get() {
        Some(loc) => match loc.presence(q.biz_id, &q.user_id).await {
            Ok(devices) => (devices, "fleet"),
            Err(e) => {
                warn!(error = %e, "presence not read");
                return Err(retry_later("redis did not answer; retry"));
            }
        },
        None => (here(&node, q.biz_id, q.user_id.clone()).await?, "node"),
    };
    let body = json!({
        "biz_id": q.biz_id,
        "user_id": q.user_id,
        "scope": scope,
        "devices": devices,
    });
    Ok(axum::Json(body).into_response())
}

/// The user's devices on this node (one entry per device: its oldest link).
async fn here(node: &Hub, biz_id: u64, user_id: String) -> Result<Vec<Present>, ApiError> {
    let core = crate::owner_core(biz_id, &user_id, node.cores.len());
    let mut links = ask_core(node, core, |reply| {
        CoreMsg::Inspect(Box::new(Inspect {
            biz_id,
            user_id,
            reply,
        }))
    })
    .await?;
    links.sort_by(|a, b| (&a.device_id, a.connected_ms).cmp(&(&b.device_id, b.connected_ms)));
    links.dedup_by(|a, b| a.device_id == b.device_id);
    Ok(links
        .into_iter()
        .map(|l| Present {
            device_id: l.device_id,
            node: node.node_id.clone(),
            transport: l.transport.to_owned(),
            since_ms: l.connected_ms,
        })
        .collect())
}
