//! Who may use the admin surfaces (`/api/status`, the inspector, operations endpoints):
//! a service_role token (verified by the hub's verifier) or the admin secret. Scripts send
//! `Authorization: Bearer <credential>`; the inspector's browser signs in once by POSTing
//! the credential and gets a random session id in an `HttpOnly; SameSite=Strict` cookie
//! scoped to `/inspector`, so no long-lived secret ever sits in a URL, in page script or
//! in storage. Failed attempts draw on a small budget that refills slowly, so the admin
//! secret cannot be guessed at speed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use rand::RngCore;
use serde::Serialize;

use crate::auth::{looks_like_jwt, Claims, TokenError, Verifier};
use crate::protocol::InspectorError;

/// Name of the session cookie.
pub const COOKIE: &str = "switchboard_inspector";
/// Longest a session lives (a token's session ends with the token, if sooner).
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at once; the one closest to expiry goes first.
const MAX_SESSIONS: usize = 256;
/// Failed sign-ins allowed in a burst, and how fast the allowance comes back.
const FAILURE_BURST: f64 = 10.0;
const FAILURES_PER_SEC: f64 = 1.0;

/// How a visitor proved it may look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    ServiceRoleToken,
    AdminSecret,
}

/// Access granted until `expires_at` (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub via: Via,
    pub expires_at: i64,
}

/// The grant of a verified token or API key, until `until` at the latest, if its role
/// is service_role.
fn service_role(verified: Result<Claims, TokenError>, until: i64) -> Result<Grant, InspectorError> {
    match verified {
        Err(e) => Err(InspectorError::Token(e)),
        Ok(c) if &*c.role != "service_role" => Err(InspectorError::NotServiceRole {
            role: c.role.to_string(),
        }),
        Ok(c) => Ok(Grant {
            via: Via::ServiceRoleToken,
            expires_at: c.exp.min(until),
        }),
    }
}

/// A token bucket of allowed failures.
#[derive(Debug)]
struct FailureBudget {
    left: f64,
    at: Instant,
}

impl FailureBudget {
    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.left = (self.left + secs * FAILURES_PER_SEC).min(FAILURE_BURST);
        self.at = now;
    }
}

/// The inspector's door: its sessions and the admin secret.
pub struct Gate {
    admin_secret: Option<String>,
    /// Session id -> grant. Short-held, never across an await.
    sessions: Mutex<HashMap<String, Grant>>,
    /// Short-held, never across an await.
    failures: Mutex<FailureBudget>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Compares without an early exit on the first differing byte.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// 32 random bytes, base64url.
fn new_session_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Reads the JWKS again when `credential` is a token whose kid no key has
/// (`Verifier::verify_fresh` does that, and only that); anything else reads nothing.
pub async fn read_keys_for(verifier: &Verifier, credential: &str) {
    let credential = credential.trim();
    if looks_like_jwt(credential) {
        let _ = verifier.verify_fresh(credential).await;
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

/// A state-changing request is refused when a browser says it comes from another origin
/// (the SameSite cookie already keeps other sites out; this covers sign-in too). The
/// Origin's host:port must match `Host`, or the first `X-Forwarded-Host` a proxy in front
/// passed on (one that rewrites `Host`, or drops its port). Trusting that header stays
/// CSRF-safe: a page on another origin cannot set it without a CORS preflight, which the
/// hub never grants for these routes, and a non-browser client needs no forgery.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(origin_host) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let forwarded = headers
        .get("x-forwarded-host")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    [host, forwarded]
        .into_iter()
        .flatten()
        .any(|h| !h.is_empty() && origin_host.eq_ignore_ascii_case(h))
}

/// The answer to a refused admin request: its status, `{"error": ...}`, and
/// `Retry-After` when waiting helps (a spent failure budget).
pub fn refusal(e: InspectorError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = (status, Json(e.body())).into_response();
    if let Some(secs) = e.retry_after_secs() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// `Set-Cookie` for a new session (`Secure` when the page was reached over https).
pub fn session_cookie(id: &str, max_age_secs: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={id}; Path=/inspector; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        max_age_secs.max(0)
    )
}

/// `Set-Cookie` that removes the session cookie.
pub fn cleared_cookie() -> String {
    session_cookie("", 0, false)
}

/// Whether the request reached us over https (directly or through a proxy that says so).
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

impl Gate {
    pub fn new(admin_secret: Option<String>) -> Gate {
        Gate {
            admin_secret,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(FailureBudget {
                left: FAILURE_BURST,
                at: Instant::now(),
            }),
        }
    }

    /// Checks a service_role token or the admin secret at `now` (unix seconds).
    pub fn check(
        &self,
        verifier: &Verifier,
        credential: &str,
        now: i64,
    ) -> Result<Grant, InspectorError> {
        self.check_at(verifier, credential, now, Instant::now())
    }

    fn check_at(
        &self,
        verifier: &Verifier,
        credential: &str,
        now: i64,
        clock: Instant,
    ) -> Result<Grant, InspectorError> {
        let credential = credential.trim();
        if credential.is_empty() {
            return Err(InspectorError::NoCredentials);
        }
        let ttl = SESSION_TTL.as_secs() as i64;
        // A token is checked by its signature, which no one guesses: it neither draws on
        // the failure budget nor waits for it, so bad tokens (an expired one a script
        // keeps sending, say) never lock out a good one.
        if looks_like_jwt(credential) {
            return service_role(verifier.verify_at(credential, now), now + ttl);
        }
        // The admin secret and the API keys (`sb_secret_…` for service_role) can be
        // guessed: failures draw on the budget, and while it is spent even the right
        // secret or key waits.
        {
            let mut budget = lock(&self.failures);
            budget.refill(clock);
            if budget.left < 1.0 {
                let wait = (1.0 - budget.left) / FAILURES_PER_SEC;
                return Err(InspectorError::TooManyAttempts {
                    retry_after_secs: (wait.ceil() as u64).max(1),
                });
            }
        }
        let outcome = match &self.admin_secret {
            _ if verifier.is_api_key(credential) => {
                service_role(verifier.verify_at(credential, now), now + ttl)
            }
            None => Err(InspectorError::NoAdminSecret),
            Some(s) if same_secret(s, credential) => Ok(Grant {
                via: Via::AdminSecret,
                expires_at: now + ttl,
            }),
            Some(_) => Err(InspectorError::WrongSecret),
        };
        if outcome.is_err() {
            lock(&self.failures).left -= 1.0;
        }
        outcome
    }

    /// Starts a session for `grant`; returns its id.
    pub fn open_session(&self, grant: Grant, now: i64) -> String {
        let id = new_session_id();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, g| g.expires_at > now);
        if sessions.len() >= MAX_SESSIONS {
            let soonest = sessions
                .iter()
                .min_by_key(|(_, g)| g.expires_at)
                .map(|(k, _)| k.clone());
            if let Some(k) = soonest {
                sessions.remove(&k);
            }
        }
        sessions.insert(id.clone(), grant);
        id
    }

    /// The live session the request's cookie names.
    pub fn session(&self, headers: &HeaderMap, now: i64) -> Option<Grant> {
        let id = cookie(headers, COOKIE)?;
        let mut sessions = lock(&self.sessions);
        match sessions.get(id) {
            Some(g) if g.expires_at > now => Some(*g),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// Whether session `id` is still live (the stream re-checks every tick).
    pub fn is_live(&self, id: &str, now: i64) -> bool {
        lock(&self.sessions)
            .get(id)
            .is_some_and(|g| g.expires_at > now)
    }

    /// The session id in the request's cookie, if any.
    pub fn session_id(headers: &HeaderMap) -> Option<&str> {
        cookie(headers, COOKIE)
    }

    /// Ends the request's session, if it has one.
    pub fn close_session(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            lock(&self.sessions).remove(id);
        }
    }

    /// As `authorize`, but a bearer token whose kid no key has makes the hub read its JWKS
    /// again first (at most once per interval), as at connect: a service_role token
    /// signed with a key rotated in since the last read opens the admin API at once.
    pub async fn authorize_fresh(
        &self,
        verifier: &Verifier,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<Grant, InspectorError> {
        if self.session(headers, now).is_none() {
            if let Some(token) = bearer(headers) {
                read_keys_for(verifier, token).await;
            }
        }
        self.authorize(verifier, headers, now)
    }

    /// A session cookie, else a bearer credential; else the visitor must sign in.
    pub fn authorize(
        &self,
        verifier: &Verifier,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<Grant, InspectorError> {
        if let Some(g) = self.session(headers, now) {
            return Ok(g);
        }
        match bearer(headers) {
            Some(credential) => self.check(verifier, credential, now),
            None => Err(InspectorError::SignInRequired),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::mint_hs256;
    use axum::http::HeaderValue;
    use serde_json::json;

    const SECRET: &str = "inspector-auth-tests-secret";
    const ADMIN: &str = "an-admin-secret-of-some-length";
    const NOW: i64 = 1_700_000_000;

    fn verifier() -> Verifier {
        Verifier::new(Some(SECRET), None).unwrap()
    }

    fn token(role: &str, exp: i64) -> String {
        mint_hs256(SECRET, &json!({"role": role, "exp": exp})).unwrap()
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn a_service_role_token_opens_a_session_that_ends_with_the_token() {
        let gate = Gate::new(None);
        let g = gate
            .check(&verifier(), &token("service_role", NOW + 60), NOW)
            .unwrap();
        assert_eq!(
            g,
            Grant {
                via: Via::ServiceRoleToken,
                expires_at: NOW + 60
            }
        );
        let id = gate.open_session(g, NOW);
        let headers = with_cookie(&format!("other=1; {COOKIE}={id}"));
        assert_eq!(gate.session(&headers, NOW), Some(g));
        assert_eq!(
            gate.session(&headers, NOW + 61),
            None,
            "expired with the token"
        );
        assert!(!gate.is_live(&id, NOW), "an expired session is forgotten");
    }

    #[test]
    fn other_roles_bad_tokens_and_wrong_secrets_are_refused_with_their_reason() {
        let gate = Gate::new(Some(ADMIN.into()));
        let v = verifier();
        assert_eq!(
            gate.check(&v, &token("anon", NOW + 60), NOW),
            Err(InspectorError::NotServiceRole {
                role: "anon".into()
            })
        );
        assert!(matches!(
            gate.check(&v, &token("service_role", NOW - 1), NOW),
            Err(InspectorError::Token(_))
        ));
        assert_eq!(
            gate.check(&v, "not-the-secret", NOW),
            Err(InspectorError::WrongSecret)
        );
        assert_eq!(
            gate.check(&v, "  ", NOW),
            Err(InspectorError::NoCredentials)
        );
        let g = gate.check(&v, ADMIN, NOW).unwrap();
        assert_eq!(g.via, Via::AdminSecret);
        assert_eq!(g.expires_at, NOW + SESSION_TTL.as_secs() as i64);
        assert_eq!(
            Gate::new(None).check(&v, ADMIN, NOW),
            Err(InspectorError::NoAdminSecret)
        );
    }

    #[test]
    fn failed_attempts_run_out_and_come_back_slowly() {
        let gate = Gate::new(Some(ADMIN.into()));
        let v = verifier();
        let t0 = Instant::now();
        for _ in 0..FAILURE_BURST as usize {
            assert_eq!(
                gate.check_at(&v, "guess", NOW, t0),
                Err(InspectorError::WrongSecret)
            );
        }
        assert_eq!(
            gate.check_at(&v, ADMIN, NOW, t0),
            Err(InspectorError::TooManyAttempts {
                retry_after_secs: 1
            }),
            "even the right secret waits while the budget is spent"
        );
        assert_eq!(
            gate.check_at(&v, ADMIN, NOW, t0 + Duration::from_millis(400)),
            Err(InspectorError::TooManyAttempts {
                retry_after_secs: 1
            }),
            "0.6 s to wait is told as 1 s"
        );
        let later = t0 + Duration::from_secs(2);
        assert!(gate.check_at(&v, ADMIN, NOW, later).is_ok());
    }

    #[test]
    fn api_keys_are_guessable_secrets_a_spent_budget_holds_back_too() {
        const SECRET_KEY: &str = "sb_secret_0123456789abcdef";
        const PUBLISHABLE: &str = "sb_publishable_0123456789abcdef";
        let gate = Gate::new(Some(ADMIN.into()));
        let v = verifier().api_keys(&[
            (SECRET_KEY.into(), "service_role".into()),
            (PUBLISHABLE.into(), "anon".into()),
        ]);
        let t0 = Instant::now();
        let grant = gate.check_at(&v, SECRET_KEY, NOW, t0).unwrap();
        assert_eq!(grant.via, Via::ServiceRoleToken);
        assert_eq!(
            gate.check_at(&v, PUBLISHABLE, NOW, t0),
            Err(InspectorError::NotServiceRole {
                role: "anon".into()
            })
        );
        for _ in 1..FAILURE_BURST as usize {
            assert_eq!(
                gate.check_at(&v, "sb_secret_guess_0123456789", NOW, t0),
                Err(InspectorError::WrongSecret)
            );
        }
        assert_eq!(
            gate.check_at(&v, SECRET_KEY, NOW, t0),
            Err(InspectorError::TooManyAttempts {
                retry_after_secs: 1
            }),
            "a guess that hits waits like the admin secret"
        );
        assert!(gate
            .check_at(&v, SECRET_KEY, NOW, t0 + Duration::from_secs(2))
            .is_ok());
    }

    #[test]
    fn tokens_neither_spend_the_budget_nor_wait_for_it() {
        let gate = Gate::new(Some(ADMIN.into()));
        let v = verifier();
        let t0 = Instant::now();
        let anon = token("anon", NOW + 600);
        for _ in 0..2 * FAILURE_BURST as usize {
            assert!(matches!(
                gate.check_at(&v, &anon, NOW, t0),
                Err(InspectorError::NotServiceRole { .. })
            ));
        }
        assert!(
            gate.check_at(&v, ADMIN, NOW, t0).is_ok(),
            "bad tokens spent nothing"
        );
        for _ in 0..FAILURE_BURST as usize {
            let _ = gate.check_at(&v, "guess", NOW, t0);
        }
        assert!(
            gate.check_at(&v, &token("service_role", NOW + 600), NOW, t0)
                .is_ok(),
            "a good token does not wait for guesses of the secret"
        );
    }

    #[test]
    fn a_bearer_credential_works_without_a_session() {
        let gate = Gate::new(Some(ADMIN.into()));
        let mut h = HeaderMap::new();
        assert_eq!(
            gate.authorize(&verifier(), &h, NOW),
            Err(InspectorError::SignInRequired)
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {ADMIN}")).unwrap(),
        );
        assert_eq!(
            gate.authorize(&verifier(), &h, NOW).unwrap().via,
            Via::AdminSecret
        );
        gate.close_session(&h);
    }

    #[test]
    fn cross_origin_requests_are_told_apart_from_same_origin_ones() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("hub.local:4000"));
        assert!(
            same_origin(&h),
            "no Origin: not a cross-site browser request"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://hub.local:4000"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }

    #[test]
    fn the_origin_may_match_the_host_a_proxy_forwarded() {
        let mut h = HeaderMap::new();
        // A proxy that sets `Host $host` drops the public port.
        h.insert(header::HOST, HeaderValue::from_static("hub.example"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://hub.example:4000"),
        );
        assert!(!same_origin(&h), "the port is part of the origin");
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("hub.example:4000, inner.local"),
        );
        assert!(same_origin(&h), "the first X-Forwarded-Host matches");
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("inner.local, hub.example:4000"),
        );
        assert!(!same_origin(&h), "only the first value counts");
        h.insert(header::HOST, HeaderValue::from_static("hub.example:4000"));
        assert!(same_origin(&h), "Host with its port matches");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example:4000"),
        );
        assert!(!same_origin(&h), "another host with the same port");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn the_session_cookie_is_http_only_strict_and_scoped() {
        let c = session_cookie("id1", 60, true);
        assert_eq!(
            c,
            "switchboard_inspector=id1; Path=/inspector; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
        assert!(cleared_cookie().contains("Max-Age=0"));
    }
}
