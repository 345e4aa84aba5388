//! The browser side of ringway, served by the admin server: the JavaScript client SDK
//! (`/sdk/ringway.js`) and a demo page (`/demo/`) that signs in, chats, shows pushes and
//! connection state, and charts the node's own metrics. The files are compiled into the binary
//! so a node needs nothing beside it.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::Hub;
use crate::auth::{self, Identity};

/// What the demo page needs from the node.
#[derive(Debug, Clone, Default)]
pub struct DemoSetup {
    /// The client port, so the page knows where to connect.
    pub ws_port: u16,
    /// Set with `--demo` (and an HS256 secret): the page may mint tokens for anyone.
    pub mint_secret: Option<Vec<u8>>,
}

const SDK: &str = include_str!("../../web/ringway.js");
const PAGE: &str = include_str!("../../web/demo/index.html");
const PAGE_JS: &str = include_str!("../../web/demo/demo.js");

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/sdk/ringway.js", get(|| file("text/javascript", SDK)))
        .route("/demo", get(|| file("text/html; charset=utf-8", PAGE)))
        .route("/demo/", get(|| file("text/html; charset=utf-8", PAGE)))
        .route("/demo/demo.js", get(|| file("text/javascript", PAGE_JS)))
        .route("/demo/config", get(config))
        .route("/demo/token", post(token))
}

async fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn config(State(node): State<Arc<Hub>>) -> Response {
    axum::Json(json!({
        "ws_port": node.admin.demo.ws_port,
        "node_id": node.node_id,
        "can_mint": node.admin.demo.mint_secret.is_some(),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct TokenRequest {
    biz_id: u64,
    user_id: String,
    #[serde(default)]
    device_id: Option<String>,
    /// Seconds the token lives (default an hour, at most a day): short ones show a refresh.
    #[serde(default)]
    ttl_s: Option<u64>,
    /// The token's `rooms` claim: the link joins them at connect.
    #[serde(default)]
    rooms: Vec<String>,
}

/// Mints a token (an hour unless asked) for the demo page's sign-in form.
async fn token(State(node): State<Arc<Hub>>, body: axum::body::Bytes) -> Response {
    let Some(secret) = &node.admin.demo.mint_secret else {
        let msg = "token minting is off: start the node with --demo (and an HS256 secret)";
        return (StatusCode::FORBIDDEN, axum::Json(json!({ "error": msg }))).into_response();
    };
    let req: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("expected {{biz_id, user_id, device_id?}}: {e}");
            return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": msg }))).into_response();
        }
    };
    if req.user_id.is_empty() {
        let msg = "user_id must not be empty";
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": msg }))).into_response();
    }
    let who = Identity {
        biz_id: req.biz_id,
        user_id: req.user_id.into(),
        device_id: req.device_id.unwrap_or_else(|| "default".into()).into(),
    };
    if let Some(e) = req.rooms.iter().find_map(|r| auth::check_room(r).err()) {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": e }))).into_response();
    }
    let ttl = req.ttl_s.unwrap_or(3600).clamp(1, 86_400);
    let token = auth::mint_hs256_in(secret, &who, ttl, &req.rooms);
    axum::Json(json!({ "token": token })).into_response()
}
