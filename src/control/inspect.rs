//! What an operator can look at without changing anything: a user's links on this node
//! (`GET /v1/links`), the fleet as etcd shows it (`GET /v1/nodes`), and the admin API's own
//! description (`GET /openapi.json`, the document `docs/openapi.json`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State, rejection::QueryRejection};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::Hub;
use super::admin::{ApiError, UserQuery, ask_core, user_query};
use crate::core::inbox::{CoreMsg, Inspect};

const OPENAPI: &str = include_str!("../../docs/openapi.json");

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/v1/links", get(links))
        .route("/v1/nodes", get(nodes))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
}

/// A user's open links on this node, asked of the core that owns the user. Client addresses
/// are personal data: with `--admin-token` this read needs the token too.
async fn links(
    State(node): State<Arc<Hub>>,
    headers: HeaderMap,
    query: Result<Query<UserQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = user_query(&node, &headers, query)?;
    let core = crate::owner_core(q.biz_id, &q.user_id, node.cores.len());
    let (biz_id, user_id) = (q.biz_id, q.user_id.clone());
    let links = ask_core(&node, core, |reply| {
        CoreMsg::Inspect(Box::new(Inspect {
            biz_id,
            user_id,
            reply,
        }))
    })
    .await?;
    let body = json!({
        "node_id": node.node_id,
        "core": core,
        "biz_id": q.biz_id,
        "user_id": q.user_id,
        "links": links,
    });
    Ok(axum::Json(body).into_response())
}

/// The fleet as this node sees it in etcd (empty without `--etcd`), each node as its etcd
/// record says (the proto3 JSON of `Node`).
async fn nodes(State(node): State<Arc<Hub>>) -> Response {
    let records: Vec<serde_json::Value> = node
        .fleet
        .read()
        .expect("fleet lock")
        .nodes
        .values()
        .filter_map(|r| serde_json::from_slice(&r.to_json()).ok())
        .collect();
    axum::Json(json!({ "node_id": node.node_id, "nodes": records })).into_response()
}
