//! Attacks on the connection layer, each reproduced: slow headers (slowloris) and floods
//! of half-open upgrades hold no descriptor for long and never crowd out `/health`; tokens
//! naming roles outside the allow-list, or not valid yet, are refused at connect and at
//! join.

mod common;

use std::time::{Duration, Instant};

use common::hub::{now, test_config, TestHub, WsClient};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes; true if it closed within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_and_connections_past_the_cap_closed_at_once() {
    let mut config = test_config();
    config.limits.max_connections = 10;
    let header_timeout = Duration::from_secs(3);
    config.http_header_timeout = header_timeout;
    let hub = TestHub::start(config).await;
    let cap = switchboard::server::listen::connection_cap(10);
    // Every connection sends part of an upgrade's headers and then trickles.
    let connecting = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..cap + 40 {
        let mut s = TcpStream::connect(hub.addr).await.unwrap();
        let _ = s
            .write_all(b"GET /realtime/v1/websocket HTTP/1.1\r\nHost: x\r\n")
            .await;
        slow.push(s);
    }
    // Refused, not cut: closed before the header timeout can have cut any connection
    // (and freed a place under the cap for a later one). A bound on the hub's speed
    // (such as "within 500 ms") fails on a loaded machine.
    let before_any_cut = connecting + header_timeout - Duration::from_millis(500);
    let mut refused = 0;
    for s in slow.iter_mut().rev().take(40) {
        let left = before_any_cut.saturating_duration_since(Instant::now());
        if closed_within(s, left).await {
            refused += 1;
        }
    }
    assert_eq!(refused, 40, "connections past the cap are closed at once");
    let started = Instant::now();
    for s in slow.iter_mut() {
        let _ = s.write_all(b"X").await;
        assert!(
            closed_within(s, header_timeout + Duration::from_secs(4)).await,
            "a connection that never finished its headers was kept"
        );
    }
    println!("slow connections cut after {:?}", started.elapsed());
    let (code, _) = hub.get("/health").await;
    assert_eq!(code, 200);
    let mut c = hub.connect_v2().await;
    c.heartbeat().await;
}

#[tokio::test]
async fn a_token_naming_a_role_outside_the_allow_list_is_refused_at_connect_and_join() {
    let hub = TestHub::start_default().await;
    let postgres = hub.token("postgres", "attacker", 3600);
    let url = hub.ws_url(Some("2.0.0"), Some(&postgres));
    let rejected = WsClient::try_connect(&url).await.err().expect("refused");
    assert_eq!(rejected.status, 401);
    let body: serde_json::Value = serde_json::from_str(&rejected.body).unwrap();
    assert_eq!(
        body,
        json!({"error": "Token role \"postgres\" is not allowed"})
    );

    let mut c = hub.connect_v2().await;
    let (_, reply) = c
        .join(
            "realtime:room",
            json!({"config": {}, "access_token": postgres}),
        )
        .await;
    assert_eq!(
        reply.payload()["response"]["reason"],
        "InvalidJWTToken: Token role \"postgres\" is not allowed"
    );
}

#[tokio::test]
async fn a_token_valid_only_from_tomorrow_is_refused_today() {
    let hub = TestHub::start_default().await;
    let tomorrow = hub.mint(&json!({
        "role": "authenticated", "sub": "u", "exp": now() + 7 * 86_400, "nbf": now() + 86_400
    }));
    let url = hub.ws_url(Some("2.0.0"), Some(&tomorrow));
    let rejected = WsClient::try_connect(&url).await.err().expect("refused");
    assert_eq!(rejected.status, 401);
    let mut c = hub.connect_v2().await;
    let (_, reply) = c
        .join(
            "realtime:room",
            json!({"config": {}, "access_token": tomorrow}),
        )
        .await;
    assert_eq!(
        reply.payload()["response"]["reason"],
        "InvalidJWTToken: Token is not valid yet (nbf is in the future)"
    );
}

#[tokio::test]
async fn status_needs_a_service_role_token_or_the_admin_secret() {
    let mut config = test_config();
    config.admin_secret = Some("an-admin-secret-of-some-length".into());
    let hub = TestHub::start(config).await;
    assert_eq!(hub.get("/api/status").await.0, 401, "anonymous");
    let get = |token: String| {
        let url = hub.http_url("/api/status");
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get(hub.anon()).await, 401, "an anon token");
    assert_eq!(get(hub.token("service_role", "ops", 60)).await, 200);
    assert_eq!(get("an-admin-secret-of-some-length".into()).await, 200);
}

#[tokio::test]
async fn metrics_can_live_on_their_own_address() {
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = test_config();
    config.metrics_listen = Some(metrics_addr);
    let hub = TestHub::start(config).await;
    assert_eq!(
        hub.get("/metrics").await.0,
        404,
        "not on the public listener"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(r) = reqwest::get(format!("http://{metrics_addr}/metrics")).await {
            assert_eq!(r.status().as_u16(), 200);
            assert!(r.text().await.unwrap().contains("switchboard_connections"));
            break;
        }
        assert!(Instant::now() < deadline, "metrics listener not up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
