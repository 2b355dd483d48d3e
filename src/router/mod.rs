//! Topics and their members, presence per topic, broadcast fan-out, and the bounded
//! per-connection outboxes everything is delivered through. Fan-out never awaits a
//! client: frames are encoded once per serializer and pushed into each member's outbox.
//! Knows nothing of tables or rows; no sockets, no Postgres here.

pub mod outbox;
pub mod presence;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use serde_json::{Map, Value};

use crate::protocol::{self, Broadcast, Vsn, WireFrame};
use crate::telemetry::Metrics;
use outbox::{ChannelOutbox, FrameSink, OutboxTx, PushError};
use presence::{Diff, PresenceState};

/// One join of one topic by one connection (a new id for every join).
pub type MemberId = u64;

/// A topic and its namespace: private and public channels of one name are distinct.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicKey {
    pub private: bool,
    /// Full topic, `realtime:<name>`.
    pub topic: Arc<str>,
}

/// What fan-out needs to reach one member.
#[derive(Clone)]
pub struct Member {
    pub id: MemberId,
    pub conn_id: u64,
    pub join_ref: Arc<str>,
    pub vsn: Vsn,
    pub outbox: ChannelOutbox,
    /// `config.broadcast.self`: receive my own broadcasts.
    pub broadcast_self: bool,
    /// Receives presence diffs (presence enabled at join, or after a first track).
    pub presence: bool,
}

#[derive(Default)]
struct Topic {
    members: HashMap<MemberId, Member>,
    presence: PresenceState,
}

/// One topic as the inspector shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TopicSummary {
    pub topic: String,
    pub private: bool,
    /// Joined channels (members).
    pub channels: usize,
    /// Members with a tracked presence.
    pub presence: usize,
}

/// Frames for one message, encoded at most once per serializer.
struct Encoded<F: Fn(Vsn) -> Option<WireFrame>> {
    encode: F,
    v1: Option<Option<WireFrame>>,
    v2: Option<Option<WireFrame>>,
}

impl<F: Fn(Vsn) -> Option<WireFrame>> Encoded<F> {
    fn new(encode: F) -> Self {
        Encoded {
            encode,
            v1: None,
            v2: None,
        }
    }

    fn get(&mut self, vsn: Vsn) -> Option<WireFrame> {
        let slot = match vsn {
            Vsn::V1 => &mut self.v1,
            Vsn::V2 => &mut self.v2,
        };
        slot.get_or_insert_with(|| (self.encode)(vsn)).clone()
    }
}

/// The in-process pub/sub at the centre of the hub.
pub struct Router {
    /// Topics with at least one member; an emptied topic is removed under its shard lock.
    topics: DashMap<TopicKey, Arc<Mutex<Topic>>>,
    metrics: Arc<Metrics>,
}

fn lock(topic: &Mutex<Topic>) -> std::sync::MutexGuard<'_, Topic> {
    topic.lock().unwrap_or_else(|p| p.into_inner())
}

impl Router {
    pub fn new(metrics: Arc<Metrics>) -> Router {
        Router {
            topics: DashMap::new(),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Queues one `frame` and counts it under `kind` (replies, system messages).
    pub fn deliver(
        &self,
        outbox: &OutboxTx,
        conn_id: u64,
        frame: WireFrame,
        kind: &'static str,
    ) -> bool {
        let queued = self.push(outbox, conn_id, frame);
        if queued {
            self.metrics.message_out(kind, 1);
        }
        queued
    }

    /// Queues `frame` without counting it: fan-out loops count once per message, not once
    /// per receiver (the metric lookup would otherwise sit on the hot path). Counts a slow
    /// consumer it cuts off.
    pub fn push(&self, outbox: &impl FrameSink, conn_id: u64, frame: WireFrame) -> bool {
        match outbox.push_frame(frame) {
            Ok(()) => true,
            Err(PushError::Overflow) => {
                self.metrics.slow_consumer(conn_id);
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    fn topic(&self, key: &TopicKey) -> Option<Arc<Mutex<Topic>>> {
        self.topics.get(key).map(|t| t.value().clone())
    }

    /// Adds a member. If it wants presence, its `presence_state` is queued first, under
    /// the same lock as its registration, so no diff can overtake the snapshot.
    pub fn join(&self, key: &TopicKey, member: Member) {
        let entry = self.topics.entry(key.clone()).or_default();
        let mut topic = lock(entry.value());
        if member.presence {
            self.push_presence_state(&key.topic, &topic.presence, &member);
        }
        topic.members.insert(member.id, member);
    }

    fn push_presence_state(&self, topic: &str, presence: &PresenceState, member: &Member) {
        let state = presence.state_json();
        let frame = protocol::encode(
            member.vsn,
            Some(&member.join_ref),
            None,
            topic,
            "presence_state",
            &state,
        );
        if self.push(&member.outbox, member.conn_id, frame) {
            self.metrics.message_out("presence_state", 1);
        }
    }

    /// Removes a member and its presence (leave, close, disconnect: every path).
    pub fn leave(&self, key: &TopicKey, member: MemberId) {
        if let Some(topic) = self.topic(key) {
            let mut t = lock(&topic);
            t.members.remove(&member);
            if let Some(diff) = t.presence.untrack(member) {
                self.fan_out_diff(&key.topic, &t, &diff);
            }
        }
        self.topics
            .remove_if(key, |_, t| lock(t).members.is_empty());
    }

    /// Fans a broadcast out to the topic's members (skipping the sender unless it asked
    /// for `self`). Returns how many members it was queued for.
    pub fn broadcast(&self, key: &TopicKey, msg: &Broadcast, sender: Option<MemberId>) -> usize {
        let Some(topic) = self.topic(key) else {
            return 0;
        };
        let t = lock(&topic);
        self.broadcast_to(&key.topic, t.members.values(), msg, sender)
    }

    /// The topic's members right now, for a broadcast whose receivers must be fixed
    /// before it is sent (database broadcasts, decided in log order).
    pub fn members(&self, key: &TopicKey) -> Vec<Member> {
        self.topic(key)
            .map(|t| lock(&t).members.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Fans a broadcast out to `members` of `topic`, encoding once per serializer.
    pub fn broadcast_to<'a>(
        &self,
        topic: &str,
        members: impl IntoIterator<Item = &'a Member>,
        msg: &Broadcast,
        sender: Option<MemberId>,
    ) -> usize {
        let started = std::time::Instant::now();
        let mut frames = Encoded::new(|vsn| protocol::encode_broadcast(vsn, topic, msg));
        let mut sent = 0;
        for m in members {
            if Some(m.id) == sender && !m.broadcast_self {
                continue;
            }
            match frames.get(m.vsn) {
                Some(frame) => {
                    if self.push(&m.outbox, m.conn_id, frame) {
                        sent += 1;
                    }
                }
                None => self.metrics.dropped("undeliverable_to_v1", 1),
            }
        }
        self.metrics.message_out("broadcast", sent as u64);
        self.metrics
            .fanout_latency
            .observe(started.elapsed().as_secs_f64());
        sent
    }

    /// Tracks or updates a member's presence and fans the diff out. The member starts
    /// receiving presence (with a `presence_state` first) if it did not already.
    pub fn track(
        &self,
        key: &TopicKey,
        member: MemberId,
        presence_key: &str,
        payload: Map<String, Value>,
    ) {
        let Some(topic) = self.topic(key) else {
            return;
        };
        let mut t = lock(&topic);
        let newly_enabled = match t.members.get_mut(&member) {
            Some(m) if !m.presence => {
                m.presence = true;
                Some(m.clone())
            }
            Some(_) => None,
            None => return,
        };
        if let Some(m) = newly_enabled {
            self.push_presence_state(&key.topic, &t.presence, &m);
        }
        if let Some(diff) = t.presence.track(member, presence_key, payload) {
            self.fan_out_diff(&key.topic, &t, &diff);
        }
    }

    pub fn untrack(&self, key: &TopicKey, member: MemberId) {
        let Some(topic) = self.topic(key) else {
            return;
        };
        let mut t = lock(&topic);
        if let Some(diff) = t.presence.untrack(member) {
            self.fan_out_diff(&key.topic, &t, &diff);
        }
    }

    fn fan_out_diff(&self, topic: &str, t: &Topic, diff: &Diff) {
        let payload = diff.to_json();
        let mut frames = Encoded::new(|vsn| {
            Some(protocol::encode(
                vsn,
                None,
                None,
                topic,
                "presence_diff",
                &payload,
            ))
        });
        let mut sent = 0;
        for m in t.members.values().filter(|m| m.presence) {
            if let Some(frame) = frames.get(m.vsn) {
                sent += u64::from(self.push(&m.outbox, m.conn_id, frame));
            }
        }
        self.metrics.message_out("presence_diff", sent);
    }

    /// Number of topics with members (for status).
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Topics with their channel and presence counts, most channels first, at most
    /// `limit`. Read-only: each topic's lock is held only to count.
    pub fn summary(&self, limit: usize) -> Vec<TopicSummary> {
        let topics: Vec<(TopicKey, Arc<Mutex<Topic>>)> = self
            .topics
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let mut out: Vec<TopicSummary> = topics
            .into_iter()
            .map(|(key, topic)| {
                let t = lock(&topic);
                TopicSummary {
                    topic: key.topic.to_string(),
                    private: key.private,
                    channels: t.members.len(),
                    presence: t.presence.tracked(),
                }
            })
            .filter(|s| s.channels > 0)
            .collect();
        out.sort_by(|a, b| b.channels.cmp(&a.channels).then(a.topic.cmp(&b.topic)));
        out.truncate(limit);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox::outbox;

    fn member(id: MemberId, presence: bool) -> (Member, outbox::OutboxRx) {
        let (tx, rx) = outbox(16, 64 * 1024);
        let m = Member {
            id,
            conn_id: id,
            join_ref: "1".into(),
            vsn: Vsn::V1,
            outbox: ChannelOutbox::direct(tx),
            broadcast_self: false,
            presence,
        };
        (m, rx)
    }

    fn key(topic: &str) -> TopicKey {
        TopicKey {
            private: false,
            topic: format!("realtime:{topic}").into(),
        }
    }

    #[test]
    fn summary_counts_channels_and_tracked_presences_per_topic() {
        let router = Router::new(Arc::new(Metrics::new()));
        let mut keep = Vec::new();
        for (id, topic) in [(1, "lobby"), (2, "lobby"), (3, "room")] {
            let (m, rx) = member(id, true);
            keep.push(rx);
            router.join(&key(topic), m);
        }
        router.track(&key("lobby"), 1, "ada", Map::new());
        let summary = router.summary(10);
        assert_eq!(
            summary,
            vec![
                TopicSummary {
                    topic: "realtime:lobby".into(),
                    private: false,
                    channels: 2,
                    presence: 1
                },
                TopicSummary {
                    topic: "realtime:room".into(),
                    private: false,
                    channels: 1,
                    presence: 0
                },
            ]
        );
        assert_eq!(router.summary(1).len(), 1);
        router.leave(&key("room"), 3);
        assert_eq!(router.summary(10).len(), 1);
    }
}
