//! Operational endpoints: health, readiness, Prometheus metrics and the status JSON
//! (DESIGN.md "Configuration surface").

mod common;

use common::hub::*;
use serde_json::{json, Value};

#[tokio::test]
async fn health_is_200() {
    let hub = TestHub::start_default().await;
    assert_eq!(hub.get("/health").await.0, 200);
}

#[tokio::test]
async fn ready_is_200_without_a_database() {
    let hub = TestHub::start_default().await;
    let (status, body) = hub.get("/ready").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_the_connection_gauge() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    c.join_ok("realtime:m", json!({})).await;
    let resp = reqwest::get(hub.http_url("/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("# TYPE switchboard_connections gauge"),
        "{text}"
    );
    assert_eq!(
        hub.metric("switchboard_connections").await,
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn status_counts_connections_and_channels() {
    let hub = TestHub::start_default().await;
    let mut a = hub.connect_v2().await;
    let mut b = hub.connect_v1().await;
    a.join_ok("realtime:x", json!({})).await;
    a.join_ok("realtime:y", json!({})).await;
    b.join_ok("realtime:x", json!({})).await;
    let (status, body) = hub.get_admin("/api/status").await;
    assert_eq!(status, 200);
    let s: Value = serde_json::from_str(&body).expect("status is JSON");
    assert_eq!(s["connections"], 2, "{s}");
    assert_eq!(s["channels"], 3, "{s}");
}
