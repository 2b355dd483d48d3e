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

/// Every series the README names is one the hub serves, under the name a query uses: a
/// counter's samples end in `_total`, a gauge's do not. A labelled family shows in
/// `/metrics` only once it has a sample, so one without is looked up where it is
/// registered.
#[tokio::test]
async fn the_readme_names_metrics_as_prometheus_serves_them() {
    let hub = TestHub::start_default().await;
    let (_, text) = hub.get("/metrics").await;
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README");
    let registered = std::fs::read_to_string(format!("{root}/src/telemetry.rs")).unwrap();
    let names: std::collections::BTreeSet<&str> = readme
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("switchboard_") && !w.ends_with('_'))
        .collect();
    assert!(names.len() > 5, "{names:?}");
    for name in names {
        let family = name.strip_suffix("_total").unwrap_or(name);
        let kind = ["counter", "gauge", "histogram"]
            .into_iter()
            .find(|k| text.contains(&format!("# TYPE {family} {k}\n")));
        let ok = match kind {
            Some("counter") => name.ends_with("_total"),
            Some(_) => name == family,
            None => registered.contains(&format!("\"{}\"", &family["switchboard_".len()..])),
        };
        assert!(ok, "README names {name}; /metrics has it as {kind:?}");
    }
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

#[tokio::test]
async fn status_names_the_node_and_says_single_without_redis() {
    let hub = TestHub::start_default().await;
    let (_, body) = hub.get_admin("/api/status").await;
    let s: Value = serde_json::from_str(&body).expect("status is JSON");
    let c = &s["cluster"];
    assert_eq!(c["mode"], "single", "{s}");
    assert_eq!(c["state"], "ok", "{s}");
    assert_eq!(c["peers"], json!([]), "{s}");
    let id = c["node_id"].as_str().expect("node id");
    assert!(
        id.len() == 16 && id.chars().all(|ch| ch.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(hub.metric("switchboard_cluster_degraded").await, Some(0.0));
}
