//! The session driven without a socket: decoded messages in, frames read back from the
//! outbox, on a hub without a database.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{Services, Session};
use crate::auth::{mint_hs256, Claims};
use crate::config::Config;
use crate::protocol::{decode_text, Close, Vsn, WireFrame};
use crate::router::outbox::{outbox, OutboxRx};

const SECRET: &str = "channel-unit-tests-secret-0123456789";

struct Harness {
    session: Session,
    rx: OutboxRx,
    svc: Arc<Services>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn token(role: &str, exp_in: i64) -> String {
    mint_hs256(
        SECRET,
        &json!({"role": role, "sub": "u1", "exp": now() + exp_in}),
    )
    .unwrap()
}

fn services(tune: impl FnOnce(&mut Config)) -> Arc<Services> {
    let mut config = Config::for_tests(SECRET);
    tune(&mut config);
    Services::for_tests(&config)
}

impl Harness {
    fn new(tune: impl FnOnce(&mut Config)) -> Harness {
        Harness::on(services(tune))
    }

    /// Another connection on the same hub.
    fn on(svc: Arc<Services>) -> Harness {
        let (tx, rx) = outbox(64, 1 << 20);
        let claims: Claims = svc.verifier.verify(&token("anon", 3600)).unwrap();
        let session = Session::new(
            svc.clone(),
            crate::telemetry::next_id(),
            Vsn::V2,
            tx,
            claims,
            None,
        );
        Harness { session, rx, svc }
    }

    async fn send(&mut self, frame: Value) {
        let msg = decode_text(Vsn::V2, &frame.to_string()).expect("valid v2 frame");
        self.session.handle(msg).await;
    }

    async fn join(&mut self, join_ref: &str, topic: &str, payload: Value) {
        self.send(json!([join_ref, join_ref, topic, "phx_join", payload]))
            .await;
    }

    /// Every frame queued so far, as JSON arrays.
    fn frames(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(frame) = self.rx.try_recv() {
            let WireFrame::Text(bytes) = frame else {
                panic!("unexpected binary frame")
            };
            out.push(serde_json::from_slice(&bytes).unwrap());
        }
        out
    }
}

fn reply(join_ref: &str, ref_: &str, topic: &str, status: &str, response: Value) -> Value {
    json!([join_ref, ref_, topic, "phx_reply", {"status": status, "response": response}])
}

fn error_reply(join_ref: &str, topic: &str, reason: &str) -> Value {
    reply(
        join_ref,
        join_ref,
        topic,
        "error",
        json!({ "reason": reason }),
    )
}

fn system(join_ref: &str, topic: &str, extension: &str, status: &str, message: &str) -> Value {
    let channel = topic.trim_start_matches("realtime:");
    json!([join_ref, null, topic, "system",
        {"extension": extension, "status": status, "message": message, "channel": channel}])
}

fn close(join_ref: &str, topic: &str) -> Value {
    json!([join_ref, join_ref, topic, "phx_close", {}])
}

#[tokio::test]
async fn a_join_is_answered_with_an_empty_postgres_changes_list() {
    let mut h = Harness::new(|_| {});
    h.join("1", "realtime:room", json!({"config": {}})).await;
    assert_eq!(
        h.frames(),
        [reply(
            "1",
            "1",
            "realtime:room",
            "ok",
            json!({"postgres_changes": []})
        )]
    );
}

#[tokio::test]
async fn topics_outside_realtime_the_bare_prefix_and_overlong_ones_are_refused() {
    let mut h = Harness::new(|_| {});
    h.join("1", "room", json!({})).await;
    h.join("2", "realtime:", json!({})).await;
    let long = format!("realtime:{}", "x".repeat(8184));
    h.join("3", &long, json!({})).await;
    let longest = format!("realtime:{}", "x".repeat(8183));
    h.join("4", &longest, json!({})).await;
    let frames = h.frames();
    assert_eq!(
        frames[..3],
        [
            error_reply("1", "room", "unmatched topic"),
            error_reply(
                "2",
                "realtime:",
                "TopicNameRequired: You must provide a topic name"
            ),
            error_reply(
                "3",
                &long,
                "TopicNameInvalid: topic is longer than 8192 bytes"
            ),
        ]
    );
    assert_eq!(frames[3][3], "phx_reply");
    assert_eq!(frames[3][4]["status"], "ok", "8,192 bytes is allowed");
}

#[tokio::test]
async fn a_rejoin_closes_the_old_channel_before_answering() {
    let mut h = Harness::new(|_| {});
    h.join("1", "realtime:room", json!({})).await;
    h.join("5", "realtime:room", json!({})).await;
    let frames = h.frames();
    assert_eq!(frames[1], close("1", "realtime:room"));
    assert_eq!(frames[2][4]["status"], "ok");
    assert_eq!(h.svc.metrics.channels.get(), 1);
}

/// Phoenix ignores a leave naming an older join of the topic: the current join stays.
#[tokio::test]
async fn a_leave_of_an_older_join_is_ignored() {
    let mut h = Harness::new(|_| {});
    h.join("1", "realtime:room", json!({})).await;
    h.join("3", "realtime:room", json!({})).await;
    h.send(json!(["1", "6", "realtime:room", "phx_leave", {}]))
        .await;
    h.send(json!(["3", "7", "realtime:room", "phx_leave", {}]))
        .await;
    let frames = h.frames();
    assert_eq!(
        frames[3..],
        [
            reply("3", "7", "realtime:room", "ok", json!({})),
            close("3", "realtime:room"),
        ]
    );
}

#[tokio::test]
async fn leave_replies_ok_then_closes_and_later_messages_are_unmatched() {
    let mut h = Harness::new(|_| {});
    h.join("1", "realtime:room", json!({})).await;
    h.send(json!(["1", "2", "realtime:room", "phx_leave", {}]))
        .await;
    h.send(json!(["1", "3", "realtime:room", "broadcast",
        {"type": "broadcast", "event": "e", "payload": {}}]))
        .await;
    let frames = h.frames();
    assert_eq!(
        frames[1..],
        [
            reply("1", "2", "realtime:room", "ok", json!({})),
            close("1", "realtime:room"),
            // No join ref: the topic is no longer joined (Phoenix's unmatched topic).
            json!([null, "3", "realtime:room", "phx_reply",
                {"status": "error", "response": {"reason": "unmatched topic"}}]),
        ]
    );
    assert_eq!(h.svc.metrics.channels.get(), 0);
}

#[tokio::test]
async fn an_invalid_refreshed_token_ends_the_channel_and_a_valid_one_moves_its_expiry() {
    let mut h = Harness::new(|_| {});
    h.join(
        "1",
        "realtime:room",
        json!({"access_token": token("authenticated", 60)}),
    )
    .await;
    let first_exp = h.session.next_expiry().unwrap();
    h.send(json!(["1", "2", "realtime:room", "access_token",
        {"access_token": token("authenticated", 7200)}]))
        .await;
    assert!(h.session.next_expiry().unwrap() > first_exp + 3600);
    h.send(
        json!(["1", "3", "realtime:room", "access_token", {"access_token": "sb_publishable_x"}]),
    )
    .await;
    h.send(json!(["1", "4", "realtime:room", "access_token", {"access_token": "a.b.c"}]))
        .await;
    let frames = h.frames();
    assert_eq!(
        frames[1..],
        [
            system(
                "1",
                "realtime:room",
                "system",
                "error",
                "The token provided is not a valid JWT"
            ),
            close("1", "realtime:room"),
        ],
        "refreshes get no reply; an opaque sb_ key is ignored"
    );
}

#[tokio::test]
async fn an_expired_token_ends_its_channel_with_how_long_ago() {
    let mut h = Harness::new(|_| {});
    h.join(
        "1",
        "realtime:room",
        json!({"access_token": token("authenticated", 60)}),
    )
    .await;
    let exp = h.session.next_expiry().unwrap();
    h.session.expire_tokens(exp + 3);
    assert_eq!(
        h.frames()[1..],
        [
            system(
                "1",
                "realtime:room",
                "system",
                "error",
                "Token has expired 3 seconds ago"
            ),
            close("1", "realtime:room"),
        ]
    );
    assert_eq!(h.session.next_expiry(), None);
}

#[tokio::test]
async fn a_join_with_an_expired_user_token_is_refused_with_its_code() {
    let mut h = Harness::new(|_| {});
    h.join(
        "1",
        "realtime:room",
        json!({"access_token": token("authenticated", -5)}),
    )
    .await;
    let frames = h.frames();
    let reason = frames[0][4]["response"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("InvalidJWTToken: Token has expired "),
        "{reason}"
    );
}

#[tokio::test]
async fn the_channel_limit_refuses_the_next_join() {
    let mut h = Harness::new(|c| c.limits.max_channels_per_connection = 2);
    for (r, topic) in [
        ("1", "realtime:a"),
        ("2", "realtime:b"),
        ("3", "realtime:c"),
    ] {
        h.join(r, topic, json!({})).await;
    }
    assert_eq!(
        h.frames()[2],
        error_reply(
            "3",
            "realtime:c",
            "ChannelRateLimitReached: Too many channels"
        )
    );
}

#[tokio::test]
async fn joining_too_fast_is_refused_and_closes_the_socket() {
    let mut h = Harness::new(|c| c.limits.max_joins_per_second = 2);
    for r in ["1", "2", "3"] {
        h.join(r, &format!("realtime:t{r}"), json!({})).await;
    }
    assert_eq!(
        h.frames()[2],
        error_reply(
            "3",
            "realtime:t3",
            "ClientJoinRateLimitReached: Too many joins per second"
        )
    );
    assert_eq!(h.rx.close_reason(), Some(Close::TooManyJoins));
}

#[tokio::test]
async fn too_many_messages_shut_the_channel() {
    // A burst of five seconds' worth (10) passes; the eleventh message is one too many.
    let mut h = Harness::new(|c| c.limits.max_messages_per_second = 2);
    h.join("1", "realtime:room", json!({})).await;
    for r in 2..=12 {
        h.send(json!(["1", r.to_string(), "realtime:room", "broadcast",
            {"type": "broadcast", "event": "e", "payload": {}}]))
            .await;
    }
    assert_eq!(
        h.frames()[1..],
        [
            json!(["1", "12", "realtime:room", "phx_reply",
                {"status": "error", "response": {"reason": "Too many messages per second"}}]),
            system(
                "1",
                "realtime:room",
                "system",
                "error",
                "Too many messages per second"
            ),
            close("1", "realtime:room"),
        ]
    );
}

#[tokio::test]
async fn an_oversized_acked_broadcast_is_refused_and_not_delivered() {
    let svc = services(|c| c.limits.max_broadcast_bytes = 16);
    let mut sender = Harness::on(svc.clone());
    let mut other = Harness::on(svc);
    let config = json!({"config": {"broadcast": {"ack": true}}});
    sender.join("1", "realtime:room", config.clone()).await;
    other.join("1", "realtime:room", config).await;
    sender
        .send(json!(["1", "2", "realtime:room", "broadcast",
            {"type": "broadcast", "event": "e", "payload": {"text": "far more than sixteen bytes"}}]))
        .await;
    sender
        .send(json!(["1", "3", "realtime:room", "broadcast",
            {"type": "broadcast", "event": "e", "payload": {"a": 1}}]))
        .await;
    assert_eq!(
        sender.frames()[1..],
        [
            reply(
                "1",
                "2",
                "realtime:room",
                "error",
                json!({"error": "payload_size_exceeded"})
            ),
            reply("1", "3", "realtime:room", "ok", json!({})),
        ]
    );
    assert_eq!(
        other.frames()[1..],
        [json!([null, null, "realtime:room", "broadcast",
            {"type": "broadcast", "event": "e", "payload": {"a": 1}}])]
    );
}

#[tokio::test]
async fn an_oversized_track_shuts_the_channel() {
    let mut h = Harness::new(|c| c.limits.max_presence_bytes = 8);
    h.join("1", "realtime:room", json!({})).await;
    h.send(json!(["1", "2", "realtime:room", "presence",
        {"type": "presence", "event": "track", "payload": {"name": "a long name"}}]))
        .await;
    assert_eq!(
        h.frames()[1..],
        [
            system(
                "1",
                "realtime:room",
                "system",
                "error",
                "Track message size exceeded"
            ),
            close("1", "realtime:room"),
        ]
    );
}

#[tokio::test]
async fn a_private_join_without_read_permission_is_refused() {
    let mut h = Harness::new(|_| {});
    h.join(
        "1",
        "realtime:room:42",
        json!({"config": {"private": true}}),
    )
    .await;
    assert_eq!(
        h.frames(),
        [error_reply(
            "1",
            "realtime:room:42",
            "Unauthorized: You do not have permissions to read from this Channel topic: room:42"
        )]
    );
}

#[tokio::test]
async fn postgres_changes_without_a_database_are_echoed_with_ids_and_reported() {
    let mut h = Harness::new(|_| {});
    let entry = json!({"event": "INSERT", "schema": "public", "table": "jobs"});
    h.join(
        "1",
        "realtime:room",
        json!({"config": {"postgres_changes": [entry]}}),
    )
    .await;
    let frames = h.frames();
    let echoed = &frames[0][4]["response"]["postgres_changes"][0];
    assert_eq!(echoed["table"], "jobs");
    assert!(echoed["id"].is_u64(), "{echoed}");
    assert_eq!(
        frames[1],
        system(
            "1",
            "realtime:room",
            "postgres_changes",
            "error",
            "postgres_changes is unavailable: the hub runs without a database (set DATABASE_URL)"
        )
    );
}

#[tokio::test]
async fn dropping_the_session_removes_its_presence_from_the_room() {
    let svc = services(|_| {});
    let mut watcher = Harness::on(svc.clone());
    watcher
        .join(
            "1",
            "realtime:room",
            json!({"config": {"presence": {"enabled": true}}}),
        )
        .await;
    let mut leaver = Harness::on(svc.clone());
    leaver
        .join(
            "1",
            "realtime:room",
            json!({"config": {"presence": {"key": "bo"}}}),
        )
        .await;
    leaver
        .send(json!(["1", "2", "realtime:room", "presence",
            {"type": "presence", "event": "track", "payload": {"at": 1}}]))
        .await;
    drop(leaver.session);
    let frames = watcher.frames();
    let diffs: Vec<&Value> = frames.iter().filter(|f| f[3] == "presence_diff").collect();
    assert_eq!(diffs.len(), 2, "{frames:?}");
    assert!(diffs[0][4]["joins"]["bo"].is_object());
    assert!(diffs[1][4]["leaves"]["bo"].is_object());
    assert_eq!(svc.metrics.channels.get(), 1);
}
