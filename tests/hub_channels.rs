//! Joining and leaving channels: reply shapes in both serializers, postgres_changes echo,
//! rejoin, unmatched topics, join tokens (PROTOCOL.md §1, §3, §7).

mod common;

use common::hub::*;
use serde_json::{json, Value};

const TOPIC: &str = "realtime:room1";

#[tokio::test]
async fn v2_join_reply_has_join_ref_and_ref_of_the_join_and_empty_postgres_changes() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    c.send_v2(
        Some("6"),
        Some("6"),
        TOPIC,
        "phx_join",
        json!({"config":{}}),
    )
    .await;
    let reply = c.recv().await;
    assert_eq!(
        reply.json(),
        &json!(["6","6",TOPIC,"phx_reply",{"status":"ok","response":{"postgres_changes":[]}}])
    );
}

#[tokio::test]
async fn v1_join_reply_is_an_object_with_ref_and_no_join_ref() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v1().await;
    c.send_v1(
        Some("1"),
        Some("1"),
        "realtime:room3",
        "phx_join",
        json!({"config":{}}),
    )
    .await;
    let reply = c.recv().await;
    assert_eq!(
        reply.json(),
        &json!({"topic":"realtime:room3","event":"phx_reply","payload":{"status":"ok","response":{"postgres_changes":[]}},"ref":"1"})
    );
}

#[tokio::test]
async fn postgres_changes_entries_are_echoed_verbatim_in_order_with_integer_ids() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let entries = json!([
        {"event":"INSERT","schema":"public","table":"todos","filter":"id=eq.1"},
        {"event":"*","schema":"public","table":"todos"},
        {"event":"INSERT","schema":"public","table":"todos","filter":"id=eq.1"},
        {"event":"delete","schema":"Other","table":"Mixed Case","extra":"kept"}
    ]);
    let (join_ref, reply) = c
        .join(TOPIC, json!({"config":{"postgres_changes": entries}}))
        .await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    let echoed = reply.payload()["response"]["postgres_changes"]
        .as_array()
        .expect("postgres_changes array")
        .clone();
    let sent = entries.as_array().unwrap();
    assert_eq!(echoed.len(), sent.len());
    for (got, want) in echoed.iter().zip(sent) {
        let mut got = got.as_object().unwrap().clone();
        let id = got.remove("id").expect("id");
        assert!(
            id.is_u64() || id.is_i64(),
            "id must be a JSON integer, got {id}"
        );
        assert_eq!(&Value::Object(got), want, "entry not echoed verbatim");
    }
    assert_eq!(
        echoed[0]["id"], echoed[2]["id"],
        "identical entries get identical ids"
    );
    assert_ne!(echoed[0]["id"], echoed[1]["id"]);

    // No database configured: the hub says so in a postgres_changes system message.
    let system = c.recv_until(|f| f.is_event("system")).await;
    assert_eq!(system.join_ref(), Some(join_ref.as_str()));
    assert_eq!(system.ref_(), None);
    let p = system.payload();
    for key in ["extension", "status", "message", "channel"] {
        assert!(p.get(key).is_some(), "system payload lacks {key}: {p}");
    }
    assert_eq!(p["extension"], "postgres_changes");
    assert_eq!(p["status"], "error");
    assert_eq!(p["channel"], "room1");
}

#[tokio::test]
async fn leave_replies_ok_then_closes_with_the_join_ref_in_both_slots() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    c.send_v2(
        Some("6"),
        Some("6"),
        TOPIC,
        "phx_join",
        json!({"config":{}}),
    )
    .await;
    c.recv().await;
    c.send_v2(Some("6"), Some("11"), TOPIC, "phx_leave", json!({}))
        .await;
    assert_eq!(
        c.recv().await.json(),
        &json!(["6","11",TOPIC,"phx_reply",{"status":"ok","response":{}}])
    );
    assert_eq!(
        c.recv().await.json(),
        &json!(["6", "6", TOPIC, "phx_close", {}])
    );
    c.assert_quiet().await;
}

#[tokio::test]
async fn leave_of_an_unjoined_topic_replies_ok_and_closes_nothing() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    c.send_v2(
        None,
        Some("3"),
        "realtime:never-joined",
        "phx_leave",
        json!({}),
    )
    .await;
    assert_eq!(
        c.recv().await.json(),
        &json!([null,"3","realtime:never-joined","phx_reply",{"status":"ok","response":{}}])
    );
    c.assert_quiet().await;
}

#[tokio::test]
async fn second_join_of_a_topic_closes_the_old_join_ref_before_replying_to_the_new_one() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    c.send_v2(
        Some("6"),
        Some("6"),
        TOPIC,
        "phx_join",
        json!({"config":{}}),
    )
    .await;
    assert_eq!(c.recv().await.payload()["status"], "ok");
    c.send_v2(
        Some("11"),
        Some("11"),
        TOPIC,
        "phx_join",
        json!({"config":{}}),
    )
    .await;
    assert_eq!(
        c.recv().await.json(),
        &json!(["6", "6", TOPIC, "phx_close", {}])
    );
    assert_eq!(
        c.recv().await.json(),
        &json!(["11","11",TOPIC,"phx_reply",{"status":"ok","response":{"postgres_changes":[]}}])
    );
}

#[tokio::test]
async fn join_of_a_topic_without_realtime_prefix_is_an_unmatched_topic() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    c.send_v2(
        Some("6"),
        Some("6"),
        "room1",
        "phx_join",
        json!({"config":{}}),
    )
    .await;
    assert_eq!(
        c.recv().await.json(),
        &json!(["6","6","room1","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}])
    );
}

#[tokio::test]
async fn broadcast_to_an_unjoined_topic_is_an_unmatched_topic() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let body = json!({"type":"broadcast","event":"e","payload":{}});
    c.send_v2(Some("6"), Some("7"), TOPIC, "broadcast", body)
        .await;
    let reply = c.recv().await;
    assert!(reply.is_reply_to("7"), "{reply:?}");
    assert_eq!(
        reply.payload(),
        &json!({"status":"error","response":{"reason":"unmatched topic"}})
    );
}

/// Replies carry the channel's join ref whatever the push carried, none on `phoenix`
/// (PROTOCOL.md §1, "Which slots the server fills").
#[tokio::test]
async fn replies_carry_the_channels_join_ref_and_none_on_phoenix() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let j = c.join_ok(TOPIC, json!({"broadcast":{"ack":true}})).await;
    let body = json!({"type":"broadcast","event":"e","payload":{}});
    for (pushed, r) in [(None, "20"), (Some("1"), "21"), (Some(j.as_str()), "22")] {
        c.send_v2(pushed, Some(r), TOPIC, "broadcast", body.clone())
            .await;
        assert_eq!(
            c.recv().await.json(),
            &json!([j, r, TOPIC, "phx_reply", {"status":"ok","response":{}}]),
            "pushed with join_ref {pushed:?}"
        );
    }
    c.send_v2(Some("5"), Some("23"), "phoenix", "heartbeat", json!({}))
        .await;
    assert_eq!(
        c.recv().await.json(),
        &json!([null, "23", "phoenix", "phx_reply", {"status":"ok","response":{}}])
    );
}

/// Any push but a heartbeat on `phoenix`, and an `access_token` push on a topic not
/// joined, is an unmatched topic, as any other push there (Phoenix).
#[tokio::test]
async fn other_pushes_on_phoenix_and_tokens_for_unjoined_topics_are_unmatched_topics() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let unmatched = json!({"status":"error","response":{"reason":"unmatched topic"}});
    c.send_v2(Some("3"), Some("3"), "phoenix", "phx_join", json!({}))
        .await;
    assert_eq!(
        c.recv().await.json(),
        &json!([null, "3", "phoenix", "phx_reply", unmatched])
    );
    c.push_access_token("4", TOPIC, json!("token")).await;
    assert_eq!(
        c.recv().await.json(),
        &json!([null, "t", TOPIC, "phx_reply", unmatched])
    );
}

async fn join_error_reason(hub: &TestHub, access_token: Value) -> String {
    let mut c = hub.connect_v2().await;
    let (_, reply) = c
        .join(TOPIC, json!({"config":{}, "access_token": access_token}))
        .await;
    assert_eq!(reply.payload()["status"], "error", "{reply:?}");
    reply.payload()["response"]["reason"]
        .as_str()
        .expect("reason")
        .to_owned()
}

#[tokio::test]
async fn join_with_an_expired_access_token_is_refused_with_seconds_ago() {
    let hub = TestHub::start_default().await;
    let reason = join_error_reason(&hub, json!(hub.token("authenticated", "u1", -42))).await;
    let secs = reason
        .strip_prefix("InvalidJWTToken: Token has expired ")
        .and_then(|r| r.strip_suffix(" seconds ago"))
        .unwrap_or_else(|| panic!("unexpected reason {reason:?}"));
    let secs: i64 = secs.parse().expect("N is an integer");
    assert!((42..=45).contains(&secs), "{reason}");
}

#[tokio::test]
async fn join_with_a_malformed_access_token_is_refused_as_malformed_jwt() {
    let hub = TestHub::start_default().await;
    // Not shaped like a JWT is malformed too, never a fall back to the apikey's rights.
    for token in ["aaa.bbb.ccc", "not-a-jwt", "undefined"] {
        let reason = join_error_reason(&hub, json!(token)).await;
        assert_eq!(
            reason, "MalformedJWT: The token provided is not a valid JWT",
            "{token}"
        );
    }
}

#[tokio::test]
async fn join_with_a_foreign_signed_access_token_is_refused_as_signature_error() {
    let hub = TestHub::start_default().await;
    let foreign = switchboard::auth::mint_hs256(
        "not-the-hub-secret",
        &json!({"role":"authenticated","exp": now() + 600}),
    )
    .unwrap();
    let reason = join_error_reason(&hub, json!(foreign)).await;
    assert_eq!(
        reason,
        "JwtSignatureError: Failed to validate JWT signature"
    );
}

#[tokio::test]
async fn join_with_null_or_opaque_sb_access_token_uses_the_apikey_claims() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    for (topic, token) in [
        ("realtime:a", json!(null)),
        ("realtime:b", json!("sb_publishable_abc123")),
    ] {
        let (_, reply) = c
            .join(topic, json!({"config":{}, "access_token": token}))
            .await;
        assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    }
    let (_, reply) = c.join("realtime:c", json!({"config":{}})).await;
    assert_eq!(
        reply.payload()["status"],
        "ok",
        "absent access_token: {reply:?}"
    );
}

#[tokio::test]
async fn access_token_push_with_a_valid_token_gets_no_reply_and_the_channel_keeps_working() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let j = c.join_ok(TOPIC, json!({"broadcast":{"self":true}})).await;
    let fresh = hub.token("authenticated", "u1", 3600);
    c.push_access_token(&j, TOPIC, json!(fresh)).await;
    c.assert_quiet().await;
    c.broadcast(&j, TOPIC, "still", json!({"n":1})).await;
    let f = c.recv_until(|f| f.is_event("broadcast")).await;
    assert_eq!(f.payload()["event"], "still");
}

#[tokio::test]
async fn access_token_push_with_an_invalid_token_shuts_the_channel_with_a_system_error() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    for token in ["aaa.bbb.ccc", "undefined", ""] {
        let j = c.join_ok(TOPIC, json!({})).await;
        c.push_access_token(&j, TOPIC, json!(token)).await;
        let system = c.recv().await;
        assert_eq!(system.event(), Some("system"), "{system:?}");
        assert_eq!(system.join_ref(), Some(j.as_str()));
        assert_eq!(system.ref_(), None);
        assert_eq!(
            system.payload(),
            &json!({"extension":"system","status":"error","message":"The token provided is not a valid JWT","channel":"room1"}),
            "{token}"
        );
        assert_eq!(
            c.recv().await.json(),
            &json!([j, j, TOPIC, "phx_close", {}])
        );
    }
}

#[tokio::test]
async fn replication_ready_not_reached_in_time_shuts_the_channel_as_supabase_does() {
    // Without a database the hub never reads a log: the wait runs out.
    let mut config = test_config();
    config.limits.replication_ready_timeout = std::time::Duration::from_secs(1);
    let hub = TestHub::start(config).await;
    let mut c = hub.connect_v2().await;
    let j = c
        .join_ok(TOPIC, json!({"broadcast": {"replication_ready": true}}))
        .await;
    let plain = c
        .join_ok("realtime:plain", json!({"broadcast": {"self": true}}))
        .await;
    let system = c.recv().await;
    assert_eq!(system.join_ref(), Some(j.as_str()), "{system:?}");
    assert_eq!(
        system.payload(),
        &json!({"extension":"system","status":"error","message":"Replication connection was not established in time","channel":"room1"})
    );
    assert_eq!(
        c.recv().await.json(),
        &json!([j, j, TOPIC, "phx_close", {}])
    );
    // The channel that did not ask is untouched: its own broadcast comes back.
    c.send_v2(
        Some(&plain),
        Some("9"),
        "realtime:plain",
        "broadcast",
        json!({"type": "broadcast", "event": "e", "payload": {"n": 1}}),
    )
    .await;
    let echo = c.recv().await;
    assert_eq!(echo.event(), Some("broadcast"), "{echo:?}");
    assert_eq!(echo.payload()["payload"], json!({"n": 1}));
}

#[tokio::test]
async fn channel_is_shut_when_its_join_token_expires_without_any_client_action() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let short = hub.token("authenticated", "u1", 2);
    let (j, reply) = c
        .join(TOPIC, json!({"config":{}, "access_token": short}))
        .await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    let system = c.recv().await;
    assert_eq!(system.event(), Some("system"), "{system:?}");
    assert_eq!(system.join_ref(), Some(j.as_str()));
    let p = system.payload();
    assert_eq!(p["extension"], "system");
    assert_eq!(p["status"], "error");
    assert_eq!(p["channel"], "room1");
    let message = p["message"].as_str().unwrap_or_default();
    let n = message
        .strip_prefix("Token has expired ")
        .and_then(|m| m.strip_suffix(" seconds ago"))
        .unwrap_or_else(|| panic!("unexpected message {message:?}"));
    assert!(n.parse::<u64>().is_ok(), "{message}");
    assert_eq!(
        c.recv().await.json(),
        &json!([j, j, TOPIC, "phx_close", {}])
    );
}

#[tokio::test]
async fn leave_stops_delivery_for_that_join() {
    let hub = TestHub::start_default().await;
    let mut leaver = hub.connect_v2().await;
    let mut sender = hub.connect_v2().await;
    let jl = leaver.join_ok(TOPIC, json!({})).await;
    let js = sender.join_ok(TOPIC, json!({})).await;
    leaver
        .send_v2(Some(&jl), Some("50"), TOPIC, "phx_leave", json!({}))
        .await;
    leaver.recv_until(|f| f.is_event("phx_close")).await;
    sender.broadcast(&js, TOPIC, "after-leave", json!({})).await;
    sender.assert_quiet().await;
    leaver.assert_quiet().await;
}

#[tokio::test]
async fn access_token_push_of_null_or_opaque_key_is_ignored() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let j = c.join_ok(TOPIC, json!({"broadcast":{"self":true}})).await;
    c.push_access_token(&j, TOPIC, json!(null)).await;
    c.push_access_token(&j, TOPIC, json!("sb_publishable_x"))
        .await;
    c.assert_quiet().await;
    c.broadcast(&j, TOPIC, "still", json!({})).await;
    assert_eq!(c.recv().await.payload()["event"], "still");
}

#[tokio::test]
async fn access_token_push_with_an_expired_token_shuts_the_channel() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let j = c.join_ok(TOPIC, json!({})).await;
    let stale = hub.token("authenticated", "u1", -5);
    c.push_access_token(&j, TOPIC, json!(stale)).await;
    let system = c.recv().await;
    assert_eq!(system.event(), Some("system"), "{system:?}");
    let p = system.payload();
    assert_eq!(
        (&p["extension"], &p["status"]),
        (&json!("system"), &json!("error"))
    );
    let message = p["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Token has expired ") && message.ends_with(" seconds ago"),
        "{message:?}"
    );
    assert_eq!(
        c.recv().await.json(),
        &json!([j, j, TOPIC, "phx_close", {}])
    );
}

#[tokio::test]
async fn refreshed_token_outlives_the_join_tokens_expiry() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let short = hub.token("authenticated", "u1", 2);
    let (j, reply) = c
        .join(TOPIC, json!({"config":{}, "access_token": short}))
        .await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    let fresh = hub.token("authenticated", "u1", 3600);
    c.push_access_token(&j, TOPIC, json!(fresh)).await;
    // Past the first token's exp (whole seconds), nothing may arrive.
    c.expect_no_frame(std::time::Duration::from_millis(3100))
        .await;
    c.assert_quiet().await;
}

#[tokio::test]
async fn join_of_the_bare_realtime_prefix_requires_a_topic_name() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let (_, reply) = c.join("realtime:", json!({"config":{}})).await;
    assert_eq!(
        reply.payload(),
        &json!({"status":"error","response":{"reason":"TopicNameRequired: You must provide a topic name"}})
    );
}

#[tokio::test]
async fn with_private_only_a_public_join_is_refused_and_a_private_one_joins() {
    let mut config = test_config();
    config.limits.private_only = true;
    let hub = TestHub::start(config).await;
    let mut c = hub.connect_v2().await;
    let (_, reply) = c
        .join(TOPIC, json!({"config": {"broadcast": {"self": true}}}))
        .await;
    assert_eq!(
        reply.payload(),
        &json!({"status": "error", "response": {"reason": "PrivateOnly: This project only allows private channels"}})
    );
    // Without a database, only service_role may use private channels.
    let admin = hub.token("service_role", "ops", 3600);
    let (_, reply) = c
        .join(
            TOPIC,
            json!({"config": {"private": true}, "access_token": admin}),
        )
        .await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
}

#[tokio::test]
async fn null_postgres_changes_entries_are_dropped_as_supabase_drops_them() {
    let hub = TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let (_, reply) = c
        .join(TOPIC, json!({"config": {"postgres_changes": [null]}}))
        .await;
    assert_eq!(
        reply.payload(),
        &json!({"status": "ok", "response": {"postgres_changes": []}})
    );
    c.expect_no_frame(std::time::Duration::from_millis(300))
        .await;
}
