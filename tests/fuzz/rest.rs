//! REST broadcast bodies, through a real hub over HTTP: any batch body, and any single
//! broadcast (topic, event, content type, body), is accepted (202) or refused with a 4xx
//! and a body that says why; the hub never fails (5xx) or drops the connection, and a
//! subscriber receives the accepted messages meant for its topic.

use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::{assert_clear, config};
use crate::common::hub::TestHub;

/// One hub and runtime for every case of this file (a hub per case would dominate).
fn hub() -> &'static (tokio::runtime::Runtime, TestHub, reqwest::Client) {
    static HUB: OnceLock<(tokio::runtime::Runtime, TestHub, reqwest::Client)> = OnceLock::new();
    HUB.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = crate::common::hub::test_config();
        config.limits.max_broadcast_bytes = 4096;
        let hub = rt.block_on(TestHub::start(config));
        (rt, hub, reqwest::Client::new())
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,10}".prop_map(Value::from),
        Just(Value::from("x".repeat(5000))),
    ];
    leaf.prop_recursive(3, 20, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("topic".to_owned()),
                    Just("event".to_owned()),
                    Just("payload".to_owned()),
                    Just("private".to_owned()),
                    Just("id".to_owned()),
                    Just("messages".to_owned()),
                    ".{0,6}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn message() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop_oneof![Just(json!("fuzz")), json_value()]),
        prop::option::of(prop_oneof![Just(json!("e")), json_value()]),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
    )
        .prop_map(|(topic, event, payload, private)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("topic", topic),
                ("event", event),
                ("payload", payload),
                ("private", private),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m)
        })
}

fn batch_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(message(), 0..6)
            .prop_map(|m| json!({ "messages": m }).to_string().into_bytes()),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..64),
        Just(
            json!({"messages": vec![json!({"topic": "t", "event": "e", "payload": {}}); 1001]})
                .to_string()
                .into_bytes()
        ),
    ]
}

/// Checks one answer: 202, or a 4xx whose body says what is wrong.
fn check(status: u16, body: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        status == 202 || (400..500).contains(&status),
        "status {status}: {body}"
    );
    if status != 202 {
        prop_assert!(!body.is_empty(), "empty {status} body");
        if let Ok(v) = serde_json::from_str::<Value>(body) {
            let text = v["message"]
                .as_str()
                .or(v["error"].as_str())
                .map(str::to_owned)
                .or_else(|| v.get("errors").map(Value::to_string));
            prop_assert!(text.is_some(), "{status} body without a reason: {body}");
            assert_clear(&text.unwrap());
        } else {
            assert_clear(body);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_batch_body_is_accepted_or_refused_with_a_reason(body in batch_body(), auth in any::<bool>()) {
        let (rt, hub, http) = hub();
        let mut req = http.post(hub.http_url("/realtime/v1/api/broadcast")).body(body);
        if auth {
            req = req.bearer_auth(hub.anon());
        }
        let (status, text) = rt.block_on(async {
            let resp = req.send().await.expect("the hub answers");
            (resp.status().as_u16(), resp.text().await.expect("a body"))
        });
        if !auth {
            prop_assert_eq!(status, 401);
        }
        check(status, &text)?;
    }

    #[test]
    fn any_single_broadcast_is_accepted_or_refused_with_a_reason(
        // Neither empty nor `.`/`..`: `/broadcast//events/` is no route at all, and the
        // HTTP client folds dot segments (even `%2E`) out of the path before sending it;
        // either way a bare 404, like any unknown path.
        topic in ".{1,20}".prop_filter("a path segment", |s| s != "." && s != ".."),
        event in ".{1,20}".prop_filter("a path segment", |s| s != "." && s != ".."),
        binary in any::<bool>(),
        body in prop_oneof![json_value().prop_map(|v| v.to_string().into_bytes()), prop::collection::vec(any::<u8>(), 0..64)],
        private in any::<bool>(),
    ) {
        let (rt, hub, http) = hub();
        let enc = |s: &str| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
        let url = hub.http_url(&format!(
            "/realtime/v1/api/broadcast/{}/events/{}{}",
            enc(&topic), enc(&event), if private { "?private=true" } else { "" }
        ));
        let ct = if binary { "application/octet-stream" } else { "application/json" };
        let req = http.post(url).bearer_auth(hub.anon()).header("content-type", ct).body(body);
        let (status, text) = rt.block_on(async {
            let resp = req.send().await.expect("the hub answers");
            (resp.status().as_u16(), resp.text().await.expect("a body"))
        });
        check(status, &text)?;
    }
}

#[test]
fn after_the_fuzzing_the_hub_still_delivers_rest_broadcasts() {
    let (rt, hub, http) = hub();
    rt.block_on(async {
        let mut c = hub.connect_v2().await;
        c.join_ok("realtime:fuzz-after", json!({})).await;
        let resp = http
            .post(hub.http_url("/realtime/v1/api/broadcast"))
            .bearer_auth(hub.anon())
            .json(
                &json!({"messages": [{"topic": "fuzz-after", "event": "e", "payload": {"n": 1}}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        let f = c.recv_until(|f| f.is_event("broadcast")).await;
        assert_eq!(f.payload()["payload"], json!({"n": 1}));
    });
}
