//! Client broadcasts and presence pushes on a joined channel: the message rate, size
//! limits, private channels' write permissions, and the replies (ack, errors) each gets.

use serde_json::{json, Map, Value};

use super::session::Session;
use crate::authz::Extension;
use crate::protocol::{
    encoded_len, AckError, Broadcast, BroadcastPayload, ChannelError, Inbound, InboundPayload,
    ReplyError,
};
use crate::router::PresenceFull;

/// The error reply to a track the topic's presence limits refused.
fn presence_full(full: PresenceFull) -> ReplyError {
    match full {
        PresenceFull::TooMany { max } => ReplyError::TooManyPresences { max },
        PresenceFull::TooLarge { max } => ReplyError::PresenceStateTooLarge { max },
    }
}

/// A text-form broadcast push's payload, `{"type":"broadcast","event":E,"payload":P}`;
/// `None` when it is not an object with a string `event` (nothing to fan out).
fn text_broadcast(v: &Value) -> Option<Broadcast> {
    Some(Broadcast {
        event: v.get("event")?.as_str()?.to_owned(),
        payload: BroadcastPayload::Json(v.get("payload").cloned().unwrap_or_else(|| json!({}))),
        meta: None,
        binary_origin: false,
    })
}

impl Session {
    /// Applies the per-connection message rate; over it, the push is answered with an
    /// error (so a sender waiting for its ack hears why) and the channel is shut.
    fn within_rate(&mut self, msg: &Inbound) -> bool {
        if self.messages.check().is_ok() {
            return true;
        }
        self.svc
            .metrics
            .limit_hit(self.conn_id, "messages_per_second");
        self.reply_error(msg, ReplyError::TooManyMessages);
        self.shut(&msg.topic, ChannelError::TooManyMessages);
        false
    }

    pub(super) async fn broadcast(&mut self, msg: Inbound) {
        if !self.channels.contains_key(&msg.topic) {
            return self.reply_error(&msg, ReplyError::UnmatchedTopic);
        }
        if !self.within_rate(&msg) {
            return;
        }
        // A client's metadata is not passed on (Supabase does not use it): `meta` is the
        // hub's to set (`id`, `replayed`), and a sender could otherwise forge both.
        let b = match &msg.payload {
            InboundPayload::Broadcast(b) => Broadcast {
                meta: None,
                ..b.clone()
            },
            InboundPayload::Json(v) => match text_broadcast(v) {
                Some(b) => b,
                None => return self.reply_error(&msg, ReplyError::BroadcastMalformed),
            },
        };
        let size = match &b.payload {
            BroadcastPayload::Json(v) => encoded_len(v),
            BroadcastPayload::Binary(bytes) => bytes.len(),
        };
        let ack = self.channels[&msg.topic].ack;
        if size > self.svc.limits.max_broadcast_bytes {
            self.svc
                .metrics
                .limit_hit(self.conn_id, "broadcast_too_large");
            if ack {
                self.reply(&msg, "error", &AckError::PayloadTooLarge.response());
            }
            return;
        }
        if !self.may_write(&msg.topic, Extension::Broadcast).await {
            // Supabase drops it without a reply, even with ack.
            self.svc.metrics.dropped("write_denied", 1);
            return;
        }
        let Some(ch) = self.channels.get(&msg.topic) else {
            return;
        };
        self.svc.router.publish(&ch.key, &b, Some(ch.member));
        if ack {
            self.reply_ok(&msg);
        }
    }

    pub(super) async fn presence(&mut self, msg: &Inbound) {
        let Some(ch) = self.channels.get_mut(&msg.topic) else {
            return self.reply_error(msg, ReplyError::UnmatchedTopic);
        };
        let limits = &self.svc.limits;
        let (max, window) = (limits.presence_calls_per_window, limits.presence_window);
        if !ch
            .presence_calls
            .allow(tokio::time::Instant::now(), max, window)
        {
            self.svc.metrics.limit_hit(self.conn_id, "presence_calls");
            return self.shut(&msg.topic, ChannelError::PresenceCallsExceeded);
        }
        if !self.within_rate(msg) {
            return;
        }
        let InboundPayload::Json(payload) = &msg.payload else {
            return self.reply_error(msg, ReplyError::PresenceNotMap);
        };
        let event = payload
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if event.eq_ignore_ascii_case("track") {
            // A track without `payload` tracks `{}`, as Supabase reads it.
            let meta: Map<String, Value> = match payload.get("payload") {
                None => Map::new(),
                Some(Value::Object(meta)) => {
                    if encoded_len(&payload["payload"]) > self.svc.limits.max_presence_bytes {
                        self.svc
                            .metrics
                            .limit_hit(self.conn_id, "presence_too_large");
                        return self.shut(&msg.topic, ChannelError::TrackTooLarge);
                    }
                    meta.clone()
                }
                Some(_) => return self.reply_error(msg, ReplyError::PresenceNotMap),
            };
            self.decide_presence_read(&msg.topic).await;
            if !self.may_write(&msg.topic, Extension::Presence).await {
                // Supabase answers a track without write with a bare error reply.
                return self.reply(msg, "error", &serde_json::json!({}));
            }
            let Some(ch) = self.channels.get(&msg.topic) else {
                return;
            };
            let (key, member, presence_key) = (ch.key.clone(), ch.member, ch.presence_key.clone());
            let router = self.svc.router.clone();
            let tracked = router.track(&key, member, &presence_key, meta, || self.reply_ok(msg));
            if let Err(full) = tracked {
                self.svc
                    .metrics
                    .limit_hit(self.conn_id, "presence_per_topic");
                self.reply_error(msg, presence_full(full));
            }
        } else if event.eq_ignore_ascii_case("untrack") {
            let ch = &self.channels[&msg.topic];
            let (key, member) = (ch.key.clone(), ch.member);
            self.reply_ok(msg);
            self.svc.router.untrack(&key, member);
        } else {
            self.reply_error(msg, ReplyError::UnknownPresenceEvent(event.to_owned()));
        }
    }
}
