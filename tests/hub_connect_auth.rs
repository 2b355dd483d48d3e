//! Connecting (paths, serializer choice, apikey checks with their HTTP 401 texts),
//! heartbeats and the idle timeout (PROTOCOL.md §1, §2).

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::hub::*;
use serde_json::{json, Value};

/// Connects with `apikey` and returns the rejection (fails if the upgrade succeeds).
async fn rejected(hub: &TestHub, apikey: Option<&str>) -> Rejected {
    match WsClient::try_connect(&hub.ws_url(Some("2.0.0"), apikey)).await {
        Ok(_) => panic!("connect with apikey {apikey:?} was accepted"),
        Err(r) => r,
    }
}

fn error_text(r: &Rejected) -> String {
    let body: Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("401 body is not JSON ({e}): {}", r.body));
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no `error` string in {}", r.body))
        .to_owned()
}

#[tokio::test]
async fn both_socket_paths_accept_a_valid_apikey_with_or_without_empty_segments() {
    let hub = TestHub::start_default().await;
    // Empty segments are dropped, as Supabase's HTTP server drops them: realtime-js given
    // an endpoint that ends in `/` asks for `/realtime/v1//websocket`.
    for path in [
        "/realtime/v1/websocket",
        "/socket/websocket",
        "/realtime/v1//websocket",
        "//socket/websocket/",
    ] {
        let mut c = WsClient::connect(&hub.ws_url_at(path, Some("2.0.0"), Some(&hub.anon()))).await;
        let reply = c.heartbeat().await;
        assert_eq!(
            reply.payload(),
            &json!({"status":"ok","response":{}}),
            "{path}"
        );
    }
}

#[tokio::test]
async fn absent_vsn_speaks_v1_json_objects() {
    let hub = TestHub::start_default().await;
    let mut c = WsClient::connect(&hub.ws_url(None, Some(&hub.anon()))).await;
    c.send_v1(None, Some("1"), "phoenix", "heartbeat", json!({}))
        .await;
    let f = c.recv().await;
    assert_eq!(
        f.json(),
        &json!({"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"})
    );
}

#[tokio::test]
async fn vsn_2_speaks_json_arrays() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    c.send_v2(None, Some("10"), "phoenix", "heartbeat", json!({}))
        .await;
    let f = c.recv().await;
    assert_eq!(
        f.json(),
        &json!([null,"10","phoenix","phx_reply",{"status":"ok","response":{}}])
    );
}

#[tokio::test]
async fn missing_apikey_is_rejected_with_401_api_key_is_missing() {
    let hub = TestHub::start_default().await;
    let r = rejected(&hub, None).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(error_text(&r), "API key is missing");
}

#[tokio::test]
async fn garbage_apikey_is_rejected_with_401_not_a_valid_jwt() {
    let hub = TestHub::start_default().await;
    // An empty one too: Supabase only asks for a string, so it fails as a JWT.
    for key in ["not-a-jwt", ""] {
        let r = rejected(&hub, Some(key)).await;
        assert_eq!(r.status, 401, "{key:?}: {r:?}");
        assert_eq!(
            error_text(&r),
            "The token provided is not a valid JWT",
            "{key:?}"
        );
    }
}

#[tokio::test]
async fn expired_apikey_is_rejected_with_401_token_has_expired() {
    let hub = TestHub::start_default().await;
    let r = rejected(&hub, Some(&hub.token("anon", "u", -30))).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(error_text(&r), "Token has expired");
}

#[tokio::test]
async fn apikey_signed_with_another_secret_is_rejected_with_401_signature_error() {
    let hub = TestHub::start_default().await;
    let foreign = switchboard::auth::mint_hs256(
        "some-other-secret",
        &json!({"role":"anon","exp": now() + 600}),
    )
    .unwrap();
    let r = rejected(&hub, Some(&foreign)).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(error_text(&r), "Failed to validate JWT signature");
}

#[tokio::test]
async fn apikey_with_alg_none_is_rejected_with_401() {
    let hub = TestHub::start_default().await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims =
        URL_SAFE_NO_PAD.encode(json!({"role":"service_role","exp": now() + 600}).to_string());
    for token in [
        format!("{header}.{claims}."),
        format!("{header}.{claims}.c2ln"),
    ] {
        let r = rejected(&hub, Some(&token)).await;
        assert_eq!(r.status, 401, "{r:?}");
        let text = error_text(&r);
        assert!(
            text == "Failed to validate JWT signature"
                || text == "The token provided is not a valid JWT",
            "alg none answered with {text:?}"
        );
    }
}

#[tokio::test]
async fn apikey_without_role_is_rejected_with_401_role_and_exp_required() {
    let hub = TestHub::start_default().await;
    let token = hub.mint(&json!({"sub":"u","exp": now() + 600}));
    let r = rejected(&hub, Some(&token)).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        error_text(&r),
        "Fields `role` and `exp` are required in JWT"
    );
}

#[tokio::test]
async fn heartbeat_reply_echoes_the_ref_in_v2() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    for r in ["7", "8"] {
        c.send_v2(None, Some(r), "phoenix", "heartbeat", json!({}))
            .await;
        assert_eq!(
            c.recv().await.json(),
            &json!([null, r, "phoenix", "phx_reply", {"status":"ok","response":{}}])
        );
    }
}

#[tokio::test]
async fn heartbeat_reply_echoes_a_null_ref_in_v1() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v1().await;
    c.send_text(
        r#"{"event":"heartbeat","payload":{},"topic":"phoenix","ref":null,"join_ref":null}"#,
    )
    .await;
    let f = c.recv().await;
    assert_eq!(
        f.json(),
        &json!({"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":null})
    );
    assert!(
        f.json().as_object().unwrap().contains_key("ref"),
        "v1 reply must carry `ref: null`"
    );
    c.send_v1(None, Some("5"), "phoenix", "heartbeat", json!({}))
        .await;
    assert_eq!(c.recv().await.ref_(), Some("5"));
}

#[tokio::test]
async fn idle_socket_is_closed_after_the_idle_timeout() {
    let mut config = test_config();
    config.limits.idle_timeout = Duration::from_secs(1);
    let hub = TestHub::start(config).await;
    let mut c = hub.connect_v2().await;
    let started = std::time::Instant::now();
    let (_code, data_frames) = c.recv_close().await;
    assert_eq!(data_frames, 0);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(4),
        "closed too late: {waited:?}"
    );
}

#[tokio::test]
async fn socket_that_heartbeats_stays_open_past_the_idle_timeout() {
    let mut config = test_config();
    config.limits.idle_timeout = Duration::from_secs(1);
    let hub = TestHub::start(config).await;
    let mut c = hub.connect_v2().await;
    let mut tick = tokio::time::interval(Duration::from_millis(400));
    for _ in 0..6 {
        tick.tick().await;
        let reply = c.heartbeat().await;
        assert_eq!(reply.payload()["status"], "ok");
    }
}
