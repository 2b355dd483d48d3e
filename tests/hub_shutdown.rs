//! Graceful shutdown: joined channels are told, sockets close with 1001, and `run`
//! returns Ok within the deadline (PROTOCOL.md §7 "Server requested disconnect").

mod common;

use std::time::{Duration, Instant};

use common::hub::*;
use serde_json::json;

#[tokio::test]
async fn shutdown_tells_each_joined_channel_then_closes_with_1001_and_run_returns_ok() {
    let mut config = test_config();
    config.shutdown_deadline = Duration::from_secs(3);
    let hub = TestHub::start(config).await;
    let mut a = hub.connect_v2().await;
    let mut b = hub.connect_v1().await;
    let ja1 = a.join_ok("realtime:one", json!({})).await;
    let ja2 = a.join_ok("realtime:two", json!({})).await;
    b.join_ok("realtime:one", json!({})).await;

    let started = Instant::now();
    let stop = tokio::spawn(hub.stop());

    let mut told = Vec::new();
    for _ in 0..2 {
        let f = a.recv().await;
        assert_eq!(f.event(), Some("system"), "{f:?}");
        assert_eq!(f.ref_(), None);
        let p = f.payload();
        assert_eq!(
            (&p["extension"], &p["status"], &p["message"]),
            (
                &json!("system"),
                &json!("ok"),
                &json!("Server requested disconnect")
            )
        );
        told.push((
            f.topic().unwrap().to_owned(),
            f.join_ref().unwrap().to_owned(),
            p["channel"].to_string(),
        ));
    }
    told.sort();
    assert_eq!(
        told,
        vec![
            ("realtime:one".to_owned(), ja1, "\"one\"".to_owned()),
            ("realtime:two".to_owned(), ja2, "\"two\"".to_owned()),
        ]
    );
    assert_eq!(a.recv().await.close_code(), Some(1001));

    let f = b.recv().await;
    assert_eq!(f.payload()["message"], "Server requested disconnect");
    assert_eq!(f.json()["ref"], json!(null));
    assert_eq!(b.recv().await.close_code(), Some(1001));

    let result = stop.await.expect("stop task");
    assert!(result.is_ok(), "run returned {result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn shutdown_with_no_clients_returns_ok_promptly() {
    let hub = TestHub::start_default().await;
    let started = Instant::now();
    hub.stop().await.expect("run returns Ok");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shutdown took {:?}",
        started.elapsed()
    );
}
