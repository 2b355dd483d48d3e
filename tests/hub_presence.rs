//! Presence: the state snapshot after join, track / update / untrack diffs, leaves on
//! channel exit and disconnect, and the non-map error (PROTOCOL.md §6).

mod common;

use common::hub::*;
use serde_json::{json, Value};

const TOPIC: &str = "realtime:room1";

fn presence_config(key: &str) -> Value {
    json!({"config":{"presence":{"key":key,"enabled":true}}})
}

/// Joins with presence and checks the first frame after the reply is `presence_state`.
async fn join_presence(c: &mut WsClient, key: &str) -> String {
    let (j, reply) = c.join(TOPIC, presence_config(key)).await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    let state = c.recv().await;
    assert_eq!(state.event(), Some("presence_state"), "{state:?}");
    assert_eq!(state.join_ref(), Some(j.as_str()));
    assert_eq!(state.ref_(), None);
    j
}

async fn next_diff(c: &mut WsClient) -> Frame {
    c.recv_until(|f| f.is_event("presence_diff")).await
}

fn only_meta<'a>(side: &'a Value, key: &str) -> &'a Value {
    let metas = side[key]["metas"]
        .as_array()
        .unwrap_or_else(|| panic!("no metas for {key} in {side}"));
    assert_eq!(metas.len(), 1, "{side}");
    &metas[0]
}

#[tokio::test]
async fn join_with_presence_pushes_an_empty_presence_state_first() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    c.send_v2(
        Some("6"),
        Some("6"),
        TOPIC,
        "phx_join",
        presence_config("user-1"),
    )
    .await;
    assert_eq!(c.recv().await.payload()["status"], "ok");
    assert_eq!(
        c.recv().await.json(),
        &json!(["6", null, TOPIC, "presence_state", {}])
    );
}

#[tokio::test]
async fn track_replies_ok_and_every_presence_member_gets_the_join_diff() {
    let hub = TestHub::start_default().await;
    let mut a = hub.connect_v2().await;
    let mut b = hub.connect_v2().await;
    let ja = join_presence(&mut a, "user-1").await;
    join_presence(&mut b, "user-2").await;
    let r = a
        .presence(&ja, TOPIC, "track", json!({"online_at":"now"}))
        .await;
    // The tracker gets both the ok reply and the diff (in either order).
    let (first, second) = (a.recv().await, a.recv().await);
    let (reply, own_diff) = if first.is_reply_to(&r) {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(
        reply.json(),
        &json!([ja, r, TOPIC, "phx_reply", {"status":"ok","response":{}}])
    );
    let other_diff = next_diff(&mut b).await;
    for diff in [own_diff, other_diff] {
        assert_eq!(diff.event(), Some("presence_diff"), "{diff:?}");
        assert_eq!(diff.join_ref(), None);
        assert_eq!(diff.ref_(), None);
        let p = diff.payload();
        assert_eq!(p["leaves"], json!({}));
        let meta = only_meta(&p["joins"], "user-1");
        assert_eq!(meta["online_at"], "now");
        assert!(meta["phx_ref"].is_string(), "{meta}");
    }
}

/// On a public channel every member gets the diffs, as on Supabase, even one that joined
/// with presence disabled (and so got no `presence_state`), on either serializer.
#[tokio::test]
async fn members_without_presence_on_a_public_channel_get_the_diffs_too() {
    let hub = TestHub::start_default().await;
    let mut a = hub.connect_v2().await;
    let mut v2 = hub.connect_v2().await;
    let mut v1 = hub.connect_v1().await;
    let ja = join_presence(&mut a, "user-1").await;
    v2.join_ok(TOPIC, json!({"presence":{"key":"","enabled":false}}))
        .await;
    v1.join_ok(TOPIC, json!({})).await;
    a.presence(&ja, TOPIC, "track", json!({"online_at":"now"}))
        .await;
    for c in [&mut v2, &mut v1] {
        let diff = c.recv().await;
        assert_eq!(diff.event(), Some("presence_diff"), "{diff:?}");
        assert_eq!(
            only_meta(&diff.payload()["joins"], "user-1")["online_at"],
            "now"
        );
    }
}

#[tokio::test]
async fn later_joiner_sees_existing_presence_in_its_state() {
    let hub = TestHub::start_default().await;
    let mut a = hub.connect_v2().await;
    let ja = join_presence(&mut a, "user-1").await;
    let r = a
        .presence(&ja, TOPIC, "track", json!({"online_at":"now"}))
        .await;
    a.recv_until(|f| f.is_reply_to(&r)).await;
    let mut b = hub.connect_v2().await;
    let (_, reply) = b.join(TOPIC, presence_config("user-2")).await;
    assert_eq!(reply.payload()["status"], "ok");
    let state = b.recv().await;
    assert_eq!(state.event(), Some("presence_state"));
    assert_eq!(only_meta(state.payload(), "user-1")["online_at"], "now");
}

#[tokio::test]
async fn update_with_a_different_payload_diffs_a_join_with_prev_ref_and_a_leave() {
    let hub = TestHub::start_default().await;
    let mut a = hub.connect_v2().await;
    let mut b = hub.connect_v2().await;
    let ja = join_presence(&mut a, "user-1").await;
    join_presence(&mut b, "user-2").await;
    a.presence(&ja, TOPIC, "track", json!({"status":"online"}))
        .await;
    let first = next_diff(&mut b).await;
    let old_ref = only_meta(&first.payload()["joins"], "user-1")["phx_ref"].clone();
    a.presence(&ja, TOPIC, "track", json!({"status":"away"}))
        .await;
    let diff = next_diff(&mut b).await;
    let join = only_meta(&diff.payload()["joins"], "user-1");
    let leave = only_meta(&diff.payload()["leaves"], "user-1");
    assert_eq!(join["status"], "away");
    assert_eq!(join["phx_ref_prev"], old_ref);
    assert_ne!(join["phx_ref"], old_ref);
    assert_eq!(leave["phx_ref"], old_ref);
    assert_eq!(leave["status"], "online");
}

#[tokio::test]
async fn untrack_diffs_a_leave() {
    let hub = TestHub::start_default().await;
    let mut a = hub.connect_v2().await;
    let mut b = hub.connect_v2().await;
    let ja = join_presence(&mut a, "user-1").await;
    join_presence(&mut b, "user-2").await;
    a.presence(&ja, TOPIC, "track", json!({"n":1})).await;
    let joined = next_diff(&mut b).await;
    let r = only_meta(&joined.payload()["joins"], "user-1")["phx_ref"].clone();
    let u = a.next_ref();
    a.send_v2(
        Some(&ja),
        Some(&u),
        TOPIC,
        "presence",
        json!({"type":"presence","event":"untrack"}),
    )
    .await;
    let diff = next_diff(&mut b).await;
    assert_eq!(diff.payload()["joins"], json!({}));
    assert_eq!(only_meta(&diff.payload()["leaves"], "user-1")["phx_ref"], r);
    let reply = a.recv_until(|f| f.is_reply_to(&u)).await;
    assert_eq!(reply.payload()["status"], "ok");
}

#[tokio::test]
async fn leaving_the_channel_diffs_a_leave_to_the_others() {
    let hub = TestHub::start_default().await;
    let mut a = hub.connect_v2().await;
    let mut b = hub.connect_v2().await;
    let ja = join_presence(&mut a, "user-1").await;
    join_presence(&mut b, "user-2").await;
    a.presence(&ja, TOPIC, "track", json!({"n":1})).await;
    next_diff(&mut b).await;
    a.send_v2(Some(&ja), Some("99"), TOPIC, "phx_leave", json!({}))
        .await;
    let diff = next_diff(&mut b).await;
    assert_eq!(only_meta(&diff.payload()["leaves"], "user-1")["n"], 1);
}

#[tokio::test]
async fn dropping_the_socket_diffs_a_leave_to_the_others() {
    let hub = TestHub::start_default().await;
    let mut a = hub.connect_v2().await;
    let mut b = hub.connect_v2().await;
    let ja = join_presence(&mut a, "user-1").await;
    join_presence(&mut b, "user-2").await;
    a.presence(&ja, TOPIC, "track", json!({"n":1})).await;
    next_diff(&mut b).await;
    drop(a);
    let diff = next_diff(&mut b).await;
    assert_eq!(only_meta(&diff.payload()["leaves"], "user-1")["n"], 1);
}

#[tokio::test]
async fn track_with_a_non_object_payload_is_refused_as_not_a_map() {
    let hub = TestHub::start_default().await;
    let mut a = hub.connect_v2().await;
    let ja = join_presence(&mut a, "user-1").await;
    let r = a
        .presence(&ja, TOPIC, "track", json!(["not", "a", "map"]))
        .await;
    let reply = a.recv().await;
    assert!(reply.is_reply_to(&r), "{reply:?}");
    assert_eq!(
        reply.payload(),
        &json!({"status":"error","response":{"reason":"Presence track payload must be a map"}})
    );
}

#[tokio::test]
async fn track_without_a_payload_tracks_an_empty_map_as_supabase_reads_it() {
    let hub = TestHub::start_default().await;
    let mut a = hub.connect_v2().await;
    let mut b = hub.connect_v2().await;
    let ja = join_presence(&mut a, "user-1").await;
    join_presence(&mut b, "user-2").await;
    let r = a.next_ref();
    a.send(
        Some(&ja),
        Some(&r),
        TOPIC,
        "presence",
        json!({"type": "presence", "event": "track"}),
    )
    .await;
    let reply = a.recv_until(|f| f.is_reply_to(&r)).await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    let diff = next_diff(&mut b).await;
    let meta = only_meta(&diff.payload()["joins"], "user-1");
    assert_eq!(
        meta.as_object().map(|m| m.len()),
        Some(1),
        "only phx_ref: {meta}"
    );
    assert!(meta["phx_ref"].is_string(), "{meta}");
}

#[tokio::test]
async fn tracking_the_same_payload_again_is_a_no_op() {
    let hub = TestHub::start_default().await;
    let mut a = hub.connect_v2().await;
    let mut b = hub.connect_v2().await;
    let ja = join_presence(&mut a, "user-1").await;
    join_presence(&mut b, "user-2").await;
    a.presence(&ja, TOPIC, "track", json!({"n":1})).await;
    next_diff(&mut b).await;
    let r = a.presence(&ja, TOPIC, "track", json!({"n":1})).await;
    let reply = a.recv_until(|f| f.is_reply_to(&r)).await;
    assert_eq!(reply.payload()["status"], "ok");
    b.assert_quiet().await;
}
