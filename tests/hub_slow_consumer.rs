//! A member that stops reading is cut off alone: the others keep receiving everything,
//! the drop is counted, and the HTTP side stays responsive (DESIGN.md invariant 3).

mod common;

use std::time::{Duration, Instant};

use common::hub::*;
use serde_json::{json, Value};

const TOPIC: &str = "realtime:flood";
/// Broadcasts sent; with `CHUNK` bytes each, far more than the kernel buffers hold.
const ROUNDS: usize = 48;
const CHUNK: usize = 256 * 1024;

#[tokio::test]
async fn member_that_stops_reading_is_cut_off_while_the_others_get_everything() {
    let mut config = test_config();
    config.limits.outbox_frames = 8;
    config.limits.outbox_bytes = 1024 * 1024;
    config.limits.max_broadcast_bytes = 1024 * 1024;
    config.limits.max_messages_per_second = 10_000;
    let hub = TestHub::start(config).await;
    let mut sender = hub.connect_v2().await;
    let mut fast = hub.connect_v2().await;
    let url = hub.ws_url(Some("2.0.0"), Some(&hub.anon()));
    let mut slow = WsClient::connect_small_buffer(&url, 8 * 1024).await;
    let j = sender.join_ok(TOPIC, json!({})).await;
    fast.join_ok(TOPIC, json!({})).await;
    slow.join_ok(TOPIC, json!({})).await;

    // The slow member never reads from here on; the fast one reads each broadcast.
    for i in 0..ROUNDS {
        let mut blob = vec![i as u8; CHUNK];
        blob[0] = 0xff;
        sender
            .send_binary(kind3(&j, "", TOPIC, "chunk", "", 0, &blob))
            .await;
        let k = kind4(&fast.recv().await);
        assert_eq!(k.event, "chunk");
        assert_eq!(k.payload.len(), CHUNK);
        assert_eq!(
            k.payload[1], i as u8,
            "fast member got broadcasts out of order"
        );
    }

    // The hub counts the cut-off (poll /metrics rather than sleeping a guessed time).
    let deadline = Instant::now() + RECV_TIMEOUT;
    let drops = loop {
        let n = hub
            .metric("switchboard_drops_total{reason=\"slow_consumer\"}")
            .await
            .unwrap_or(0.0);
        if n >= 1.0 || Instant::now() > deadline {
            break n;
        }
        tokio::task::yield_now().await;
    };
    assert!(drops >= 1.0, "no slow_consumer drop counted");

    let started = Instant::now();
    let (status, body) = hub.get_admin("/api/status").await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "/api/status took {:?}",
        started.elapsed()
    );
    let status: Value = serde_json::from_str(&body).expect("status JSON");
    assert!(status["connections"].is_number(), "{status}");

    // Reading again: what was buffered, then the close (policy violation) or a reset,
    // and never the whole flood.
    let (code, frames) = slow.recv_close().await;
    assert!(code.is_none() || code == Some(1008), "close code {code:?}");
    assert!(
        frames < ROUNDS,
        "slow member received all {frames} broadcasts: it was not cut off"
    );

    // The others are unaffected.
    assert_eq!(fast.heartbeat().await.payload()["status"], "ok");
    sender
        .send_binary(kind3(&j, "", TOPIC, "after", "", 1, b"{}"))
        .await;
    assert_eq!(kind4(&fast.recv().await).event, "after");
}
