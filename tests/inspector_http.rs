//! The inspector's HTTP side: switched off it answers 404; without credentials the page
//! is a sign-in form and every data endpoint answers 401 with a JSON error; a
//! service_role token or the admin secret (as a bearer, or through a cookie session)
//! gets the live snapshot: enabled tables with change counts, joins refused as not
//! enabled with the SQL that fixes them, connections, topics and capture samples.

mod common;

use std::time::{Duration, Instant};

use common::e2e::*;
use common::hub::{now, test_config, TestHub, Vsn};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE, ORIGIN, SET_COOKIE};
use serde_json::{json, Value};

const ADMIN: &str = "inspector-tests-admin-secret";

const SETUP: &str = r#"
create table public.jobs (id bigserial primary key, title text);
grant select on public.jobs to authenticated;
select realtime.enable('public.jobs');
create table public.drafts (id bigserial primary key, body text);
grant select on public.drafts to authenticated;
"#;

async fn hub_with_admin_secret() -> TestHub {
    let mut config = test_config();
    config.admin_secret = Some(ADMIN.into());
    TestHub::start(config).await
}

fn headers(pairs: &[(reqwest::header::HeaderName, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
    }
    h
}

fn bearer(credential: &str) -> HeaderMap {
    headers(&[(AUTHORIZATION, &format!("Bearer {credential}"))])
}

/// (status, headers, body as JSON or a string).
async fn request(
    method: reqwest::Method,
    url: String,
    headers: HeaderMap,
    body: Option<Value>,
) -> (u16, HeaderMap, Value) {
    let mut req = reqwest::Client::new().request(method, url).headers(headers);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, h, body)
}

async fn get(hub: &TestHub, path: &str, h: HeaderMap) -> (u16, HeaderMap, Value) {
    request(reqwest::Method::GET, hub.http_url(path), h, None).await
}

#[tokio::test]
async fn a_disabled_inspector_answers_404_everywhere() {
    let mut config = test_config();
    config.inspector = false;
    config.admin_secret = Some(ADMIN.into());
    let hub = TestHub::start(config).await;
    for path in [
        "/inspector",
        "/inspector/assets/app.js",
        "/inspector/api/session",
        "/inspector/api/snapshot",
        "/inspector/api/stream",
    ] {
        let (code, _, _) = get(&hub, path, bearer(ADMIN)).await;
        assert_eq!(code, 404, "{path} with the inspector off");
    }
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn without_credentials_the_page_is_a_sign_in_form_and_data_answers_401() {
    let hub = hub_with_admin_secret().await;
    let (code, h, page) = get(&hub, "/inspector", HeaderMap::new()).await;
    assert_eq!(code, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "CSP lacks {directive}: {csp}");
    }
    let page = page.as_str().expect("HTML");
    assert!(
        page.contains("id=\"sign-in-form\""),
        "the page asks for a token"
    );

    let (code, h, _) = get(&hub, "/inspector/assets/app.js", HeaderMap::new()).await;
    assert_eq!(code, 200, "assets are public (they hold no data)");
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(h.contains_key("content-security-policy"));
    let (code, _, _) = get(&hub, "/inspector/assets/nope.js", HeaderMap::new()).await;
    assert_eq!(code, 404);

    // A method the route does not take: JSON, with the page's security headers.
    let resp = reqwest::Client::new()
        .put(hub.http_url("/inspector/api/snapshot"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert!(resp.headers().contains_key("content-security-policy"));
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");

    let (code, _, body) = get(&hub, "/inspector/api/session", HeaderMap::new()).await;
    assert_eq!((code, body), (200, json!({"signed_in": false})));
    let sign_in = json!({"error": "Sign in with a service_role token or the admin secret"});
    for path in ["/inspector/api/snapshot", "/inspector/api/stream"] {
        let (code, h, body) = get(&hub, path, HeaderMap::new()).await;
        assert_eq!((code, &body), (401, &sign_in), "{path}");
        assert_eq!(h["cache-control"], "no-store");
    }
    let (code, _, body) = request(
        reqwest::Method::POST,
        hub.http_url("/inspector/api/token"),
        HeaderMap::new(),
        Some(json!({"role": "service_role"})),
    )
    .await;
    assert_eq!(
        (code, body),
        (401, sign_in.clone()),
        "no minting without a session"
    );

    let anon = hub.anon();
    let (code, _, body) = get(&hub, "/inspector/api/snapshot", bearer(&anon)).await;
    assert_eq!(code, 401);
    assert_eq!(
        body["error"],
        "This token's role is \"anon\"; admin access needs a service_role token"
    );
    let expired = hub.token("service_role", "ops", -5);
    let (code, _, body) = get(&hub, "/inspector/api/snapshot", bearer(&expired)).await;
    assert_eq!(code, 401);
    let reason = body["error"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("Token has expired ") && reason.ends_with(" seconds ago"),
        "{body}"
    );
    let (code, _, body) = get(&hub, "/inspector/api/snapshot", bearer("not-the-secret")).await;
    assert_eq!(
        (code, body),
        (401, json!({"error": "That is not the admin secret"}))
    );
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_service_role_token_sees_tables_change_counts_refused_joins_and_topics() {
    let pg = PgHub::start(SETUP).await;
    let service = pg.token("service_role", "ops");
    let user = pg.user("8c1b4a3e-5d6f-4a7b-8c9d-0e1f2a3b4c5d");
    let mut c = pg.connect(Vsn::V1).await;
    let jobs = json!([{"event": "*", "schema": "public", "table": "jobs"}]);
    subscribe(&mut c, "realtime:jobs-room", jobs, Some(&user)).await;
    let drafts = json!([{"event": "*", "schema": "public", "table": "drafts"}]);
    let (_, reply) = join_changes(
        &mut c,
        "realtime:drafts-room",
        drafts,
        Some(&user),
        json!({}),
    )
    .await;
    assert_eq!(
        reply.payload()["status"],
        "ok",
        "the channel joins; the entry fails"
    );
    let refusal = next_system(&mut c).await;
    assert_eq!(refusal["status"], "error", "{refusal}");
    let id = pg
        .id(
            "insert into public.jobs (title) values ('seen') returning id",
            &[],
        )
        .await;
    expect_row(&mut c, "INSERT", "jobs", id).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let snap = loop {
        let (code, _, snap) = get(&pg.hub, "/inspector/api/snapshot", bearer(&service)).await;
        assert_eq!(code, 200, "{snap}");
        let jobs_total = snap["tables"]["enabled"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["table"] == "jobs"))
            .map(|t| t["changes_total"].as_u64().unwrap_or(0));
        let sampled = snap["samples"].as_array().is_some_and(|s| !s.is_empty());
        if jobs_total >= Some(1) && sampled {
            break snap;
        }
        assert!(
            Instant::now() < deadline,
            "snapshot never showed the change: {snap}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let tables = &snap["tables"];
    assert_eq!(tables["error"], Value::Null);
    let enabled: Vec<&Value> = tables["enabled"].as_array().unwrap().iter().collect();
    assert_eq!(enabled.len(), 1, "only jobs is enabled: {tables}");
    assert_eq!(enabled[0]["schema"], "public");
    assert_eq!(enabled[0]["subscriptions"], 1);
    assert!(
        enabled[0].get("via").is_some(),
        "room for how it was enabled"
    );
    assert_eq!(
        tables["not_enabled"],
        json!([{
            "schema": "public",
            "table": "drafts",
            "refused_joins": 1,
            "last_seen": tables["not_enabled"][0]["last_seen"],
            "enable_sql": "select realtime.enable('public.drafts');",
        }])
    );
    assert!(tables["not_enabled"][0]["last_seen"].is_string());
    assert_eq!(snap["connections"]["open"], 1);
    assert_eq!(snap["connections"]["channels"], 2);
    let topics = snap["topics"].as_array().unwrap();
    assert!(
        topics.contains(
            &json!({"topic": "realtime:jobs-room", "private": false, "channels": 1, "presence": 0})
        ),
        "{topics:?}"
    );
    let capture = &snap["capture"];
    assert_eq!(capture["connected"], true, "{capture}");
    assert!(capture["rows_read"].as_u64().unwrap() >= 1);
    assert!(capture["rows_per_sec"].is_number());
    assert_eq!(snap["hub"]["database"], true);
    assert_eq!(snap["hub"]["can_mint"], true);
    let sample = &snap["samples"][0];
    for key in ["seq", "t", "connected", "lag_ms", "rows_per_sec"] {
        assert!(sample.get(key).is_some(), "sample lacks {key}: {sample}");
    }

    // Once enabled, the table leaves the "not enabled" list.
    pg.exec("select realtime.enable('public.drafts')").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, snap) = get(&pg.hub, "/inspector/api/snapshot", bearer(&service)).await;
        if snap["tables"]["not_enabled"] == json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "drafts still listed: {snap}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn session_cookie(h: &HeaderMap) -> String {
    let set = h[SET_COOKIE].to_str().unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/inspector", "Max-Age="] {
        assert!(set.contains(attr), "cookie lacks {attr}: {set}");
    }
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_admin_secret_opens_a_cookie_session_that_mints_tokens_until_sign_out() {
    let hub = hub_with_admin_secret().await;
    let url = hub.http_url("/inspector/api/session");
    let (code, _, body) = request(
        reqwest::Method::POST,
        url.clone(),
        headers(&[(ORIGIN, "https://evil.example")]),
        Some(json!({"credential": ADMIN})),
    )
    .await;
    assert_eq!(
        (code, body),
        (403, json!({"error": "Cross-origin request refused"}))
    );
    let (code, _, body) = request(reqwest::Method::POST, url.clone(), HeaderMap::new(), None).await;
    assert_eq!(
        (code, body),
        (422, json!({"error": "The body must be a JSON object"}))
    );

    let origin = format!("http://{}", hub.addr);
    let (code, h, body) = request(
        reqwest::Method::POST,
        url.clone(),
        headers(&[(ORIGIN, &origin)]),
        Some(json!({"credential": ADMIN})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["via"], "admin_secret");
    let cookie = session_cookie(&h);
    let with_cookie = || headers(&[(COOKIE, &cookie)]);

    let (code, _, snap) = get(&hub, "/inspector/api/snapshot", with_cookie()).await;
    assert_eq!(code, 200, "{snap}");
    assert_eq!(snap["capture"], Value::Null, "no database here");
    assert_eq!(snap["hub"]["database"], false);
    assert_eq!(snap["tables"]["enabled"], json!([]));

    let (code, _, minted) = request(
        reqwest::Method::POST,
        hub.http_url("/inspector/api/token"),
        with_cookie(),
        Some(json!({"role": "authenticated", "claims": {"sub": "user-7"}})),
    )
    .await;
    assert_eq!(code, 200, "{minted}");
    let verifier = switchboard::auth::Verifier::new(Some(&hub.secret), None).unwrap();
    let claims = verifier.verify(minted["token"].as_str().unwrap()).unwrap();
    assert_eq!(&*claims.role, "authenticated");
    assert_eq!(claims.sub.as_deref(), Some("user-7"));
    assert!(
        claims.exp <= now() + 15 * 60 && claims.exp > now(),
        "short-lived"
    );
    let (code, _, body) = request(
        reqwest::Method::POST,
        hub.http_url("/inspector/api/token"),
        with_cookie(),
        Some(json!({"claims": {}})),
    )
    .await;
    assert_eq!(
        (code, body),
        (422, json!({"error": "`role` must be a non-empty string"}))
    );
    // A role outside allowed_roles would be refused at connect: no token for it.
    let (code, _, body) = request(
        reqwest::Method::POST,
        hub.http_url("/inspector/api/token"),
        with_cookie(),
        Some(json!({"role": "postgres"})),
    )
    .await;
    assert_eq!(
        (code, body),
        (
            422,
            json!({"error": "Token role \"postgres\" is not allowed; the hub would refuse a token with it"})
        )
    );

    let (code, h, _) = request(reqwest::Method::DELETE, url.clone(), with_cookie(), None).await;
    assert_eq!(code, 204);
    assert!(h[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    let (code, _, _) = get(&hub, "/inspector/api/snapshot", with_cookie()).await;
    assert_eq!(code, 401, "the session is gone after sign-out");
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn the_stream_sends_a_snapshot_every_second_and_ends_on_shutdown() {
    let hub = hub_with_admin_secret().await;
    let started = Instant::now();
    let mut resp = reqwest::Client::new()
        .get(hub.http_url("/inspector/api/stream"))
        .headers(bearer(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while text.matches("event: snapshot").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(3), resp.chunk())
            .await
            .expect("a snapshot within 3 s")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(3500),
        "three snapshots took {elapsed:?}"
    );
    let first = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let snap: Value = serde_json::from_str(first).unwrap();
    assert!(snap["connections"]["open"].is_number(), "{snap}");
    // An open stream must not hold up shutdown.
    tokio::time::timeout(Duration::from_secs(10), hub.stop())
        .await
        .expect("the hub stops with a stream open")
        .unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = resp.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the stream ended with the hub");
}

#[tokio::test]
async fn without_an_hs_secret_the_hub_says_it_cannot_mint_and_refuses_to() {
    let mut config = test_config();
    config.jwt_secret = None;
    config.jwks = Some(switchboard::auth::JwksSource::Document(
        include_str!("fixtures/jwt/jwks.json").to_owned(),
    ));
    config.admin_secret = Some(ADMIN.into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(switchboard::run(config, listener, shutdown.clone()));
    let url = |path: &str| format!("http://{addr}{path}");

    let (code, _, snap) = request(
        reqwest::Method::GET,
        url("/inspector/api/snapshot"),
        bearer(ADMIN),
        None,
    )
    .await;
    assert_eq!(code, 200, "{snap}");
    assert_eq!(
        snap["hub"]["can_mint"], false,
        "the page says only pasting works"
    );
    let (code, _, body) = request(
        reqwest::Method::POST,
        url("/inspector/api/token"),
        bearer(ADMIN),
        Some(json!({"role": "authenticated"})),
    )
    .await;
    assert_eq!(code, 409);
    assert_eq!(
        body["error"],
        "This hub has no HS256 secret (jwt_secret), so it cannot mint tokens; paste a token instead"
    );
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// POSTs `{"token": token}` to the token check with `h`.
async fn check_token(hub: &TestHub, h: HeaderMap, token: &str) -> (u16, Value) {
    let url = hub.http_url("/inspector/api/token/check");
    let (code, _, body) =
        request(reqwest::Method::POST, url, h, Some(json!({"token": token}))).await;
    (code, body)
}

#[tokio::test]
async fn a_pasted_token_is_checked_as_a_connection_checks_it_and_told_why_it_is_refused() {
    let hub = hub_with_admin_secret().await;
    let user = hub.token("authenticated", "user-1", 600);
    let (code, body) = check_token(&hub, HeaderMap::new(), &user).await;
    assert_eq!(code, 401, "signed-in visitors only: {body}");
    let (code, body) = check_token(
        &hub,
        headers(&[
            (AUTHORIZATION, &format!("Bearer {ADMIN}")),
            (ORIGIN, "https://evil.example"),
        ]),
        &user,
    )
    .await;
    assert_eq!(
        (code, body),
        (403, json!({"error": "Cross-origin request refused"}))
    );

    let (code, body) = check_token(&hub, bearer(ADMIN), &user).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (&body["valid"], &body["role"]),
        (&json!(true), &json!("authenticated"))
    );

    let expired = hub.token("authenticated", "user-1", -5);
    let (_, body) = check_token(&hub, bearer(ADMIN), &expired).await;
    assert_eq!(body["valid"], false);
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("Token has expired ") && reason.ends_with(" seconds ago"),
        "the reason with its age, as a join reply gives it: {reason}"
    );
    let other_key = switchboard::auth::mint_hs256(
        "some-other-secret-entirely",
        &json!({"role": "authenticated", "exp": now() + 600}),
    )
    .unwrap();
    for (token, reason) in [
        (
            hub.token("postgres", "x", 600),
            "Token role \"postgres\" is not allowed",
        ),
        (other_key, "Failed to validate JWT signature"),
        (
            "garbage".to_owned(),
            "The token provided is not a valid JWT",
        ),
        (String::new(), "The token provided is not a valid JWT"),
    ] {
        let (code, body) = check_token(&hub, bearer(ADMIN), &token).await;
        assert_eq!(
            (code, body),
            (200, json!({"valid": false, "reason": reason})),
            "{token}"
        );
    }
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_spent_admin_secret_budget_says_when_to_try_again() {
    let hub = hub_with_admin_secret().await;
    let mut last = None;
    for _ in 0..30 {
        let (code, h, _) = get(&hub, "/inspector/api/snapshot", bearer("a-wrong-guess")).await;
        if code == 429 {
            last = Some(h);
            break;
        }
        assert_eq!(code, 401);
    }
    let h = last.expect("the budget runs out");
    let secs: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&secs), "Retry-After: {secs}");
    hub.stop().await.unwrap();
}
