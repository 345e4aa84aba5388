//! The admin HTTP API (loopback by default): health, metrics, and the push/kick/redirect
//! operations for embedded mode and simple integrations. The fleet operations are routes the
//! cluster layer adds (`cluster::fleet_api`), checked by [`fleet_op`]. Client errors get a JSON
//! body that says what was wrong.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State, rejection::QueryRejection};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::warn;

use super::kafka::KafkaOut;
use super::{Hub, push_api, router};
use crate::core::inbox::PushJob;
use crate::metrics::{self, UndeliveredReason};
use crate::proto::{Node, PushMessage};

/// Who may use the admin API, and how long its connections may wait (`--admin-token`,
/// `--admin-allowed-origins`, `--admin-idle-timeout-ms`, `--demo`).
pub struct AdminSettings {
    /// Required on mutating endpoints, when set.
    pub token: Option<String>,
    /// Origins (besides the admin server's own) whose pages may call the admin API.
    pub origins: Vec<String>,
    /// Header and idle timeout of admin connections.
    pub idle: Duration,
    /// `--push-shed-ms`: how far behind an owner core may be before HTTP pushes to it are
    /// refused.
    pub shed: Option<Duration>,
    pub demo: super::demo::DemoSetup,
}

/// Serves the API, with `more` (routes of the layers above) beside its own.
pub async fn serve(node: Arc<Hub>, listener: tokio::net::TcpListener, more: Router<Arc<Hub>>) {
    let idle = node.admin.idle;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/push", post(push))
        .route("/v1/kick", post(kick))
        .route("/v1/redirect", post(redirect))
        .merge(more)
        .merge(super::demo::routes())
        // After routing, so each request is timed under its route's pattern.
        .route_layer(axum::middleware::from_fn_with_state(node.clone(), timed))
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            same_site,
        ))
        .with_state(node);
    let mut http = hyper::server::conn::http1::Builder::new();
    // A stranger must not hold the fds the client port shares. hyper's header timeout also
    // runs while a kept-alive connection waits for its next request: it is the idle timeout
    // too.
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(idle);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Answers are small: without NODELAY, Nagle holds a response's last segment until the
        // client's delayed ACK, which stalls a sender that waits for each answer.
        let _ = tcp.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
        tokio::spawn(conn);
    }
}

/// Whether a request that names `origin` may use the admin API: the admin server's own
/// origin (its host:port is the request's `Host`) or one the operator listed.
fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| Some(a) == host)
}

/// Times each routed request into `ringway_admin_request_duration_seconds`.
async fn timed(
    State(node): State<Arc<Hub>>,
    path: axum::extract::MatchedPath,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status();
    node.api_latency
        .with_label_values(&[path.as_str(), status.as_str()])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Refuses requests from web pages other than the admin server's own: a browser sends
/// `Origin` on every cross-site POST (even a CORS-simple `text/plain` one it will not let the
/// page read), so this is what keeps a page from driving the API.
async fn same_site(
    State(node): State<Arc<Hub>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let ok = origin
            .to_str()
            .is_ok_and(|o| origin_allowed(o, host, &node.admin.origins));
        if !ok {
            node.counters.admin_refused_origins.inc();
            return error(
                StatusCode::FORBIDDEN,
                "this origin may not use the admin API (--admin-allowed-origins)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

async fn readyz(State(node): State<Arc<Hub>>) -> Response {
    if node.draining.load(Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics_text(State(node): State<Arc<Hub>>) -> Response {
    let gauges = [
        (
            "ringway_draining",
            "1 while the node is draining or shutting down.",
            u64::from(node.draining.load(Relaxed)),
        ),
        (
            "ringway_admit_limit",
            "Links the admission ramp allows now.",
            node.admission.limit(std::time::Instant::now()),
        ),
        (
            "ringway_admit_held",
            "Admission tickets held: open links plus handshakes in progress.",
            node.admission.held(),
        ),
        (
            "ringway_backend_breakers_open",
            "gRPC backends whose circuit breaker is open now: their calls fail at once.",
            node.routes.open_breakers(),
        ),
        (
            "ringway_fleet_nodes",
            "Nodes registered in etcd, as this node sees them.",
            node.fleet.read().expect("fleet lock").nodes.len() as u64,
        ),
    ];
    use prometheus::core::Collector;
    let body = metrics::render(
        &node.metrics,
        &node.counters,
        &gauges,
        node.api_latency.collect(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// A client error: the status and a JSON body saying what was wrong. Boxed because a
/// `Response` is large and errors are rare.
pub struct ApiError(Box<Response>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        *self.0
    }
}

pub fn error(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(Box::new(
        (status, axum::Json(json!({ "error": msg.into() }))).into_response(),
    ))
}

/// 503 with `Retry-After: 1`: a service behind the API did not take the request.
pub fn retry_later(why: impl Into<String>) -> ApiError {
    let mut e = error(StatusCode::SERVICE_UNAVAILABLE, why);
    e.0.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    e
}

pub fn accepted(body: serde_json::Value) -> Result<Response, ApiError> {
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

pub fn check_token(token: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant time: how much of a guess matched must not show in the answer's timing.
    let matches = given.is_some_and(|g| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            g.as_bytes(),
            token.as_bytes(),
        ))
    });
    if matches {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "admin token required: Authorization: Bearer <token>",
        ))
    }
}

/// Fleet operations act on the whole node: they need a configured token, even on loopback.
pub fn fleet_op(node: &Hub, headers: &HeaderMap) -> Result<(), ApiError> {
    match &node.admin.token {
        Some(t) => check_token(t, headers),
        None => Err(error(
            StatusCode::FORBIDDEN,
            "fleet operations are disabled: start the node with --admin-token",
        )),
    }
}

/// The body is read (and ignored) so the connection stays usable for the caller's next request.
/// Checks the admin token and that the node still takes work, or answers why not.
fn admit(node: &Hub, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(token) = &node.admin.token {
        check_token(token, headers)?;
    }
    if node.draining.load(Relaxed) {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "node is shutting down",
        ));
    }
    Ok(())
}

/// How long a core may take to answer an admin request.
const CORE_ANSWERS_WITHIN: Duration = Duration::from_secs(2);

/// Asks core `core` a question (`ask` builds the message around the reply's sender) and waits
/// for its answer; 503 when its inbox is full or it does not answer in time.
pub async fn ask_core<T>(
    node: &Hub,
    core: usize,
    ask: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> crate::core::inbox::CoreMsg,
) -> Result<T, ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let busy = || error(StatusCode::SERVICE_UNAVAILABLE, "a core is busy; retry");
    node.cores[core].send(ask(reply)).map_err(|_| busy())?;
    tokio::time::timeout(CORE_ANSWERS_WITHIN, answer)
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())
}

/// Reads that show personal data (addresses, membership, presence) need the admin token too,
/// when set; then the query string, or 400 with the reason it does not parse.
pub fn read_query<T>(
    node: &Hub,
    headers: &HeaderMap,
    query: Result<Query<T>, QueryRejection>,
) -> Result<T, ApiError> {
    if let Some(token) = &node.admin.token {
        check_token(token, headers)?;
    }
    let Query(q) = query.map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok(q)
}

/// `?biz_id=&user_id=`, the query of the reads about one user.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserQuery {
    pub biz_id: u64,
    pub user_id: String,
}

/// [`read_query`] for one user, its id checked as the push API checks it.
pub fn user_query(
    node: &Hub,
    headers: &HeaderMap,
    query: Result<Query<UserQuery>, QueryRejection>,
) -> Result<UserQuery, ApiError> {
    let q = read_query(node, headers, query)?;
    crate::auth::check_id("user_id", &q.user_id).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    Ok(q)
}

/// [`admit`], then the JSON body.
pub fn request<T: DeserializeOwned>(
    node: &Hub,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    admit(node, headers)?;
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")))
}

async fn push(
    State(node): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    admit(&node, &headers)?;
    let req = push_api::parse(&body).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let frame = crate::link::push::largest_frame_bytes(&req.key, req.body.len());
    if frame > node.max_outbound_bytes {
        let max = node.max_outbound_bytes;
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the push's frame ({frame} bytes as JSON) exceeds --max-outbound-bytes ({max})"
            ),
        ));
    }
    if let Some(kafka) = &node.kafka {
        return Ok(through_kafka(kafka, req).await);
    }
    let routed = router::push(
        &node,
        node.admin.shed,
        PushJob {
            biz_id: req.biz_id,
            user_ids: req.user_ids,
            device_id: req.device_id,
            key: req.key.clone(),
            body: req.body.into(),
            report_offline: true,
            ephemeral: req.ephemeral,
            unsettled: None,
            accepted_at: std::time::Instant::now(),
        },
    );
    let rejected = routed.rejected.len();
    let mut resp = if rejected == 0 {
        (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "accepted": routed.accepted, "rejected": 0 })),
        )
            .into_response()
    } else {
        // Refused here and reported: the caller decides whether to retry.
        // Counted on the owner core's behalf: the push never reached it.
        for user in &routed.rejected {
            let core = crate::owner_core(req.biz_id, user, node.metrics.len());
            node.metrics[core].undelivered(UndeliveredReason::Overloaded);
        }
        warn!(biz_id = req.biz_id, key = ?req.key, users = rejected, reason = "overloaded", "undelivered push");
        let body = json!({ "accepted": routed.accepted, "rejected": rejected });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    };
    if rejected > 0 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    Ok(resp)
}

/// With Kafka, a push posted to any node takes the push topic's way, so it reaches its users
/// on whichever node holds them; accepted once the broker has it.
async fn through_kafka(kafka: &KafkaOut, req: push_api::ValidPush) -> Response {
    let users = req.user_ids.len();
    let push = PushMessage {
        biz_id: req.biz_id,
        user_id: String::new(),
        device_id: req.device_id.unwrap_or_default(),
        key: req.key,
        body: req.body.into(),
        user_ids: req.user_ids,
        ephemeral: req.ephemeral,
    };
    if kafka.to_push_topic(&push).await {
        let body = json!({ "accepted": users, "rejected": 0 });
        return (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    }
    let body =
        json!({ "accepted": 0, "rejected": users, "error": "kafka did not take the push; retry" });
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KickRequest {
    #[serde(deserialize_with = "push_api::biz_id")]
    biz_id: u64,
    user_id: String,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

async fn kick(
    State(node): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: KickRequest = request(&node, &headers, &body)?;
    let reason = req.reason.unwrap_or_else(|| "kicked by operator".into());
    if !router::kick(&node, req.biz_id, req.user_id, req.device_id, reason) {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "owner core overloaded; retry",
        ));
    }
    accepted(json!({ "queued": true }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeAddr {
    #[serde(default)]
    id: String,
    ip: String,
    port: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedirectRequest {
    #[serde(default, deserialize_with = "opt_biz_id")]
    biz_id: Option<u64>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
    nodes: Vec<NodeAddr>,
    #[serde(default)]
    retry_after_ms: u32,
}

fn opt_biz_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    push_api::biz_id(d).map(Some)
}

async fn redirect(
    State(node): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RedirectRequest = request(&node, &headers, &body)?;
    if req.nodes.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "nodes must name at least one place to reconnect to",
        ));
    }
    let target = match (req.biz_id, req.user_id) {
        (Some(b), Some(u)) => Some((b, u, req.device_id)),
        (None, None) => None,
        _ => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "give biz_id and user_id together, or neither for every link",
            ));
        }
    };
    let nodes = req
        .nodes
        .into_iter()
        .map(|n| Node {
            id: n.id,
            ip: n.ip,
            port: n.port,
            ..Default::default()
        })
        .collect();
    if !router::redirect(&node, target, nodes, req.retry_after_ms) {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "a core is overloaded; retry",
        ));
    }
    accepted(json!({ "queued": true }))
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn only_the_admin_servers_own_origin_and_listed_ones_pass() {
        let host = Some("127.0.0.1:9090");
        assert!(origin_allowed("http://127.0.0.1:9090", host, &[]));
        assert!(origin_allowed("https://127.0.0.1:9090", host, &[]));
        assert!(!origin_allowed("https://evil.example", host, &[]));
        assert!(!origin_allowed("http://127.0.0.1:9091", host, &[]));
        assert!(!origin_allowed("null", host, &[]));
        assert!(!origin_allowed("http://127.0.0.1:9090", None, &[]));
        let listed = ["https://ops.example".to_owned()];
        assert!(origin_allowed("https://ops.example", host, &listed));
    }
}
