//! Several hub nodes over Redis (cluster mode, on when `redis_url` is set): client
//! broadcasts and presence cross nodes through one Redis pub/sub channel, each message
//! tagged with its origin node, which ignores it when it comes back. Each node owns its
//! members' presences and publishes their changes; every node holds the whole cluster's
//! presence, so a join anywhere gets it all in its first `presence_state`. Nodes
//! heartbeat on the channel; a node silent for `node_timeout_secs` is dead and its
//! members leave on every other node. While Redis is unreachable each node serves its own
//! clients (degraded), reconnects with backoff, and then every node re-sends a full
//! snapshot of its presences so all converge.
//!
//! Does not carry postgres_changes or database broadcasts: every node reads the global
//! change log itself, so each already delivers those to its own clients exactly once.
//! The router never sees Redis: it talks to [`ClusterHandle`] through its
//! `ClusterLink` trait, and the cluster task applies what others report through
//! the router's methods.

mod handle;
mod inbound;
mod node;
mod peers;
mod status;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

pub use handle::ClusterHandle;
pub use node::{run_cluster, ClusterTask};
pub use peers::PeerView;
pub use status::{ClusterSnapshot, ClusterStatus};

use crate::router::NodeId;
use crate::telemetry::Metrics;

/// Why a Redis session failed or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid redis_url: {0}")]
    BadUrl(redis::RedisError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis closed the subscription")]
    SubscriptionClosed,
    #[error("own heartbeat not seen back for {0:?}")]
    Stalled(Duration),
    #[error("cluster queue closed")]
    QueueClosed,
    #[error(
        "Redis refused the connection: {0} (check redis_url's password, user and database number)"
    )]
    Refused(redis::RedisError),
}

/// Whether Redis answered, and said no: a wrong or missing password, a user without the
/// rights, no such database. Redis down, slow or restarting is not a refusal.
fn is_refusal(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        e.kind(),
        ErrorKind::AuthenticationFailed
            | ErrorKind::Server(ServerErrorKind::ResponseError)
            | ErrorKind::Server(ServerErrorKind::NoPerm)
            | ErrorKind::Extension
    )
}

/// Connects to Redis once at start: a refusal ends the start, as Postgres's does, so a
/// node with the wrong password never joins a load balancer serving its clients alone.
/// Redis down or not answering within `wait` does not: the node starts degraded and
/// keeps trying, as it does when Redis goes away later.
pub async fn check_not_refused(task: &ClusterTask, wait: Duration) -> Result<(), ClusterError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(wait))
        .set_response_timeout(Some(wait));
    // A PING too: without a password nothing is refused until the first command.
    let attempt = async {
        let mut conn = task
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(wait, attempt).await {
        Ok(Err(e)) if is_refusal(&e) => Err(ClusterError::Refused(e)),
        _ => Ok(()),
    }
}

/// Cluster settings from the hub's configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub redis_url: String,
    /// Nodes with the same Redis and name form one cluster (the channel's prefix).
    pub name: String,
    /// A node silent this long is dead; its members leave everywhere else within it.
    pub node_timeout: Duration,
}

/// The pub/sub channel of cluster `name` on Redis database `db`. Pub/sub ignores database
/// numbers, so a deployment on `redis://host/5` would share `redis://host/0`'s channel
/// (broadcasts and presence, private ones too) were the number not in its name.
fn channel_name(name: &str, db: i64) -> String {
    match db {
        0 => format!("{name}:cluster"),
        db => format!("{name}:db{db}:cluster"),
    }
}

/// The handle for the router and status, and the task to spawn with [`run_cluster`].
pub fn start(
    config: ClusterConfig,
    node: NodeId,
    metrics: Arc<Metrics>,
) -> Result<(ClusterHandle, ClusterTask), ClusterError> {
    let client = redis::Client::open(config.redis_url.as_str()).map_err(ClusterError::BadUrl)?;
    let channel = channel_name(
        &config.name,
        client.get_connection_info().redis_settings().db(),
    );
    let (tx, rx) = mpsc::channel(handle::QUEUE_MESSAGES);
    let shared = Arc::new(handle::Shared {
        node,
        tx,
        queued_bytes: Default::default(),
        status: Arc::new(ClusterStatus::clustered(node, metrics.clone())),
        metrics,
        resync: Notify::new(),
    });
    let task = ClusterTask {
        shared: shared.clone(),
        rx,
        client,
        channel,
        timing: node::Timing::new(config.node_timeout),
    };
    Ok((ClusterHandle { shared }, task))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_redis_database_number_is_part_of_the_channel() {
        assert_eq!(super::channel_name("switchboard", 0), "switchboard:cluster");
        assert_eq!(
            super::channel_name("switchboard", 5),
            "switchboard:db5:cluster"
        );
    }
}
