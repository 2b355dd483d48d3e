//! Durable consumers of the change log: webhook endpoints and the pull feed for sync
//! jobs. Each is a reader of the log with a position of its own (`mark`), read on pooled
//! connections (`log`), never sharing the live capture's cursor; the capture only tells
//! them when it has read something new (`CaptureStatus::progress`).
//!
//! Webhooks (`webhook`, `supervisor`): endpoints live in `realtime.webhook_endpoints`; a
//! hub delivers those whose lease it holds, one task per endpoint, batch after batch in
//! log order, signed (`deliver`), retried with backoff, and moves the stored cursor only
//! after a 2xx. Operators act through `admin` (CLI, REST, inspector).
//!
//! The feed (`feed`): `GET /realtime/v1/api/changes` returns the changes after an opaque
//! cursor as that token's viewer may see them (`changes::Changes::render`).
//!
//! Reached through [`ConsumersHandle`]; knows nothing of sockets or subscriptions.

pub mod admin;
mod deliver;
mod feed;
mod log;
mod mark;
mod select;
mod store;
mod supervisor;
mod webhook;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

pub use admin::{EndpointStatus, Operation};
pub use deliver::{event_id, sign};
pub use feed::{FeedPage, FeedQuery};
pub use mark::{FeedCursor, Mark, MarkError};

use crate::capture::{CaptureError, TableTicks};
use crate::changes::{Changes, RenderError, RlsChecker};
use crate::config::{ConsumerSettings, WebhookDecl};
use crate::db::pg_message;
use crate::telemetry::Metrics;

/// How long a status read is reused (scrapes, the inspector's stream, `/api/status`).
const STATUS_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ConsumersError {
    #[error("connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Mark(#[from] MarkError),
    #[error("no webhook named {0:?}")]
    NoSuchWebhook(String),
    /// An operator's argument the SQL function refused (e.g. a replay from the future).
    #[error("{0}")]
    BadArgument(String),
}

/// What every consumer task shares.
struct Inner {
    pool: Pool,
    changes: Changes,
    rls: RlsChecker,
    /// The capture's progress; each waiter clones it.
    progress: watch::Receiver<u64>,
    /// Which tables that progress was of.
    ticks: Arc<TableTicks>,
    /// Change feed requests waiting for changes now.
    feed_waiting: AtomicI64,
    settings: ConsumerSettings,
    /// Read again this often even without progress (the capture may be down).
    poll: Duration,
    /// This hub's name as a lease owner.
    node_id: String,
    sender: deliver::Sender,
    /// Endpoints the config file declares, upserted when delivery starts.
    declared: Vec<WebhookDecl>,
    /// Per endpoint delivered here: what only this hub knows. Written by the endpoint
    /// tasks, read by status; held only between awaits.
    local: Mutex<HashMap<String, Local>>,
    /// The supervisor waits on this: an operation on this hub wants delivery to notice now.
    poke: Notify,
    /// The last status read, reused for `STATUS_TTL`.
    status_cache: Mutex<Option<(Instant, Arc<Vec<EndpointStatus>>)>>,
}

/// What the delivering hub knows of an endpoint beyond its row.
#[derive(Debug, Clone, Default)]
struct Local {
    pending: usize,
    next_attempt_at: Option<DateTime<Utc>>,
}

/// The front of the durable consumers; cheap to clone.
#[derive(Clone)]
pub struct ConsumersHandle {
    inner: Arc<Inner>,
}

/// What the consumers are built from (wired in `lib.rs`).
pub struct ConsumersParts {
    pub pool: Pool,
    pub changes: Changes,
    pub rls: RlsChecker,
    pub progress: watch::Receiver<u64>,
    pub ticks: Arc<TableTicks>,
    pub settings: ConsumerSettings,
    pub poll: Duration,
    pub node_id: String,
    pub declared: Vec<WebhookDecl>,
}

impl ConsumersHandle {
    pub fn new(parts: ConsumersParts) -> ConsumersHandle {
        ConsumersHandle {
            inner: Arc::new(Inner {
                pool: parts.pool,
                changes: parts.changes,
                rls: parts.rls,
                progress: parts.progress,
                ticks: parts.ticks,
                feed_waiting: AtomicI64::new(0),
                sender: deliver::Sender::new(parts.settings.timeout),
                settings: parts.settings,
                poll: parts.poll,
                node_id: parts.node_id,
                declared: parts.declared,
                local: Mutex::default(),
                poke: Notify::new(),
                status_cache: Mutex::default(),
            }),
        }
    }

    /// This hub's name as a webhook lease owner (and in the log holds).
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Delivers the endpoints this hub holds leases on until `shutdown`, then releases
    /// them.
    pub async fn run_webhooks(&self, shutdown: CancellationToken) {
        supervisor::run_webhooks(self.inner.clone(), shutdown).await;
    }

    /// Every endpoint with its state and lag (reused for a second).
    pub async fn status(&self) -> Result<Arc<Vec<EndpointStatus>>, ConsumersError> {
        if let Some((at, cached)) = self.lock_cache().as_ref() {
            if at.elapsed() < STATUS_TTL {
                return Ok(cached.clone());
            }
        }
        let client = self.inner.pool.get().await?;
        let mut list = admin::list(&client, None).await?;
        drop(client);
        {
            let local = self.inner.lock_local();
            for s in &mut list {
                if let Some(l) = local.get(&s.name) {
                    s.pending_events = Some(l.pending);
                    s.next_attempt_at = l.next_attempt_at;
                }
            }
        }
        let list = Arc::new(list);
        *self.lock_cache() = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// Applies an operator's action and has delivery notice it at once; returns the
    /// endpoint's status after it (and, for a replay, the position it starts from).
    pub async fn operate(
        &self,
        name: &str,
        op: &Operation,
    ) -> Result<(Option<String>, Option<EndpointStatus>), ConsumersError> {
        let client = self.inner.pool.get().await?;
        let position = admin::apply(&client, name, op).await?;
        tracing::info!(endpoint = name, operation = op.name(), "webhook operation");
        self.inner.poke.notify_one();
        *self.lock_cache() = None;
        let status = admin::list(&client, Some(name)).await?.into_iter().next();
        Ok((position, status))
    }

    /// Copies every endpoint's state into the metrics registry (called on scrape).
    pub async fn export(&self, metrics: &Metrics) {
        metrics
            .feed_waiting
            .set(self.inner.feed_waiting.load(Ordering::Relaxed));
        let list = match self.status().await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "webhook status unavailable for metrics");
                return;
            }
        };
        let m = &metrics.webhooks;
        m.clear();
        for s in list.iter() {
            let l = [("endpoint", s.name.clone())];
            m.lag_events.get_or_create(&l).set(s.lag_events);
            m.lag_seconds.get_or_create(&l).set(s.lag_seconds);
            m.pending_events
                .get_or_create(&l)
                .set(s.pending_events.unwrap_or(0) as i64);
            m.failures.get_or_create(&l).set(i64::from(s.failures));
            m.attempts.get_or_create(&l).set(s.attempts);
            m.delivered_events.get_or_create(&l).set(s.delivered);
            m.last_success
                .get_or_create(&l)
                .set(s.last_success_at.map_or(0, |t| t.timestamp()));
            m.last_status
                .get_or_create(&l)
                .set(i64::from(s.last_status.unwrap_or(0)));
            m.paused
                .get_or_create(&l)
                .set(i64::from(s.state == "paused"));
            m.lost_data.get_or_create(&l).set(i64::from(s.data_lost));
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Arc<Vec<EndpointStatus>>)>> {
        self.inner
            .status_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn lock_local(&self) -> std::sync::MutexGuard<'_, HashMap<String, Local>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_local(&self, name: &str, f: impl FnOnce(&mut Local)) {
        f(self.lock_local().entry(name.to_owned()).or_default());
    }

    fn forget_local(&self, name: &str) {
        self.lock_local().remove(name);
    }
}
