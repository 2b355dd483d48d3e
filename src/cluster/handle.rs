//! The cloneable front of the cluster task: the router's [`ClusterLink`] and the bounded
//! queue of encoded messages waiting to be published. Pushing never waits: a message
//! that does not fit, or that comes while Redis is unreachable, is dropped and counted;
//! a dropped presence change asks for a full presence snapshot instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::status::ClusterStatus;
use super::wire::{self, Msg, Presence, Topic};
use crate::protocol::Broadcast;
use crate::router::presence::Tracked;
use crate::router::{ClusterLink, MemberId, NodeId, TopicKey};
use crate::telemetry::Metrics;

/// Messages waiting to be published, at most.
pub(super) const QUEUE_MESSAGES: usize = 16 * 1024;
/// Bytes waiting to be published, at most (a single larger message still fits an empty
/// queue).
const QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// One encoded message for the cluster channel.
pub(super) struct Outgoing {
    pub bytes: Vec<u8>,
    pub kind: &'static str,
}

/// State shared by the handle and the cluster task.
pub(super) struct Shared {
    pub node: NodeId,
    /// Fan-out paths and the cluster task push; the cluster task's publisher holds the
    /// receiver.
    pub tx: mpsc::Sender<Outgoing>,
    pub queued_bytes: AtomicUsize,
    pub status: Arc<ClusterStatus>,
    pub metrics: Arc<Metrics>,
    /// Wakes the snapshot loop: a peer asked, or local presence changes were dropped.
    pub resync: Notify,
}

impl Shared {
    /// Queues `bytes` without waiting; false when dropped (counted).
    pub fn push(&self, kind: &'static str, bytes: Vec<u8>) -> bool {
        if self.status.is_degraded() {
            self.metrics.dropped("cluster_degraded", 1);
            return false;
        }
        let len = bytes.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.metrics.dropped("cluster_queue_full", 1);
            return false;
        }
        match self.tx.try_send(Outgoing { bytes, kind }) {
            Ok(()) => true,
            Err(_) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                self.metrics.dropped("cluster_queue_full", 1);
                false
            }
        }
    }

    /// Queues a control message without waiting (heartbeats, sync requests).
    pub fn push_msg(&self, msg: &Msg<'_>) -> bool {
        self.push(msg.kind(), wire::encode(self.node, msg))
    }

    /// Encodes `msg`, counting its bytes as queued.
    pub fn outgoing(&self, msg: &Msg<'_>) -> Outgoing {
        let bytes = wire::encode(self.node, msg);
        self.queued_bytes.fetch_add(bytes.len(), Ordering::AcqRel);
        Outgoing {
            bytes,
            kind: msg.kind(),
        }
    }

    /// Sends through a reserved slot (snapshots wait for room instead of dropping).
    pub fn send_reserved(&self, permit: mpsc::Permit<'_, Outgoing>, msg: &Msg<'_>) {
        permit.send(self.outgoing(msg));
    }

    /// A message left the queue.
    pub fn taken(&self, m: &Outgoing) {
        self.queued_bytes.fetch_sub(m.bytes.len(), Ordering::AcqRel);
    }
}

/// Cloneable front of a running cluster node.
#[derive(Clone)]
pub struct ClusterHandle {
    pub(super) shared: Arc<Shared>,
}

impl ClusterHandle {
    pub fn node(&self) -> NodeId {
        self.shared.node
    }

    /// The status `/api/status` and `/metrics` read.
    pub fn status(&self) -> Arc<ClusterStatus> {
        self.shared.status.clone()
    }
}

impl ClusterLink for ClusterHandle {
    fn broadcast(&self, key: &TopicKey, msg: &Broadcast) {
        let s = &self.shared;
        if s.status.is_degraded() {
            s.metrics.dropped("cluster_degraded", 1);
            return;
        }
        s.push("broadcast", wire::encode_broadcast(s.node, key, msg));
    }

    fn presence(&self, key: &TopicKey, member: MemberId, now: Option<&Tracked>) {
        let s = &self.shared;
        if s.status.is_degraded() {
            // The snapshot sent when Redis returns carries this change.
            s.metrics.dropped("cluster_degraded", 1);
            return;
        }
        let msg = Msg::Presence {
            topic: Topic::of(key),
            member,
            now: now.map(Presence::from),
        };
        if !s.push_msg(&msg) {
            // Other nodes missed a change: send them everything again.
            s.resync.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::protocol::BroadcastPayload;

    fn handle(capacity: usize) -> (ClusterHandle, mpsc::Receiver<Outgoing>) {
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared {
            node: NodeId(1),
            tx,
            queued_bytes: AtomicUsize::new(0),
            status: Arc::new(ClusterStatus::clustered(NodeId(1), metrics.clone())),
            metrics,
            resync: Notify::new(),
        });
        (ClusterHandle { shared }, rx)
    }

    fn key() -> TopicKey {
        TopicKey {
            private: false,
            topic: "realtime:t".into(),
        }
    }

    fn msg() -> Broadcast {
        Broadcast {
            event: "e".into(),
            payload: BroadcastPayload::Json(json!({"n": 1})),
            meta: None,
            binary_origin: false,
        }
    }

    fn tracked() -> Tracked {
        Tracked {
            key: "k".into(),
            phx_ref: "R".into(),
            phx_ref_prev: None,
            payload: Default::default(),
        }
    }

    async fn resync_asked(h: &ClusterHandle) -> bool {
        tokio::time::timeout(Duration::ZERO, h.shared.resync.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn nothing_is_queued_while_degraded_and_no_snapshot_is_asked_for() {
        let (h, mut rx) = handle(8);
        h.broadcast(&key(), &msg());
        h.presence(&key(), 1, Some(&tracked()));
        assert!(rx.try_recv().is_err());
        assert!(!resync_asked(&h).await, "the reconnect snapshot covers it");
    }

    #[tokio::test]
    async fn queued_messages_count_their_bytes_until_taken() {
        let (h, mut rx) = handle(8);
        h.shared.status.session_started();
        h.broadcast(&key(), &msg());
        let m = rx.try_recv().expect("queued");
        assert_eq!(m.kind, "broadcast");
        assert_eq!(h.shared.queued_bytes.load(Ordering::Acquire), m.bytes.len());
        h.shared.taken(&m);
        assert_eq!(h.shared.queued_bytes.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_presence_change_that_does_not_fit_asks_for_a_full_snapshot() {
        let (h, _rx) = handle(1);
        h.shared.status.session_started();
        h.broadcast(&key(), &msg());
        h.broadcast(&key(), &msg());
        assert!(
            !resync_asked(&h).await,
            "a dropped broadcast is only counted"
        );
        h.presence(&key(), 1, None);
        assert!(resync_asked(&h).await);
    }
}
