//! What a node does with each message from another node: broadcasts go to its local
//! members (payload parsed only if it has some), presence changes and snapshots update
//! the remote presence it holds, goodbyes and snapshot ends drop what is stale, and a
//! peer whose snapshot is owed is asked for it.

use tokio::time::Instant;

use super::node::Node;
use super::wire::{self, Msg};

impl Node {
    /// Applies one message read from the cluster channel.
    pub fn apply(&self, bytes: &[u8], now: Instant) {
        if bytes.starts_with(&self.own.prefix) {
            // Own messages come back too (half the traffic of two busy nodes): skipped
            // unparsed; only the heartbeat matters (the session works).
            if bytes == self.own.heartbeat.as_slice() {
                *self.self_heard.lock().unwrap_or_else(|p| p.into_inner()) = now;
            }
            return;
        }
        let env = match wire::decode(bytes) {
            Ok(env) => env,
            Err(e) => {
                tracing::debug!(error = %e, "cluster: ignoring a message");
                self.shared.metrics.dropped("cluster_malformed", 1);
                return;
            }
        };
        let from = env.node;
        if from == self.shared.node {
            return;
        }
        let now_std = now.into_std();
        self.shared
            .metrics
            .cluster_received
            .get_or_create(&[("kind", env.msg.kind())])
            .inc();
        if self.peers().heard(from, now_std) {
            self.show_peers(now);
        }
        match env.msg {
            Msg::Heartbeat => {
                if let Some(ms) = env.timeout_ms {
                    let timeout = std::time::Duration::from_millis(ms);
                    self.peers().told_timeout(from, timeout);
                }
                let ask = self
                    .peers()
                    .should_ask(from, now_std, self.timing.ask_again);
                if ask {
                    self.shared.push_msg(&Msg::SyncRequest { to: Some(from) });
                }
            }
            Msg::Bye => {
                self.peers().forget(from);
                self.router.drop_remote_node(from, |_| false);
                self.shared.status.peer_gone(from, "shut down");
                self.show_peers(now);
            }
            Msg::SyncRequest { to } => {
                if to.is_none_or(|n| n == self.shared.node) {
                    self.shared.resync.notify_one();
                }
            }
            Msg::SyncBegin { sync } => self.peers().begin_sync(from, sync),
            Msg::TopicSync { topic, entries, .. } => {
                let key = topic.key();
                self.peers().touch(from, &key);
                let entries = entries.into_iter().map(|(m, p)| (m, p.into())).collect();
                self.router.sync_remote_topic(&key, from, entries);
            }
            Msg::SyncEnd { sync } => {
                let covered = self.peers().end_sync(from, sync);
                if let Some(covered) = covered {
                    self.router
                        .drop_remote_node(from, |key| covered.contains(key));
                    self.show_peers(now);
                }
            }
            Msg::Presence { topic, member, now } => {
                let key = topic.key();
                self.peers().touch(from, &key);
                self.router
                    .remote_presence(&key, from, member, now.map(Into::into));
            }
            Msg::Broadcast(b) => {
                let key = b.topic.key();
                if !self.router.has_members(&key) {
                    return;
                }
                match b.to_broadcast() {
                    Ok(msg) => {
                        self.router.broadcast(&key, &msg, None);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster: ignoring a broadcast");
                        self.shared.metrics.dropped("cluster_malformed", 1);
                    }
                }
            }
        }
    }
}
