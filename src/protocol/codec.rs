//! Encoding and decoding of frames for both serializers: v1 (JSON object), v2 (JSON array)
//! and the v2 binary broadcast frames (kind 3 in, kind 4 out). Encoders write straight into
//! one buffer with `serde_json::to_writer`; decoders never panic, whatever the input.

use std::collections::HashMap;

use super::{Broadcast, BroadcastPayload, Inbound, InboundPayload, Vsn, WireFrame};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

/// Why a client frame (or the `vsn` query parameter) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported vsn {0:?}")]
    UnsupportedVsn(String),
    #[error("invalid json")]
    InvalidJson,
    /// serde_json's reader stops at 128 levels (a payload of 127 nested arrays or
    /// objects is read; one more is not).
    #[error("invalid json: nested deeper than 127 levels")]
    TooDeep,
    #[error("expected a json object")]
    ExpectedObject,
    #[error("expected a 5-element array")]
    ExpectedArray,
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("{0} must be a string")]
    NotAString(&'static str),
    #[error("{0} must be a string or null")]
    InvalidRef(&'static str),
    #[error("binary frame too short")]
    BinaryTooShort,
    #[error("unsupported binary kind {0}")]
    UnsupportedKind(u8),
    #[error("unsupported payload encoding {0}")]
    UnsupportedEncoding(u8),
    #[error("{0} is not valid utf-8")]
    NotUtf8(&'static str),
    #[error("invalid metadata json")]
    InvalidMetadata,
    #[error("metadata must be a json object")]
    MetadataNotObject,
    #[error("invalid json payload")]
    InvalidPayloadJson,
}

/// Binary frame kind of a user broadcast push, client -> server.
const KIND_USER_BROADCAST_PUSH: u8 = 3;
/// Binary frame kind of a user broadcast, server -> client.
const KIND_USER_BROADCAST: u8 = 4;
/// `encoding` byte: payload is opaque bytes.
const ENCODING_BINARY: u8 = 0;
/// `encoding` byte: payload is JSON text.
const ENCODING_JSON: u8 = 1;
/// Header of a kind-3 frame: kind, five lengths (join_ref, ref, topic, event, metadata), encoding.
const KIND3_HEADER: usize = 7;
/// Header of a kind-4 frame: kind, len(topic), len(event), len(metadata), encoding.
const KIND4_HEADER: usize = 5;

impl Vsn {
    /// Serializer for the `vsn` query parameter: absent or `1.x` is v1, `2.x` is v2.
    pub fn from_query(v: Option<&str>) -> Result<Vsn, DecodeError> {
        let Some(v) = v else { return Ok(Vsn::V1) };
        let major = v.split('.').next().unwrap_or_default();
        match major {
            "1" => Ok(Vsn::V1),
            "2" => Ok(Vsn::V2),
            _ => Err(DecodeError::UnsupportedVsn(v.chars().take(32).collect())),
        }
    }
}

/// Decodes a text frame in the connection's serializer.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<Inbound, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| json_error(&e))?;
    match vsn {
        Vsn::V1 => decode_v1(value),
        Vsn::V2 => decode_v2(value),
    }
}

fn decode_v1(value: Value) -> Result<Inbound, DecodeError> {
    let Value::Object(mut map) = value else {
        return Err(DecodeError::ExpectedObject);
    };
    let topic = required_string(map.remove("topic"), "topic")?;
    let event = required_string(map.remove("event"), "event")?;
    let payload = map
        .remove("payload")
        .ok_or(DecodeError::Missing("payload"))?;
    Ok(Inbound {
        join_ref: optional_ref(map.remove("join_ref"), "join_ref")?,
        ref_: optional_ref(map.remove("ref"), "ref")?,
        topic,
        event,
        payload: InboundPayload::Json(payload),
    })
}

fn decode_v2(value: Value) -> Result<Inbound, DecodeError> {
    let Value::Array(mut items) = value else {
        return Err(DecodeError::ExpectedArray);
    };
    // Elements past the fifth are ignored, as Phoenix's decoder ignores them.
    items.truncate(5);
    let Ok([join_ref, ref_, topic, event, payload]) = <[Value; 5]>::try_from(items) else {
        return Err(DecodeError::ExpectedArray);
    };
    Ok(Inbound {
        join_ref: optional_ref(Some(join_ref), "join_ref")?,
        ref_: optional_ref(Some(ref_), "ref")?,
        topic: required_string(Some(topic), "topic")?,
        event: required_string(Some(event), "event")?,
        payload: InboundPayload::Json(payload),
    })
}

fn required_string(value: Option<Value>, field: &'static str) -> Result<String, DecodeError> {
    match value {
        None => Err(DecodeError::Missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(DecodeError::NotAString(field)),
    }
}

/// A ref may be absent, null, a string, or (from lenient clients) a number.
fn optional_ref(value: Option<Value>, field: &'static str) -> Result<Option<String>, DecodeError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(DecodeError::InvalidRef(field)),
    }
}

/// A kind-3 frame cut at its header's lengths, nothing checked but the kind and the
/// lengths: join_ref, ref, topic, event and metadata, the encoding byte, the payload.
struct Kind3<'a> {
    fields: [&'a [u8]; 5],
    encoding: u8,
    payload: &'a [u8],
}

fn split_kind3(frame: &[u8]) -> Result<Kind3<'_>, DecodeError> {
    let kind = *frame.first().ok_or(DecodeError::BinaryTooShort)?;
    if kind != KIND_USER_BROADCAST_PUSH {
        return Err(DecodeError::UnsupportedKind(kind));
    }
    let header = frame
        .get(..KIND3_HEADER)
        .ok_or(DecodeError::BinaryTooShort)?;
    let mut rest = &frame[KIND3_HEADER..];
    let mut fields: [&[u8]; 5] = [&[]; 5];
    for (field, &len) in fields.iter_mut().zip(&header[1..6]) {
        let (head, tail) = rest
            .split_at_checked(usize::from(len))
            .ok_or(DecodeError::BinaryTooShort)?;
        *field = head;
        rest = tail;
    }
    Ok(Kind3 {
        fields,
        encoding: header[6],
        payload: rest,
    })
}

/// Decodes a binary frame; only kind 3 (user broadcast push) is accepted.
pub fn decode_binary(frame: &[u8]) -> Result<Inbound, DecodeError> {
    let Kind3 {
        fields: [join_ref, ref_, topic, event, meta],
        encoding,
        payload: rest,
    } = split_kind3(frame)?;
    if encoding != ENCODING_BINARY && encoding != ENCODING_JSON {
        return Err(DecodeError::UnsupportedEncoding(encoding));
    }
    let join_ref = utf8(join_ref, "join_ref")?;
    let ref_ = utf8(ref_, "ref")?;
    let topic = utf8(topic, "topic")?;
    let event = utf8(event, "event")?;
    let meta = decode_metadata(meta)?;
    let payload = if encoding == ENCODING_JSON {
        let value = match serde_json::from_slice(rest) {
            Ok(value) => value,
            // JavaScript strings may hold a lone surrogate (text cut through an emoji), and
            // realtime-js's JSON.stringify writes it as an escape that Supabase forwards
            // unread; serde refuses it, so it becomes U+FFFD rather than losing the message.
            Err(_) => without_lone_surrogates(rest)
                .and_then(|fixed| serde_json::from_slice(&fixed).ok())
                .ok_or(DecodeError::InvalidPayloadJson)?,
        };
        BroadcastPayload::Json(value)
    } else {
        BroadcastPayload::Binary(Bytes::copy_from_slice(rest))
    };
    Ok(Inbound {
        join_ref: non_empty(join_ref),
        ref_: non_empty(ref_),
        topic: topic.to_owned(),
        event: "broadcast".to_owned(),
        payload: InboundPayload::Broadcast(Broadcast {
            event: event.to_owned(),
            payload,
            meta,
            binary_origin: true,
        }),
    })
}

/// `json` with every `\uXXXX` escape of a lone UTF-16 surrogate written as `\ufffd`;
/// `None` when it holds none (nothing to mend).
fn without_lone_surrogates(json: &[u8]) -> Option<Vec<u8>> {
    let escape_at = |i: usize| -> Option<u16> {
        let hex = json.get(i + 2..i + 6)?;
        (json[i] == b'\\' && json.get(i + 1) == Some(&b'u'))
            .then(|| u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
            .flatten()
    };
    let mut out = Vec::with_capacity(json.len());
    let (mut i, mut mended) = (0, false);
    while i < json.len() {
        if json[i] != b'\\' {
            out.push(json[i]);
            i += 1;
            continue;
        }
        match escape_at(i) {
            Some(0xd800..=0xdbff)
                if escape_at(i + 6).is_some_and(|low| (0xdc00..=0xdfff).contains(&low)) =>
            {
                out.extend_from_slice(&json[i..i + 12]);
                i += 12;
            }
            Some(0xd800..=0xdfff) => {
                out.extend_from_slice(b"\\ufffd");
                mended = true;
                i += 6;
            }
            _ => {
                // Any other escape: copy it whole, so `\\u` is never read as one.
                out.extend_from_slice(&json[i..(i + 2).min(json.len())]);
                i += 2;
            }
        }
    }
    mended.then_some(out)
}

fn utf8<'a>(bytes: &'a [u8], field: &'static str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8(field))
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// Metadata is empty or a JSON object; an empty object counts as no metadata.
fn decode_metadata(bytes: &[u8]) -> Result<Option<Value>, DecodeError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    match serde_json::from_slice(bytes).map_err(|_| DecodeError::InvalidMetadata)? {
        Value::Object(map) if map.is_empty() => Ok(None),
        obj @ Value::Object(_) => Ok(Some(obj)),
        _ => Err(DecodeError::MetadataNotObject),
    }
}

/// `TooDeep` for serde_json's depth limit, else `InvalidJson`.
pub fn json_error(e: &serde_json::Error) -> DecodeError {
    // serde_json names no error code for its depth limit; its message is stable.
    if e.to_string().starts_with("recursion limit exceeded") {
        DecodeError::TooDeep
    } else {
        DecodeError::InvalidJson
    }
}

/// What a text frame that failed to decode still says about the push it was: its topic,
/// refs and event, when a topic and a ref can be read. The error reply then reaches the
/// push that caused it, instead of the push timing out on the client. The payload is null.
/// Only the frame's top level is read into values (its members are kept as raw text,
/// which serde_json skips over without a depth limit), so a payload nested too deep to
/// decode still has its reply reach the push.
pub fn rejected_text(vsn: Vsn, text: &str) -> Option<Inbound> {
    use serde_json::value::RawValue;
    let raw: Vec<(String, &RawValue)> = match vsn {
        Vsn::V1 => serde_json::from_str::<HashMap<String, &RawValue>>(text)
            .ok()?
            .into_iter()
            .collect(),
        Vsn::V2 => serde_json::from_str::<Vec<&RawValue>>(text)
            .ok()?
            .into_iter()
            .take(4)
            .enumerate()
            .map(|(i, v)| (["join_ref", "ref", "topic", "event"][i].to_owned(), v))
            .collect(),
    };
    let field = |name: &str| -> Option<Value> {
        let (_, v) = raw.iter().find(|(k, _)| k == name)?;
        serde_json::from_str(v.get()).ok()
    };
    let (topic, event) = (field("topic"), field("event"));
    rejected(
        field("join_ref"),
        field("ref"),
        topic.as_ref().and_then(Value::as_str),
        event.as_ref().and_then(Value::as_str),
    )
}

/// The same for a binary frame: its refs and topic, read from the kind-3 header.
pub fn rejected_binary(frame: &[u8]) -> Option<Inbound> {
    let [join_ref, ref_, topic, ..] = split_kind3(frame).ok()?.fields;
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
    let as_value = |s: String| (!s.is_empty()).then_some(Value::String(s));
    rejected(
        text(join_ref).and_then(as_value),
        text(ref_).and_then(as_value),
        text(topic).as_deref(),
        Some("broadcast"),
    )
}

fn rejected(
    join_ref: Option<Value>,
    ref_: Option<Value>,
    topic: Option<&str>,
    event: Option<&str>,
) -> Option<Inbound> {
    let ref_ = optional_ref(ref_, "ref").ok()??;
    Some(Inbound {
        join_ref: optional_ref(join_ref, "join_ref").ok().flatten(),
        ref_: Some(ref_),
        topic: topic?.to_owned(),
        event: event.unwrap_or_default().to_owned(),
        payload: InboundPayload::Json(Value::Null),
    })
}

/// Serialized length of a JSON value, without building the text (size limits).
pub fn encoded_len<T: serde::Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// v1 frame, server -> client: Phoenix's V1 serializer never emits `join_ref`.
#[derive(Serialize)]
struct V1Frame<'a, P: ?Sized> {
    topic: &'a str,
    event: &'a str,
    payload: &'a P,
    #[serde(rename = "ref")]
    ref_: Option<&'a str>,
}

/// Encodes a server -> client message as a text frame.
///
/// A payload whose `Serialize` impl fails (a bug: e.g. a map with non-string keys) is sent
/// as `null` rather than taking the connection down.
pub fn encode(
    vsn: Vsn,
    join_ref: Option<&str>,
    ref_: Option<&str>,
    topic: &str,
    event: &str,
    payload: &impl Serialize,
) -> WireFrame {
    encode_sized(vsn, join_ref, ref_, topic, event, payload, 0)
}

/// `encode` for a payload whose JSON is about `payload_len` bytes: the frame's buffer is
/// allocated once at its final size instead of growing while the payload is written.
pub fn encode_sized(
    vsn: Vsn,
    join_ref: Option<&str>,
    ref_: Option<&str>,
    topic: &str,
    event: &str,
    payload: &impl Serialize,
    payload_len: usize,
) -> WireFrame {
    let mut buf = Vec::with_capacity(64 + topic.len() + event.len() + payload_len);
    if write_frame(&mut buf, vsn, join_ref, ref_, topic, event, payload).is_err() {
        debug_assert!(false, "payload for {event} on {topic} failed to serialize");
        buf.clear();
        write_frame(&mut buf, vsn, join_ref, ref_, topic, event, &Value::Null)
            .expect("frames of strings and null always serialize");
    }
    WireFrame::Text(Bytes::from(buf))
}

fn write_frame<P: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    vsn: Vsn,
    join_ref: Option<&str>,
    ref_: Option<&str>,
    topic: &str,
    event: &str,
    payload: &P,
) -> serde_json::Result<()> {
    match vsn {
        Vsn::V1 => serde_json::to_writer(
            buf,
            &V1Frame {
                topic,
                event,
                payload,
                ref_,
            },
        ),
        Vsn::V2 => serde_json::to_writer(buf, &(join_ref, ref_, topic, event, payload)),
    }
}

/// `phx_reply` payload.
#[derive(Serialize)]
struct Reply<'a, R: ?Sized> {
    status: &'a str,
    response: &'a R,
}

/// Encodes a `phx_reply` with payload `{"status": status, "response": response}`.
pub fn encode_reply(
    vsn: Vsn,
    join_ref: Option<&str>,
    ref_: Option<&str>,
    topic: &str,
    status: &str,
    response: &impl Serialize,
) -> WireFrame {
    let reply = Reply { status, response };
    encode(vsn, join_ref, ref_, topic, "phx_reply", &reply)
}

/// Text-form broadcast payload: `{"type":"broadcast","event":E,"payload":P[,"meta":M]}`.
#[derive(Serialize)]
struct BroadcastBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event: &'a str,
    payload: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Value>,
}

/// Encodes a broadcast for one serializer, or `None` when it cannot be delivered to it
/// (binary payload to v1, or a binary payload whose header fields exceed 255 bytes).
///
/// v2 receivers get a kind-4 binary frame when the broadcast is of binary origin; everyone
/// else gets the text form `[null,null,topic,"broadcast",{..}]` / its v1 object.
pub fn encode_broadcast(vsn: Vsn, topic: &str, b: &Broadcast) -> Option<WireFrame> {
    encode_channel_broadcast(vsn, None, topic, b)
}

/// [`encode_broadcast`] for a broadcast the channel itself pushes (a replayed message):
/// text frames carry the channel's `join_ref`.
pub fn encode_channel_broadcast(
    vsn: Vsn,
    join_ref: Option<&str>,
    topic: &str,
    b: &Broadcast,
) -> Option<WireFrame> {
    if vsn == Vsn::V2 && b.binary_origin {
        if let Some(frame) = encode_kind4(topic, b) {
            return Some(WireFrame::Binary(Bytes::from(frame)));
        }
    }
    let BroadcastPayload::Json(payload) = &b.payload else {
        return None;
    };
    let body = BroadcastBody {
        kind: "broadcast",
        event: &b.event,
        payload,
        meta: b.meta.as_ref(),
    };
    Some(encode(vsn, join_ref, None, topic, "broadcast", &body))
}

/// `u8 4 | len(topic) | len(event) | len(metadata) | encoding | topic | event | metadata |
/// payload`; `None` when a header field exceeds 255 bytes.
fn encode_kind4(topic: &str, b: &Broadcast) -> Option<Vec<u8>> {
    let topic_len = u8::try_from(topic.len()).ok()?;
    let event_len = u8::try_from(b.event.len()).ok()?;
    let (encoding, payload_len) = match &b.payload {
        BroadcastPayload::Json(_) => (ENCODING_JSON, 64),
        BroadcastPayload::Binary(bytes) => (ENCODING_BINARY, bytes.len()),
    };
    let mut buf = Vec::with_capacity(KIND4_HEADER + topic.len() + b.event.len() + payload_len);
    buf.extend_from_slice(&[KIND_USER_BROADCAST, topic_len, event_len, 0, encoding]);
    buf.extend_from_slice(topic.as_bytes());
    buf.extend_from_slice(b.event.as_bytes());
    if let Some(meta) = &b.meta {
        let start = buf.len();
        serde_json::to_writer(&mut buf, meta).ok()?;
        buf[3] = u8::try_from(buf.len() - start).ok()?;
    }
    match &b.payload {
        BroadcastPayload::Json(value) => serde_json::to_writer(&mut buf, value).ok()?,
        BroadcastPayload::Binary(bytes) => buf.extend_from_slice(bytes),
    }
    Some(buf)
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
