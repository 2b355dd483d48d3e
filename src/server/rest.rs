//! REST broadcast: `POST /api/broadcast` (batch) and
//! `POST /api/broadcast/{topic}/events/{event}` (single), under `/realtime/v1` too.
//! A batch is validated whole before anything is sent (bad input changes nothing).
//! Private messages are authorized by the `realtime.messages` write policies for the
//! caller's token and headers, as Supabase does: the batch drops refused topics and still
//! answers 202, the single endpoint answers 403. Both are rate-limited per token and per
//! client address (`limit.rs`), counting messages, after the body is found valid.

mod limit;

pub use limit::RestLimits;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tower_http::cors::{self, CorsLayer};

use super::listen::PeerAddr;
use super::{http_error, Hub};
use crate::auth::Claims;
use crate::authz::{self, AuthzError, Extension};
use crate::protocol::{
    encoded_len, refuse_nul, BodyProblem, Broadcast, BroadcastPayload, HttpError,
};
use crate::router::TopicKey;

/// Most messages one batch may carry.
const MAX_BATCH: usize = 1000;

/// Largest REST request body, as Supabase's (Plug's default 8,000,000 bytes); larger when
/// `max_broadcast_bytes` is, so that a single broadcast of that size still fits.
pub const REST_BODY_BYTES: usize = 8_000_000;

/// The request body limit of the HTTP routes.
pub fn body_limit(max_broadcast_bytes: usize) -> usize {
    REST_BODY_BYTES.max(max_broadcast_bytes)
}

/// CORS for the REST endpoints a browser calls: any origin, the request's headers
/// (`Authorization` and `apikey` must be named, a `*` does not cover them), no cookies.
pub fn open_cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(cors::Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers(cors::AllowHeaders::mirror_request())
        .max_age(Duration::from_secs(3600))
}

/// A request body, or why it could not be read (over `limit`, or the client stopped).
fn read_body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, HttpError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::BodyTooLarge { limit }
        } else {
            HttpError::BodyUnreadable
        }
    })
}

/// `otherwise`, unless the body was JSON nested too deep to read, which says so.
fn json_problem(e: &serde_json::Error, otherwise: BodyProblem) -> BodyProblem {
    match crate::protocol::json_error(e) {
        crate::protocol::DecodeError::TooDeep => BodyProblem::TooDeep,
        _ => otherwise,
    }
}

fn unprocessable(field: impl Into<String>, problem: BodyProblem) -> Response {
    http_error(HttpError::Unprocessable {
        field: field.into(),
        problem,
    })
}

/// A single broadcast's body: `Some(true)` binary (`application/octet-stream`),
/// `Some(false)` JSON (`application/json`, or no Content-Type), `None` any other media
/// type (parameters such as `; charset=utf-8` aside).
fn body_kind(headers: &HeaderMap) -> Option<bool> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Some(false);
    };
    let mime = ct.to_str().ok()?.split(';').next()?.trim();
    let (kind, sub) = mime.split_once('/')?;
    if !kind.eq_ignore_ascii_case("application") {
        return None;
    }
    match sub.to_ascii_lowercase().as_str() {
        "json" => Some(false),
        "octet-stream" => Some(true),
        _ => None,
    }
}

/// `Authorization: Bearer <jwt>`, else an `apikey` header: the token and its claims.
async fn authorize<'h>(
    hub: &Hub,
    headers: &'h HeaderMap,
) -> Result<(&'h str, Claims), Box<Response>> {
    let unauthorized = || Box::new(http_error(HttpError::Unauthorized));
    let token = request_token(headers).ok_or_else(unauthorized)?;
    match hub.services.verifier.verify_fresh(token).await {
        Ok(claims) => Ok((token, claims)),
        Err(_) => Err(unauthorized()),
    }
}

/// The request's token (`Authorization: Bearer`, else `apikey`), trimmed.
fn request_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let token = bearer.or_else(|| headers.get("apikey").and_then(|v| v.to_str().ok()))?;
    Some(token.trim())
}

/// The verified claims of the request's token (`Authorization: Bearer`, else `apikey`).
/// The request's token's claims; `Err(None)` without a token, else why it was refused.
pub(super) async fn token_claims(hub: &Hub, headers: &HeaderMap) -> Result<Claims, Option<String>> {
    let token = request_token(headers).ok_or(None)?;
    hub.services
        .verifier
        .verify_fresh(token)
        .await
        .map_err(|e| Some(e.to_string()))
}

/// Counts `messages` against the caller's token and address; the 429 answer if over.
fn within_rate(
    hub: &Hub,
    token: &str,
    peer: Option<axum::Extension<PeerAddr>>,
    headers: &HeaderMap,
    messages: usize,
) -> Result<(), Box<Response>> {
    let limits = &hub.rest_limits;
    let address = limits.client_address(peer.map(|p| p.0 .0.ip()), headers);
    let refused = match limits.check(token, address, messages) {
        Ok(()) => return Ok(()),
        Err(refused) => refused,
    };
    hub.services
        .metrics
        .dropped("rest_broadcast_rate", messages as u64);
    tracing::debug!(?address, messages, "REST broadcast over the rate limit");
    Err(Box::new(match refused {
        limit::Refused::Batch => http_error(HttpError::BatchTooLarge),
        limit::Refused::Rate { retry_after } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            let mut response = http_error(HttpError::RateLimited);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.max(1).into());
            response
        }
    }))
}

/// Whether the caller may broadcast to private `topic` (one write probe).
async fn may_write(
    hub: &Hub,
    claims: &Claims,
    headers: &HeaderMap,
    topic: &str,
) -> Result<bool, AuthzError> {
    let headers = authz::headers_json(
        headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
    );
    let ctx = authz::Context::new(topic, claims, headers);
    hub.services.authz.write(&ctx, Extension::Broadcast).await
}

fn send(hub: &Hub, topic: &str, private: bool, msg: Broadcast) {
    let key = TopicKey {
        private,
        topic: format!("realtime:{topic}").into(),
    };
    hub.services.metrics.message_in("rest_broadcast");
    hub.services.router.publish(&key, &msg, None);
}

pub async fn broadcast_batch(
    State(hub): State<Arc<Hub>>,
    peer: Option<axum::Extension<PeerAddr>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (token, claims) = match authorize(&hub, &headers).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let limit = body_limit(hub.services.limits.max_broadcast_bytes);
    let body = match read_body(body, limit) {
        Ok(body) => body,
        Err(e) => return http_error(e),
    };
    let body = match serde_json::from_slice::<Value>(&body) {
        Ok(body) => body,
        Err(e) => return unprocessable("body", json_problem(&e, BodyProblem::NotJsonObject)),
    };
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return unprocessable("messages", BodyProblem::MessagesMissing);
    };
    if messages.len() > MAX_BATCH {
        return http_error(HttpError::BatchTooLarge);
    }
    let max = hub.services.limits.max_broadcast_bytes;
    let mut ready = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let topic = m
            .get("topic")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty());
        let event = m.get("event").and_then(Value::as_str);
        let payload = m.get("payload").filter(|p| p.is_object());
        let (Some(topic), Some(event), Some(payload)) = (topic, event, payload) else {
            return unprocessable(format!("messages[{i}]"), BodyProblem::MessageIncomplete);
        };
        if encoded_len(payload) > max {
            return unprocessable(format!("messages[{i}]"), BodyProblem::PayloadTooLarge);
        }
        // A boolean as Ecto casts one: anything else refuses the batch rather than
        // sending a message meant to be private to the public topic.
        let private = match m.get("private") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(Value::String(s)) if s == "true" || s == "1" => true,
            Some(Value::String(s)) if s == "false" || s == "0" => false,
            Some(_) => {
                return unprocessable(format!("messages[{i}].private"), BodyProblem::NotBoolean)
            }
        };
        if private && refuse_nul("topic", topic).is_err() {
            return unprocessable(format!("messages[{i}].topic"), BodyProblem::NulCharacter);
        }
        let meta = m.get("id").map(|id| json!({ "id": id }));
        ready.push((
            topic,
            private,
            Broadcast {
                event: event.to_owned(),
                payload: BroadcastPayload::Json(payload.clone()),
                meta,
                binary_origin: false,
            },
        ));
    }
    if let Err(r) = within_rate(&hub, token, peer, &headers, ready.len()) {
        return *r;
    }
    // One write decision per private topic; refused (or undecidable) topics are dropped.
    let mut decided: HashMap<&str, bool> = HashMap::new();
    for (topic, private, msg) in ready {
        if private {
            let allowed = match decided.get(topic) {
                Some(&allowed) => allowed,
                None => {
                    let allowed = may_write(&hub, &claims, &headers, topic)
                        .await
                        .unwrap_or_else(|e| {
                            tracing::warn!(topic, error = %e, "REST broadcast write check failed");
                            false
                        });
                    decided.insert(topic, allowed);
                    allowed
                }
            };
            if !allowed {
                hub.services.metrics.dropped("write_denied", 1);
                continue;
            }
        }
        send(&hub, topic, private, msg);
    }
    StatusCode::ACCEPTED.into_response()
}

pub async fn broadcast_one(
    State(hub): State<Arc<Hub>>,
    Path((topic, event)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    peer: Option<axum::Extension<PeerAddr>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // JSON, binary, or no Content-Type at all, checked first as Supabase does. (Supabase
    // then reads no body and sends `{}`; the hub reads it as JSON, the README says so.)
    let binary = match body_kind(&headers) {
        Some(binary) => binary,
        None => return http_error(HttpError::UnsupportedMediaType),
    };
    let (token, claims) = match authorize(&hub, &headers).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if topic.is_empty() {
        return unprocessable("topic", BodyProblem::TopicMissing);
    }
    let max = hub.services.limits.max_broadcast_bytes;
    let body = match read_body(body, body_limit(max)) {
        Ok(body) if body.len() <= max => body,
        Ok(_) | Err(HttpError::BodyTooLarge { .. }) => {
            return unprocessable("payload", BodyProblem::PayloadTooLarge)
        }
        Err(e) => return http_error(e),
    };
    let payload = if binary {
        BroadcastPayload::Binary(body)
    } else if body.iter().all(u8::is_ascii_whitespace) {
        // Plug's JSON parser reads an empty body as `{}`.
        BroadcastPayload::Json(serde_json::json!({}))
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.is_object() => BroadcastPayload::Json(v),
            // Supabase's JSON parser (Plug) hands a body that is not an object on as
            // `{"_json": body}`, so subscribers always get an object (the Python
            // client's model refuses anything else).
            Ok(v) => BroadcastPayload::Json(serde_json::json!({ "_json": v })),
            Err(e) => {
                return unprocessable("payload", json_problem(&e, BodyProblem::PayloadNotJson))
            }
        }
    };
    let private = params
        .get("private")
        .is_some_and(|p| p.eq_ignore_ascii_case("true"));
    if private && refuse_nul("topic", &topic).is_err() {
        return unprocessable("topic", BodyProblem::NulCharacter);
    }
    if let Err(r) = within_rate(&hub, token, peer, &headers, 1) {
        return *r;
    }
    let msg = Broadcast {
        event,
        payload,
        meta: None,
        binary_origin: binary,
    };
    if private {
        match may_write(&hub, &claims, &headers, &topic).await {
            Ok(true) => {}
            Ok(false) => return http_error(HttpError::WriteDenied),
            Err(AuthzError::Policy(problem)) => {
                tracing::warn!(topic, problem, "REST broadcast write check failed");
                return http_error(HttpError::RlsPolicyError);
            }
            Err(AuthzError::Unavailable(_)) => return http_error(HttpError::DatabaseUnavailable),
        }
    }
    send(&hub, &topic, private, msg);
    StatusCode::ACCEPTED.into_response()
}
