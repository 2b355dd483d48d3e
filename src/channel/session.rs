//! A connection's session: its joined channels and what each client message does to them.
//! Every exit path (leave, close, token expiry, disconnect, drop) removes the member from
//! the router, so no presence outlives its channel.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{json, Map, Value};

use super::join::JoinConfig;
use super::{channel_name, postgres, Services};
use crate::auth::{looks_like_jwt, Claims};
use crate::protocol::{self, reason, Broadcast, BroadcastPayload, Inbound, InboundPayload, Vsn};
use crate::router::outbox::{CloseReason, OutboxTx};
use crate::router::postgres::ViewerClaims;
use crate::router::{Member, MemberId, TopicKey};
use crate::telemetry::next_id;

/// One joined channel of this connection.
struct Channel {
    key: TopicKey,
    join_ref: Arc<str>,
    member: MemberId,
    ack: bool,
    presence_key: String,
    /// The token in force (a refresh with the same token is ignored).
    token: Option<String>,
    /// Claims `exp` (unix seconds) of the token in force.
    exp: i64,
}

pub struct Session {
    svc: Arc<Services>,
    conn_id: u64,
    vsn: Vsn,
    outbox: OutboxTx,
    /// Claims of the connection's `apikey`, used by joins that bring no user token.
    conn_claims: Claims,
    channels: HashMap<String, Channel>,
    joins: DefaultDirectRateLimiter,
    messages: DefaultDirectRateLimiter,
}

fn limiter(per_second: u32) -> DefaultDirectRateLimiter {
    RateLimiter::direct(Quota::per_second(
        NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN),
    ))
}

fn viewer(claims: &Claims) -> ViewerClaims {
    ViewerClaims {
        role: claims.role.as_str().into(),
        claims: serde_json::to_string(&claims.raw)
            .unwrap_or_default()
            .into(),
    }
}

/// Serialized size of a JSON value without allocating it.
fn json_len(v: &Value) -> usize {
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

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Session {
    pub fn new(
        svc: Arc<Services>,
        conn_id: u64,
        vsn: Vsn,
        outbox: OutboxTx,
        conn_claims: Claims,
    ) -> Session {
        let joins = limiter(svc.limits.max_joins_per_second);
        let messages = limiter(svc.limits.max_messages_per_second);
        Session {
            svc,
            conn_id,
            vsn,
            outbox,
            conn_claims,
            channels: HashMap::new(),
            joins,
            messages,
        }
    }

    fn send(&self, frame: protocol::WireFrame, kind: &'static str) {
        self.svc
            .router
            .deliver(&self.outbox, self.conn_id, frame, kind);
    }

    fn reply(&self, msg: &Inbound, status: &str, response: &Value) {
        let frame = protocol::encode_reply(
            self.vsn,
            msg.join_ref.as_deref(),
            msg.ref_.as_deref(),
            &msg.topic,
            status,
            response,
        );
        self.send(frame, "reply");
    }

    fn reply_error(&self, msg: &Inbound, reason: &str) {
        self.reply(msg, "error", &json!({ "reason": reason }));
    }

    fn system(&self, topic: &str, join_ref: &str, extension: &str, status: &str, message: &str) {
        let payload = reason::system_payload(extension, status, message, channel_name(topic));
        let frame = protocol::encode(self.vsn, Some(join_ref), None, topic, "system", &payload);
        self.send(frame, "system");
    }

    /// Handles one decoded client message.
    pub async fn handle(&mut self, msg: Inbound) {
        let kind = match msg.event.as_str() {
            "heartbeat" => "heartbeat",
            "phx_join" => "join",
            "phx_leave" => "leave",
            "access_token" => "access_token",
            "broadcast" => "broadcast",
            "presence" => "presence",
            _ => "other",
        };
        self.svc.metrics.message_in(kind);
        if msg.topic == "phoenix" {
            // Heartbeats (and anything else on the socket topic) get a plain ok.
            self.reply(&msg, "ok", &json!({}));
            return;
        }
        match kind {
            "join" => self.join(msg).await,
            "leave" => self.leave(&msg),
            "access_token" => self.refresh_token(&msg),
            "broadcast" => self.broadcast(msg),
            "presence" => self.presence(&msg),
            _ if self.channels.contains_key(&msg.topic) => {
                self.reply_error(&msg, &format!("unknown event {:?}", msg.event))
            }
            _ => self.reply_error(&msg, reason::UNMATCHED_TOPIC),
        }
    }

    async fn join(&mut self, msg: Inbound) {
        if !msg.topic.starts_with("realtime:") {
            return self.reply_error(&msg, reason::UNMATCHED_TOPIC);
        }
        if msg.topic == "realtime:" {
            return self.reply_error(&msg, reason::TOPIC_REQUIRED);
        }
        if self.joins.check().is_err() {
            self.svc.metrics.limit_hit(self.conn_id, "joins_per_second");
            self.reply_error(&msg, reason::TOO_MANY_JOINS);
            self.outbox.close(CloseReason::TooManyJoins);
            return;
        }
        if self.channels.contains_key(&msg.topic) {
            self.close_channel(&msg.topic);
        } else if self.channels.len() >= self.svc.limits.max_channels_per_connection {
            self.svc
                .metrics
                .limit_hit(self.conn_id, "channels_per_connection");
            return self.reply_error(&msg, reason::TOO_MANY_CHANNELS);
        }
        let payload = match &msg.payload {
            InboundPayload::Json(v) => v.clone(),
            InboundPayload::Broadcast(_) => Value::Null,
        };
        let config = JoinConfig::parse(&payload);
        let user_token = config.access_token.clone().filter(|t| looks_like_jwt(t));
        let claims = match &user_token {
            Some(t) => match self.svc.verifier.verify(t) {
                Ok(c) => c,
                Err(e) => return self.reply_error(&msg, &e.join_reason()),
            },
            None => self.conn_claims.clone(),
        };
        if claims.exp <= now_unix() {
            let e = crate::auth::AuthError::Expired {
                seconds_ago: now_unix() - claims.exp,
            };
            return self.reply_error(&msg, &e.join_reason());
        }
        tracing::debug!(conn_id = self.conn_id, topic = %msg.topic, role = %claims.role, user_token = user_token.is_some(), "join");
        let name = channel_name(&msg.topic).to_owned();
        if config.private && claims.role != "service_role" {
            // Private-channel authorization (realtime.messages policies) is not built yet:
            // refuse rather than serve a private topic without its policies.
            return self.reply_error(
                &msg,
                &format!("Unauthorized: You do not have permissions to read from this Channel topic: {name}"),
            );
        }
        let validated = if config.postgres_changes.is_empty() {
            None
        } else {
            Some(postgres::validate(self.svc.catalog.as_ref(), &config.postgres_changes).await)
        };
        let join_ref: Arc<str> = msg
            .join_ref
            .clone()
            .or_else(|| msg.ref_.clone())
            .unwrap_or_default()
            .into();
        let key = TopicKey {
            private: config.private,
            topic: msg.topic.as_str().into(),
        };
        let member = next_id();
        let reply_entries = validated
            .as_ref()
            .map(|v| v.reply.clone())
            .unwrap_or_default();
        self.reply(&msg, "ok", &json!({ "postgres_changes": reply_entries }));
        self.svc.router.join(
            &key,
            Member {
                id: member,
                conn_id: self.conn_id,
                join_ref: join_ref.clone(),
                vsn: self.vsn,
                outbox: self.outbox.clone(),
                broadcast_self: config.broadcast_self,
                presence: config.presence_enabled,
            },
        );
        if let Some(v) = validated {
            if !v.subscriptions.is_empty() {
                self.svc.router.postgres.add_member(
                    member,
                    self.conn_id,
                    key.topic.clone(),
                    self.vsn,
                    self.outbox.clone(),
                    viewer(&claims),
                    v.subscriptions,
                );
                self.system(
                    &msg.topic,
                    &join_ref,
                    "postgres_changes",
                    "ok",
                    reason::SUBSCRIBED_TO_POSTGRES,
                );
            }
            for e in &v.errors {
                self.system(&msg.topic, &join_ref, "postgres_changes", "error", e);
            }
        }
        let presence_key = if config.presence_key.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            config.presence_key
        };
        self.svc.metrics.joins.inc();
        self.svc.metrics.channels.inc();
        self.channels.insert(
            msg.topic.clone(),
            Channel {
                key,
                join_ref,
                member,
                ack: config.broadcast_ack,
                presence_key,
                token: user_token,
                exp: claims.exp,
            },
        );
    }

    /// Removes a channel from this session and the router, and tells the client it closed.
    fn close_channel(&mut self, topic: &str) {
        if let Some(ch) = self.channels.remove(topic) {
            self.svc.router.leave(&ch.key, ch.member);
            self.svc.metrics.channels.dec();
            let frame = protocol::encode(
                self.vsn,
                Some(&ch.join_ref),
                Some(&ch.join_ref),
                topic,
                "phx_close",
                &json!({}),
            );
            self.send(frame, "phx_close");
        }
    }

    /// Ends a channel with a `system` error (then `phx_close`).
    fn shut(&mut self, topic: &str, message: &str) {
        if let Some(ch) = self.channels.get(topic) {
            let join_ref = ch.join_ref.clone();
            self.system(topic, &join_ref, "system", "error", message);
            self.close_channel(topic);
        }
    }

    fn leave(&mut self, msg: &Inbound) {
        self.reply(msg, "ok", &json!({}));
        self.close_channel(&msg.topic);
    }

    fn refresh_token(&mut self, msg: &Inbound) {
        let Some(ch) = self.channels.get(&msg.topic) else {
            return;
        };
        let token = match &msg.payload {
            InboundPayload::Json(v) => v.get("access_token").and_then(Value::as_str),
            InboundPayload::Broadcast(_) => None,
        };
        let Some(token) = token.filter(|t| looks_like_jwt(t)) else {
            return;
        };
        if ch.token.as_deref() == Some(token) {
            return;
        }
        match self.svc.verifier.verify(token) {
            Ok(claims) => {
                tracing::debug!(conn_id = self.conn_id, topic = %msg.topic, role = %claims.role, "token refreshed");
                let member = ch.member;
                self.svc
                    .router
                    .postgres
                    .update_viewer(member, viewer(&claims));
                if let Some(ch) = self.channels.get_mut(&msg.topic) {
                    ch.exp = claims.exp;
                    ch.token = Some(token.to_owned());
                }
            }
            Err(e) => self.shut(&msg.topic, &e.message()),
        }
    }

    /// Applies the per-connection message rate; over it, the channel is shut.
    fn within_rate(&mut self, topic: &str) -> bool {
        if self.messages.check().is_ok() {
            return true;
        }
        self.svc
            .metrics
            .limit_hit(self.conn_id, "messages_per_second");
        self.shut(topic, reason::TOO_MANY_MESSAGES);
        false
    }

    fn broadcast(&mut self, msg: Inbound) {
        if !self.channels.contains_key(&msg.topic) {
            return self.reply_error(&msg, reason::UNMATCHED_TOPIC);
        }
        if !self.within_rate(&msg.topic) {
            return;
        }
        let b = match &msg.payload {
            InboundPayload::Broadcast(b) => b.clone(),
            InboundPayload::Json(v) => Broadcast {
                event: v
                    .get("event")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                payload: BroadcastPayload::Json(
                    v.get("payload").cloned().unwrap_or_else(|| json!({})),
                ),
                meta: None,
                binary_origin: false,
            },
        };
        let size = match &b.payload {
            BroadcastPayload::Json(v) => json_len(v),
            BroadcastPayload::Binary(bytes) => bytes.len(),
        };
        let ch = &self.channels[&msg.topic];
        let ack = ch.ack;
        if size > self.svc.limits.max_broadcast_bytes {
            self.svc
                .metrics
                .limit_hit(self.conn_id, "broadcast_too_large");
            if ack {
                self.reply(
                    &msg,
                    "error",
                    &json!({ "error": reason::PAYLOAD_TOO_LARGE }),
                );
            }
            return;
        }
        self.svc.router.broadcast(&ch.key, &b, Some(ch.member));
        if ack {
            self.reply(&msg, "ok", &json!({}));
        }
    }

    fn presence(&mut self, msg: &Inbound) {
        if !self.channels.contains_key(&msg.topic) {
            return self.reply_error(msg, reason::UNMATCHED_TOPIC);
        }
        if !self.within_rate(&msg.topic) {
            return;
        }
        let InboundPayload::Json(payload) = &msg.payload else {
            return self.reply_error(msg, reason::PRESENCE_NOT_MAP);
        };
        let event = payload
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ch = &self.channels[&msg.topic];
        if event.eq_ignore_ascii_case("track") {
            let Some(meta) = payload.get("payload").and_then(Value::as_object) else {
                return self.reply_error(msg, reason::PRESENCE_NOT_MAP);
            };
            if json_len(&Value::Object(meta.clone())) > self.svc.limits.max_presence_bytes {
                self.svc
                    .metrics
                    .limit_hit(self.conn_id, "presence_too_large");
                return self.shut(&msg.topic, reason::TRACK_TOO_LARGE);
            }
            let meta: Map<String, Value> = meta.clone();
            let (key, member, presence_key) = (ch.key.clone(), ch.member, ch.presence_key.clone());
            self.reply(msg, "ok", &json!({}));
            self.svc.router.track(&key, member, &presence_key, meta);
        } else if event.eq_ignore_ascii_case("untrack") {
            let (key, member) = (ch.key.clone(), ch.member);
            self.reply(msg, "ok", &json!({}));
            self.svc.router.untrack(&key, member);
        } else {
            self.reply_error(msg, &format!("unknown presence event {event:?}"));
        }
    }

    /// The earliest token expiry among joined channels (unix seconds).
    pub fn next_expiry(&self) -> Option<i64> {
        self.channels.values().map(|c| c.exp).min()
    }

    /// Shuts every channel whose token has expired by `now`.
    pub fn expire_tokens(&mut self, now: i64) {
        let expired: Vec<(String, i64)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.exp <= now)
            .map(|(t, c)| (t.clone(), c.exp))
            .collect();
        for (topic, exp) in expired {
            self.shut(
                &topic,
                &format!("Token has expired {} seconds ago", now - exp),
            );
        }
    }

    /// Tells every channel the server is going away (realtime-js then reconnects).
    pub fn notify_shutdown(&self) {
        for (topic, ch) in &self.channels {
            self.system(
                topic,
                &ch.join_ref,
                "system",
                "ok",
                "Server requested disconnect",
            );
        }
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }
}

impl Drop for Session {
    /// Whatever ends the connection, its members leave (no ghost presence).
    fn drop(&mut self) {
        for (_, ch) in self.channels.drain() {
            self.svc.router.leave(&ch.key, ch.member);
            self.svc.metrics.channels.dec();
        }
    }
}
