//! What nodes say to each other on the cluster channel: one JSON envelope per Redis
//! message, `{"node": <origin>, "msg": {<kind>: {...}}}`. A broadcast's payload stays
//! unparsed (`RawValue`) until a node knows it has members in the topic. Pure: no Redis.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::protocol::{Broadcast, BroadcastPayload};
use crate::router::presence::Tracked;
use crate::router::{MemberId, NodeId, TopicKey};

/// Why a message from another node could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed cluster message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("malformed binary payload: {0}")]
    Base64(#[from] base64::DecodeError),
}

/// One message with the node it came from.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<M> {
    pub node: NodeId,
    /// On heartbeats: the sender's `node_timeout_secs` in milliseconds. A node heartbeats
    /// every fifth of its own timeout, so its peers wait at least that long before they
    /// give it up, whatever their own (nodes restarted with another value in a rolling
    /// deploy). Absent from older nodes' heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    pub msg: M,
}

/// Every message except an outgoing broadcast (see [`encode_broadcast`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Msg<'a> {
    /// "I am alive", every `node_timeout / 5`.
    Heartbeat,
    /// The node is shutting down: drop its presences now.
    Bye,
    /// Send me (or, with `to: None`, everyone) your presences.
    SyncRequest { to: Option<NodeId> },
    /// A full snapshot of the sender's presences follows, topic by topic.
    SyncBegin { sync: u64 },
    /// The sender's presences in one topic, as of now.
    TopicSync {
        sync: u64,
        #[serde(borrow)]
        topic: Topic<'a>,
        entries: Vec<(MemberId, Presence)>,
    },
    /// End of a snapshot: the sender has no presence in topics it did not name.
    SyncEnd { sync: u64 },
    /// One member's presence changed (`None`: it has none now).
    Presence {
        #[serde(borrow)]
        topic: Topic<'a>,
        member: MemberId,
        now: Option<Presence>,
    },
    /// A client's broadcast.
    Broadcast(#[serde(borrow)] BroadcastIn<'a>),
}

/// A topic with its namespace.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Topic<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    pub private: bool,
}

impl Topic<'_> {
    pub fn of(key: &TopicKey) -> Topic<'_> {
        Topic {
            name: Cow::Borrowed(&key.topic),
            private: key.private,
        }
    }

    pub fn key(&self) -> TopicKey {
        TopicKey {
            private: self.private,
            topic: self.name.as_ref().into(),
        }
    }
}

/// A tracked presence on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Presence {
    pub key: String,
    pub phx_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phx_ref_prev: Option<String>,
    pub payload: Map<String, Value>,
}

impl From<&Tracked> for Presence {
    fn from(t: &Tracked) -> Presence {
        Presence {
            key: t.key.clone(),
            phx_ref: t.phx_ref.clone(),
            phx_ref_prev: t.phx_ref_prev.clone(),
            payload: t.payload.clone(),
        }
    }
}

impl From<Presence> for Tracked {
    fn from(p: Presence) -> Tracked {
        Tracked {
            key: p.key,
            phx_ref: p.phx_ref,
            phx_ref_prev: p.phx_ref_prev,
            payload: p.payload,
        }
    }
}

/// A broadcast as received: payload and meta still raw JSON.
#[derive(Debug, Deserialize)]
pub struct BroadcastIn<'a> {
    #[serde(borrow)]
    pub topic: Topic<'a>,
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    /// A JSON payload.
    #[serde(borrow, default)]
    pub json: Option<&'a RawValue>,
    /// A binary payload, base64.
    #[serde(borrow, default)]
    pub binary: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub meta: Option<&'a RawValue>,
    pub binary_origin: bool,
}

/// `BroadcastIn` only ever arrives; it is sent as [`BroadcastOut`].
impl Serialize for BroadcastIn<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        BroadcastOut {
            topic: Topic {
                name: Cow::Borrowed(&self.topic.name),
                private: self.topic.private,
            },
            event: &self.event,
            json: self.json,
            binary: self.binary.as_deref().map(Cow::Borrowed),
            meta: self.meta,
            binary_origin: self.binary_origin,
        }
        .serialize(s)
    }
}

impl BroadcastIn<'_> {
    /// The broadcast to fan out (parses the payload).
    pub fn to_broadcast(&self) -> Result<Broadcast, WireError> {
        let payload = match (&self.binary, self.json) {
            (Some(b64), _) => BroadcastPayload::Binary(BASE64.decode(b64.as_bytes())?.into()),
            (None, Some(raw)) => BroadcastPayload::Json(serde_json::from_str(raw.get())?),
            (None, None) => BroadcastPayload::Json(Value::Null),
        };
        let meta = match self.meta {
            Some(raw) => Some(serde_json::from_str(raw.get())?),
            None => None,
        };
        Ok(Broadcast {
            event: self.event.clone().into_owned(),
            payload,
            meta,
            binary_origin: self.binary_origin,
        })
    }
}

#[derive(Serialize)]
struct BroadcastOut<'a, J: Serialize> {
    topic: Topic<'a>,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    json: Option<J>,
    #[serde(skip_serializing_if = "Option::is_none")]
    binary: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<J>,
    binary_origin: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum OutMsg<'a> {
    Broadcast(BroadcastOut<'a, &'a Value>),
}

/// Encodes a message from `node`.
pub fn encode(node: NodeId, msg: &Msg<'_>) -> Vec<u8> {
    let envelope = Envelope {
        node,
        timeout_ms: None,
        msg,
    };
    serde_json::to_vec(&envelope).expect("cluster messages always serialize")
}

/// Encodes `node`'s heartbeat, which tells its `node_timeout`.
pub fn encode_heartbeat(node: NodeId, node_timeout: std::time::Duration) -> Vec<u8> {
    let envelope = Envelope {
        node,
        timeout_ms: Some(node_timeout.as_millis() as u64),
        msg: &Msg::Heartbeat,
    };
    serde_json::to_vec(&envelope).expect("heartbeats always serialize")
}

/// Encodes a client broadcast from `node`; its payload is serialized once, here.
pub fn encode_broadcast(node: NodeId, key: &TopicKey, b: &Broadcast) -> Vec<u8> {
    let (json, binary) = match &b.payload {
        BroadcastPayload::Json(v) => (Some(v), None),
        BroadcastPayload::Binary(bytes) => (None, Some(Cow::Owned(BASE64.encode(bytes)))),
    };
    let msg = OutMsg::Broadcast(BroadcastOut {
        topic: Topic::of(key),
        event: &b.event,
        json,
        binary,
        meta: b.meta.as_ref(),
        binary_origin: b.binary_origin,
    });
    let envelope = Envelope {
        node,
        timeout_ms: None,
        msg,
    };
    serde_json::to_vec(&envelope).expect("broadcasts always serialize")
}

/// Decodes one Redis message; borrowed from `bytes` where it can be.
pub fn decode(bytes: &[u8]) -> Result<Envelope<Msg<'_>>, WireError> {
    Ok(serde_json::from_slice(bytes)?)
}

/// How this node's own messages start, to skip them unparsed when they come back.
pub struct Own {
    /// `{"node":<id>,`
    pub prefix: Vec<u8>,
    /// This node's heartbeat, exactly as encoded.
    pub heartbeat: Vec<u8>,
}

impl Own {
    pub fn of(node: NodeId, node_timeout: std::time::Duration) -> Own {
        Own {
            prefix: format!("{{\"node\":{},", node.0).into_bytes(),
            heartbeat: encode_heartbeat(node, node_timeout),
        }
    }
}

impl Msg<'_> {
    /// Its label in the cluster metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Heartbeat => "heartbeat",
            Msg::Bye => "bye",
            Msg::SyncRequest { .. } => "sync_request",
            Msg::SyncBegin { .. } | Msg::TopicSync { .. } | Msg::SyncEnd { .. } => "sync",
            Msg::Presence { .. } => "presence",
            Msg::Broadcast(_) => "broadcast",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str, private: bool) -> TopicKey {
        TopicKey {
            private,
            topic: name.into(),
        }
    }

    #[test]
    fn a_json_broadcast_arrives_as_sent() {
        let b = Broadcast {
            event: "typing".into(),
            payload: BroadcastPayload::Json(json!({"text": "h\u{e9}llo \"x\"", "n": [1, 2]})),
            meta: Some(json!({"id": "abc"})),
            binary_origin: false,
        };
        let bytes = encode_broadcast(NodeId(42), &key("realtime:room", true), &b);
        let env = decode(&bytes).unwrap();
        assert_eq!(env.node, NodeId(42));
        let Msg::Broadcast(got) = env.msg else {
            panic!("not a broadcast: {:?}", env.msg)
        };
        assert_eq!(got.topic.key(), key("realtime:room", true));
        assert_eq!(got.to_broadcast().unwrap(), b);
    }

    #[test]
    fn a_binary_broadcast_arrives_byte_for_byte() {
        let b = Broadcast {
            event: "blob".into(),
            payload: BroadcastPayload::Binary(vec![0u8, 255, 10, 13].into()),
            meta: None,
            binary_origin: true,
        };
        let bytes = encode_broadcast(NodeId(1), &key("realtime:b", false), &b);
        let Msg::Broadcast(got) = decode(&bytes).unwrap().msg else {
            panic!("not a broadcast")
        };
        assert_eq!(got.to_broadcast().unwrap(), b);
    }

    #[test]
    fn presence_and_sync_messages_round_trip() {
        let p = Presence {
            key: "alice".into(),
            phx_ref: "F1".into(),
            phx_ref_prev: None,
            payload: json!({"online_at": 1}).as_object().unwrap().clone(),
        };
        let k = key("realtime:escaped \"topic\"", false);
        for msg in [
            Msg::Heartbeat,
            Msg::Bye,
            Msg::SyncRequest {
                to: Some(NodeId(9)),
            },
            Msg::SyncBegin { sync: 3 },
            Msg::TopicSync {
                sync: 3,
                topic: Topic::of(&k),
                entries: vec![(5, p.clone())],
            },
            Msg::SyncEnd { sync: 3 },
            Msg::Presence {
                topic: Topic::of(&k),
                member: 5,
                now: Some(p.clone()),
            },
            Msg::Presence {
                topic: Topic::of(&k),
                member: 5,
                now: None,
            },
        ] {
            let bytes = encode(NodeId(u64::MAX), &msg);
            let env = decode(&bytes).unwrap();
            assert_eq!(env.node, NodeId(u64::MAX));
            assert_eq!(format!("{:?}", env.msg), format!("{msg:?}"));
        }
    }

    #[test]
    fn own_messages_are_recognised_by_their_first_bytes() {
        let own = Own::of(NodeId(12), std::time::Duration::from_secs(10));
        let b = Broadcast {
            event: "e".into(),
            payload: BroadcastPayload::Json(json!({})),
            meta: None,
            binary_origin: false,
        };
        let mine = encode_broadcast(NodeId(12), &key("realtime:x", false), &b);
        assert!(mine.starts_with(&own.prefix));
        let theirs = encode_broadcast(NodeId(123), &key("realtime:x", false), &b);
        assert!(!theirs.starts_with(&own.prefix));
        assert!(own.heartbeat.starts_with(&own.prefix));
        let beat = decode(&own.heartbeat).unwrap();
        assert!(matches!(beat.msg, Msg::Heartbeat));
        assert_eq!(beat.timeout_ms, Some(10_000));
        // An older node's heartbeat, without its timeout, is read as before.
        let old = decode(br#"{"node":3,"msg":"heartbeat"}"#).unwrap();
        assert_eq!(
            (old.timeout_ms, matches!(old.msg, Msg::Heartbeat)),
            (None, true)
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"not json").is_err());
        assert!(decode(br#"{"node":1,"msg":{"unknown":{}}}"#).is_err());
    }
}
