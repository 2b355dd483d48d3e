//! The Phoenix / Supabase Realtime wire protocol: frame types, the v1 (JSON object) and
//! v2 (JSON array + binary broadcast) serializers, and every text a client can see
//! (`texts`). Pure: no sockets, no tokio, no Postgres.

use bytes::Bytes;
use serde_json::Value;

/// Serializer chosen per connection from the `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vsn {
    /// `1.0.0` (and the default when `vsn` is absent): JSON objects, no `join_ref` out.
    V1,
    /// `2.0.0`: JSON arrays `[join_ref, ref, topic, event, payload]` plus binary broadcasts.
    V2,
}

/// A frame ready for the socket. Cloning is cheap (shared bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireFrame {
    /// UTF-8 JSON text.
    Text(Bytes),
    Binary(Bytes),
}

/// How a broadcast payload is carried.
#[derive(Debug, Clone, PartialEq)]
pub enum BroadcastPayload {
    /// JSON payload (text frames, or binary frames with encoding 1).
    Json(Value),
    /// Opaque bytes (binary frames with encoding 0); not deliverable to v1 sockets.
    Binary(Bytes),
}

/// A user broadcast, as received from a client, REST or SQL, and as fanned out.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    pub event: String,
    pub payload: BroadcastPayload,
    /// Metadata object (`{"id": ...}` for SQL-originated broadcasts); `None` when empty.
    pub meta: Option<Value>,
    /// True when it arrived as a kind-3 binary frame or from the database: v2 receivers
    /// then get kind-4 binary frames; otherwise they get text.
    pub binary_origin: bool,
}

/// A decoded client -> server message.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub join_ref: Option<String>,
    pub ref_: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: InboundPayload,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InboundPayload {
    /// Any text frame's payload.
    Json(Value),
    /// A kind-3 binary broadcast push (event is `"broadcast"`).
    Broadcast(Broadcast),
}

mod codec;
mod texts;

pub use codec::{
    decode_binary, decode_text, encode, encode_broadcast, encode_channel_broadcast, encode_reply,
    encode_sized, encoded_len, json_error, rejected_binary, rejected_text, DecodeError,
};
pub use texts::{
    enable_sql, enable_statement, publication_sql, refuse_nul, AckError, BodyProblem, ChangesError,
    ChannelError, Close, FilterError, HttpError, InspectorBadRequest, InspectorError, NotRecovered,
    ReplyError, Resumed, RowError, SystemMessage, TokenError,
};
pub use texts::{FeedError, WebhookApiError};
