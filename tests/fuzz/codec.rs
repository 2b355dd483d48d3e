//! The v1 and v2 codecs: arbitrary text and binary frames decode or fail with a
//! `DecodeError`; well-formed frames (kind 3 with honest lengths) decode to exactly what
//! was put in, lying lengths are refused, and every kind-4 frame the hub encodes has
//! header lengths that add up to its body.

use proptest::prelude::*;
use serde_json::{json, Value};
use switchboard::protocol::{
    decode_binary, decode_text, encode, encode_broadcast, Broadcast, BroadcastPayload,
    InboundPayload, Vsn, WireFrame,
};

use super::{assert_clear, config};

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Text frames: JSON of any shape, near-miss v1/v2 frames, and arbitrary text.
fn text_frame() -> impl Strategy<Value = String> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string()),
        (
            json_value(),
            json_value(),
            json_value(),
            json_value(),
            json_value()
        )
            .prop_map(|(a, b, c, d, e)| json!([a, b, c, d, e]).to_string()),
        (json_value(), json_value(), json_value(), json_value()).prop_map(|(a, b, c, d)| {
            json!({"topic": a, "event": b, "payload": c, "ref": d}).to_string()
        }),
        ".{0,64}",
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// Fields of a kind-3 frame and lengths that may lie about them.
#[derive(Debug, Clone)]
struct Kind3 {
    fields: [Vec<u8>; 5],
    encoding: u8,
    payload: Vec<u8>,
    /// Per field: `None` honest, `Some(n)` the header says `n` instead.
    lies: [Option<u8>; 5],
}

impl Kind3 {
    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![3u8];
        for (f, lie) in self.fields.iter().zip(&self.lies) {
            out.push(lie.unwrap_or(f.len() as u8));
        }
        out.push(self.encoding);
        for f in &self.fields {
            out.extend_from_slice(f);
        }
        out.extend_from_slice(&self.payload);
        out
    }

    fn honest(&self) -> bool {
        self.lies
            .iter()
            .zip(&self.fields)
            .all(|(lie, f)| lie.is_none_or(|n| usize::from(n) == f.len()))
    }
}

fn field() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z:0-9]{0,20}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..20),
    ]
}

fn kind3() -> impl Strategy<Value = Kind3> {
    let meta = prop_oneof![
        Just(Vec::new()),
        Just(b"{}".to_vec()),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        field(),
    ];
    let payload = prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    (
        (field(), field(), field(), field(), meta),
        prop_oneof![Just(0u8), Just(1u8), any::<u8>()],
        payload,
        prop::array::uniform5(prop::option::weighted(0.3, any::<u8>())),
    )
        .prop_map(|((a, b, c, d, e), encoding, payload, lies)| Kind3 {
            fields: [a, b, c, d, e],
            encoding,
            payload,
            lies,
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_text_frame_decodes_or_is_refused_clearly(text in text_frame()) {
        for vsn in [Vsn::V1, Vsn::V2] {
            match decode_text(vsn, &text) {
                Ok(m) => prop_assert!(matches!(m.payload, InboundPayload::Json(_))),
                Err(e) => assert_clear(&e.to_string()),
            }
        }
    }

    #[test]
    fn any_binary_frame_decodes_or_is_refused_clearly(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        match decode_binary(&bytes) {
            Ok(_) => prop_assert_eq!(bytes[0], 3),
            Err(e) => assert_clear(&e.to_string()),
        }
    }

    #[test]
    fn kind3_frames_decode_exactly_and_lying_lengths_are_refused(f in kind3()) {
        let bytes = f.bytes();
        let decoded = decode_binary(&bytes);
        if !f.honest() {
            // A lie either runs past the frame or shifts the fields; it may only decode
            // when the shifted bytes happen to form a valid frame too.
            if let Err(e) = &decoded {
                assert_clear(&e.to_string());
            }
            return Ok(());
        }
        let utf8 = f.fields[..4].iter().all(|x| std::str::from_utf8(x).is_ok());
        let meta_ok = f.fields[4].is_empty()
            || serde_json::from_slice::<Value>(&f.fields[4]).is_ok_and(|v| v.is_object());
        let payload_ok = match f.encoding {
            0 => true,
            1 => serde_json::from_slice::<Value>(&f.payload).is_ok(),
            _ => false,
        };
        match decoded {
            Ok(m) => {
                prop_assert!(utf8 && meta_ok && payload_ok, "accepted a bad frame: {:?}", f);
                let text = |i: usize| String::from_utf8(f.fields[i].clone()).unwrap();
                prop_assert_eq!(m.join_ref, Some(text(0)).filter(|s| !s.is_empty()));
                prop_assert_eq!(m.ref_, Some(text(1)).filter(|s| !s.is_empty()));
                prop_assert_eq!(m.topic, text(2));
                let InboundPayload::Broadcast(b) = m.payload else {
                    panic!("kind 3 decodes to a broadcast");
                };
                prop_assert_eq!(b.event, text(3));
                match b.payload {
                    BroadcastPayload::Binary(p) => prop_assert_eq!(&p[..], &f.payload[..]),
                    BroadcastPayload::Json(v) => {
                        prop_assert_eq!(v, serde_json::from_slice::<Value>(&f.payload).unwrap())
                    }
                }
            }
            Err(e) => {
                prop_assert!(!(utf8 && meta_ok && payload_ok), "refused a good frame {:?}: {}", f, e);
                assert_clear(&e.to_string());
            }
        }
    }

    #[test]
    fn kind4_frames_say_exactly_how_long_their_parts_are(
        topic in ".{0,300}",
        event in ".{0,300}",
        meta in prop::option::of(json_value()),
        payload in prop_oneof![
            json_value().prop_map(BroadcastPayload::Json),
            prop::collection::vec(any::<u8>(), 0..64)
                .prop_map(|b| BroadcastPayload::Binary(b.into())),
        ],
    ) {
        let meta = meta.filter(Value::is_object);
        let b = Broadcast { event: event.clone(), payload: payload.clone(), meta: meta.clone(), binary_origin: true };
        match encode_broadcast(Vsn::V2, &topic, &b) {
            Some(WireFrame::Binary(frame)) => {
                prop_assert_eq!(frame[0], 4);
                let (t, e, m) = (frame[1] as usize, frame[2] as usize, frame[3] as usize);
                let body = &frame[5..];
                prop_assert!(body.len() >= t + e + m, "header lengths exceed the frame");
                prop_assert_eq!(&body[..t], topic.as_bytes());
                prop_assert_eq!(&body[t..t + e], event.as_bytes());
                let meta_bytes = &body[t + e..t + e + m];
                match &meta {
                    Some(v) => prop_assert_eq!(serde_json::from_slice::<Value>(meta_bytes).unwrap(), v.clone()),
                    None => prop_assert!(meta_bytes.is_empty()),
                }
                let rest = &body[t + e + m..];
                match &payload {
                    BroadcastPayload::Binary(p) => {
                        prop_assert_eq!(frame[4], 0);
                        prop_assert_eq!(rest, &p[..]);
                    }
                    BroadcastPayload::Json(v) => {
                        prop_assert_eq!(frame[4], 1);
                        prop_assert_eq!(serde_json::from_slice::<Value>(rest).unwrap(), v.clone());
                    }
                }
            }
            Some(WireFrame::Text(text)) => {
                // Header fields too long for a byte: the text form, for JSON payloads only.
                prop_assert!(matches!(payload, BroadcastPayload::Json(_)));
                let v: Value = serde_json::from_slice(&text).unwrap();
                prop_assert_eq!(&v[2], &json!(topic));
                prop_assert_eq!(&v[4]["event"], &json!(event));
            }
            None => {
                prop_assert!(matches!(payload, BroadcastPayload::Binary(_)));
                let meta_len = meta.as_ref().map_or(0, |m| m.to_string().len());
                prop_assert!(topic.len() > 255 || event.len() > 255 || meta_len > 255);
            }
        }
    }

    #[test]
    fn encoded_frames_decode_back_in_both_serializers(
        topic in ".{0,40}", event in ".{0,20}", payload in json_value(),
        join_ref in prop::option::of("[0-9]{1,4}"), r in prop::option::of("[0-9]{1,4}"),
    ) {
        for vsn in [Vsn::V1, Vsn::V2] {
            let WireFrame::Text(bytes) = encode(vsn, join_ref.as_deref(), r.as_deref(), &topic, &event, &payload) else {
                panic!("encode gives text");
            };
            let back = decode_text(vsn, std::str::from_utf8(&bytes).unwrap()).unwrap();
            prop_assert_eq!(&back.topic, &topic);
            prop_assert_eq!(&back.event, &event);
            prop_assert_eq!(&back.ref_, &r);
            prop_assert_eq!(back.payload, InboundPayload::Json(payload.clone()));
            if vsn == Vsn::V2 {
                prop_assert_eq!(&back.join_ref, &join_ref);
            }
        }
    }
}
