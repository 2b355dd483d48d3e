//! The cluster task: connect to Redis, run a session (publish queued messages, apply
//! received ones, heartbeat, send presence snapshots), and when Redis fails, stay
//! degraded (node-local) and reconnect with backoff. Silent peers are expired on the same
//! schedule whether connected or not, so a dead node's members leave within
//! `node_timeout_secs` everywhere else.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub, PubSubStream};
use redis::AsyncConnectionConfig;
use tokio::sync::mpsc;
use tokio::time::{interval, interval_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::handle::{Outgoing, Shared};
use super::peers::Peers;
use super::wire::{self, Msg, Presence, Topic};
use super::ClusterError;
use crate::router::Router;

/// First wait after a failed connect; doubled up to [`BACKOFF_MAX`], with jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Messages sent to Redis in one pipeline at most.
const PUBLISH_BATCH: usize = 128;

/// Schedules derived from `node_timeout_secs`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// `node_timeout_secs`, which heartbeats tell.
    pub node_timeout: Duration,
    pub heartbeat: Duration,
    /// How often silent peers are looked for.
    pub sweep: Duration,
    /// Silence after which a peer is dead: its last heartbeat plus this plus one sweep
    /// stays within the node timeout.
    pub dead_after: Duration,
    /// Own heartbeat not seen back for this long: the session is broken.
    pub self_timeout: Duration,
    /// Connect and command timeout.
    pub io_timeout: Duration,
    /// An unsynced peer is asked for its snapshot again after this.
    pub ask_again: Duration,
}

impl Timing {
    pub fn new(node_timeout: Duration) -> Timing {
        let sweep = (node_timeout / 10).min(Duration::from_millis(250));
        Timing {
            node_timeout,
            heartbeat: node_timeout / 5,
            sweep,
            dead_after: node_timeout.saturating_sub(sweep),
            self_timeout: node_timeout / 2,
            io_timeout: node_timeout / 2,
            ask_again: node_timeout,
        }
    }
}

/// What `run_cluster` consumes: made by [`super::start`] with the handle.
pub struct ClusterTask {
    pub(super) shared: Arc<Shared>,
    pub(super) rx: mpsc::Receiver<Outgoing>,
    pub(super) client: redis::Client,
    pub(super) channel: String,
    pub(super) timing: Timing,
}

/// The running node's state, shared by the loops of a session.
pub(super) struct Node {
    pub shared: Arc<Shared>,
    pub router: Arc<Router>,
    pub timing: Timing,
    channel: String,
    /// Short-held, never across an await.
    peers: Mutex<Peers>,
    /// When this node's own heartbeat last came back through Redis.
    pub self_heard: Mutex<Instant>,
    pub own: wire::Own,
    syncs: AtomicU64,
    /// When the node started, and when its current Redis session did, if one is up (see
    /// `settle`).
    began: Instant,
    session_began: Mutex<Option<Instant>>,
}

/// An open Redis session: a connection for commands and one subscribed to the channel.
struct Link {
    conn: MultiplexedConnection,
    pubsub: PubSub,
}

/// Runs the node's cluster side until `shutdown`; then publishes what is queued and a
/// goodbye, so other nodes drop this node's presences at once.
pub async fn run_cluster(task: ClusterTask, router: Arc<Router>, shutdown: CancellationToken) {
    let ClusterTask {
        shared,
        mut rx,
        client,
        channel,
        timing,
    } = task;
    let node = Node {
        own: wire::Own::of(shared.node, timing.node_timeout),
        shared,
        router,
        timing,
        channel,
        peers: Mutex::new(Peers::default()),
        self_heard: Mutex::new(Instant::now()),
        syncs: AtomicU64::new(1),
        began: Instant::now(),
        session_began: Mutex::new(None),
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = node.connect(&client) => r,
            never = node.sweep_forever() => match never {},
        };
        let error = match attempt {
            Ok(link) => {
                backoff = BACKOFF_MIN;
                match node.session(link, &mut rx, &shutdown).await {
                    Ok(()) => break,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        *node.session_began.lock().unwrap_or_else(|p| p.into_inner()) = None;
        node.shared.status.degraded(&error.to_string());
        let wait = backoff.mul_f64(rand::random_range(0.75..1.25));
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            never = node.discard_forever(&mut rx) => match never {},
            never = node.sweep_forever() => match never {},
        }
    }
}

impl Node {
    pub fn peers(&self) -> MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn connect(&self, client: &redis::Client) -> Result<Link, ClusterError> {
        let io = self.timing.io_timeout;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(io))
            .set_response_timeout(Some(io));
        let open = async {
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, ClusterError>(Link { conn, pubsub })
        };
        tokio::time::timeout(io, open)
            .await
            .map_err(|_| ClusterError::Timeout(io))?
    }

    /// One Redis session, until it breaks (`Err`) or the hub shuts down (`Ok`).
    async fn session(
        &self,
        link: Link,
        rx: &mut mpsc::Receiver<Outgoing>,
        shutdown: &CancellationToken,
    ) -> Result<(), ClusterError> {
        let Link { mut conn, pubsub } = link;
        let mut messages = pubsub.into_on_message();
        *self.self_heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        *self.session_began.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.shared.status.session_started();
        // Changes may have been missed both ways: ask everyone for their presences and
        // send ours (the snapshot loop starts with it).
        self.peers().asked_everyone(Instant::now().into_std());
        self.show_peers(Instant::now());
        self.shared.push_msg(&Msg::SyncRequest { to: None });
        self.shared.resync.notify_one();
        let broken = tokio::select! {
            e = self.publish_loop(&mut conn, rx) => e,
            e = self.receive_loop(&mut messages) => e,
            e = self.tick_loop() => e,
            e = self.snapshot_loop() => e,
            _ = shutdown.cancelled() => return self.farewell(&mut conn, rx).await,
        };
        Err(broken)
    }

    async fn publish_loop(
        &self,
        conn: &mut MultiplexedConnection,
        rx: &mut mpsc::Receiver<Outgoing>,
    ) -> ClusterError {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            let Some(first) = rx.recv().await else {
                return ClusterError::QueueClosed;
            };
            batch.push(first);
            while batch.len() < PUBLISH_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.publish(conn, &mut batch).await {
                return e;
            }
        }
    }

    /// Publishes `batch` in one pipeline and empties it.
    async fn publish(
        &self,
        conn: &mut MultiplexedConnection,
        batch: &mut Vec<Outgoing>,
    ) -> Result<(), ClusterError> {
        let mut pipe = redis::pipe();
        for m in batch.iter() {
            pipe.cmd("PUBLISH")
                .arg(&self.channel)
                .arg(&m.bytes)
                .ignore();
        }
        let metrics = &self.shared.metrics;
        for m in batch.drain(..) {
            self.shared.taken(&m);
            metrics
                .cluster_published
                .get_or_create(&[("kind", m.kind)])
                .inc();
        }
        pipe.query_async::<()>(conn).await?;
        Ok(())
    }

    async fn receive_loop(&self, messages: &mut PubSubStream) -> ClusterError {
        while let Some(m) = messages.next().await {
            self.apply(m.get_payload_bytes(), Instant::now());
        }
        ClusterError::SubscriptionClosed
    }

    /// Heartbeats (checking that the previous ones came back) and peer expiry.
    async fn tick_loop(&self) -> ClusterError {
        let mut beat = interval_at(
            Instant::now() + self.timing.heartbeat,
            self.timing.heartbeat,
        );
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sweep = interval(self.timing.sweep);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let silent = self.self_heard.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
                    if silent > self.timing.self_timeout {
                        return ClusterError::Stalled(silent);
                    }
                    self.shared.push(Msg::Heartbeat.kind(), self.own.heartbeat.clone());
                }
                _ = sweep.tick() => self.sweep(Instant::now()),
            }
        }
    }

    /// Expires silent peers (their members leave here) and refreshes the status.
    pub fn sweep(&self, now: Instant) {
        let dead = self.peers().expire(now.into_std(), self.timing.dead_after);
        for node in dead {
            self.router.drop_remote_node(node, |_| false);
            self.shared
                .status
                .peer_gone(node, "silent past node_timeout_secs");
        }
        self.show_peers(now);
    }

    /// Puts the peers as they are now into the status (each sweep, and at once when a
    /// peer appears, finishes a snapshot, leaves, or all snapshots are owed again).
    pub fn show_peers(&self, now: Instant) {
        let view = self.peers().view(now.into_std());
        self.shared.status.set_peers(view);
        self.settle(now);
    }

    /// Ends the start-up wait for the other nodes' presences: once a live session has
    /// lasted a heartbeat and a quarter (every live node has been heard from) and every
    /// node heard from has sent its snapshot; or, whatever has arrived, once the node
    /// timeout has passed since start (Redis down, a node that never answers).
    fn settle(&self, now: Instant) {
        if self.shared.status.presence_ready() {
            return;
        }
        let session_began = *self.session_began.lock().unwrap_or_else(|p| p.into_inner());
        let heard_everyone = session_began
            .is_some_and(|at| now.saturating_duration_since(at) >= self.timing.heartbeat * 5 / 4);
        if heard_everyone && self.peers().all_synced() {
            self.shared.status.settle(true);
        } else if now.saturating_duration_since(self.began)
            >= self.timing.dead_after + self.timing.sweep
        {
            self.shared.status.settle(false);
        }
    }

    async fn sweep_forever(&self) -> Infallible {
        let mut sweep = interval(self.timing.sweep);
        loop {
            sweep.tick().await;
            self.sweep(Instant::now());
        }
    }

    /// While degraded: what was queued before Redis failed is dropped.
    async fn discard_forever(&self, rx: &mut mpsc::Receiver<Outgoing>) -> Infallible {
        loop {
            match rx.recv().await {
                Some(m) => {
                    self.shared.taken(&m);
                    self.shared.metrics.dropped("cluster_degraded", 1);
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Sends a full snapshot of local presences each time one is asked for. Each topic's
    /// part is queued under that topic's lock, so it is ordered with the topic's live
    /// changes; it waits for room in the queue instead of dropping.
    async fn snapshot_loop(&self) -> ClusterError {
        loop {
            self.shared.resync.notified().await;
            let sync = self.syncs.fetch_add(1, Ordering::Relaxed);
            let tx = &self.shared.tx;
            let Ok(permit) = tx.reserve().await else {
                return ClusterError::QueueClosed;
            };
            self.shared.send_reserved(permit, &Msg::SyncBegin { sync });
            for key in self.router.topic_keys() {
                let Ok(permit) = tx.reserve().await else {
                    return ClusterError::QueueClosed;
                };
                self.router.with_local_presence(&key, |locals| {
                    let entries = locals
                        .iter()
                        .map(|(member, t)| (*member, Presence::from(t)))
                        .collect();
                    let topic = Topic::of(&key);
                    self.shared.send_reserved(
                        permit,
                        &Msg::TopicSync {
                            sync,
                            topic,
                            entries,
                        },
                    );
                });
            }
            let Ok(permit) = tx.reserve().await else {
                return ClusterError::QueueClosed;
            };
            self.shared.send_reserved(permit, &Msg::SyncEnd { sync });
        }
    }

    /// Publishes what is still queued (the leaves of the connections just closed) and a
    /// goodbye.
    async fn farewell(
        &self,
        conn: &mut MultiplexedConnection,
        rx: &mut mpsc::Receiver<Outgoing>,
    ) -> Result<(), ClusterError> {
        let mut batch = Vec::new();
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        batch.push(self.shared.outgoing(&Msg::Bye));
        let io = self.timing.io_timeout;
        tokio::time::timeout(io, self.publish(conn, &mut batch))
            .await
            .map_err(|_| ClusterError::Timeout(io))?
    }
}
