//! The fleet operations of the admin API, `POST /admin/drain` and `POST /admin/rebalance`:
//! routes this layer adds to the control side's admin server. Both always need the admin
//! token ([`fleet_op`]).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::json;

use super::rebalance::{AlertPayload, ScaleSetup, on_alert};
use crate::control::Hub;
use crate::control::admin::{ApiError, accepted, error, fleet_op};

pub fn routes(scale: Arc<ScaleSetup>) -> Router<Arc<Hub>> {
    Router::new().route("/admin/drain", post(drain)).route(
        "/admin/rebalance",
        post(move |node, headers, body| rebalance(node, headers, body, scale)),
    )
}

async fn drain(
    State(node): State<Arc<Hub>>,
    headers: HeaderMap,
    _body: Bytes,
) -> Result<Response, ApiError> {
    fleet_op(&node, &headers)?;
    node.drain_requested.notify_one();
    accepted(json!({ "draining": true, "links": node.links() }))
}

async fn rebalance(
    State(node): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
    scale: Arc<ScaleSetup>,
) -> Result<Response, ApiError> {
    fleet_op(&node, &headers)?;
    let alert: AlertPayload = serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")))?;
    match on_alert(node.clone(), &scale, alert).await {
        Ok(done) => accepted(done),
        Err(e) => Err(error(StatusCode::CONFLICT, e)),
    }
}
