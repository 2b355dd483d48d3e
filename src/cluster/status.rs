//! What the cluster reports about itself, for `/api/status` and `/metrics`: node id,
//! mode, whether Redis is reachable, the peers heard from. The cluster task writes, and
//! each notable event writes its log line and its metric together; readers take a
//! `snapshot()`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::peers::PeerView;
use crate::router::NodeId;
use crate::telemetry::Metrics;

/// Live cluster state; one per hub.
pub struct ClusterStatus {
    node: NodeId,
    /// Cluster mode (a `redis_url` is set).
    clustered: bool,
    degraded: AtomicBool,
    /// The other nodes' presences have arrived since start (or the wait for them ended):
    /// a joiner here gets everyone in its first `presence_state`. Always so when single.
    settled: AtomicBool,
    /// The current degraded period has been logged as a warning.
    warned: AtomicBool,
    sessions: AtomicU64,
    /// Short-held, never across an await.
    text: Mutex<Text>,
    metrics: Option<Arc<Metrics>>,
}

#[derive(Debug, Default)]
struct Text {
    peers: Vec<PeerView>,
    last_error: Option<String>,
}

/// A point-in-time copy of [`ClusterStatus`] (`/api/status` → `cluster`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterSnapshot {
    pub node_id: String,
    /// `single` (no `redis_url`) or `redis`.
    pub mode: &'static str,
    /// `ok`, or `degraded` while Redis is unreachable.
    pub state: &'static str,
    pub peers: Vec<PeerView>,
    /// Redis sessions started after the first.
    pub reconnects: u64,
    pub last_error: Option<String>,
}

impl ClusterStatus {
    /// A hub without a cluster.
    pub fn single(node: NodeId) -> ClusterStatus {
        ClusterStatus {
            node,
            clustered: false,
            degraded: AtomicBool::new(false),
            settled: AtomicBool::new(true),
            warned: AtomicBool::new(false),
            sessions: AtomicU64::new(0),
            text: Mutex::new(Text::default()),
            metrics: None,
        }
    }

    /// A cluster node; degraded until its first Redis session starts.
    pub(super) fn clustered(node: NodeId, metrics: Arc<Metrics>) -> ClusterStatus {
        metrics.cluster_degraded.set(1);
        ClusterStatus {
            clustered: true,
            degraded: AtomicBool::new(true),
            settled: AtomicBool::new(false),
            metrics: Some(metrics),
            ..ClusterStatus::single(node)
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    /// Whether this node holds the other nodes' presences (see `settled`); `/ready` waits
    /// for it.
    pub fn presence_ready(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// The wait for the other nodes' presences is over: `complete` when every node heard
    /// from sent its snapshot, else it timed out.
    pub(super) fn settle(&self, complete: bool) {
        if self.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        if complete {
            tracing::info!(node = %self.node, "cluster: every other node's presence received; ready");
        } else {
            tracing::warn!(node = %self.node, "cluster: not every other node's presence arrived within node_timeout_secs; ready without it");
        }
    }

    fn text(&self) -> std::sync::MutexGuard<'_, Text> {
        self.text.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A Redis session started: cross-node traffic flows.
    pub(super) fn session_started(&self) {
        let n = self.sessions.fetch_add(1, Ordering::AcqRel);
        self.degraded.store(false, Ordering::Release);
        self.warned.store(false, Ordering::Release);
        if let Some(m) = &self.metrics {
            m.cluster_degraded.set(0);
            if n > 0 {
                m.cluster_reconnects.inc();
            }
        }
        tracing::info!(node = %self.node, "cluster: connected to Redis; broadcast and presence cross nodes");
    }

    /// Redis is unreachable (or the session broke): traffic is node-local until it returns.
    pub(super) fn degraded(&self, why: &str) {
        self.degraded.store(true, Ordering::Release);
        if let Some(m) = &self.metrics {
            m.cluster_degraded.set(1);
        }
        self.text().last_error = Some(why.to_owned());
        if self.warned.swap(true, Ordering::AcqRel) {
            tracing::debug!(node = %self.node, error = why, "cluster: Redis still unreachable");
        } else {
            tracing::warn!(node = %self.node, error = why, "cluster degraded: Redis unreachable; broadcast and presence are node-local until it returns");
        }
    }

    /// A peer went silent past the node timeout (or said goodbye); its presences left.
    pub(super) fn peer_gone(&self, peer: NodeId, why: &'static str) {
        tracing::info!(node = %self.node, %peer, why, "cluster: node gone; its members left");
    }

    pub(super) fn set_peers(&self, peers: Vec<PeerView>) {
        if let Some(m) = &self.metrics {
            m.cluster_peers.set(peers.len() as i64);
        }
        self.text().peers = peers;
    }

    pub fn snapshot(&self) -> ClusterSnapshot {
        let text = self.text();
        ClusterSnapshot {
            node_id: self.node.to_string(),
            mode: if self.clustered { "redis" } else { "single" },
            state: if self.is_degraded() { "degraded" } else { "ok" },
            peers: text.peers.clone(),
            reconnects: self.sessions.load(Ordering::Acquire).saturating_sub(1),
            last_error: text.last_error.clone(),
        }
    }
}
