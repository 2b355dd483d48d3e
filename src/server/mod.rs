//! HTTP and WebSocket: routes, the upgrade (auth, serializer, connection cap), health,
//! readiness, metrics and status, and the inspector page (`inspector/`). Holds no
//! business rules: sessions and the router do.

pub mod admin;
mod conn;
mod consumers;
pub mod inspector;
pub mod listen;
pub mod rest;
pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router as HttpRouter};
use futures_util::{FutureExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capture::CaptureStatus;
use crate::channel::Services;
use crate::cluster::ClusterStatus;
use crate::consumers::ConsumersHandle;
use crate::protocol::{HttpError, TokenError, Vsn};

/// Initial per-socket read buffer.
pub const SOCKET_READ_BUFFER: usize = 1024;
/// Writes are flushed once this much is buffered (or when the writer flushes a batch).
pub const SOCKET_WRITE_BUFFER: usize = 64 * 1024;
/// How long `/metrics` and `/api/status` wait for webhook state from the database.
const STATUS_DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Shared state of a running hub.
pub struct Hub {
    pub services: Arc<Services>,
    /// Cancelled when the hub starts shutting down; every connection watches it.
    pub shutdown: CancellationToken,
    /// Connection tasks, awaited (with a deadline) on shutdown.
    pub connections: TaskTracker,
    /// The tasks writing to the sockets, each serving many.
    pub writers: writer::Writers,
    /// One permit per open connection (`max_connections`).
    pub connection_permits: Arc<Semaphore>,
    /// `None` when the hub runs without a database.
    pub capture: Option<Arc<CaptureStatus>>,
    /// Node id and, in cluster mode, Redis state and peers.
    pub cluster: Arc<ClusterStatus>,
    /// Webhooks and the change feed; `None` without a database.
    pub consumers: Option<ConsumersHandle>,
    /// `None` when the inspector is switched off (`/inspector` answers 404).
    pub inspector: Option<inspector::Inspector>,
    /// Who may use `/api/status`, the inspector and operations endpoints.
    pub admin: admin::Gate,
    /// REST broadcast rate per token and per client address.
    pub rest_limits: rest::RestLimits,
}

/// An HTTP error answer with its status and body.
pub(crate) fn http_error(e: HttpError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(e.body())).into_response()
}

/// `/metrics` alone, for a separate listener (`metrics_listen`).
pub fn metrics_routes(hub: Arc<Hub>) -> HttpRouter {
    HttpRouter::new()
        .route("/metrics", get(metrics))
        .with_state(hub)
}

/// What `serve` answers while it waits at start for an unreachable database: `/health`
/// is 200 (the process is up, so a liveness probe does not restart it), `/ready` and
/// everything else 503. Each answer closes its connection, so a client that keeps
/// connections alive reaches the full hub once it serves.
pub fn starting_routes() -> HttpRouter {
    let waiting = || async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": STARTING })),
        )
    };
    HttpRouter::new()
        .route("/health", get(health))
        .route("/ready", get(waiting))
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "message": STARTING })),
            )
        })
        .layer(axum::middleware::map_response(
            |mut response: Response| async move {
                response.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
                response
            },
        ))
}

/// The reason `/ready` gives while `serve` waits for the database at start.
const STARTING: &str = "starting: waiting for the database";

/// All HTTP routes of the hub; `/metrics` only when `with_metrics` (it is served on its
/// own address otherwise).
pub fn routes(hub: Arc<Hub>, with_metrics: bool) -> HttpRouter {
    let inspector = if hub.inspector.is_some() {
        inspector::routes()
    } else {
        HttpRouter::new()
    };
    // What a browser app calls with a bearer token: open to every origin, as Supabase's
    // broadcast endpoints are. Never the admin API or the Inspector (its session cookie).
    let open_cors = HttpRouter::new()
        .route("/realtime/v1/api/broadcast", post(rest::broadcast_batch))
        .route("/api/broadcast", post(rest::broadcast_batch))
        .route(
            "/realtime/v1/api/broadcast/{topic}/events/{event}",
            post(rest::broadcast_one),
        )
        .route(
            "/api/broadcast/{topic}/events/{event}",
            post(rest::broadcast_one),
        )
        .route("/realtime/v1/api/changes", get(consumers::changes_feed))
        .route("/api/changes", get(consumers::changes_feed))
        // Inside the CORS layer, so that it still answers preflights.
        .method_not_allowed_fallback(wrong_method)
        // Raised for the broadcast routes only (everything else keeps `BODY_LIMIT`).
        .layer(DefaultBodyLimit::max(rest::body_limit(
            hub.services.limits.max_broadcast_bytes,
        )))
        .layer(rest::open_cors());
    HttpRouter::new()
        .route("/realtime/v1/websocket", get(websocket))
        .route("/socket/websocket", get(websocket))
        .route("/realtime/v1/api/webhooks", get(consumers::list_webhooks))
        .route("/api/webhooks", get(consumers::list_webhooks))
        .route(
            "/realtime/v1/api/webhooks/{name}",
            get(consumers::get_webhook),
        )
        .route("/api/webhooks/{name}", get(consumers::get_webhook))
        .route(
            "/realtime/v1/api/webhooks/{name}/{action}",
            post(consumers::operate_webhook),
        )
        .route(
            "/api/webhooks/{name}/{action}",
            post(consumers::operate_webhook),
        )
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/status", get(status))
        .merge(inspector)
        .merge(if with_metrics {
            HttpRouter::new().route("/metrics", get(metrics))
        } else {
            HttpRouter::new()
        })
        // Every error answer is JSON, these two included (axum's are empty).
        .method_not_allowed_fallback(wrong_method)
        .merge(open_cors)
        .fallback(|| async { http_error(HttpError::NoRoute) })
        // Stated, so that the 413's text names the limit in force (axum's default).
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(json_body_limit))
        .with_state(hub)
}

/// The limit on a request body of the routes that do not raise it.
const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// axum answers a body past its limit with a plain-text 413 (`Failed to buffer the
/// request body: length limit exceeded`); every error of the hub is JSON.
async fn json_body_limit(response: Response) -> Response {
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE || !plain {
        return response;
    }
    let message = format!("Request body is larger than {BODY_LIMIT} bytes");
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        Json(json!({ "message": message })),
    )
        .into_response()
}

pub(crate) async fn wrong_method() -> Response {
    http_error(HttpError::WrongMethod)
}

async fn websocket(
    State(hub): State<Arc<Hub>>,
    slot: Option<axum::Extension<listen::ConnSlot>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let apikey = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or(params.get("apikey").map(String::as_str));
    let Some(apikey) = apikey else {
        return http_error(HttpError::Token(TokenError::Missing));
    };
    let claims = match hub.services.verifier.verify_fresh(apikey).await {
        Ok(c) => c,
        // As Supabase: an empty key is a key (only a missing one is missing), and fails
        // as a JWT.
        Err(TokenError::Missing) => return http_error(HttpError::Token(TokenError::Malformed)),
        Err(e) => return http_error(HttpError::Token(e)),
    };
    let vsn = match Vsn::from_query(params.get("vsn").map(String::as_str)) {
        Ok(v) => v,
        Err(e) => return http_error(HttpError::BadVsn(e)),
    };
    if hub.shutdown.is_cancelled() {
        return http_error(HttpError::Restarting);
    }
    let Ok(permit) = hub.connection_permits.clone().try_acquire_owned() else {
        hub.services.metrics.dropped("max_connections", 1);
        return http_error(HttpError::TooManyConnections);
    };
    let resume = match params.get("resume").map(String::as_str) {
        None => None,
        Some(key) if valid_resume_key(key) => Some(Arc::<str>::from(key)),
        Some(_) => return http_error(HttpError::BadResumeKey),
    };
    // Private channel policies read the upgrade's `x-` headers (as Supabase passes them).
    let x_headers = crate::authz::headers_json(headers.iter().filter_map(|(name, value)| {
        let name = name.as_str();
        let value = value.to_str().ok()?;
        name.starts_with("x-").then_some((name, value))
    }));
    let max = hub.services.limits.max_frame_bytes;
    // Small initial buffers (they grow for large messages): tungstenite's 128 KiB
    // default read buffer per socket dominates the memory of idle connections.
    ws.read_buffer_size(SOCKET_READ_BUFFER)
        .write_buffer_size(SOCKET_WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let tracker = hub.connections.clone();
            let (sink, stream) = socket.split();
            let fut = conn::run_connection(hub, sink, stream, vsn, claims, resume, x_headers).map(
                move |()| {
                    drop(permit);
                    drop(slot);
                },
            );
            tracker.track_future(fut)
        })
}

/// A `resume=` key: 1 to 128 of letters, digits, `-`, `_`, `.`, `:`.
fn valid_resume_key(key: &str) -> bool {
    (1..=crate::resume::MAX_KEY_LEN).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

async fn health() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Ready when not shutting down and, with a database, the listener is connected and
/// caught up.
async fn ready(State(hub): State<Arc<Hub>>) -> Response {
    let capture_ready = hub.capture.as_ref().is_none_or(|c| c.is_ready());
    let presence_ready = hub.cluster.presence_ready();
    if capture_ready && presence_ready && !hub.shutdown.is_cancelled() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        let why = if hub.shutdown.is_cancelled() {
            "shutting down"
        } else if !capture_ready {
            "change listener not connected or not caught up"
        } else {
            "the other nodes' presences have not all arrived yet"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": why })),
        )
            .into_response()
    }
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    if let Some(c) = &hub.capture {
        let snap = c.snapshot();
        let m = &hub.services.metrics;
        c.export(m);
        m.capture_reconnects.set(snap.reconnects as i64);
        m.capture_connected.set(i64::from(snap.connected));
    }
    if let Some(consumers) = &hub.consumers {
        // A database that does not answer must not hold the scrape up.
        let export = consumers.export(&hub.services.metrics);
        let _ = tokio::time::timeout(STATUS_DB_TIMEOUT, export).await;
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        hub.services.metrics.render(),
    )
        .into_response()
}

/// Admin routes need a service_role token or the admin secret (bearer, or the
/// inspector's session); `Err` is the refusal to send.
pub(crate) async fn require_admin(hub: &Hub, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let now = chrono::Utc::now().timestamp();
    hub.admin
        .authorize_fresh(&hub.services.verifier, headers, now)
        .await
        .map(|_| ())
        .map_err(|e| Box::new(admin::refusal(e)))
}

async fn status(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Err(refused) = require_admin(&hub, &headers).await {
        return *refused;
    }
    let m = &hub.services.metrics;
    let webhooks = match &hub.consumers {
        None => Value::Null,
        Some(c) => match tokio::time::timeout(STATUS_DB_TIMEOUT, c.status()).await {
            Ok(Ok(list)) => json!(&*list),
            Ok(Err(e)) => json!({ "error": e.to_string() }),
            Err(_) => json!({ "error": "the database did not answer in time" }),
        },
    };
    Json(json!({
        "connections": m.connections.get(),
        "channels": m.channels.get(),
        "topics": hub.services.router.topic_count(),
        "capture": hub.capture.as_ref().map(|c| c.snapshot()),
        "cluster": hub.cluster.snapshot(),
        "resume": hub.services.resume.as_ref().map(|r| r.status()),
        "node_id": hub.consumers.as_ref().map(|c| c.node_id()),
        "webhooks": webhooks,
    }))
    .into_response()
}
