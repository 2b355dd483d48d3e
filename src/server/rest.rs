//! REST broadcast: `POST /api/broadcast` (batch) and
//! `POST /api/broadcast/{topic}/events/{event}` (single), under `/realtime/v1` too.
//! A batch is validated whole before anything is sent (bad input changes nothing).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{http_error, Hub};
use crate::auth::Claims;
use crate::protocol::{encoded_len, BodyProblem, Broadcast, BroadcastPayload, HttpError};
use crate::router::TopicKey;

/// Most messages one batch may carry.
const MAX_BATCH: usize = 1000;

fn unprocessable(field: impl Into<String>, problem: BodyProblem) -> Response {
    http_error(HttpError::Unprocessable {
        field: field.into(),
        problem,
    })
}

/// `Authorization: Bearer <jwt>`, else an `apikey` header.
fn authorize(hub: &Hub, headers: &HeaderMap) -> Result<Claims, Box<Response>> {
    token_claims(hub, headers).ok_or_else(|| Box::new(http_error(HttpError::Unauthorized)))
}

/// The verified claims of the request's token (`Authorization: Bearer`, else `apikey`).
pub(super) fn token_claims(hub: &Hub, headers: &HeaderMap) -> Option<Claims> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let token = bearer.or_else(|| headers.get("apikey").and_then(|v| v.to_str().ok()))?;
    hub.services.verifier.verify(token.trim()).ok()
}

/// Private topics are writable only by `service_role` until private-channel policies
/// exist; other callers' private messages are dropped silently (still 202), as Supabase does.
fn may_write(claims: &Claims, private: bool) -> bool {
    !private || &*claims.role == "service_role"
}

fn send(hub: &Hub, topic: &str, private: bool, msg: Broadcast) {
    let key = TopicKey {
        private,
        topic: format!("realtime:{topic}").into(),
    };
    hub.services.metrics.message_in("rest_broadcast");
    hub.services.router.broadcast(&key, &msg, None);
}

pub async fn broadcast_batch(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let claims = match authorize(&hub, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return unprocessable("body", BodyProblem::NotJsonObject);
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
        let private = crate::channel::truthy(m.get("private"));
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
    for (topic, private, msg) in ready {
        if may_write(&claims, private) {
            send(&hub, topic, private, msg);
        }
    }
    StatusCode::ACCEPTED.into_response()
}

pub async fn broadcast_one(
    State(hub): State<Arc<Hub>>,
    Path((topic, event)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let claims = match authorize(&hub, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if body.len() > hub.services.limits.max_broadcast_bytes {
        return unprocessable("payload", BodyProblem::PayloadTooLarge);
    }
    let binary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/octet-stream"));
    let payload = if binary {
        BroadcastPayload::Binary(body)
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => BroadcastPayload::Json(v),
            Err(_) => return unprocessable("payload", BodyProblem::PayloadNotJson),
        }
    };
    let private = params
        .get("private")
        .is_some_and(|p| p.eq_ignore_ascii_case("true"));
    let msg = Broadcast {
        event,
        payload,
        meta: None,
        binary_origin: binary,
    };
    if may_write(&claims, private) {
        send(&hub, &topic, private, msg);
    }
    StatusCode::ACCEPTED.into_response()
}
