//! The rooms API (DESIGN §4a): `POST /v1/rooms/publish` and `/v1/broadcast` (with Kafka
//! through the room topic, which every node reads; without, to this node's cores),
//! `/v1/rooms/join` and `/v1/rooms/leave` (the user's links on this node), and
//! `GET /v1/rooms/members` (this node's count).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State, rejection::QueryRejection};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use tracing::warn;

use super::admin::{ApiError, ask_core, error, read_query, request, retry_later};
use super::{Hub, push_api, router};
use crate::auth::{check_id, check_room};
use crate::core::inbox::{CoreMsg, Membership, RoomQuery};
use crate::proto::{RoomChange, RoomMessage};

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/v1/rooms/publish", post(|s, h, b| send(s, h, b, true)))
        .route("/v1/broadcast", post(|s, h, b| send(s, h, b, false)))
        .route("/v1/rooms/join", post(|s, h, b| change(s, h, b, true)))
        .route("/v1/rooms/leave", post(|s, h, b| change(s, h, b, false)))
        .route("/v1/rooms/members", get(members))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    #[serde(deserialize_with = "push_api::biz_id")]
    biz_id: u64,
    /// Absent on a broadcast.
    #[serde(default)]
    room: Option<String>,
    key: String,
    /// Standard base64.
    #[serde(default)]
    body: String,
    #[serde(default)]
    exclude_user_ids: Vec<String>,
    #[serde(default)]
    reliable: bool,
}

/// A room message (`to_room`) or a broadcast: checked, then to every node.
async fn send(
    State(node): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
    to_room: bool,
) -> Result<Response, ApiError> {
    let p: Publish = request(&node, &headers, &body)?;
    let bad = |e: String| error(StatusCode::BAD_REQUEST, e);
    let room = match (to_room, p.room) {
        (true, Some(room)) => {
            check_room(&room).map_err(bad)?;
            room
        }
        (true, None) => return Err(bad("room is required".into())),
        (false, Some(_)) => return Err(bad("a broadcast names no room".into())),
        (false, None) => String::new(),
    };
    if p.key.is_empty() {
        return Err(bad("key is required (clients dedup by it)".into()));
    }
    let body = base64::engine::general_purpose::STANDARD
        .decode(p.body.as_bytes())
        .map_err(|e| bad(format!("body must be standard base64: {e}")))?;
    let frame = crate::link::push::largest_frame_bytes(&p.key, body.len()) + room.len();
    if frame > node.max_outbound_bytes {
        let max = node.max_outbound_bytes;
        let why = format!(
            "the message's frame ({frame} bytes as JSON) exceeds --max-outbound-bytes ({max})"
        );
        return Err(error(StatusCode::PAYLOAD_TOO_LARGE, why));
    }
    let m = RoomMessage {
        biz_id: p.biz_id,
        room,
        key: p.key,
        body: body.into(),
        exclude_user_ids: p.exclude_user_ids,
        reliable: p.reliable,
        change: None,
    };
    let Some(kafka) = &node.kafka else {
        router::room(&node, m).await;
        return Ok((StatusCode::ACCEPTED, axum::Json(json!({ "nodes": "this" }))).into_response());
    };
    if kafka.to_room_topic(&m).await {
        return Ok((StatusCode::ACCEPTED, axum::Json(json!({ "nodes": "all" }))).into_response());
    }
    Err(retry_later("kafka did not take the message; retry"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    #[serde(deserialize_with = "push_api::biz_id")]
    biz_id: u64,
    user_id: String,
    rooms: Vec<String>,
}

/// A join or leave: stored for the user's later connects (with `--redis`; the store refuses a
/// join past `--max-rooms-per-user` whole), applied to the user's links on this node, and with
/// `--kafka` sent on the room topic so every node applies it to its links. Answered with how
/// many links it reached here.
async fn change(
    State(node): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
    join: bool,
) -> Result<Response, ApiError> {
    let mut c: Change = request(&node, &headers, &body)?;
    let bad = |e: String| error(StatusCode::BAD_REQUEST, e);
    check_id("user_id", &c.user_id).map_err(bad)?;
    if c.rooms.is_empty() {
        return Err(bad("name at least one room".into()));
    }
    for r in &c.rooms {
        check_room(r).map_err(bad)?;
    }
    c.rooms.sort_unstable();
    c.rooms.dedup();
    let too_many = |have: usize| {
        let why =
            format!("the user is in {have} rooms; joining these would pass --max-rooms-per-user");
        error(StatusCode::CONFLICT, why)
    };
    if let Some(store) = &node.rooms {
        match store.change(c.biz_id, &c.user_id, &c.rooms, join).await {
            Ok(Ok(_)) => {}
            Ok(Err(r)) => return Err(too_many(r.have)),
            Err(e) => {
                warn!(error = %e, "room membership not stored");
                return Err(retry_later("redis did not take the change; retry"));
            }
        }
    }
    let core = crate::owner_core(c.biz_id, &c.user_id, node.cores.len());
    let (biz_id, user_id, rooms) = (c.biz_id, c.user_id.clone(), c.rooms.clone());
    let here = ask_core(&node, core, |reply| {
        CoreMsg::Membership(Box::new(Membership {
            biz_id,
            user_id,
            rooms,
            join,
            reply: Some(reply),
        }))
    })
    .await?;
    let links = match (here, &node.rooms) {
        (Ok(links), _) => links,
        // The stored set is the user's membership: a link here past the limit (by its own
        // token's claim) keeps the rooms it has, and the refusal is counted.
        (Err(_), Some(_)) => 0,
        (Err(have), None) => return Err(too_many(have)),
    };
    let Some(kafka) = &node.kafka else {
        let body = json!({ "links": links, "nodes": "this" });
        return Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response());
    };
    let m = RoomMessage {
        biz_id: c.biz_id,
        change: Some(RoomChange {
            user_id: c.user_id,
            rooms: c.rooms,
            join,
        }),
        ..RoomMessage::default()
    };
    if !kafka.to_room_topic(&m).await {
        return Err(retry_later(
            "kafka did not take the change; retry (it is stored and applied here)",
        ));
    }
    let body = json!({ "links": links, "nodes": "all" });
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersQuery {
    biz_id: u64,
    room: String,
}

/// A room's members on this node: every core counts its own.
async fn members(
    State(node): State<Arc<Hub>>,
    headers: HeaderMap,
    query: Result<Query<MembersQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = read_query(&node, &headers, query)?;
    check_room(&q.room).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let (mut links, mut users) = (0, 0);
    for core in 0..node.cores.len() {
        let (biz_id, room) = (q.biz_id, q.room.clone());
        let (l, u) = ask_core(&node, core, |reply| {
            CoreMsg::RoomMembers(Box::new(RoomQuery {
                biz_id,
                room,
                reply,
            }))
        })
        .await?;
        // A user's links all live on its owner core: users add up across cores.
        links += l;
        users += u;
    }
    let body = json!({ "node_id": node.node_id, "links": links, "users": users });
    Ok(axum::Json(body).into_response())
}
