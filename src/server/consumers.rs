//! HTTP for the durable consumers: the change feed (`GET /realtime/v1/api/changes`) for
//! any valid token, and the webhooks API (`/realtime/v1/api/webhooks`: list, one,
//! pause, resume, retry, replay) for admins (`require_admin`). Rules live in `consumers`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::rest::token_claims;
use super::Hub;
use crate::consumers::{ConsumersError, ConsumersHandle, FeedQuery, Operation};
use crate::protocol::{FeedError, WebhookApiError};

fn feed_error(e: FeedError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(e.body())).into_response()
}

pub(crate) fn webhook_error(e: WebhookApiError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(e.body())).into_response()
}

/// `GET /realtime/v1/api/changes?tables=..&cursor=..&limit=..&wait=..`
pub async fn changes_feed(
    State(hub): State<Arc<Hub>>,
    query: Result<Query<FeedQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let claims = match token_claims(&hub, &headers).await {
        Ok(claims) => claims,
        Err(None) => return feed_error(FeedError::Unauthorized),
        Err(Some(why)) => return feed_error(FeedError::BadToken(why)),
    };
    let query = match query {
        Ok(Query(query)) => query,
        Err(e) => return feed_error(FeedError::BadQuery(e.body_text())),
    };
    let Some(consumers) = &hub.consumers else {
        return feed_error(FeedError::NoDatabase);
    };
    match consumers.feed(&claims, &query, &hub.shutdown).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => feed_error(e),
    }
}

/// The consumers, for an admin (a service_role token or the admin secret, as for every
/// operations endpoint).
async fn admin(hub: &Hub, headers: &HeaderMap) -> Result<ConsumersHandle, Box<Response>> {
    super::require_admin(hub, headers).await?;
    hub.consumers
        .clone()
        .ok_or_else(|| Box::new(webhook_error(WebhookApiError::NoDatabase)))
}

pub(crate) fn api_error(e: ConsumersError) -> WebhookApiError {
    match e {
        ConsumersError::NoSuchWebhook(name) => WebhookApiError::NotFound(name),
        ConsumersError::BadArgument(message) => WebhookApiError::BadArgument(message),
        other => WebhookApiError::Unavailable(other.to_string()),
    }
}

/// `GET /realtime/v1/api/webhooks`
pub async fn list_webhooks(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let consumers = match admin(&hub, &headers).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match consumers.status().await {
        Ok(list) => Json(json!({ "webhooks": &*list })).into_response(),
        Err(e) => webhook_error(api_error(e)),
    }
}

/// `GET /realtime/v1/api/webhooks/{name}`
pub async fn get_webhook(
    State(hub): State<Arc<Hub>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let consumers = match admin(&hub, &headers).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match consumers.status().await {
        Ok(list) => match list.iter().find(|s| s.name == name) {
            Some(s) => Json(json!({ "webhook": s })).into_response(),
            None => webhook_error(WebhookApiError::NotFound(name)),
        },
        Err(e) => webhook_error(api_error(e)),
    }
}

/// `POST /realtime/v1/api/webhooks/{name}/{pause|resume|retry|replay}`; a replay takes
/// `{"from": "<RFC 3339 time>"}` (or `?from=`).
pub async fn operate_webhook(
    State(hub): State<Arc<Hub>>,
    Path((name, action)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let consumers = match admin(&hub, &headers).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let op = match parse_operation(&action, params.get("from").map(String::as_str), &body) {
        Ok(op) => op,
        Err(e) => return webhook_error(e),
    };
    run_operation(&consumers, &name, &op).await
}

/// Applies `op` and answers with the endpoint's state after it.
pub(crate) async fn run_operation(
    consumers: &ConsumersHandle,
    name: &str,
    op: &Operation,
) -> Response {
    match consumers.operate(name, op).await {
        Ok((position, webhook)) => {
            let mut out = json!({ "webhook": webhook });
            if let Some(p) = position {
                out["replay_from_position"] = Value::String(p);
            }
            Json(out).into_response()
        }
        Err(e) => webhook_error(api_error(e)),
    }
}

/// An action name (and a replay's `from`) as an operation; unknown actions are 404s.
pub(crate) fn parse_operation(
    action: &str,
    from_query: Option<&str>,
    body: &[u8],
) -> Result<Operation, WebhookApiError> {
    Ok(match action {
        "pause" => Operation::Pause,
        "resume" => Operation::Resume,
        "retry" => Operation::Retry,
        "replay" => {
            let from_body = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("from").and_then(Value::as_str).map(str::to_owned));
            let from = from_body
                .as_deref()
                .or(from_query)
                .ok_or(WebhookApiError::BadFrom)?;
            let from = chrono::DateTime::parse_from_rfc3339(from.trim())
                .map_err(|_| WebhookApiError::BadFrom)?
                .with_timezone(&chrono::Utc);
            Operation::Replay { from }
        }
        other => return Err(WebhookApiError::UnknownAction(other.to_owned())),
    })
}
