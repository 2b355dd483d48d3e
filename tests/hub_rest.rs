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
