//! Topics and their members, presence per topic, broadcast fan-out, and the bounded
//! per-connection outboxes everything is delivered through. Fan-out never awaits a
//! client: frames are encoded once per serializer and pushed into each member's outbox.
//! Knows nothing of tables or rows; no sockets, no Postgres, no Redis here: in cluster
//! mode it tells a [`ClusterLink`] what other nodes must learn, and `remote.rs` applies
//! what they report.

pub mod outbox;
pub mod presence;
mod remote;

pub use remote::{ClusterLink, NodeId};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use serde_json::{Map, Value};

use crate::protocol::{self, Broadcast, Vsn, WireFrame};
use crate::telemetry::Metrics;
use outbox::{ChannelOutbox, FrameSink, OutboxTx, PushError};
use presence::{Diff, PresenceState};
pub use presence::{PresenceFull, PresenceLimits};

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
    /// Presence enabled (at join, or by a first track): gets `presence_state`, and on a
    /// private channel presence diffs (on a public one every member gets them).
    pub presence: bool,
    /// May receive broadcasts and presence (always on public channels; a private
    /// channel's read policies decide).
    pub access: Access,
    /// `Some` while the member's channel sends a replay: frames for it wait here, with the
    /// transaction id of database broadcasts, until `release`.
    pub held: Option<Vec<(WireFrame, Option<u64>)>>,
    /// After a replay: database broadcasts written by transactions it covered are not
    /// delivered to this member (capture may read them long after the replay).
    pub covered: Option<Covered>,
}

/// Which log transactions a replay already covered.
pub type Covered = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// What a member may receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub broadcast: bool,
    pub presence: bool,
}

impl Access {
    pub const ALL: Access = Access {
        broadcast: true,
        presence: true,
    };
}

/// Most frames held for one member while its replay is sent; beyond, it is cut off as a
/// slow consumer (the replay itself is at most 25 messages and one query).
const MAX_HELD: usize = 1024;

impl Member {
    /// Queues `frame` for this member (or holds it), without counting it.
    fn push(&mut self, router: &Router, frame: WireFrame, xid: Option<u64>) -> bool {
        self.push_as(router, frame, xid, false)
    }

    /// `push`, for a snapshot frame when `snapshot` (see `OutboxTx::push_snapshot`).
    fn push_as(
        &mut self,
        router: &Router,
        frame: WireFrame,
        xid: Option<u64>,
        snapshot: bool,
    ) -> bool {
        if let (Some(xid), Some(covered)) = (xid, &self.covered) {
            if covered(xid) {
                return false;
            }
        }
        match &mut self.held {
            Some(held) if held.len() < MAX_HELD => {
                held.push((frame, xid));
                true
            }
            Some(_) => {
                self.outbox.tx().close(crate::protocol::Close::SlowConsumer);
                router.metrics.slow_consumer(self.conn_id);
                false
            }
            None if snapshot => router.counted(self.outbox.push_snapshot(frame), self.conn_id),
            None => router.push(&self.outbox, self.conn_id, frame),
        }
    }
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
    /// Topics with at least one member or presence (local or remote); an emptied topic
    /// is removed under its shard lock.
    topics: DashMap<TopicKey, Arc<Mutex<Topic>>>,
    metrics: Arc<Metrics>,
    /// Cluster mode: where local broadcasts and presence changes go for other nodes.
    cluster: Option<Arc<dyn ClusterLink>>,
    /// How much presence a topic may hold.
    presence_limits: PresenceLimits,
}

fn lock(topic: &Mutex<Topic>) -> std::sync::MutexGuard<'_, Topic> {
    topic.lock().unwrap_or_else(|p| p.into_inner())
}

impl Router {
    pub fn new(metrics: Arc<Metrics>) -> Router {
        Router {
            topics: DashMap::new(),
            metrics,
            cluster: None,
            presence_limits: PresenceLimits::default(),
        }
    }

    /// This router with each topic's presence bounded by `limits`.
    pub fn with_presence_limits(self, limits: PresenceLimits) -> Router {
        Router {
            presence_limits: limits,
            ..self
        }
    }

    /// A router of one cluster node: client broadcasts and local presence changes also
    /// go to `link`.
    pub fn with_cluster(metrics: Arc<Metrics>, link: Arc<dyn ClusterLink>) -> Router {
        Router {
            cluster: Some(link),
            ..Router::new(metrics)
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Queues one `frame` and counts it under `kind` (replies, system messages).
    pub fn deliver(
        &self,
        outbox: &impl FrameSink,
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
        self.counted(outbox.push_frame(frame), conn_id)
    }

    /// Queues a run of frames to one connection (`OutboxTx::push_run`); how many went in.
    pub fn push_run(&self, tx: &OutboxTx, conn_id: u64, frames: &mut Vec<WireFrame>) -> usize {
        let (queued, result) = tx.push_run(frames);
        if result.is_err() {
            self.counted(result, conn_id);
        }
        queued
    }

    /// Whether a push queued its frame; counts a slow consumer it cut off.
    fn counted(&self, pushed: Result<(), PushError>, conn_id: u64) -> bool {
        match pushed {
            Ok(()) => true,
            Err(PushError::Overflow) => {
                self.metrics.slow_consumer(conn_id);
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    /// The topic's name as the router holds it (one `Arc` for all its members, so
    /// fan-out can tell two members of one topic alike by pointer); `key`'s own when the
    /// topic has no member.
    pub fn shared_name(&self, key: &TopicKey) -> Arc<str> {
        self.topics
            .get(key)
            .map_or_else(|| key.topic.clone(), |t| t.key().topic.clone())
    }

    fn topic(&self, key: &TopicKey) -> Option<Arc<Mutex<Topic>>> {
        self.topics.get(key).map(|t| t.value().clone())
    }

    /// Adds a member. If it wants presence, its `presence_state` is queued first, under
    /// the same lock as its registration, so no diff can overtake the snapshot.
    pub fn join(&self, key: &TopicKey, mut member: Member) {
        let entry = self.topics.entry(key.clone()).or_default();
        let mut topic = lock(entry.value());
        if member.presence && member.access.presence {
            self.push_presence_state(&key.topic, &topic.presence, &mut member);
        }
        topic.members.insert(member.id, member);
    }

    fn push_presence_state(&self, topic: &str, presence: &PresenceState, member: &mut Member) {
        let state = presence.state_json();
        let frame = protocol::encode(
            member.vsn,
            Some(&member.join_ref),
            None,
            topic,
            "presence_state",
            &state,
        );
        // A snapshot: a joiner gets it even when it is larger than what its queue holds.
        if member.push_as(self, frame, None, true) {
            self.metrics.message_out("presence_state", 1);
        }
    }

    /// Ends a member's hold: queues what was held for it in order, except database
    /// broadcasts whose transaction `covered` says a replay already sent; from now on such
    /// broadcasts are skipped for it whenever they come.
    pub fn release(&self, key: &TopicKey, member: MemberId, covered: Covered) {
        let Some(topic) = self.topic(key) else {
            return;
        };
        let mut t = lock(&topic);
        let Some(m) = t.members.get_mut(&member) else {
            return;
        };
        for (frame, xid) in m.held.take().unwrap_or_default() {
            if xid.is_some_and(|x| covered(x)) {
                continue;
            }
            self.push(&m.outbox, m.conn_id, frame);
        }
        m.covered = Some(covered);
    }

    /// Applies new read permissions to a member (a private channel's refreshed token, or
    /// presence read decided at its first track).
    pub fn set_access(&self, key: &TopicKey, member: MemberId, access: Access) {
        if let Some(topic) = self.topic(key) {
            if let Some(m) = lock(&topic).members.get_mut(&member) {
                m.access = access;
            }
        }
    }

    /// Removes a member and its presence (leave, close, disconnect: every path).
    pub fn leave(&self, key: &TopicKey, member: MemberId) {
        if let Some(topic) = self.topic(key) {
            let mut t = lock(&topic);
            t.members.remove(&member);
            if let Some(diff) = t.presence.untrack(member) {
                self.fan_out_diff(key, &mut t, &diff);
                self.tell_cluster(key, member, None);
            }
        }
        self.remove_if_empty(key);
    }

    /// Drops `key` when it has neither members nor presence (local or remote).
    fn remove_if_empty(&self, key: &TopicKey) {
        self.topics.remove_if(key, |_, t| {
            let t = lock(t);
            t.members.is_empty() && t.presence.is_empty()
        });
    }

    /// A local presence change for other nodes; called under the topic lock, so the
    /// changes of one topic reach the link in the order they happened.
    fn tell_cluster(&self, key: &TopicKey, member: MemberId, now: Option<presence::Tracked>) {
        if let Some(link) = &self.cluster {
            link.presence(key, member, now.as_ref());
        }
    }

    /// A client's broadcast (WebSocket or REST): fans out here and, in cluster mode, is
    /// handed to the other nodes. Returns how many local members it was queued for.
    pub fn publish(&self, key: &TopicKey, msg: &Broadcast, sender: Option<MemberId>) -> usize {
        let sent = self.broadcast(key, msg, sender);
        if let Some(link) = &self.cluster {
            link.broadcast(key, msg);
        }
        sent
    }

    /// Fans a broadcast out to this node's members of the topic (skipping the sender
    /// unless it asked for `self`). Database and remote broadcasts come this way, never
    /// crossing nodes. Returns how many members it was queued for.
    pub fn broadcast(&self, key: &TopicKey, msg: &Broadcast, sender: Option<MemberId>) -> usize {
        let Some(topic) = self.topic(key) else {
            return 0;
        };
        let mut t = lock(&topic);
        self.fan_out_broadcast(&key.topic, t.members.values_mut(), msg, sender, None)
    }

    /// The ids of the topic's members right now, for a broadcast whose receivers must be
    /// fixed before it is sent (database broadcasts, decided in log order). Sorted.
    pub fn member_ids(&self, key: &TopicKey) -> Vec<MemberId> {
        let mut ids: Vec<MemberId> = self
            .topic(key)
            .map(|t| lock(&t).members.keys().copied().collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// A broadcast read from the change log, written by transaction `xid` (a replaying
    /// member may already have it), to those of `recipients` (sorted, from
    /// [`Router::member_ids`]) that are still members.
    pub fn broadcast_logged_to(
        &self,
        key: &TopicKey,
        msg: &Broadcast,
        xid: Option<u64>,
        recipients: &[MemberId],
    ) -> usize {
        let Some(topic) = self.topic(key) else {
            return 0;
        };
        let mut t = lock(&topic);
        let members = t
            .members
            .values_mut()
            .filter(|m| recipients.binary_search(&m.id).is_ok());
        self.fan_out_broadcast(&key.topic, members, msg, None, xid)
    }

    /// Fans a broadcast out to `members` of `topic`, encoding once per serializer.
    fn fan_out_broadcast<'a>(
        &self,
        topic: &str,
        members: impl Iterator<Item = &'a mut Member>,
        msg: &Broadcast,
        sender: Option<MemberId>,
        xid: Option<u64>,
    ) -> usize {
        let started = std::time::Instant::now();
        let mut frames = Encoded::new(|vsn| protocol::encode_broadcast(vsn, topic, msg));
        let mut sent = 0;
        for m in members {
            if (Some(m.id) == sender && !m.broadcast_self) || !m.access.broadcast {
                continue;
            }
            match frames.get(m.vsn) {
                Some(frame) => {
                    if m.push(self, frame, xid) {
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
    /// receiving presence (with a `presence_state` first) if it did not already. A track
    /// the topic's presence limits refuse changes nothing; one they admit calls `admitted`
    /// before anything is sent (the tracker's ok reply goes first, as in Supabase).
    pub fn track(
        &self,
        key: &TopicKey,
        member: MemberId,
        presence_key: &str,
        payload: Map<String, Value>,
        admitted: impl FnOnce(),
    ) -> Result<(), PresenceFull> {
        let Some(topic) = self.topic(key) else {
            admitted();
            return Ok(());
        };
        let mut t = lock(&topic);
        let t = &mut *t;
        if !t.members.contains_key(&member) {
            admitted();
            return Ok(());
        }
        let limits = &self.presence_limits;
        t.presence.admits(member, presence_key, &payload, limits)?;
        admitted();
        if let Some(m) = t.members.get_mut(&member).filter(|m| !m.presence) {
            m.presence = true;
            if m.access.presence {
                self.push_presence_state(&key.topic, &t.presence, m);
            }
        }
        if let Some(diff) = t.presence.track(member, presence_key, payload, limits)? {
            self.fan_out_diff(key, t, &diff);
            self.tell_cluster(key, member, t.presence.local(member));
        }
        Ok(())
    }

    pub fn untrack(&self, key: &TopicKey, member: MemberId) {
        let Some(topic) = self.topic(key) else {
            return;
        };
        let mut t = lock(&topic);
        if let Some(diff) = t.presence.untrack(member) {
            self.fan_out_diff(key, &mut t, &diff);
            self.tell_cluster(key, member, None);
        }
    }

    /// Sends a diff to every member that may read presence: on a public channel every
    /// member, as Supabase does whatever `presence.enabled` said; on a private one those
    /// with presence on (at join, or after a first track), the only ones whose read
    /// policy was asked.
    fn fan_out_diff(&self, key: &TopicKey, t: &mut Topic, diff: &Diff) {
        let topic = &*key.topic;
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
        for m in t
            .members
            .values_mut()
            .filter(|m| (m.presence || !key.private) && m.access.presence)
        {
            if let Some(frame) = frames.get(m.vsn) {
                sent += u64::from(m.push(self, frame, None));
            }
        }
        self.metrics.message_out("presence_diff", sent);
    }

    /// Number of topics with members (for status).
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Topics with their channel and presence counts, most channels first (then most
    /// presences, so a topic people are on outranks an idle one), at most
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
        out.sort_by(|a, b| {
            (b.channels, b.presence)
                .cmp(&(a.channels, a.presence))
                .then(a.topic.cmp(&b.topic))
        });
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
            access: Access::ALL,
            held: None,
            covered: None,
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
    fn members_of_one_topic_share_its_name() {
        let router = Router::new(Arc::new(Metrics::new()));
        let (first, second) = (key("lobby"), key("lobby"));
        assert!(!Arc::ptr_eq(&first.topic, &second.topic));
        let (m, _rx) = member(1, false);
        router.join(&first, m);
        let shared = router.shared_name(&second);
        assert!(
            Arc::ptr_eq(&shared, &first.topic),
            "the name the router holds"
        );
        let room = key("room");
        assert!(
            Arc::ptr_eq(&router.shared_name(&room), &room.topic),
            "no member: its own"
        );
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
        router
            .track(&key("lobby"), 1, "ada", Map::new(), || {})
            .unwrap();
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
