//! Presence per topic is bounded (issue 15): a track past the topic's presences or bytes
//! gets an error reply and changes nothing; a joiner always gets its `presence_state`.
//! Per channel, presence messages are counted in windows as Supabase counts them: one
//! past `presence_calls_per_window` shuts that channel.
//! The probe: 150 members × 60 KB made `presence_state` larger than the 8 MiB outbox, so
//! every later joiner was cut off as a slow consumer before it got any state.

mod common;

use common::hub::*;
use serde_json::{json, Value};

const TOPIC: &str = "realtime:room1";

/// Joins with presence under `key`; returns the join_ref and the `presence_state` payload.
async fn join_presence(c: &mut WsClient, key: &str) -> (String, Value) {
    let config = json!({"config":{"presence":{"key":key,"enabled":true}}});
    let (j, reply) = c.join(TOPIC, config).await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    let state = c.recv().await;
    assert_eq!(state.event(), Some("presence_state"), "{state:?}");
    (j, state.payload().clone())
}

/// Tracks `payload` and returns the reply's payload (diffs on the way are skipped).
async fn track(c: &mut WsClient, join_ref: &str, payload: Value) -> Value {
    let r = c.presence(join_ref, TOPIC, "track", payload).await;
    c.recv_until(|f| f.is_reply_to(&r)).await.payload().clone()
}

#[tokio::test]
async fn a_track_past_the_topics_presences_is_refused_and_changes_nothing() {
    let mut config = test_config();
    config.limits.max_presences_per_topic = 2;
    let hub = TestHub::start(config).await;
    let mut clients = Vec::new();
    for key in ["a", "b", "c"] {
        let mut c = hub.connect_v2().await;
        let (j, _) = join_presence(&mut c, key).await;
        clients.push((c, j));
    }
    for (c, j) in &mut clients[..2] {
        assert_eq!(track(c, j, json!({"n": 1})).await["status"], "ok");
    }
    // Everyone has seen both joins (b's comes last) before the refused track.
    for (c, _) in &mut clients {
        c.recv_until(|f| f.is_event("presence_diff") && f.payload()["joins"].get("b").is_some())
            .await;
    }
    let (c, j) = &mut clients[2];
    assert_eq!(
        track(c, j, json!({"n": 1})).await,
        json!({"status":"error","response":{"reason":"PresenceLimitReached: This channel already has 2 presences, the most allowed"}})
    );
    for (c, _) in &mut clients {
        c.assert_quiet().await;
    }
    // A presence leaving makes room.
    let (a, ja) = &mut clients[0];
    let r = a.next_ref();
    a.send_v2(
        Some(ja),
        Some(&r),
        TOPIC,
        "presence",
        json!({"type":"presence","event":"untrack"}),
    )
    .await;
    a.recv_until(|f| f.is_reply_to(&r)).await;
    let (c, j) = &mut clients[2];
    assert_eq!(track(c, j, json!({"n": 1})).await["status"], "ok");
}

#[tokio::test]
async fn a_track_past_the_topics_bytes_is_refused_and_a_joiner_still_gets_the_state() {
    let mut config = test_config();
    config.limits.outbox_bytes = 32 * 1024;
    config.limits.max_presence_bytes_per_topic = 31 * 1024;
    config.limits.max_presence_bytes = 8 * 1024;
    let hub = TestHub::start(config).await;
    let blob = |n: u32| json!({"n": n, "blob": "x".repeat(6000)});
    let mut members = Vec::new();
    for n in 0..5 {
        let mut c = hub.connect_v2().await;
        let (j, _) = join_presence(&mut c, &format!("m{n}")).await;
        assert_eq!(
            track(&mut c, &j, blob(n)).await["status"],
            "ok",
            "member {n}"
        );
        members.push((c, j));
    }
    let mut sixth = hub.connect_v2().await;
    let (j6, state) = join_presence(&mut sixth, "m5").await;
    assert_eq!(state.as_object().map(|s| s.len()), Some(5));
    assert_eq!(
        track(&mut sixth, &j6, blob(5)).await,
        json!({"status":"error","response":{"reason":"PresenceLimitReached: This track would take the channel's presence state over 31744 bytes"}})
    );
    // An update that would grow past the bound is refused too; the old meta stays.
    let (c, j) = &mut members[0];
    let bigger = json!({"n": 0, "blob": "y".repeat(8000)});
    assert_eq!(track(c, j, bigger).await["status"], "error");
    // A later joiner gets the whole state, though it is about as large as its queue.
    let mut late = hub.connect_v2().await;
    let (_, state) = join_presence(&mut late, "late").await;
    let state = state.as_object().expect("state object");
    assert_eq!(state.len(), 5);
    assert_eq!(state["m0"]["metas"][0]["blob"], "x".repeat(6000));
    let r = late.heartbeat().await;
    assert_eq!(r.payload()["status"], "ok");
}

#[tokio::test]
async fn presence_messages_past_the_window_shut_the_channel_as_supabase_does() {
    let mut config = test_config();
    config.limits.presence_window = std::time::Duration::from_millis(1500);
    let hub = TestHub::start(config).await;
    let mut c = hub.connect_v2().await;
    let (j, _) = join_presence(&mut c, "typist").await;
    // Five messages fit in a window (Supabase's default): tracks and untracks alike.
    for n in 0..4 {
        assert_eq!(
            track(&mut c, &j, json!({"n": n})).await["status"],
            "ok",
            "track {n}"
        );
    }
    let r = c.presence(&j, TOPIC, "untrack", json!({})).await;
    assert_eq!(
        c.recv_until(|f| f.is_reply_to(&r)).await.payload()["status"],
        "ok"
    );
    // A window ends 1.5 s after its first message: the next one starts a new window.
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    for n in 0..5 {
        assert_eq!(
            track(&mut c, &j, json!({"m": n})).await["status"],
            "ok",
            "second window {n}"
        );
    }
    // The sixth in this window: a system error, then phx_close; no reply.
    c.presence(&j, TOPIC, "track", json!({"m": 5})).await;
    let system = c.recv_until(|f| f.event() == Some("system")).await;
    assert_eq!(
        system.payload(),
        &json!({"extension":"system","status":"error","message":"Client presence rate limit exceeded","channel":"room1"})
    );
    assert_eq!(
        c.recv().await.json(),
        &json!([j, j, TOPIC, "phx_close", {}])
    );
}
