//! Client broadcasts: text pushes in both serializers, self and ack, kind-3 binary pushes
//! and what v1 and v2 receivers get for each origin (PROTOCOL.md §1, §5).

mod common;

use common::hub::*;
use serde_json::{json, Value};

const TOPIC: &str = "realtime:room1";

fn text_broadcast(event: &str, payload: Value) -> Value {
    json!([null, null, TOPIC, "broadcast", {"type":"broadcast","event":event,"payload":payload}])
}

#[tokio::test]
async fn v2_text_push_reaches_v2_and_v1_members() {
    let hub = TestHub::start_default().await;
    let mut sender = hub.connect_v2().await;
    let mut v2 = hub.connect_v2().await;
    let mut v1 = hub.connect_v1().await;
    let j = sender.join_ok(TOPIC, json!({})).await;
    v2.join_ok(TOPIC, json!({})).await;
    v1.join_ok(TOPIC, json!({})).await;
    sender
        .broadcast(&j, TOPIC, "cursor", json!({"x":1,"y":2}))
        .await;
    assert_eq!(
        v2.recv().await.json(),
        &text_broadcast("cursor", json!({"x":1,"y":2}))
    );
    assert_eq!(
        v1.recv().await.json(),
        &json!({"topic":TOPIC,"event":"broadcast","payload":{"type":"broadcast","event":"cursor","payload":{"x":1,"y":2}},"ref":null})
    );
}

#[tokio::test]
async fn v1_object_push_reaches_other_members() {
    let hub = TestHub::start_default().await;
    let mut sender = hub.connect_v1().await;
    let mut v2 = hub.connect_v2().await;
    let mut v1 = hub.connect_v1().await;
    sender
        .send_v1(
            Some("1"),
            Some("1"),
            "realtime:room3",
            "phx_join",
            json!({"config":{}}),
        )
        .await;
    sender.recv().await;
    v2.join_ok("realtime:room3", json!({})).await;
    v1.join_ok("realtime:room3", json!({})).await;
    sender
        .send_text(r#"{"event":"broadcast","payload":{"type":"broadcast","event":"cursor","payload":{"x":1}},"topic":"realtime:room3","ref":"2","join_ref":"1"}"#)
        .await;
    assert_eq!(
        v2.recv().await.json(),
        &json!([null,null,"realtime:room3","broadcast",{"type":"broadcast","event":"cursor","payload":{"x":1}}])
    );
    assert_eq!(
        v1.recv().await.payload(),
        &json!({"type":"broadcast","event":"cursor","payload":{"x":1}})
    );
    sender.assert_quiet().await;
}

#[tokio::test]
async fn self_false_excludes_the_sender() {
    let hub = TestHub::start_default().await;
    let mut sender = hub.connect_v2().await;
    let mut other = hub.connect_v2().await;
    let j = sender
        .join_ok(TOPIC, json!({"broadcast":{"self":false}}))
        .await;
    other.join_ok(TOPIC, json!({})).await;
    sender.broadcast(&j, TOPIC, "e", json!({"n":1})).await;
    assert_eq!(other.recv().await.payload()["event"], "e");
    sender.assert_quiet().await;
}

#[tokio::test]
async fn self_true_includes_the_sender() {
    let hub = TestHub::start_default().await;
    let mut sender = hub.connect_v2().await;
    let j = sender
        .join_ok(TOPIC, json!({"broadcast":{"self":true}}))
        .await;
    sender.broadcast(&j, TOPIC, "e", json!({"n":1})).await;
    assert_eq!(
        sender.recv().await.json(),
        &text_broadcast("e", json!({"n":1}))
    );
}

#[tokio::test]
async fn ack_true_replies_ok_with_the_push_ref() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let j = c.join_ok(TOPIC, json!({"broadcast":{"ack":true}})).await;
    let r = c.broadcast(&j, TOPIC, "e", json!({})).await;
    assert_eq!(
        c.recv().await.json(),
        &json!([j, r, TOPIC, "phx_reply", {"status":"ok","response":{}}])
    );
}

#[tokio::test]
async fn ack_false_sends_no_reply() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let j = c.join_ok(TOPIC, json!({"broadcast":{"ack":false}})).await;
    c.broadcast(&j, TOPIC, "e", json!({})).await;
    c.assert_quiet().await;
}

#[tokio::test]
async fn kind3_json_push_goes_to_v2_as_kind4_and_to_v1_as_text() {
    let hub = TestHub::start_default().await;
    let mut sender = hub.connect_v2().await;
    let mut v2 = hub.connect_v2().await;
    let mut v1 = hub.connect_v1().await;
    let j = sender
        .join_ok(TOPIC, json!({"broadcast":{"ack":true}}))
        .await;
    v2.join_ok(TOPIC, json!({})).await;
    v1.join_ok(TOPIC, json!({})).await;
    sender
        .send_binary(kind3(&j, "7", TOPIC, "cursor", "", 1, br#"{"x":1,"y":2}"#))
        .await;
    assert_eq!(
        sender.recv().await.json(),
        &json!([j, "7", TOPIC, "phx_reply", {"status":"ok","response":{}}])
    );

    let frame = v2.recv().await;
    let Frame::Binary(bytes) = &frame else {
        panic!("v2 expected binary, got {frame:?}")
    };
    assert_eq!(&bytes[..5], &[4, 14, 6, 0, 1], "kind-4 header");
    let k = kind4(&frame);
    assert_eq!(
        (k.topic.as_str(), k.event.as_str(), k.meta.len()),
        (TOPIC, "cursor", 0)
    );
    let payload: Value = serde_json::from_slice(&k.payload).expect("JSON payload");
    assert_eq!(payload, json!({"x":1,"y":2}));

    assert_eq!(
        v1.recv().await.json(),
        &json!({"topic":TOPIC,"event":"broadcast","payload":{"type":"broadcast","event":"cursor","payload":{"x":1,"y":2}},"ref":null})
    );
}

/// A sender's metadata (realtime-js 2.119 sends `persist`; anyone can write `id` and
/// `replayed`) reaches no one: `meta` is the hub's (PROTOCOL.md §5).
#[tokio::test]
async fn a_senders_metadata_is_not_passed_on() {
    let hub = TestHub::start_default().await;
    let mut sender = hub.connect_v2().await;
    let mut v2 = hub.connect_v2().await;
    let mut v1 = hub.connect_v1().await;
    let j = sender.join_ok(TOPIC, json!({})).await;
    v2.join_ok(TOPIC, json!({})).await;
    v1.join_ok(TOPIC, json!({})).await;
    let forged = r#"{"id":"forged","replayed":true,"persist":true}"#;
    sender
        .send_binary(kind3(&j, "7", TOPIC, "chat", forged, 1, br#"{"x":1}"#))
        .await;
    let k = kind4(&v2.recv().await);
    assert_eq!((k.event.as_str(), k.meta.len()), ("chat", 0), "{k:?}");
    assert_eq!(
        v1.recv().await.json(),
        &json!({"topic":TOPIC,"event":"broadcast","payload":{"type":"broadcast","event":"chat","payload":{"x":1}},"ref":null})
    );
}

/// A text push that is not an object naming its event gets an error reply and reaches no
/// one (it was acked and fanned out as an empty event).
#[tokio::test]
async fn a_broadcast_push_without_an_event_is_refused_and_fans_out_nothing() {
    let hub = TestHub::start_default().await;
    let mut sender = hub.connect_v2().await;
    let mut other = hub.connect_v2().await;
    let j = sender
        .join_ok(TOPIC, json!({"broadcast":{"ack":true}}))
        .await;
    other.join_ok(TOPIC, json!({})).await;
    let bad = [
        json!("hello"),
        json!(null),
        json!({"type":"broadcast","event":5,"payload":{}}),
        json!({"type":"broadcast","payload":{"x":1}}),
    ];
    for (i, payload) in bad.into_iter().enumerate() {
        let r = format!("b{i}");
        sender
            .send_v2(Some(&j), Some(&r), TOPIC, "broadcast", payload.clone())
            .await;
        assert_eq!(
            sender.recv().await.json(),
            &json!([j, r, TOPIC, "phx_reply", {"status":"error","response":{"reason":"Broadcast payload must be a map with a string event"}}]),
            "{payload}"
        );
    }
    other.assert_quiet().await;
}

#[tokio::test]
async fn kind3_binary_payload_goes_to_v2_as_kind4_and_not_to_v1() {
    let hub = TestHub::start_default().await;
    let mut sender = hub.connect_v2().await;
    let mut v2 = hub.connect_v2().await;
    let mut v1 = hub.connect_v1().await;
    let j = sender.join_ok(TOPIC, json!({})).await;
    v2.join_ok(TOPIC, json!({})).await;
    v1.join_ok(TOPIC, json!({})).await;
    let blob = [0u8, 159, 146, 150, 255];
    sender
        .send_binary(kind3(&j, "8", TOPIC, "blob", "", 0, &blob))
        .await;
    sender.assert_quiet().await;
    let k = kind4(&v2.recv().await);
    assert_eq!(
        (k.topic.as_str(), k.event.as_str(), k.encoding),
        (TOPIC, "blob", 0)
    );
    assert_eq!(k.payload, blob);
    v1.assert_quiet().await;
}

#[tokio::test]
async fn json_origin_broadcast_goes_to_v2_as_a_text_array() {
    let hub = TestHub::start_default().await;
    let mut sender = hub.connect_v1().await;
    let mut v2 = hub.connect_v2().await;
    let j = sender.join_ok(TOPIC, json!({})).await;
    v2.join_ok(TOPIC, json!({})).await;
    sender
        .broadcast(&j, TOPIC, "typing", json!({"who":"ann"}))
        .await;
    let f = v2.recv().await;
    assert!(
        matches!(f, Frame::Text(_)),
        "JSON-origin must be text for v2, got {f:?}"
    );
    assert_eq!(f.json(), &text_broadcast("typing", json!({"who":"ann"})));
}

#[tokio::test]
async fn string_booleans_in_the_join_config_are_honoured() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let j = c
        .join_ok(
            TOPIC,
            json!({"broadcast":{"self":"true","ack":"TRUE"},"version":"realtime-js/2.119.1"}),
        )
        .await;
    let r = c.broadcast(&j, TOPIC, "e", json!({})).await;
    let (first, second) = (c.recv().await, c.recv().await);
    let (reply, echo) = if first.is_reply_to(&r) {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(reply.payload(), &json!({"status":"ok","response":{}}));
    assert_eq!(echo.json(), &text_broadcast("e", json!({})));
}
