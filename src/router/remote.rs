//! The router's side of cluster mode: the [`ClusterLink`] it tells local changes to, and
//! the methods that apply what other nodes report (their broadcasts go through
//! `Router::broadcast`; their presences, snapshots and deaths come here). Remote
//! presence is kept per topic next to the local one, so a joining member's first
//! `presence_state` holds the whole cluster, and a topic with only remote presence stays.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::presence::{Source, Tracked};
use super::{lock, MemberId, Router, TopicKey};
use crate::protocol::Broadcast;

/// A hub process in a cluster; random per process start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl NodeId {
    pub fn random() -> NodeId {
        NodeId(rand::random())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What the router tells other nodes, implemented by the cluster module. Both calls come
/// from the fan-out path and must not wait.
pub trait ClusterLink: Send + Sync {
    /// A client's broadcast, already delivered on this node.
    fn broadcast(&self, key: &TopicKey, msg: &Broadcast);
    /// Local `member`'s presence in `key` is now `now` (`None`: it has none). Called
    /// under the topic lock, so one topic's changes arrive in order.
    fn presence(&self, key: &TopicKey, member: MemberId, now: Option<&Tracked>);
}

impl Router {
    /// Whether this node has members in `key` (remote broadcasts for others are skipped
    /// before their payload is parsed).
    pub fn has_members(&self, key: &TopicKey) -> bool {
        self.topic(key)
            .is_some_and(|t| !lock(&t).members.is_empty())
    }

    /// A remote member's presence changed: `now` is its presence (`None`: it has none).
    /// Local members with presence get the diff.
    pub fn remote_presence(
        &self,
        key: &TopicKey,
        node: NodeId,
        member: MemberId,
        now: Option<Tracked>,
    ) {
        match now {
            Some(tracked) => {
                // Under the shard lock, like `join`, so the topic cannot be removed between.
                let entry = self.topics.entry(key.clone()).or_default();
                let mut t = lock(entry.value());
                if let Some(diff) = t.presence.put_remote(node, member, tracked) {
                    self.fan_out_diff(key, &mut t, &diff);
                }
            }
            None => {
                if let Some(topic) = self.topic(key) {
                    let mut t = lock(&topic);
                    if let Some(diff) = t.presence.remove(Source::Remote(node, member)) {
                        self.fan_out_diff(key, &mut t, &diff);
                    }
                }
                self.remove_if_empty(key);
            }
        }
    }

    /// `node`'s snapshot of its presences in `key`: they become exactly `entries`, and
    /// local members get one diff of what changed.
    pub fn sync_remote_topic(
        &self,
        key: &TopicKey,
        node: NodeId,
        entries: Vec<(MemberId, Tracked)>,
    ) {
        if entries.is_empty() {
            if let Some(topic) = self.topic(key) {
                let mut t = lock(&topic);
                let diff = t.presence.replace_node(node, entries);
                if !diff.is_empty() {
                    self.fan_out_diff(key, &mut t, &diff);
                }
            }
            self.remove_if_empty(key);
            return;
        }
        let entry = self.topics.entry(key.clone()).or_default();
        let mut t = lock(entry.value());
        let diff = t.presence.replace_node(node, entries);
        if !diff.is_empty() {
            self.fan_out_diff(key, &mut t, &diff);
        }
    }

    /// Removes `node`'s presences from every topic for which `keep` is false, sending
    /// local members the leaves (a dead node, a node that said goodbye, or topics missing
    /// from a node's full snapshot).
    pub fn drop_remote_node(&self, node: NodeId, keep: impl Fn(&TopicKey) -> bool) {
        for key in self.topic_keys() {
            if keep(&key) {
                continue;
            }
            if let Some(topic) = self.topic(&key) {
                let mut t = lock(&topic);
                if let Some(diff) = t.presence.drop_node(node) {
                    self.fan_out_diff(&key, &mut t, &diff);
                }
            }
            self.remove_if_empty(&key);
        }
    }

    /// Every topic this node knows (members or presence).
    pub fn topic_keys(&self) -> Vec<TopicKey> {
        self.topics.iter().map(|e| e.key().clone()).collect()
    }

    /// Calls `f` with the local presences of `key` under the topic lock (so what `f`
    /// queues is ordered with the changes `ClusterLink::presence` reports). Not called
    /// for a topic without local presence.
    pub fn with_local_presence(&self, key: &TopicKey, f: impl FnOnce(Vec<(MemberId, Tracked)>)) {
        if let Some(topic) = self.topic(key) {
            let t = lock(&topic);
            let locals = t.presence.locals();
            if !locals.is_empty() {
                f(locals);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{json, Value};

    use super::*;
    use crate::protocol::{BroadcastPayload, Vsn, WireFrame};
    use crate::router::outbox::{outbox, OutboxRx};
    use crate::router::Member;
    use crate::telemetry::Metrics;

    const N: NodeId = NodeId(99);

    /// Records what the router tells other nodes.
    #[derive(Default)]
    struct Recorder {
        said: Mutex<Vec<String>>,
    }

    impl ClusterLink for Recorder {
        fn broadcast(&self, key: &TopicKey, msg: &Broadcast) {
            let line = format!("broadcast {} {}", key.topic, msg.event);
            self.said.lock().unwrap().push(line);
        }
        fn presence(&self, key: &TopicKey, member: MemberId, now: Option<&Tracked>) {
            let now = now.map_or("none".to_owned(), |t| t.key.clone());
            let line = format!("presence {} {member} {now}", key.topic);
            self.said.lock().unwrap().push(line);
        }
    }

    fn key() -> TopicKey {
        TopicKey {
            private: false,
            topic: "realtime:room".into(),
        }
    }

    fn member(id: MemberId) -> (Member, OutboxRx) {
        let (tx, rx) = outbox(64, 1 << 20);
        let m = Member {
            id,
            conn_id: id,
            join_ref: "1".into(),
            vsn: Vsn::V1,
            outbox: crate::router::outbox::ChannelOutbox::direct(tx),
            broadcast_self: false,
            presence: true,
            access: crate::router::Access::ALL,
            held: None,
            covered: None,
        };
        (m, rx)
    }

    /// Every queued frame as (event, payload).
    fn frames(rx: &mut OutboxRx) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        while let Some(WireFrame::Text(b)) = rx.try_recv() {
            let v: Value = serde_json::from_slice(&b).unwrap();
            out.push((
                v["event"].as_str().unwrap().to_owned(),
                v["payload"].clone(),
            ));
        }
        out
    }

    fn tracked(key: &str, phx_ref: &str) -> Tracked {
        Tracked {
            key: key.into(),
            phx_ref: phx_ref.into(),
            phx_ref_prev: None,
            payload: json!({"remote": true}).as_object().unwrap().clone(),
        }
    }

    #[test]
    fn a_joiner_gets_remote_presences_in_its_first_presence_state() {
        let router = Router::new(Arc::new(Metrics::new()));
        router.remote_presence(&key(), N, 5, Some(tracked("bob", "R1")));
        let (m, mut rx) = member(1);
        router.join(&key(), m);
        let got = frames(&mut rx);
        assert_eq!(got[0].0, "presence_state");
        assert_eq!(got[0].1["bob"]["metas"][0]["phx_ref"], "R1");
    }

    #[test]
    fn remote_changes_reach_local_members_once_and_local_ones_reach_the_link() {
        let link = Arc::new(Recorder::default());
        let router = Router::with_cluster(Arc::new(Metrics::new()), link.clone());
        let (m, mut rx) = member(1);
        router.join(&key(), m);
        router
            .track(
                &key(),
                1,
                "alice",
                json!({}).as_object().unwrap().clone(),
                || {},
            )
            .unwrap();
        router.remote_presence(&key(), N, 5, Some(tracked("bob", "R1")));
        router.remote_presence(&key(), N, 5, Some(tracked("bob", "R1")));
        router.remote_presence(&key(), N, 5, None);
        router.remote_presence(&key(), N, 5, None);
        router.leave(&key(), 1);
        let events: Vec<String> = frames(&mut rx).into_iter().map(|f| f.0).collect();
        // state, own join, bob's join, bob's leave: nothing twice.
        assert_eq!(
            events,
            [
                "presence_state",
                "presence_diff",
                "presence_diff",
                "presence_diff"
            ]
        );
        assert_eq!(
            *link.said.lock().unwrap(),
            [
                "presence realtime:room 1 alice",
                "presence realtime:room 1 none"
            ]
        );
        assert_eq!(router.topic_count(), 0);
    }

    #[test]
    fn a_topic_with_only_remote_presence_stays_until_its_node_is_dropped() {
        let router = Router::new(Arc::new(Metrics::new()));
        router.remote_presence(&key(), N, 5, Some(tracked("bob", "R1")));
        assert_eq!(router.topic_count(), 1);
        router.drop_remote_node(NodeId(1), |_| false);
        assert_eq!(router.topic_count(), 1);
        router.drop_remote_node(N, |k| *k == key());
        assert_eq!(router.topic_count(), 1, "kept topics are untouched");
        router.drop_remote_node(N, |_| false);
        assert_eq!(router.topic_count(), 0);
    }

    #[test]
    fn a_snapshot_replaces_a_nodes_presences_with_one_diff() {
        let router = Router::new(Arc::new(Metrics::new()));
        router.remote_presence(&key(), N, 5, Some(tracked("bob", "R1")));
        router.remote_presence(&key(), N, 6, Some(tracked("eve", "R2")));
        let (m, mut rx) = member(1);
        router.join(&key(), m);
        router.sync_remote_topic(&key(), N, vec![(5, tracked("bob", "R1"))]);
        let got = frames(&mut rx);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1].1["leaves"]["eve"]["metas"][0]["phx_ref"], "R2");
        assert_eq!(got[1].1["joins"], json!({}));
    }

    #[test]
    fn only_client_broadcasts_reach_the_link() {
        let link = Arc::new(Recorder::default());
        let router = Router::with_cluster(Arc::new(Metrics::new()), link.clone());
        let msg = Broadcast {
            event: "e".into(),
            payload: BroadcastPayload::Json(json!({})),
            meta: None,
            binary_origin: false,
        };
        router.publish(&key(), &msg, None);
        router.broadcast(&key(), &msg, None);
        assert_eq!(*link.said.lock().unwrap(), ["broadcast realtime:room e"]);
    }
}
