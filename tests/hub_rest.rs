//! REST broadcast: the batch and single-message routes, their auth and validation, and
//! delivery to joined members (PROTOCOL.md §5 "REST endpoints").

mod common;

use common::hub::*;
use serde_json::{json, Value};

const BATCH: &str = "/realtime/v1/api/broadcast";

async fn post(
    hub: &TestHub,
    path: &str,
    auth: Option<(&str, String)>,
    body: &Value,
) -> (u16, String) {
    let mut req = reqwest::Client::new().post(hub.http_url(path)).json(body);
    if let Some((name, value)) = auth {
        req = req.header(name, value);
    }
    let resp = req.send().await.expect("POST");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// 422 bodies are `{"errors": {...}}`.
fn assert_errors_body(text: &str) {
    let body: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("422 body is not JSON ({e}): {text}"));
    assert!(body["errors"].is_object(), "{body}");
}

fn bearer(hub: &TestHub) -> Option<(&'static str, String)> {
    Some((
        "authorization",
        format!("Bearer {}", hub.token("service_role", "svc", 600)),
    ))
}

#[tokio::test]
async fn batch_with_bearer_token_is_accepted_and_delivered() {
    let hub = TestHub::start_default().await;
    let mut member = hub.connect_v2().await;
    member.join_ok("realtime:room 1/x", json!({})).await;
    let body = json!({"messages":[{"topic":"room 1/x","event":"ev2","payload":{"b":2}}]});
    let (status, text) = post(&hub, BATCH, bearer(&hub), &body).await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(
        member.recv().await.json(),
        &json!([null,null,"realtime:room 1/x","broadcast",{"type":"broadcast","event":"ev2","payload":{"b":2}}])
    );
}

#[tokio::test]
async fn batch_with_apikey_header_is_accepted_and_delivered() {
    let hub = TestHub::start_default().await;
    let mut member = hub.connect_v1().await;
    member.join_ok("realtime:lobby", json!({})).await;
    let body = json!({"messages":[{"topic":"lobby","event":"hello","payload":{"a":1}}]});
    let (status, text) = post(&hub, BATCH, Some(("apikey", hub.anon())), &body).await;
    assert_eq!(status, 202, "{text}");
    let f = member.recv().await;
    assert_eq!(
        f.payload(),
        &json!({"type":"broadcast","event":"hello","payload":{"a":1}})
    );
}

#[tokio::test]
async fn batch_without_or_with_an_invalid_token_is_unauthorized() {
    let hub = TestHub::start_default().await;
    let mut member = hub.connect_v2().await;
    member.join_ok("realtime:lobby", json!({})).await;
    let body = json!({"messages":[{"topic":"lobby","event":"e","payload":{}}]});
    let foreign =
        switchboard::auth::mint_hs256("other", &json!({"role":"anon","exp": now() + 60})).unwrap();
    for auth in [
        None,
        Some(("authorization", "Bearer not.a.jwt".to_owned())),
        Some(("authorization", format!("Bearer {foreign}"))),
        Some(("apikey", hub.token("anon", "u", -10))),
    ] {
        let (status, text) = post(&hub, BATCH, auth.clone(), &body).await;
        assert_eq!(status, 401, "{auth:?}: {text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).ok(),
            Some(json!({"message":"Unauthorized"}))
        );
    }
    member.assert_quiet().await;
}

#[tokio::test]
async fn batch_with_an_invalid_message_is_422_and_delivers_nothing() {
    let hub = TestHub::start_default().await;
    let mut member = hub.connect_v2().await;
    member.join_ok("realtime:lobby", json!({})).await;
    let good = json!({"topic":"lobby","event":"ok","payload":{"fine":true}});
    for bad in [
        json!({"topic":"lobby","event":"e","payload":"not an object"}),
        json!({"topic":"lobby","event":"e","payload":[1,2]}),
        json!({"event":"e","payload":{}}),
    ] {
        let body = json!({"messages":[good.clone(), bad.clone()]});
        let (status, text) = post(&hub, BATCH, bearer(&hub), &body).await;
        assert_eq!(status, 422, "{bad}: {text}");
        assert_errors_body(&text);
        member.assert_quiet().await;
    }
}

/// `private` is a boolean as Supabase (Ecto) casts one: `"1"` is private, and a value that
/// is no boolean refuses the batch instead of sending a private message to the public topic.
#[tokio::test]
async fn a_batch_private_flag_is_cast_as_a_boolean_or_refused() {
    let hub = TestHub::start_default().await;
    let mut member = hub.connect_v2().await;
    member.join_ok("realtime:lobby", json!({})).await;
    let public = json!({"topic":"lobby","event":"public","payload":{"n":1}});
    for bad in [json!("yes"), json!(1), json!({})] {
        let secret = json!({"topic":"lobby","event":"e","payload":{"secret":true},"private":bad});
        let body = json!({"messages":[public.clone(), secret]});
        let (status, text) = post(&hub, BATCH, bearer(&hub), &body).await;
        assert_eq!(status, 422, "{bad}: {text}");
        let body: Value = serde_json::from_str(&text).expect("JSON body");
        assert_eq!(
            body,
            json!({"errors": {"messages[1].private": ["is invalid"]}}),
            "{bad}"
        );
    }
    // "1" and "true" are private: the public member of the same name gets neither.
    let body = json!({"messages":[
        {"topic":"lobby","event":"e","payload":{"secret":1},"private":"1"},
        {"topic":"lobby","event":"e","payload":{"secret":2},"private":"true"},
        {"topic":"lobby","event":"e","payload":{"n":2},"private":"0"},
    ]});
    let (status, text) = post(&hub, BATCH, bearer(&hub), &body).await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(
        member.recv().await.json(),
        &json!([null,null,"realtime:lobby","broadcast",{"type":"broadcast","event":"e","payload":{"n":2}}])
    );
}

#[tokio::test]
async fn batch_with_an_oversized_payload_is_422() {
    let mut config = test_config();
    config.limits.max_broadcast_bytes = 1000;
    let hub = TestHub::start(config).await;
    let mut member = hub.connect_v2().await;
    member.join_ok("realtime:lobby", json!({})).await;
    let body =
        json!({"messages":[{"topic":"lobby","event":"e","payload":{"blob":"x".repeat(2000)}}]});
    let (status, text) = post(&hub, BATCH, bearer(&hub), &body).await;
    assert_eq!(status, 422, "{text}");
    assert_errors_body(&text);
    member.assert_quiet().await;
}

#[tokio::test]
async fn single_message_route_with_url_encoded_topic_and_event_is_delivered() {
    let hub = TestHub::start_default().await;
    let mut member = hub.connect_v2().await;
    member.join_ok("realtime:room 1/x", json!({})).await;
    let path = "/realtime/v1/api/broadcast/room%201%2Fx/events/ev%202";
    let (status, text) = post(&hub, path, bearer(&hub), &json!({"c":3})).await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(
        member.recv().await.json(),
        &json!([null,null,"realtime:room 1/x","broadcast",{"type":"broadcast","event":"ev 2","payload":{"c":3}}])
    );
}

#[tokio::test]
async fn a_single_message_body_that_is_not_an_object_arrives_wrapped_as_supabase_wraps_it() {
    let hub = TestHub::start_default().await;
    let mut member = hub.connect_v2().await;
    member.join_ok("realtime:room", json!({})).await;
    let path = "/realtime/v1/api/broadcast/room/events/e";
    for body in [json!([1, 2]), json!("text"), json!(5)] {
        let (status, text) = post(&hub, path, bearer(&hub), &body).await;
        assert_eq!(status, 202, "{text}");
        assert_eq!(
            member.recv().await.json(),
            &json!([null,null,"realtime:room","broadcast",{"type":"broadcast","event":"e","payload":{"_json": body}}])
        );
    }
}

/// The single route takes JSON (also without a Content-Type, and an empty body as `{}`)
/// or binary, and refuses any other media type with Supabase's 415, before reading it.
#[tokio::test]
async fn a_single_message_with_another_media_type_is_415() {
    let hub = TestHub::start_default().await;
    let mut member = hub.connect_v2().await;
    member.join_ok("realtime:room", json!({})).await;
    let url = hub.http_url("/realtime/v1/api/broadcast/room/events/e");
    let send = |content_type: Option<&'static str>, body: &'static str| {
        let mut req = reqwest::Client::new()
            .post(url.clone())
            .header("apikey", hub.token("service_role", "svc", 600))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        async move {
            let resp = req.send().await.expect("POST");
            (resp.status().as_u16(), resp.text().await.expect("body"))
        }
    };
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/vnd.api+json",
    ] {
        let (status, text) = send(Some(ct), r#"{"a":1}"#).await;
        assert_eq!(status, 415, "{ct}: {text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).expect("JSON body"),
            json!({"error": "Unsupported Media Type. Use application/json or application/octet-stream"})
        );
    }
    for (ct, body, payload) in [
        (
            Some("application/json; charset=utf-8"),
            r#"{"a":1}"#,
            json!({"a":1}),
        ),
        (None, r#"{"a":2}"#, json!({"a":2})),
        (Some("Application/JSON"), "", json!({})),
    ] {
        let (status, text) = send(ct, body).await;
        assert_eq!(status, 202, "{ct:?}: {text}");
        assert_eq!(
            member.recv().await.json(),
            &json!([null,null,"realtime:room","broadcast",{"type":"broadcast","event":"e","payload":payload}]),
            "{ct:?}"
        );
    }
}

/// Every REST error is JSON, a path without a route and a method a route does not take
/// included.
#[tokio::test]
async fn unknown_paths_and_methods_get_json_answers() {
    let hub = TestHub::start_default().await;
    let client = reqwest::Client::new();
    for (method, path, status, message) in [
        ("GET", "/realtime/v1/api/nothing", 404, "Not Found"),
        ("GET", BATCH, 405, "Method Not Allowed"),
        (
            "POST",
            "/realtime/v1/api/changes",
            405,
            "Method Not Allowed",
        ),
        (
            "DELETE",
            "/realtime/v1/api/webhooks/w1",
            405,
            "Method Not Allowed",
        ),
    ] {
        let resp = client
            .request(method.parse().unwrap(), hub.http_url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let body: Value = resp.json().await.expect("a JSON body");
        assert_eq!(body, json!({ "message": message }), "{method} {path}");
    }
}

/// A batch of `n` messages to `lobby`.
fn batch(n: usize) -> Value {
    let msg = json!({"topic":"lobby","event":"flood","payload":{}});
    json!({ "messages": vec![msg; n] })
}

/// POSTs a batch with `apikey`; the status, `Retry-After` and body.
async fn post_batch(hub: &TestHub, apikey: &str, n: usize) -> (u16, Option<String>, Value) {
    let resp = reqwest::Client::new()
        .post(hub.http_url(BATCH))
        .header("apikey", apikey)
        .json(&batch(n))
        .send()
        .await
        .expect("POST");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let body = resp.text().await.expect("body");
    (
        status,
        retry,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn rest_broadcasts_past_the_rate_per_token_are_429_and_subscribers_stay() {
    // The probe: 40 × 1,000-message batches in 1.5 s knocked subscribers off with 1008.
    let mut config = test_config();
    config.limits.rest_broadcasts_per_token = 100;
    config.limits.rest_broadcasts_per_address = 1_000_000;
    let hub = TestHub::start(config).await;
    let mut member = hub.connect_v2().await;
    member.join_ok("realtime:lobby", json!({})).await;
    let anon = hub.anon();
    assert_eq!(post_batch(&hub, &anon, 100).await.0, 202);
    let mut refused = 0;
    for _ in 0..40 {
        let (status, retry, body) = post_batch(&hub, &anon, 100).await;
        if status == 202 {
            continue;
        }
        assert_eq!(status, 429, "{body}");
        assert_eq!(
            body,
            json!({"message": "You have exceeded your rate limit"})
        );
        let retry: u64 = retry
            .and_then(|r| r.parse().ok())
            .expect("Retry-After seconds");
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
        refused += 1;
    }
    assert!(
        refused > 0,
        "no 429 in 40 batches of the whole per-second rate"
    );
    // Another token from the same address has its own bucket.
    let other = hub.token("anon", "other", 600);
    assert_eq!(post_batch(&hub, &other, 100).await.0, 202);
    // The subscriber got exactly the accepted messages and is still connected.
    let accepted = 100 * (40 - refused + 2);
    for _ in 0..accepted {
        let f = member.recv().await;
        assert_eq!(f.payload()["event"], "flood", "{f:?}");
    }
    assert_eq!(member.heartbeat().await.payload()["status"], "ok");
}

#[tokio::test]
async fn rest_broadcasts_past_the_rate_per_address_are_429_whatever_the_token() {
    let mut config = test_config();
    config.limits.rest_broadcasts_per_address = 50;
    let hub = TestHub::start(config).await;
    let mut refused = 0;
    for n in 0..20 {
        let token = hub.token("anon", &format!("t{n}"), 600);
        let (status, _, body) = post_batch(&hub, &token, 50).await;
        if status == 429 {
            assert_eq!(
                body,
                json!({"message": "You have exceeded your rate limit"})
            );
            refused += 1;
        }
    }
    assert!(refused > 0, "no 429 for 20 tokens from one address");
}

#[tokio::test]
async fn a_batch_larger_than_the_rate_ever_admits_is_429_with_supabases_text() {
    let mut config = test_config();
    config.limits.rest_broadcasts_per_token = 10;
    let hub = TestHub::start(config).await;
    let (status, _, body) = post_batch(&hub, &hub.anon(), 11).await;
    assert_eq!(status, 429);
    assert_eq!(
        body,
        json!({"message": "Too many messages to broadcast, please reduce the batch size"})
    );
}

/// The single endpoint with an empty topic is refused as the batch's is: no one can join
/// `realtime:`.
#[tokio::test]
async fn single_with_an_empty_topic_is_422() {
    let hub = TestHub::start_default().await;
    let path = "/realtime/v1/api/broadcast//events/e";
    let (status, text) = post(&hub, path, bearer(&hub), &json!({"a": 1})).await;
    assert_eq!(status, 422, "{text}");
    assert_errors_body(&text);
    assert!(text.contains("topic"), "{text}");
}

/// A body over the request limit (8,000,000 bytes, as Supabase's) gets a JSON answer:
/// 413 on the batch route, Supabase's payload error on the single route; one over axum's
/// 2 MB on another route gets a JSON 413 too.
#[tokio::test]
async fn a_body_over_the_request_limit_gets_a_json_answer() {
    let hub = TestHub::start_default().await;
    // Just over the limit: the hub stops reading at it, and a large unread rest could
    // reset the connection before the client reads the answer.
    let huge = json!({"blob": "x".repeat(8_000_000)});
    let (status, text) = post(&hub, BATCH, bearer(&hub), &huge).await;
    assert_eq!(status, 413, "{text}");
    let body: Value = serde_json::from_str(&text).expect("JSON body");
    assert_eq!(
        body["message"], "Request body is larger than 8000000 bytes",
        "{body}"
    );
    let path = "/realtime/v1/api/broadcast/room/events/e";
    let (status, text) = post(&hub, path, bearer(&hub), &huge).await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("Payload size exceeds tenant limit"), "{text}");
    // The other routes keep axum's 2 MB limit, and answer past it in JSON too (axum's own
    // answer is plain text).
    let over = json!({"from": "x".repeat(2_100_000)});
    for path in [
        "/realtime/v1/api/webhooks/crm/replay",
        "/api/webhooks/crm/pause",
        "/inspector/api/session",
    ] {
        let (status, text) = post(&hub, path, bearer(&hub), &over).await;
        assert_eq!(status, 413, "{path}: {text}");
        let body: Value = serde_json::from_str(&text).expect("JSON body");
        assert_eq!(
            body["message"], "Request body is larger than 2097152 bytes",
            "{path}: {body}"
        );
    }
}

/// A `max_broadcast_bytes` above the request limit raises it: such a broadcast goes
/// through the single route.
#[tokio::test]
async fn a_broadcast_limit_above_the_request_limit_raises_it() {
    let mut config = test_config();
    config.limits.max_broadcast_bytes = 9_000_000;
    let hub = TestHub::start(config).await;
    let mut member = hub.connect_v2().await;
    member.join_ok("realtime:room", json!({})).await;
    let path = "/realtime/v1/api/broadcast/room/events/big";
    let body = json!({"blob": "y".repeat(8_500_000)});
    let (status, text) = post(&hub, path, bearer(&hub), &body).await;
    assert_eq!(status, 202, "{text}");
    let f = member.recv_until(|f| f.is_event("broadcast")).await;
    assert_eq!(f.payload()["event"], "big");
}

/// The REST broadcast routes and the change feed answer a browser's preflight from any
/// origin, naming the headers it asked for (`*` would not cover `Authorization`); the
/// admin API does not.
#[tokio::test]
async fn browser_endpoints_answer_cors_preflights_and_the_admin_api_does_not() {
    let hub = TestHub::start_default().await;
    let client = reqwest::Client::new();
    let preflight = |path: &str, method: &str| {
        client
            .request(reqwest::Method::OPTIONS, hub.http_url(path))
            .header("origin", "https://portal.example.com")
            .header("access-control-request-method", method)
            .header(
                "access-control-request-headers",
                "authorization,apikey,content-type,x-client-info",
            )
            .send()
    };
    for (path, method) in [
        (BATCH, "POST"),
        ("/api/broadcast", "POST"),
        ("/realtime/v1/api/broadcast/room/events/e", "POST"),
        ("/realtime/v1/api/changes", "GET"),
    ] {
        let resp = preflight(path, method).await.expect("OPTIONS");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], "*", "{path}");
        let allowed = h["access-control-allow-headers"].to_str().unwrap();
        for name in ["authorization", "apikey", "content-type", "x-client-info"] {
            assert!(allowed.contains(name), "{path}: {allowed}");
        }
        let methods = h["access-control-allow-methods"].to_str().unwrap();
        assert!(methods.contains(method), "{path}: {methods}");
    }
    // The actual request carries the header too, and is delivered as before.
    let mut member = hub.connect_v2().await;
    member.join_ok("realtime:lobby", json!({})).await;
    let resp = client
        .post(hub.http_url(BATCH))
        .header("origin", "https://portal.example.com")
        .header("apikey", hub.anon())
        .json(&json!({"messages":[{"topic":"lobby","event":"e","payload":{}}]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    member.recv_until(|f| f.is_event("broadcast")).await;
    // Admin endpoints stay same-origin.
    let resp = preflight("/realtime/v1/api/webhooks", "GET")
        .await
        .expect("OPTIONS");
    assert!(
        !resp.headers().contains_key("access-control-allow-origin"),
        "{:?}",
        resp.headers()
    );
}

#[tokio::test]
async fn configured_supabase_api_keys_stand_for_their_roles_at_connect_rest_and_admin() {
    const PUBLISHABLE: &str = "sb_publishable_test_0123456789";
    const SECRET: &str = "sb_secret_test_0123456789";
    let mut config = test_config();
    config.api_keys = vec![
        (PUBLISHABLE.into(), "anon".into()),
        (SECRET.into(), "service_role".into()),
    ];
    let hub = TestHub::start(config).await;

    // supabase-js with a publishable key: the key is the apikey and, without a session,
    // the join's access_token too.
    let mut c = WsClient::connect(&hub.ws_url(Some("2.0.0"), Some(PUBLISHABLE))).await;
    let (_, reply) = c
        .join(
            "realtime:room",
            json!({"config": {"broadcast": {"self": true}}, "access_token": PUBLISHABLE}),
        )
        .await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");

    // A REST broadcast with the key as apikey header reaches the channel.
    let body = json!({"messages": [{"topic": "room", "event": "hi", "payload": {"n": 1}}]});
    let (code, text) = post(&hub, BATCH, Some(("apikey", PUBLISHABLE.into())), &body).await;
    assert_eq!(code, 202, "{text}");
    let got = c.recv_until(|f| f.is_event("broadcast")).await;
    assert_eq!(got.payload()["payload"], json!({"n": 1}));

    // The secret key is an admin credential; the publishable one is not.
    assert_eq!(hub.get_bearer("/api/status", SECRET).await.0, 200);
    assert_eq!(
        hub.get_bearer("/api/status", PUBLISHABLE).await.0,
        401,
        "an anon key is no admin"
    );

    // A key that is not configured is refused as any non-JWT apikey is.
    let refused = WsClient::try_connect(&hub.ws_url(Some("2.0.0"), Some("sb_publishable_other")))
        .await
        .err()
        .expect("an unknown key is refused");
    assert_eq!(refused.status, 401, "{}", refused.body);
}

/// `{"x": [[[…1…]]]}` with `depth` levels in all.
fn nested_object(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 1..depth {
        v = json!([v]);
    }
    json!({ "x": v })
}

/// JSON nested past the hub's reader (127 levels) is refused saying so, at both REST
/// routes and in a socket push, whose reply reaches the push's own topic and ref. Before,
/// REST said the body was not a JSON object (or not JSON), and the socket's reply went to
/// `phoenix` with no ref, so a realtime-js `send` or `track` timed out after 10 s.
#[tokio::test]
async fn json_nested_too_deep_is_refused_saying_so_at_rest_and_on_the_socket() {
    let hub = TestHub::start_default().await;
    let mut member = hub.connect_v1().await;
    member.join_ok("realtime:lobby", json!({})).await;
    let deep = nested_object(130);
    let body = json!({"messages":[{"topic":"lobby","event":"e","payload":deep}]});
    let (status, text) = post(&hub, BATCH, bearer(&hub), &body).await;
    assert_eq!(status, 422, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"errors": {"body": ["is JSON nested deeper than 127 levels"]}})
    );
    let single = "/realtime/v1/api/broadcast/lobby/events/e";
    let (status, text) = post(&hub, single, bearer(&hub), &deep).await;
    assert_eq!(status, 422, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"errors": {"payload": ["is JSON nested deeper than 127 levels"]}})
    );

    let push = json!({"topic": "realtime:lobby", "event": "broadcast", "ref": "9",
        "payload": {"type": "broadcast", "event": "e", "payload": deep}});
    member.send_text(&push.to_string()).await;
    let reply = member.recv().await;
    assert_eq!(
        reply.json(),
        &json!({"topic": "realtime:lobby", "event": "phx_reply", "ref": "9",
            "payload": {"status": "error",
                "response": {"reason": "malformed message: invalid json: nested deeper than 127 levels"}}})
    );
    // Shallower than the limit is delivered.
    let (status, text) = post(&hub, single, bearer(&hub), &nested_object(120)).await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(member.recv().await.payload()["payload"], nested_object(120));
}
