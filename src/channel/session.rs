//! A connection's session: its joined channels, the dispatch of each client message, and
//! the ways a channel ends. Every exit path (leave, rejoin, close, token expiry,
//! disconnect, drop) goes through `teardown`, so no presence or subscription outlives
//! its channel.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{json, Value};

use super::retry::ChangesEntries;
use super::{channel_name, Services};
use crate::auth::Claims;
use crate::authz::ChannelAccess;
use crate::changes::Viewer;
use crate::protocol::{
    self, ChannelError, DecodeError, Inbound, InboundPayload, ReplyError, SystemMessage,
    TokenError, Vsn, WireFrame,
};
use crate::resume::{ConnAcks, LiveChannel};
use crate::router::outbox::OutboxTx;
use crate::router::{MemberId, TopicKey};
use crate::telemetry::Metrics;

/// One joined channel of this connection.
pub(super) struct Channel {
    pub key: TopicKey,
    pub join_ref: Arc<str>,
    pub member: MemberId,
    pub ack: bool,
    pub presence_key: String,
    /// How many `postgres_changes` entries its join carried (per-connection limit).
    pub changes: usize,
    /// The user token in force (a refresh with the same token is ignored).
    pub token: Option<String>,
    /// `exp` (unix seconds) of the claims in force.
    pub exp: i64,
    /// Its resumable row, when the connection opted in.
    pub live: Option<Arc<LiveChannel>>,
    /// `Some` on a private channel: what the token in force may do there.
    pub private: Option<ChannelAccess>,
    /// `Some` when its join had `postgres_changes` entries (a new token subscribes them
    /// again).
    pub entries: Option<Box<ChangesEntries>>,
    /// `Some` while it waits to be told the hub reads the log (`replication_ready`): when
    /// it gives up.
    pub replication_deadline: Option<tokio::time::Instant>,
    /// Its presence messages in the current window (`presence_calls_per_window`).
    pub presence_calls: PresenceCalls,
}

/// A channel's presence messages counted in fixed windows, as Supabase counts them: a
/// window starts at the first message after the last window ended.
#[derive(Debug, Default)]
pub(super) struct PresenceCalls {
    count: u32,
    ends: Option<tokio::time::Instant>,
}

impl PresenceCalls {
    /// Counts one message at `now`; false when it is one more than `max` in its window
    /// (`max` 0: no limit).
    pub fn allow(
        &mut self,
        now: tokio::time::Instant,
        max: u32,
        window: std::time::Duration,
    ) -> bool {
        if max == 0 {
            return true;
        }
        match self.ends {
            Some(ends) if now <= ends => {
                if self.count >= max {
                    return false;
                }
                self.count += 1;
            }
            _ => {
                self.count = 1;
                self.ends = Some(now + window);
            }
        }
        true
    }
}

/// A connection that opted in to resume with `resume=<key>`.
pub struct ConnResume {
    pub key: Arc<str>,
    /// Its pings in flight and latest acknowledgement (shared with the writer task).
    pub acks: Arc<ConnAcks>,
}

/// How a channel ends, for its resumable row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Left by the client, or closed by the hub: nothing to resume.
    Closed,
    /// The connection dropped, or the channel is being rejoined: park it.
    Dropped,
}

/// What a client message asks for, by its `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Heartbeat,
    Join,
    Leave,
    AccessToken,
    Broadcast,
    Presence,
    Other,
}

impl Event {
    fn of(event: &str) -> Event {
        match event {
            "heartbeat" => Event::Heartbeat,
            "phx_join" => Event::Join,
            "phx_leave" => Event::Leave,
            "access_token" => Event::AccessToken,
            "broadcast" => Event::Broadcast,
            "presence" => Event::Presence,
            _ => Event::Other,
        }
    }

    /// Its `switchboard_messages_in` label.
    fn label(self) -> &'static str {
        match self {
            Event::Heartbeat => "heartbeat",
            Event::Join => "join",
            Event::Leave => "leave",
            Event::AccessToken => "access_token",
            Event::Broadcast => "broadcast",
            Event::Presence => "presence",
            Event::Other => "other",
        }
    }
}

pub struct Session {
    pub(super) svc: Arc<Services>,
    pub(super) conn_id: u64,
    pub(super) vsn: Vsn,
    pub(super) outbox: OutboxTx,
    /// Claims of the connection's `apikey`, used by joins that bring no user token.
    pub(super) conn_claims: Claims,
    /// The upgrade request's `x-` headers as a JSON object: `request.headers` for private
    /// channel policies.
    pub(super) request_headers: Arc<str>,
    pub(super) channels: HashMap<String, Channel>,
    pub(super) joins: DefaultDirectRateLimiter,
    pub(super) messages: DefaultDirectRateLimiter,
    pub(super) resume: Option<ConnResume>,
}

/// `per_second` on average, with bursts of `burst_secs` seconds' worth.
fn limiter(per_second: u32, burst_secs: u32) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = rate.saturating_mul(NonZeroU32::new(burst_secs).unwrap_or(NonZeroU32::MIN));
    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

/// Seconds of `max_messages_per_second` one burst may spend at once. Supabase compares
/// the average over 5-second buckets with its limit, so a client may send a burst (a
/// queue flushed on reconnect, a quick series of acked broadcasts) well over the
/// per-second figure without being cut off. Joins burst one second's worth.
const MESSAGE_BURST_SECS: u32 = 5;

pub(super) fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Whether `msg` is a heartbeat on the socket topic (`phoenix`).
pub fn is_heartbeat(msg: &Inbound) -> bool {
    msg.topic == "phoenix" && matches!(Event::of(&msg.event), Event::Heartbeat)
}

/// Answers a heartbeat on `phoenix`: its plain ok goes ahead of whatever is queued
/// (`OutboxTx::push_urgent`). It needs nothing of the session, so the connection answers
/// heartbeats itself while the session waits on the database.
pub fn answer_heartbeat(vsn: Vsn, outbox: &OutboxTx, metrics: &Metrics, msg: &Inbound) {
    let frame =
        protocol::encode_reply(vsn, None, msg.ref_.as_deref(), &msg.topic, "ok", &json!({}));
    if outbox.push_urgent(frame).is_ok() {
        metrics.message_out("reply", 1);
    }
}

impl Session {
    pub fn new(
        svc: Arc<Services>,
        conn_id: u64,
        vsn: Vsn,
        outbox: OutboxTx,
        conn_claims: Claims,
        resume: Option<ConnResume>,
    ) -> Session {
        let joins = limiter(svc.limits.max_joins_per_second, 1);
        let messages = limiter(svc.limits.max_messages_per_second, MESSAGE_BURST_SECS);
        // Without a database there is nothing to resume from.
        let resume = resume.filter(|_| svc.resume.is_some());
        Session {
            svc,
            conn_id,
            vsn,
            outbox,
            conn_claims,
            request_headers: "{}".into(),
            channels: HashMap::new(),
            joins,
            messages,
            resume,
        }
    }

    /// The `x-` headers of the connection's upgrade request, as a JSON object.
    pub fn with_request_headers(mut self, headers: Arc<str>) -> Session {
        self.request_headers = headers;
        self
    }

    pub(super) fn send(&self, frame: WireFrame, kind: &'static str) {
        self.svc
            .router
            .deliver(&self.outbox, self.conn_id, frame, kind);
    }

    pub(super) fn reply(&self, msg: &Inbound, status: &str, response: &Value) {
        self.send(self.reply_frame(msg, status, response), "reply");
    }

    fn reply_frame(&self, msg: &Inbound, status: &str, response: &Value) -> WireFrame {
        protocol::encode_reply(
            self.vsn,
            self.reply_join_ref(msg),
            msg.ref_.as_deref(),
            &msg.topic,
            status,
            response,
        )
    }

    /// The join ref a reply carries, as Phoenix fills it (PROTOCOL.md §1): a join's own;
    /// on a joined topic the channel's, whatever the push carried; a leave of a topic not
    /// joined echoes its own; none on `phoenix` or on a topic this socket has not joined.
    fn reply_join_ref<'a>(&'a self, msg: &'a Inbound) -> Option<&'a str> {
        if msg.topic == "phoenix" {
            return None;
        }
        match (Event::of(&msg.event), self.channels.get(&msg.topic)) {
            (Event::Join, _) => msg.join_ref.as_deref(),
            (_, Some(ch)) => Some(&ch.join_ref),
            (Event::Leave, None) => msg.join_ref.as_deref(),
            (_, None) => None,
        }
    }

    pub(super) fn reply_ok(&self, msg: &Inbound) {
        self.reply(msg, "ok", &json!({}));
    }

    pub(super) fn reply_error(&self, msg: &Inbound, error: ReplyError) {
        self.reply(msg, "error", &error.response());
    }

    /// Answers a frame that failed to decode: on the push's topic with its ref when
    /// `push` (what could still be read of it) has them, else on `phoenix` with none.
    pub fn reject(&self, push: Option<&Inbound>, error: DecodeError) {
        let response = ReplyError::Malformed(error).response();
        let frame = match push {
            Some(msg) => self.reply_frame(msg, "error", &response),
            None => protocol::encode_reply(self.vsn, None, None, "phoenix", "error", &response),
        };
        self.send(frame, "reply");
    }

    pub(super) fn system(&self, topic: &str, join_ref: &str, message: &SystemMessage) {
        let payload = message.payload(channel_name(topic));
        let frame = protocol::encode(self.vsn, Some(join_ref), None, topic, "system", &payload);
        self.send(frame, "system");
    }

    /// Handles one decoded client message.
    pub async fn handle(&mut self, msg: Inbound) {
        let event = Event::of(&msg.event);
        self.svc.metrics.message_in(event.label());
        if msg.topic == "phoenix" {
            // Phoenix answers only heartbeats on the socket topic; anything else there is
            // an unmatched topic.
            if !matches!(event, Event::Heartbeat) {
                return self.reply_error(&msg, ReplyError::UnmatchedTopic);
            }
            return answer_heartbeat(self.vsn, &self.outbox, &self.svc.metrics, &msg);
        }
        match event {
            Event::Join => self.join(msg).await,
            Event::Leave => self.leave(&msg),
            Event::AccessToken => self.refresh_token(&msg).await,
            Event::Broadcast => self.broadcast(msg).await,
            Event::Presence => self.presence(&msg).await,
            Event::Heartbeat | Event::Other if self.channels.contains_key(&msg.topic) => {
                self.reply_error(&msg, ReplyError::UnknownEvent(msg.event.clone()))
            }
            Event::Heartbeat | Event::Other => self.reply_error(&msg, ReplyError::UnmatchedTopic),
        }
    }

    /// Removes a channel from the router and from postgres_changes, and parks or releases
    /// its resumable row: the one way out.
    fn teardown(&self, ch: &Channel, end: End) {
        self.svc.router.leave(&ch.key, ch.member);
        self.svc.changes.unsubscribe(ch.member);
        self.svc.metrics.channels.dec();
        if let (Some(live), Some(resume)) = (&ch.live, &self.svc.resume) {
            match end {
                End::Dropped => resume.park(&live.holder, &live.owner),
                End::Closed => resume.release(&live.holder, &live.owner),
            }
        }
    }

    /// Ends a channel and tells the client it closed (`phx_close` with the join ref).
    pub(super) fn close_channel(&mut self, topic: &str, end: End) {
        if let Some(ch) = self.channels.remove(topic) {
            self.teardown(&ch, end);
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

    /// Ends a channel with a `system` error, then `phx_close`.
    pub(super) fn shut(&mut self, topic: &str, error: ChannelError) {
        if let Some(ch) = self.channels.get(topic) {
            let join_ref = ch.join_ref.clone();
            self.system(topic, &join_ref, &SystemMessage::Closed(error));
            self.close_channel(topic, End::Closed);
        }
    }

    /// As Phoenix: a leave that names an older join of the topic (the client raced a
    /// rejoin or a server close) is ignored, neither answered nor closing the current
    /// join; one without a join ref (vsn 1.0.0) leaves whatever is joined.
    fn leave(&mut self, msg: &Inbound) {
        let stale = match (self.channels.get(&msg.topic), msg.join_ref.as_deref()) {
            (Some(ch), Some(join_ref)) => *ch.join_ref != *join_ref,
            _ => false,
        };
        if stale {
            return;
        }
        self.reply_ok(msg);
        self.close_channel(&msg.topic, End::Closed);
    }

    /// `access_token`: never replied to on a joined topic (elsewhere: unmatched topic,
    /// as any push there). A new valid token replaces the channel's claims
    /// (and row scope from then on; a private channel's permissions are decided again;
    /// entries its join could not subscribe are tried again, `retry`); an invalid one, or
    /// one that may no longer read the private channel, ends it.
    async fn refresh_token(&mut self, msg: &Inbound) {
        let Some(ch) = self.channels.get(&msg.topic) else {
            return self.reply_error(msg, ReplyError::UnmatchedTopic);
        };
        let token = match &msg.payload {
            InboundPayload::Json(v) => v.get("access_token").and_then(Value::as_str),
            InboundPayload::Broadcast(_) => None,
        };
        // As Supabase: `null` and `sb_…` keys are ignored; any other string (even empty)
        // is verified, where a join without a user token falls back to the apikey.
        let Some(token) = token.filter(|t| !t.starts_with("sb_")) else {
            return;
        };
        if ch.token.as_deref() == Some(token) {
            return;
        }
        let token = token.to_owned();
        let verified = match token.trim().is_empty() {
            true => Err(TokenError::Malformed),
            false => self.svc.verifier.verify_fresh(&token).await,
        };
        let claims = match verified {
            Ok(claims) => claims,
            Err(e) => return self.shut(&msg.topic, ChannelError::Token(e)),
        };
        tracing::debug!(conn_id = self.conn_id, topic = %msg.topic, role = %claims.role, "token refreshed");
        if let Err(e) = self.redecide(&msg.topic, &claims).await {
            return self.shut(&msg.topic, e);
        }
        if let Some(ch) = self.channels.get_mut(&msg.topic) {
            self.svc
                .changes
                .set_viewer(ch.member, Arc::new(Viewer::from_claims(&claims)));
            ch.exp = claims.exp;
            ch.token = Some(token);
        }
        self.resubscribe(&msg.topic, &claims).await;
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
            let error = TokenError::Expired {
                seconds_ago: now - exp,
            };
            self.shut(&topic, ChannelError::Token(error));
        }
    }

    /// Whether a channel waits for `replication_ready` (checked every half second, as
    /// Supabase checks).
    pub fn awaits_replication(&self) -> bool {
        self.channels
            .values()
            .any(|c| c.replication_deadline.is_some())
    }

    /// Whether the hub reads the change log (what carries database broadcasts).
    pub(super) fn replicating(&self) -> bool {
        self.svc.capture.as_ref().is_some_and(|c| c.is_connected())
    }

    /// Tells each waiting channel the hub reads the log, or shuts it once its wait is over.
    pub fn check_replication(&mut self, now: tokio::time::Instant) {
        let replicating = self.replicating();
        let waiting: Vec<(String, bool)> = self
            .channels
            .iter()
            .filter_map(|(t, c)| c.replication_deadline.map(|d| (t.clone(), now >= d)))
            .collect();
        for (topic, late) in waiting {
            if replicating {
                if let Some(ch) = self.channels.get_mut(&topic) {
                    ch.replication_deadline = None;
                    let join_ref = ch.join_ref.clone();
                    self.system(&topic, &join_ref, &SystemMessage::ReplicationReady);
                }
            } else if late {
                self.shut(&topic, ChannelError::ReplicationTimeout);
            }
        }
    }

    /// Tells every channel the server is going away (realtime-js then reconnects).
    pub fn notify_shutdown(&self) {
        for (topic, ch) in &self.channels {
            self.system(topic, &ch.join_ref, &SystemMessage::ServerDisconnect);
        }
    }
}

impl Drop for Session {
    /// Whatever ends the connection, its members leave (no ghost presence).
    fn drop(&mut self) {
        for (_, ch) in std::mem::take(&mut self.channels) {
            self.teardown(&ch, End::Dropped);
        }
    }
}

#[cfg(test)]
mod presence_calls_tests {
    use super::PresenceCalls;
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn a_window_holds_max_calls_and_the_next_window_starts_with_the_next_call() {
        let window = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut calls = PresenceCalls::default();
        for i in 0..5 {
            assert!(
                calls.allow(t0 + Duration::from_secs(i), 5, window),
                "call {i}"
            );
        }
        assert!(!calls.allow(t0 + Duration::from_secs(29), 5, window));
        // The window ended 30 s after its first call: a new one starts.
        assert!(calls.allow(t0 + Duration::from_secs(31), 5, window));
        let mut unlimited = PresenceCalls::default();
        assert!((0..100).all(|_| unlimited.allow(t0, 0, window)));
    }
}
