//! The inspector: a single-page app at `/inspector` that shows capture status and lag,
//! enabled tables and their change rates, tables joins asked for that are not enabled,
//! connections, channels and presence, live once a second over server-sent events; and a
//! "try it" panel that connects to the hub's own WebSocket as a real client would; and
//! the webhook endpoints with pause, resume and retry buttons.
//!
//! Assets are embedded in the binary and served under a strict Content-Security-Policy.
//! Nothing but the sign-in form is shown without a service_role token or the admin
//! secret (`auth`); the page reads data only through the hub's handles (`snapshot`).
//! Off with `inspector = false`: the routes are then not mounted and answer 404.

mod assets;
mod history;
mod snapshot;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router as HttpRouter};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

pub use history::History;

use super::admin::{self, Gate, Grant};
use super::Hub;
use crate::config::Config;
use crate::protocol::{InspectorBadRequest, InspectorError, TokenError};

/// How often the stream sends a snapshot.
const STREAM_EVERY: Duration = Duration::from_secs(1);
/// Lifetime of a token minted by the "try it" panel.
pub const MINTED_TOKEN_TTL_SECS: i64 = 15 * 60;

/// The inspector's state, held by the hub.
pub struct Inspector {
    /// Written by the sampler task (`History::run_sampler`), read by requests.
    history: Arc<History>,
    /// The hub's HS256 secret, for minting "try it" tokens; `None` with a JWKS only.
    mint_secret: Option<String>,
    started: Instant,
}

impl Inspector {
    pub fn new(config: &Config) -> Inspector {
        Inspector {
            history: Arc::default(),
            mint_secret: config.jwt_secret.clone(),
            started: Instant::now(),
        }
    }

    /// The samples the page charts; `lib.rs` spawns its sampler.
    pub fn history(&self) -> Arc<History> {
        self.history.clone()
    }
}

/// The inspector's routes (mounted only when it is enabled).
pub fn routes() -> HttpRouter<Arc<Hub>> {
    HttpRouter::new()
        .route("/inspector", get(assets::page))
        .route("/inspector/", get(assets::page))
        .route("/inspector/assets/{name}", get(assets::asset))
        .route(
            "/inspector/api/session",
            get(session_info).post(sign_in).delete(sign_out),
        )
        .route("/inspector/api/snapshot", get(snapshot))
        .route("/inspector/api/stream", get(stream))
        .route("/inspector/api/token", post(mint))
        .route("/inspector/api/token/check", post(check_token))
        .route(
            "/inspector/api/webhooks/{name}/{action}",
            post(webhook_action),
        )
        // Inside the layer, so that a 405 carries the page's security headers too.
        .method_not_allowed_fallback(super::wrong_method)
        .layer(middleware::map_response(assets::security_headers))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn error(e: InspectorError) -> Response {
    admin::refusal(e)
}

fn inspector(hub: &Hub) -> &Inspector {
    hub.inspector
        .as_ref()
        .expect("inspector routes are mounted only with an inspector")
}

async fn authorize(hub: &Hub, headers: &HeaderMap) -> Result<Grant, InspectorError> {
    hub.admin
        .authorize_fresh(&hub.services.verifier, headers, now())
        .await
}

fn grant_json(g: Grant) -> Value {
    json!({ "signed_in": true, "via": g.via, "expires_at": g.expires_at })
}

/// The body's JSON object.
fn json_object(body: &[u8]) -> Result<Map<String, Value>, InspectorError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(InspectorError::BadRequest(
            InspectorBadRequest::NotJsonObject,
        )),
    }
}

/// Whether the visitor is signed in (never an error: the page asks before showing data).
async fn session_info(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    match hub.admin.session(&headers, now()) {
        Some(g) => Json(grant_json(g)).into_response(),
        None => Json(json!({ "signed_in": false })).into_response(),
    }
}

/// `{"credential": <service_role token or admin secret>}` -> a session cookie.
async fn sign_in(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Bytes) -> Response {
    if !admin::same_origin(&headers) {
        return error(InspectorError::CrossOrigin);
    }
    let body = match json_object(&body) {
        Ok(b) => b,
        Err(e) => return error(e),
    };
    let credential = body.get("credential").and_then(Value::as_str).unwrap_or("");
    admin::read_keys_for(&hub.services.verifier, credential).await;
    let now = now();
    match hub.admin.check(&hub.services.verifier, credential, now) {
        Ok(g) => {
            let id = hub.admin.open_session(g, now);
            let cookie = admin::session_cookie(&id, g.expires_at - now, admin::is_https(&headers));
            ([(header::SET_COOKIE, cookie)], Json(grant_json(g))).into_response()
        }
        Err(e) => error(e),
    }
}

async fn sign_out(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if !admin::same_origin(&headers) {
        return error(InspectorError::CrossOrigin);
    }
    hub.admin.close_session(&headers);
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, admin::cleared_cookie())],
    )
        .into_response()
}

async fn snapshot(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&hub, &headers).await {
        return error(e);
    }
    Json(snapshot::build(&hub, 0).await).into_response()
}

/// Where the stream is: the last sample sent, and whether to stop.
struct StreamState {
    hub: Arc<Hub>,
    /// The cookie's session, re-checked every tick (sign-out ends the stream).
    session: Option<String>,
    expires_at: i64,
    after_seq: u64,
    tick: tokio::time::Interval,
    done: bool,
}

/// Server-sent events: a `snapshot` every second (samples sent once each), and a final
/// `signed_out` when the session ends. Ends when the hub shuts down.
async fn stream(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let grant = match authorize(&hub, &headers).await {
        Ok(g) => g,
        Err(e) => return error(e),
    };
    let session = Gate::session_id(&headers)
        .filter(|id| hub.admin.is_live(id, now()))
        .map(str::to_owned);
    let mut tick = tokio::time::interval(STREAM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = StreamState {
        hub: hub.clone(),
        session,
        expires_at: grant.expires_at,
        after_seq: 0,
        tick,
        done: false,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        s.tick.tick().await;
        let now = now();
        let live = match &s.session {
            Some(id) => s.hub.admin.is_live(id, now),
            None => now < s.expires_at,
        };
        if !live {
            s.done = true;
            let event = Event::default().event("signed_out").data("{}");
            return Some((Ok::<_, std::convert::Infallible>(event), s));
        }
        let snap = snapshot::build(&s.hub, s.after_seq).await;
        if let Some(last) = snap.samples.last() {
            s.after_seq = last.seq;
        }
        let event = Event::default()
            .event("snapshot")
            .json_data(&snap)
            .unwrap_or_else(|_| Event::default().event("snapshot").data("{}"));
        Some((Ok(event), s))
    });
    let events = events.take_until(hub.shutdown.clone().cancelled_owned());
    (
        [("x-accel-buffering", "no")],
        Sse::new(events).keep_alive(KeepAlive::default()),
    )
        .into_response()
}

/// A webhook button (pause, resume, retry): the same operation as the REST API's, for
/// the signed-in page.
async fn webhook_action(
    State(hub): State<Arc<Hub>>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(e) = authorize(&hub, &headers).await {
        return error(e);
    }
    if !admin::same_origin(&headers) {
        return error(InspectorError::CrossOrigin);
    }
    let Some(consumers) = &hub.consumers else {
        return super::consumers::webhook_error(crate::protocol::WebhookApiError::NoDatabase);
    };
    match super::consumers::parse_operation(&action, None, &body) {
        Ok(op) => super::consumers::run_operation(consumers, &name, &op).await,
        Err(e) => super::consumers::webhook_error(e),
    }
}

/// `{"role": ..., "claims": {...}}` -> a short-lived HS256 token for the "try it" panel.
async fn mint(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = authorize(&hub, &headers).await {
        return error(e);
    }
    if !admin::same_origin(&headers) {
        return error(InspectorError::CrossOrigin);
    }
    let Some(secret) = &inspector(&hub).mint_secret else {
        return error(InspectorError::CannotMint);
    };
    let body = match json_object(&body) {
        Ok(b) => b,
        Err(e) => return error(e),
    };
    let claims = mint_claims(&body, now()).and_then(|claims| {
        let role = claims["role"].as_str().unwrap_or_default();
        let verifier = &hub.services.verifier;
        verifier
            .check_role(role)
            .map_err(InspectorBadRequest::Role)?;
        Ok(claims)
    });
    match claims {
        Ok(claims) => match crate::auth::mint_hs256(secret, &claims) {
            Ok(token) => {
                Json(json!({ "token": token, "expires_at": claims["exp"] })).into_response()
            }
            Err(e) => error(InspectorError::MintFailed(e.to_string())),
        },
        Err(problem) => error(InspectorError::BadRequest(problem)),
    }
}

/// `{"token": ...}` -> whether the hub would accept it at connect: `{"valid": true,
/// "role", "expires_at"}`, or `{"valid": false, "reason"}` with the reason in the words
/// of a join reply or `system` message (a browser's WebSocket cannot read the 401 body).
async fn check_token(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = authorize(&hub, &headers).await {
        return error(e);
    }
    if !admin::same_origin(&headers) {
        return error(InspectorError::CrossOrigin);
    }
    let body = match json_object(&body) {
        Ok(b) => b,
        Err(e) => return error(e),
    };
    let token = body.get("token").and_then(Value::as_str).unwrap_or("");
    // As the upgrade does, a kid no key has makes the hub read its JWKS again first.
    admin::read_keys_for(&hub.services.verifier, token).await;
    Json(token_verdict(&hub.services.verifier, token, now())).into_response()
}

/// What the hub's WebSocket upgrade decides for `token` as its `apikey` at `now`.
fn token_verdict(verifier: &crate::auth::Verifier, token: &str, now: i64) -> Value {
    match verifier.verify_at(token, now) {
        Ok(c) => json!({ "valid": true, "role": &*c.role, "expires_at": c.exp }),
        // As at connect: an empty key is a key, and fails as a JWT.
        Err(TokenError::Missing) => {
            json!({ "valid": false, "reason": TokenError::Malformed.to_string() })
        }
        Err(e) => json!({ "valid": false, "reason": e.to_string() }),
    }
}

/// The claims of a minted token: the given ones, then `role`, `iat` and a short `exp`.
fn mint_claims(body: &Map<String, Value>, now: i64) -> Result<Value, InspectorBadRequest> {
    let role = body
        .get("role")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or(InspectorBadRequest::RoleMissing)?;
    let mut claims = match body.get("claims") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(InspectorBadRequest::ClaimsNotObject),
    };
    claims.insert("role".into(), role.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + MINTED_TOKEN_TTL_SECS).into());
    Ok(Value::Object(claims))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn minted_claims_keep_the_given_ones_but_always_expire_soon() {
        let c = mint_claims(
            &body(json!({"role": "authenticated", "claims": {"sub": "u1", "exp": 9999999999i64, "role": "x"}})),
            100,
        )
        .unwrap();
        assert_eq!(c["sub"], "u1");
        assert_eq!(c["role"], "authenticated");
        assert_eq!(c["exp"], 100 + MINTED_TOKEN_TTL_SECS);
    }

    #[test]
    fn minting_needs_a_role_and_object_claims() {
        assert_eq!(
            mint_claims(&body(json!({"role": " "})), 0),
            Err(InspectorBadRequest::RoleMissing)
        );
        assert_eq!(
            mint_claims(&body(json!({"role": "anon", "claims": [1]})), 0),
            Err(InspectorBadRequest::ClaimsNotObject)
        );
        assert!(mint_claims(&body(json!({"role": "anon"})), 0).is_ok());
    }
}
