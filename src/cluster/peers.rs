//! What this node knows of the other nodes: when each was last heard from, whether its
//! presence snapshot has arrived since this node (re)connected, and which topics a
//! snapshot in progress has covered. Pure: time is passed in, so the liveness rules are
//! unit-tested without waiting.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::router::{NodeId, TopicKey};

#[derive(Debug)]
struct Peer {
    last_heard: Instant,
    /// The `node_timeout_secs` its heartbeats tell (older nodes tell none).
    timeout: Option<Duration>,
    /// Its full snapshot arrived since this node's session began.
    synced: bool,
    /// When this node last asked it for a snapshot.
    asked: Option<Instant>,
    /// A snapshot in progress: its id and the topics it (or a live change) covered.
    sync: Option<(u64, HashSet<TopicKey>)>,
}

/// A peer as `/api/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerView {
    pub node_id: String,
    pub last_heard_ms: u64,
    pub synced: bool,
}

/// The other nodes this node has heard from and not yet given up on.
#[derive(Debug, Default)]
pub struct Peers {
    peers: HashMap<NodeId, Peer>,
}

impl Peers {
    /// Records that `node` said something at `now`; true when it is a new peer.
    pub fn heard(&mut self, node: NodeId, now: Instant) -> bool {
        match self.peers.get_mut(&node) {
            Some(p) => {
                p.last_heard = now;
                false
            }
            None => {
                let peer = Peer {
                    last_heard: now,
                    timeout: None,
                    synced: false,
                    asked: None,
                    sync: None,
                };
                self.peers.insert(node, peer);
                true
            }
        }
    }

    /// Records the `node_timeout_secs` `node` heartbeats by.
    pub fn told_timeout(&mut self, node: NodeId, timeout: Duration) {
        if let Some(p) = self.peers.get_mut(&node) {
            p.timeout = Some(timeout);
        }
    }

    /// Removes and returns the peers silent for longer than `silence`, or than their own
    /// timeout when they told a longer one (they heartbeat by it).
    pub fn expire(&mut self, now: Instant, silence: Duration) -> Vec<NodeId> {
        let dead: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                let silence = p.timeout.map_or(silence, |t| t.max(silence));
                now.saturating_duration_since(p.last_heard) > silence
            })
            .map(|(n, _)| *n)
            .collect();
        for n in &dead {
            self.peers.remove(n);
        }
        dead
    }

    /// Forgets `node` (it said goodbye).
    pub fn forget(&mut self, node: NodeId) {
        self.peers.remove(&node);
    }

    /// This node (re)connected and asked everyone at `now`: every snapshot is owed again.
    pub fn asked_everyone(&mut self, now: Instant) {
        for p in self.peers.values_mut() {
            p.synced = false;
            p.asked = Some(now);
            p.sync = None;
        }
    }

    /// Whether to ask `node` for its snapshot now: it is not synced, not sending one, and
    /// was not asked within `again_after`. Records the ask.
    pub fn should_ask(&mut self, node: NodeId, now: Instant, again_after: Duration) -> bool {
        let Some(p) = self.peers.get_mut(&node) else {
            return false;
        };
        let recently = p
            .asked
            .is_some_and(|at| now.saturating_duration_since(at) < again_after);
        if p.synced || p.sync.is_some() || recently {
            return false;
        }
        p.asked = Some(now);
        true
    }

    pub fn begin_sync(&mut self, node: NodeId, sync: u64) {
        if let Some(p) = self.peers.get_mut(&node) {
            p.sync = Some((sync, HashSet::new()));
        }
    }

    /// `node`'s presence in `key` is current (a snapshot part or a live change).
    pub fn touch(&mut self, node: NodeId, key: &TopicKey) {
        if let Some((_, topics)) = self.peers.get_mut(&node).and_then(|p| p.sync.as_mut()) {
            topics.insert(key.clone());
        }
    }

    /// Ends snapshot `sync` of `node`: returns the topics it covered (the node has no
    /// presence anywhere else), or `None` if that snapshot was not in progress.
    pub fn end_sync(&mut self, node: NodeId, sync: u64) -> Option<HashSet<TopicKey>> {
        let p = self.peers.get_mut(&node)?;
        match p.sync.take() {
            Some((id, topics)) if id == sync => {
                p.synced = true;
                Some(topics)
            }
            other => {
                p.sync = other;
                None
            }
        }
    }

    /// Every peer heard from has sent its full snapshot since this node's session began.
    pub fn all_synced(&self) -> bool {
        self.peers.values().all(|p| p.synced)
    }

    /// The peers as `/api/status` shows them, ordered by node id.
    pub fn view(&self, now: Instant) -> Vec<PeerView> {
        let mut out: Vec<(NodeId, PeerView)> = self
            .peers
            .iter()
            .map(|(n, p)| {
                let view = PeerView {
                    node_id: n.to_string(),
                    last_heard_ms: now.saturating_duration_since(p.last_heard).as_millis() as u64,
                    synced: p.synced,
                };
                (*n, view)
            })
            .collect();
        out.sort_by_key(|(n, _)| *n);
        out.into_iter().map(|(_, v)| v).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const SECOND: Duration = Duration::from_secs(1);

    fn key(name: &str) -> TopicKey {
        TopicKey {
            private: false,
            topic: name.into(),
        }
    }

    #[test]
    fn a_peer_silent_past_the_limit_expires_once() {
        let t0 = Instant::now();
        let mut p = Peers::default();
        assert!(p.heard(A, t0));
        assert!(p.heard(B, t0));
        assert!(!p.heard(B, t0 + 5 * SECOND));
        assert!(p.expire(t0 + 9 * SECOND, 9 * SECOND).is_empty());
        assert_eq!(p.expire(t0 + 10 * SECOND, 9 * SECOND), vec![A]);
        assert!(p.expire(t0 + 10 * SECOND, 9 * SECOND).is_empty());
        assert_eq!(p.view(t0).len(), 1);
    }

    #[test]
    fn a_peer_with_a_longer_timeout_is_given_up_by_its_own() {
        let t0 = Instant::now();
        let mut p = Peers::default();
        p.heard(A, t0);
        p.heard(B, t0);
        // A heartbeats every 12 s (a 60 s timeout); this node's own is 10 s.
        p.told_timeout(A, 60 * SECOND);
        p.told_timeout(B, 5 * SECOND);
        assert_eq!(p.expire(t0 + 11 * SECOND, 10 * SECOND), vec![B]);
        assert!(p.expire(t0 + 60 * SECOND, 10 * SECOND).is_empty());
        assert_eq!(p.expire(t0 + 61 * SECOND, 10 * SECOND), vec![A]);
    }

    #[test]
    fn an_unsynced_peer_is_asked_once_per_interval() {
        let t0 = Instant::now();
        let mut p = Peers::default();
        p.heard(A, t0);
        assert!(p.should_ask(A, t0, 10 * SECOND));
        assert!(!p.should_ask(A, t0 + SECOND, 10 * SECOND));
        assert!(p.should_ask(A, t0 + 11 * SECOND, 10 * SECOND));
        assert!(
            !p.should_ask(B, t0, 10 * SECOND),
            "unknown peers are not asked"
        );
    }

    #[test]
    fn a_peer_sending_or_done_with_its_snapshot_is_not_asked() {
        let t0 = Instant::now();
        let mut p = Peers::default();
        p.heard(A, t0);
        p.begin_sync(A, 7);
        assert!(!p.should_ask(A, t0, SECOND));
        p.touch(A, &key("realtime:x"));
        assert_eq!(p.end_sync(A, 6), None, "another snapshot's end is ignored");
        let covered = p.end_sync(A, 7).unwrap();
        assert!(covered.contains(&key("realtime:x")));
        assert!(!p.should_ask(A, t0 + 60 * SECOND, SECOND));
        assert!(p.view(t0)[0].synced);
    }

    #[test]
    fn reconnecting_owes_every_snapshot_again_without_asking_twice() {
        let t0 = Instant::now();
        let mut p = Peers::default();
        p.heard(A, t0);
        p.begin_sync(A, 1);
        p.end_sync(A, 1);
        p.asked_everyone(t0 + SECOND);
        assert!(!p.view(t0)[0].synced);
        assert!(!p.should_ask(A, t0 + 2 * SECOND, 10 * SECOND));
        assert!(p.should_ask(A, t0 + 12 * SECOND, 10 * SECOND));
    }
}
