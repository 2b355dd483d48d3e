//! Table-driven tests of the codec against the real frames in PROTOCOL.md.

use super::*;
use crate::protocol::{AckError, ReplyError};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;

/// Frame captured from realtime-js: `channel.send({type:'broadcast', event:'cursor',
/// payload:{x:1,y:2}})` with join_ref "6", ref "7".
fn captured_kind3() -> Vec<u8> {
    let header: &[u8] = &[0x03, 0x01, 0x01, 0x0e, 0x06, 0x00, 0x01];
    [header, b"67realtime:room1cursor{\"x\":1,\"y\":2}"].concat()
}

/// Kind-3 frame from its parts.
fn kind3(
    join_ref: &str,
    ref_: &str,
    topic: &str,
    event: &str,
    meta: &str,
    enc: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![
        3,
        join_ref.len() as u8,
        ref_.len() as u8,
        topic.len() as u8,
        event.len() as u8,
        meta.len() as u8,
        enc,
    ];
    for part in [join_ref, ref_, topic, event, meta] {
        f.extend_from_slice(part.as_bytes());
    }
    f.extend_from_slice(payload);
    f
}

fn text(frame: WireFrame) -> String {
    match frame {
        WireFrame::Text(b) => String::from_utf8(b.to_vec()).unwrap(),
        WireFrame::Binary(b) => panic!("expected text, got binary {b:?}"),
    }
}

fn json_broadcast(
    event: &str,
    payload: Value,
    meta: Option<Value>,
    binary_origin: bool,
) -> Broadcast {
    Broadcast {
        event: event.into(),
        payload: BroadcastPayload::Json(payload),
        meta,
        binary_origin,
    }
}

fn bin_broadcast(payload: &'static [u8], binary_origin: bool) -> Broadcast {
    Broadcast {
        event: "blob".into(),
        payload: BroadcastPayload::Binary(Bytes::from_static(payload)),
        meta: None,
        binary_origin,
    }
}

#[test]
fn vsn_query_parameter_picks_the_serializer() {
    let cases: &[(Option<&str>, Option<Vsn>)] = &[
        (None, Some(Vsn::V1)),
        (Some("1.0.0"), Some(Vsn::V1)),
        (Some("1.1"), Some(Vsn::V1)),
        (Some("2.0.0"), Some(Vsn::V2)),
        (Some("2"), Some(Vsn::V2)),
        (Some("3.0.0"), None),
        (Some(""), None),
        (Some("v2"), None),
        (Some("20.0.0"), None),
    ];
    for (q, want) in cases {
        assert_eq!(Vsn::from_query(*q).ok(), *want, "vsn {q:?}");
    }
    assert_eq!(
        Vsn::from_query(Some("3.0.0")).unwrap_err().to_string(),
        "unsupported vsn \"3.0.0\""
    );
}

/// `Inbound` as `[join_ref, ref, topic, event, payload]`, for compact expectations.
fn as_array(m: Inbound) -> Value {
    let InboundPayload::Json(payload) = m.payload else {
        panic!("expected a json payload")
    };
    json!([m.join_ref, m.ref_, m.topic, m.event, payload])
}

#[test]
fn text_frames_decode_in_both_serializers() {
    // (serializer, frame, decoded as [join_ref, ref, topic, event, payload])
    let cases: &[(Vsn, &str, &str)] = &[
        (
            Vsn::V2,
            r#"["6","6","realtime:room1","phx_join",{"config":{"private":false}}]"#,
            r#"["6","6","realtime:room1","phx_join",{"config":{"private":false}}]"#,
        ),
        (
            Vsn::V2,
            r#"[null,"10","phoenix","heartbeat",{}]"#,
            r#"[null,"10","phoenix","heartbeat",{}]"#,
        ),
        (
            Vsn::V2,
            r#"[6,7,"realtime:room1","phx_leave",{}]"#,
            r#"["6","7","realtime:room1","phx_leave",{}]"#,
        ),
        (
            Vsn::V2,
            r#"["6","7","realtime:room1","broadcast",{"type":"broadcast","event":"cursor","payload":{"x":1,"y":2}}]"#,
            r#"["6","7","realtime:room1","broadcast",{"type":"broadcast","event":"cursor","payload":{"x":1,"y":2}}]"#,
        ),
        (
            Vsn::V1,
            r#"{"event":"heartbeat","payload":{},"topic":"phoenix","ref":null,"join_ref":null}"#,
            r#"[null,null,"phoenix","heartbeat",{}]"#,
        ),
        (
            Vsn::V1,
            r#"{"topic":"realtime:room3","event":"phx_join","payload":{"config":{}},"ref":"1","join_ref":"1"}"#,
            r#"["1","1","realtime:room3","phx_join",{"config":{}}]"#,
        ),
        (
            Vsn::V1,
            r#"{"topic":"realtime:room3","event":"access_token","payload":{"access_token":"t"},"ref":12}"#,
            r#"[null,"12","realtime:room3","access_token",{"access_token":"t"}]"#,
        ),
    ];
    for (vsn, frame, want) in cases {
        let got = decode_text(*vsn, frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
        let want: Value = serde_json::from_str(want).unwrap();
        assert_eq!(as_array(got), want, "{frame}");
    }
}

#[test]
fn a_v2_array_longer_than_five_is_read_by_its_first_five_as_phoenix_reads_it() {
    let got = decode_text(
        Vsn::V2,
        r#"["1","2","realtime:t","broadcast",{"a":1},"extra",7]"#,
    )
    .unwrap();
    assert_eq!(
        (
            got.join_ref.as_deref(),
            got.ref_.as_deref(),
            got.topic.as_str()
        ),
        (Some("1"), Some("2"), "realtime:t")
    );
    assert_eq!(got.payload, InboundPayload::Json(json!({"a": 1})));
}

#[test]
fn malformed_text_frames_get_specific_errors() {
    let cases: &[(Vsn, &str, &str)] = &[
        (Vsn::V2, "", "invalid json"),
        (Vsn::V2, "[null,\"1\",\"phoenix\"", "invalid json"),
        (Vsn::V2, "{\"topic\":\"x\"}", "expected a 5-element array"),
        (
            Vsn::V2,
            "[null,null,\"t\",\"e\"]",
            "expected a 5-element array",
        ),
        (Vsn::V2, "[null,null,5,\"e\",{}]", "topic must be a string"),
        (
            Vsn::V2,
            "[null,null,\"t\",null,{}]",
            "event must be a string",
        ),
        (
            Vsn::V2,
            "[{},null,\"t\",\"e\",{}]",
            "join_ref must be a string or null",
        ),
        (
            Vsn::V2,
            "[null,true,\"t\",\"e\",{}]",
            "ref must be a string or null",
        ),
        (
            Vsn::V1,
            "[null,null,\"t\",\"e\",{}]",
            "expected a json object",
        ),
        (Vsn::V1, "\"hello\"", "expected a json object"),
        (
            Vsn::V1,
            r#"{"event":"e","payload":{},"ref":"1"}"#,
            "missing topic",
        ),
        (
            Vsn::V1,
            r#"{"topic":"t","payload":{},"ref":"1"}"#,
            "missing event",
        ),
        (
            Vsn::V1,
            r#"{"topic":"t","event":"e","ref":"1"}"#,
            "missing payload",
        ),
        (
            Vsn::V1,
            r#"{"topic":"t","event":"e","payload":{},"ref":[1]}"#,
            "ref must be a string or null",
        ),
    ];
    for (vsn, frame, want) in cases {
        let err = decode_text(*vsn, frame).expect_err(frame);
        assert_eq!(err.to_string(), *want, "{frame}");
    }
}

#[test]
fn captured_kind3_frame_decodes_to_a_binary_origin_broadcast() {
    let got = decode_binary(&captured_kind3()).unwrap();
    assert_eq!(
        got,
        Inbound {
            join_ref: Some("6".into()),
            ref_: Some("7".into()),
            topic: "realtime:room1".into(),
            event: "broadcast".into(),
            payload: InboundPayload::Broadcast(json_broadcast(
                "cursor",
                json!({"x":1,"y":2}),
                None,
                true
            )),
        }
    );
}

#[test]
fn kind3_frames_decode_payload_and_metadata() {
    // (frame, payload, meta)
    let cases: Vec<(Vec<u8>, BroadcastPayload, Option<Value>)> = vec![
        (
            kind3("6", "7", "realtime:r", "ev", "", 0, &[0, 255, 1]),
            BroadcastPayload::Binary(Bytes::from_static(&[0, 255, 1])),
            None,
        ),
        (
            kind3("6", "7", "realtime:r", "ev", "", 0, &[]),
            BroadcastPayload::Binary(Bytes::new()),
            None,
        ),
        (
            kind3(
                "6",
                "7",
                "realtime:r",
                "ev",
                r#"{"persist":true}"#,
                1,
                b"[1,2]",
            ),
            BroadcastPayload::Json(json!([1, 2])),
            Some(json!({"persist":true})),
        ),
        (
            kind3("6", "7", "realtime:r", "ev", "{}", 1, b"\"s\""),
            BroadcastPayload::Json(json!("s")),
            None,
        ),
    ];
    for (frame, payload, meta) in cases {
        let got = decode_binary(&frame).unwrap();
        let InboundPayload::Broadcast(b) = got.payload else {
            panic!("not a broadcast: {frame:?}");
        };
        assert_eq!(
            (b.payload, b.meta, b.binary_origin),
            (payload, meta, true),
            "{frame:?}"
        );
    }
}

#[test]
fn a_kind3_json_payload_with_a_lone_surrogate_arrives_with_u_fffd_in_its_place() {
    for (payload, want) in [
        (&br#"{"text":"\ud83d"}"#[..], json!({"text": "\u{fffd}"})),
        (br#"{"text":"a\ude00b"}"#, json!({"text": "a\u{fffd}b"})),
        (
            br#"["\ud83d\ude00","\ud83d\u0041"]"#,
            json!(["😀", "\u{fffd}A"]),
        ),
        (br#"{"\udbff":"\\ud800"}"#, json!({"\u{fffd}": "\\ud800"})),
    ] {
        let got = decode_binary(&kind3("6", "7", "realtime:r", "ev", "", 1, payload)).unwrap();
        let InboundPayload::Broadcast(b) = got.payload else {
            panic!("not a broadcast");
        };
        assert_eq!(b.payload, BroadcastPayload::Json(want), "{payload:?}");
    }
    let broken = kind3("6", "7", "t", "ev", "", 1, br#"{"text":"\ud83d"#);
    assert_eq!(
        decode_binary(&broken).unwrap_err().to_string(),
        "invalid json payload"
    );
}

#[test]
fn kind3_frame_with_empty_refs_has_no_refs() {
    let got = decode_binary(&kind3("", "", "realtime:r", "ev", "", 1, b"{}")).unwrap();
    assert_eq!((got.join_ref, got.ref_), (None, None));
}

#[test]
fn multi_byte_topics_and_events_are_counted_in_bytes() {
    let topic = "realtime:café☕";
    let event = "héllo";
    let frame = kind3("6", "7", topic, event, "", 1, b"{}");
    assert_eq!(frame[3] as usize, topic.len());
    assert_eq!(topic.len(), 17, "café☕ is 4 + 2 + 3 bytes");
    let got = decode_binary(&frame).unwrap();
    assert_eq!(got.topic, topic);
    let InboundPayload::Broadcast(b) = got.payload else {
        panic!("not a broadcast")
    };
    assert_eq!(b.event, event);

    let WireFrame::Binary(out) = encode_broadcast(Vsn::V2, topic, &b).unwrap() else {
        panic!("expected binary")
    };
    assert_eq!(&out[..5], &[4, 17, 6, 0, 1]);
    assert_eq!(
        &out[5..],
        [topic.as_bytes(), event.as_bytes(), b"{}"].concat()
    );
}

#[test]
fn malformed_binary_frames_get_specific_errors() {
    let mut not_utf8_topic = kind3("6", "7", "ab", "ev", "", 1, b"{}");
    not_utf8_topic[9] = 0xff;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "binary frame too short"),
        (vec![3, 1, 1], "binary frame too short"),
        (vec![1, 0, 0, 0, 0], "unsupported binary kind 1"),
        (vec![4, 0, 0, 0, 1], "unsupported binary kind 4"),
        (vec![3, 0, 0, 0, 0, 0, 2], "unsupported payload encoding 2"),
        (captured_kind3()[..10].to_vec(), "binary frame too short"),
        (vec![3, 0, 0, 200, 0, 0, 1, b'a'], "binary frame too short"),
        (not_utf8_topic, "topic is not valid utf-8"),
        (
            kind3("6", "7", "t", "ev", "", 1, b"{\"x\":"),
            "invalid json payload",
        ),
        (
            kind3("6", "7", "t", "ev", "", 1, b""),
            "invalid json payload",
        ),
        (
            kind3("6", "7", "t", "ev", "{", 1, b"{}"),
            "invalid metadata json",
        ),
        (
            kind3("6", "7", "t", "ev", "[1]", 1, b"{}"),
            "metadata must be a json object",
        ),
    ];
    for (frame, want) in cases {
        let err = decode_binary(&frame).expect_err(&format!("{frame:?}"));
        assert_eq!(err.to_string(), want, "{frame:?}");
    }
}

#[test]
fn encode_writes_v1_objects_without_join_ref_and_v2_arrays() {
    // (serializer, join_ref, ref, topic, event, payload, frame)
    type Case<'a> = (
        Vsn,
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
        &'a str,
        Value,
        &'a str,
    );
    let cases: &[Case] = &[
        (
            Vsn::V2,
            Some("6"),
            None,
            "realtime:room1",
            "presence_state",
            json!({}),
            r#"["6",null,"realtime:room1","presence_state",{}]"#,
        ),
        (
            Vsn::V2,
            Some("6"),
            Some("6"),
            "realtime:room1",
            "phx_close",
            json!({}),
            r#"["6","6","realtime:room1","phx_close",{}]"#,
        ),
        (
            Vsn::V1,
            Some("6"),
            Some("6"),
            "realtime:room1",
            "phx_close",
            json!({}),
            r#"{"topic":"realtime:room1","event":"phx_close","payload":{},"ref":"6"}"#,
        ),
        (
            Vsn::V1,
            None,
            None,
            "realtime:room1",
            "postgres_changes",
            json!({"ids":[1]}),
            r#"{"topic":"realtime:room1","event":"postgres_changes","payload":{"ids":[1]},"ref":null}"#,
        ),
        (
            Vsn::V2,
            None,
            None,
            "realtime:\"q\"\n",
            "e",
            json!(null),
            r#"[null,null,"realtime:\"q\"\n","e",null]"#,
        ),
    ];
    for (vsn, join_ref, ref_, topic, event, payload, want) in cases {
        let got = text(encode(*vsn, *join_ref, *ref_, topic, event, payload));
        assert_eq!(got, *want);
    }
}

#[test]
fn heartbeat_replies_echo_the_ref_even_when_null() {
    let empty = json!({});
    assert_eq!(
        text(encode_reply(
            Vsn::V2,
            None,
            Some("10"),
            "phoenix",
            "ok",
            &empty
        )),
        r#"[null,"10","phoenix","phx_reply",{"status":"ok","response":{}}]"#
    );
    assert_eq!(
        text(encode_reply(Vsn::V1, None, None, "phoenix", "ok", &empty)),
        r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":null}"#
    );
}

#[test]
fn join_error_reply_carries_the_reason() {
    let response = ReplyError::TooManyChannels.response();
    assert_eq!(
        text(encode_reply(
            Vsn::V2,
            Some("6"),
            Some("6"),
            "realtime:room1",
            "error",
            &response
        )),
        r#"["6","6","realtime:room1","phx_reply",{"status":"error","response":{"reason":"ChannelRateLimitReached: Too many channels"}}]"#
    );
}

#[test]
fn an_oversized_acked_broadcast_gets_the_payload_size_error() {
    assert_eq!(
        text(encode_reply(
            Vsn::V2,
            Some("6"),
            Some("7"),
            "realtime:r",
            "error",
            &AckError::PayloadTooLarge.response()
        )),
        r#"["6","7","realtime:r","phx_reply",{"status":"error","response":{"error":"payload_size_exceeded"}}]"#
    );
}

#[test]
fn captured_kind4_frame_is_what_a_binary_origin_broadcast_encodes_to() {
    let b = json_broadcast("cursor", json!({"x":1,"y":2}), None, true);
    let want = [
        b"\x04\x0e\x06\x00\x01".as_slice(),
        b"realtime:room1cursor{\"x\":1,\"y\":2}",
    ]
    .concat();
    assert_eq!(
        encode_broadcast(Vsn::V2, "realtime:room1", &b),
        Some(WireFrame::Binary(Bytes::from(want)))
    );
}

#[test]
fn kind3_push_fans_out_as_the_captured_kind4_frame() {
    let InboundPayload::Broadcast(b) = decode_binary(&captured_kind3()).unwrap().payload else {
        panic!("not a broadcast")
    };
    let Some(WireFrame::Binary(out)) = encode_broadcast(Vsn::V2, "realtime:room1", &b) else {
        panic!("expected binary")
    };
    assert_eq!(
        &out[..],
        b"\x04\x0e\x06\x00\x01realtime:room1cursor{\"x\":1,\"y\":2}"
    );
}

#[test]
fn binary_kind4_carries_metadata_and_opaque_payloads() {
    let meta = json_broadcast("ev", json!(1), Some(json!({"id":"a"})), true);
    let want = [b"\x04\x01\x02\x0a\x01".as_slice(), b"tev{\"id\":\"a\"}1"].concat();
    assert_eq!(
        encode_broadcast(Vsn::V2, "t", &meta),
        Some(WireFrame::Binary(want.into()))
    );

    let blob = bin_broadcast(&[0, 1, 255], true);
    let want = [b"\x04\x01\x04\x00\x00".as_slice(), b"tblob", &[0, 1, 255]].concat();
    assert_eq!(
        encode_broadcast(Vsn::V2, "t", &blob),
        Some(WireFrame::Binary(want.into()))
    );
}

#[test]
fn broadcast_text_forms_follow_serializer_and_origin() {
    let long = "x".repeat(256);
    let long_topic = format!("realtime:{long}");
    let plain = json_broadcast("cursor", json!({"x":1}), None, false);
    let with_meta = json_broadcast("INSERT", json!({"a":1}), Some(json!({"id":"u1"})), false);
    let binary_origin = json_broadcast("cursor", json!({"x":1}), None, true);
    let big_meta = json_broadcast("cursor", json!({"x":1}), Some(json!({ "id": long })), true);
    let cases: Vec<(Vsn, &str, &Broadcast, String)> = vec![
        (
            Vsn::V2, "realtime:room1", &plain,
            r#"[null,null,"realtime:room1","broadcast",{"type":"broadcast","event":"cursor","payload":{"x":1}}]"#.into(),
        ),
        (
            Vsn::V2, "realtime:room1", &with_meta,
            r#"[null,null,"realtime:room1","broadcast",{"type":"broadcast","event":"INSERT","payload":{"a":1},"meta":{"id":"u1"}}]"#.into(),
        ),
        (
            Vsn::V1, "realtime:room1", &plain,
            r#"{"topic":"realtime:room1","event":"broadcast","payload":{"type":"broadcast","event":"cursor","payload":{"x":1}},"ref":null}"#.into(),
        ),
        (
            Vsn::V1, "realtime:room1", &binary_origin,
            r#"{"topic":"realtime:room1","event":"broadcast","payload":{"type":"broadcast","event":"cursor","payload":{"x":1}},"ref":null}"#.into(),
        ),
        (
            Vsn::V2, &long_topic, &binary_origin,
            format!(r#"[null,null,"{long_topic}","broadcast",{{"type":"broadcast","event":"cursor","payload":{{"x":1}}}}]"#),
        ),
        (
            Vsn::V2, "t", &big_meta,
            format!(r#"[null,null,"t","broadcast",{{"type":"broadcast","event":"cursor","payload":{{"x":1}},"meta":{{"id":"{long}"}}}}]"#),
        ),
    ];
    for (vsn, topic, b, want) in cases {
        let got = encode_broadcast(vsn, topic, b).map(text);
        assert_eq!(got.as_deref(), Some(want.as_str()), "{vsn:?} {b:?}");
    }
}

#[test]
fn binary_payloads_are_dropped_where_they_cannot_be_carried() {
    let long_topic = format!("realtime:{}", "x".repeat(250));
    let cases: Vec<(Vsn, &str, Broadcast)> = vec![
        (Vsn::V1, "realtime:r", bin_broadcast(b"\x00", true)),
        (Vsn::V1, "realtime:r", bin_broadcast(b"\x00", false)),
        (Vsn::V2, "realtime:r", bin_broadcast(b"\x00", false)),
        (Vsn::V2, &long_topic, bin_broadcast(b"\x00", true)),
    ];
    for (vsn, topic, b) in cases {
        assert_eq!(encode_broadcast(vsn, topic, &b), None, "{vsn:?} {topic}");
    }
}

#[test]
fn header_fields_of_exactly_255_bytes_still_go_binary() {
    let topic = "t".repeat(255);
    let b = json_broadcast(&"e".repeat(255), json!(0), None, true);
    let Some(WireFrame::Binary(out)) = encode_broadcast(Vsn::V2, &topic, &b) else {
        panic!("expected binary")
    };
    assert_eq!(&out[..5], &[4, 255, 255, 0, 1]);
    assert_eq!(out.len(), 5 + 255 + 255 + 1);
}

/// Truncations, byte flips and random bytes must produce `Err`, never a panic.
#[test]
fn decoders_never_panic_on_garbage() {
    let mut rng = StdRng::seed_from_u64(0x005b_0a2d);
    let seeds: Vec<Vec<u8>> = vec![
        captured_kind3(),
        kind3(
            "6",
            "7",
            "realtime:café",
            "ev",
            r#"{"persist":true}"#,
            1,
            b"[1,{\"a\":2}]",
        ),
        kind3("", "", "t", "e", "", 0, &[9; 40]),
        br#"["6","6","realtime:room1","phx_join",{"config":{"broadcast":{"self":true}}}]"#.to_vec(),
        br#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":null,"join_ref":null}"#
            .to_vec(),
    ];
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for seed in &seeds {
        inputs.extend((0..=seed.len()).map(|n| seed[..n].to_vec()));
        for _ in 0..500 {
            let mut m = seed.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..m.len());
                m[i] = rng.random();
            }
            inputs.push(m);
        }
    }
    for _ in 0..3000 {
        let len = rng.random_range(0..64);
        let mut m: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if let Some(first) = m.first_mut() {
            *first = rng.random_range(0..6);
        }
        inputs.push(m);
    }
    inputs.push(vec![b'['; 10_000]);
    inputs.push(vec![3, 255, 255, 255, 255, 255, 1]);
    for input in &inputs {
        let _ = decode_binary(input);
        let _ = rejected_binary(input);
        let s = String::from_utf8_lossy(input);
        for vsn in [Vsn::V1, Vsn::V2] {
            let _ = decode_text(vsn, &s);
            let _ = rejected_text(vsn, &s);
        }
    }
}

/// A payload nested past serde_json's limit is refused as too deep, and the refusal still
/// reaches its push (before, its topic and ref were read with the same limit, so the
/// reply went to `phoenix` with no ref and the client's push timed out).
#[test]
fn a_payload_nested_too_deep_is_refused_on_its_own_topic_and_ref() {
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let v2 = |depth: usize| {
        format!(
            r#"["1","2","realtime:r","broadcast",{{"x":{}}}]"#,
            nested(depth)
        )
    };
    // The frame's array and the payload object are two levels.
    assert!(decode_text(Vsn::V2, &v2(125)).is_ok());
    assert_eq!(decode_text(Vsn::V2, &v2(126)), Err(DecodeError::TooDeep));
    assert_eq!(
        DecodeError::TooDeep.to_string(),
        "invalid json: nested deeper than 127 levels"
    );
    let deep = v2(100_000);
    let r = rejected_text(Vsn::V2, &deep).expect("topic and ref readable");
    assert_eq!(
        (r.ref_.as_deref(), r.topic.as_str(), r.event.as_str()),
        (Some("2"), "realtime:r", "broadcast")
    );
    let v1 = format!(
        r#"{{"topic":"realtime:r","event":"presence","payload":{},"ref":"7"}}"#,
        nested(100_000)
    );
    assert_eq!(decode_text(Vsn::V1, &v1), Err(DecodeError::TooDeep));
    let r = rejected_text(Vsn::V1, &v1).expect("topic and ref readable");
    assert_eq!(
        (r.ref_.as_deref(), r.event.as_str()),
        (Some("7"), "presence")
    );
}

#[test]
fn a_rejected_frame_keeps_its_topic_and_refs_when_they_can_be_read() {
    let v1 = rejected_text(
        Vsn::V1,
        r#"{"topic":"realtime:r","event":"phx_join","ref":3}"#,
    )
    .expect("topic and ref readable");
    assert_eq!(
        (v1.topic.as_str(), v1.ref_.as_deref(), v1.event.as_str()),
        ("realtime:r", Some("3"), "phx_join")
    );
    let v2 = rejected_text(Vsn::V2, r#"["1","2","realtime:r",{}]"#).expect("four elements");
    assert_eq!(
        (
            v2.join_ref.as_deref(),
            v2.ref_.as_deref(),
            v2.event.as_str()
        ),
        (Some("1"), Some("2"), "")
    );
    for (vsn, frame) in [
        (Vsn::V1, r#"{"topic":"realtime:r","event":"phx_join"}"#),
        (Vsn::V1, r#"{"ref":"1","event":"phx_join"}"#),
        (Vsn::V1, r#"["1","2","realtime:r","phx_join",{}]"#),
        (Vsn::V2, r#"["1",null,"realtime:r","e",{}]"#),
        (Vsn::V2, r#"["1","2",42,"e",{}]"#),
        (Vsn::V2, "not json"),
    ] {
        assert_eq!(rejected_text(vsn, frame), None, "{frame}");
    }
    assert_eq!(rejected_binary(&[3, 1, 1, 200, 6, 0, 1, b'6', b'7']), None);
    // Only kind 3 is read with its header (a Phoenix kind-0 push has another).
    let kind0 = [&[0u8, 1, 1, 13, 2][..], b"34realtime:roomev{}"].concat();
    assert_eq!(rejected_binary(&kind0), None);
    let bin = rejected_binary(&kind3("", "9", "realtime:r", "ev", "", 1, b"{x")).unwrap();
    assert_eq!((bin.ref_.as_deref(), bin.join_ref), (Some("9"), None));
}
