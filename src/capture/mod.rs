//! Change capture: one dedicated Postgres connection that reads `realtime.changes`
//! gap-free by transaction visibility (ARCHITECTURE.md, "Gap-free capture"), wakes on a
//! NOTIFY while writes are rare and polls while they are frequent (`wake`), reconnects
//! with backoff and catches up from the same position. It checkpoints this hub's position
//! as a hold on the log and prunes what every hold has read (`retention`). Beside it, on
//! the pool, `maintenance` keeps capture in line with the `supabase_realtime`
//! publication and prunes `realtime.messages`. Produces `LogBatch`es for `changes`;
//! knows nothing of clients.

mod cursor;
mod maintenance;
mod reader;
mod retention;
mod status;
mod wake;

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;

pub use cursor::{Cursor, CursorError, Origin, Position};
pub use maintenance::{run_maintenance, Maintenance};
pub use reader::{
    correct, count_between, current_cursor, current_position, events_between, next_events,
    next_page, PageRead, Statements, READ_PAGE_SQL, READ_RANGE_SQL,
};
pub use retention::{prune, Pruned, Retention};
pub use status::{CaptureStatus, CaptureStatusSnapshot};

use crate::changes::LogBatch;
use crate::db::pg_message;
use reader::Page;
use wake::{Next, Wake};

/// The NOTIFY channel the capture triggers and `realtime.send` signal.
pub const WAKE_CHANNEL: &str = "switchboard_changes";
/// `application_name` of the capture connection (visible in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "switchboard-capture";
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often this hub's position is checkpointed as its hold on the log.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

const WANT_WAKE: &str = "select realtime.want_wake($1)";
const DROP_WAKE: &str = "select realtime.drop_wake()";

#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub database_url: String,
    /// Read even without a wake-up this often.
    pub poll_interval: Duration,
    /// Rows per page sent to the router.
    pub batch_limit: usize,
    pub retention: Retention,
    pub reconnect_max_backoff: Duration,
    /// This hub's name in `realtime.log_holds`.
    pub node_id: String,
}

impl CaptureConfig {
    pub fn new(database_url: impl Into<String>) -> Self {
        CaptureConfig {
            database_url: database_url.into(),
            ..Self::default()
        }
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            database_url: String::new(),
            poll_interval: Duration::from_secs(1),
            batch_limit: 1000,
            retention: Retention::default(),
            reconnect_max_backoff: Duration::from_secs(5),
            node_id: uuid::Uuid::new_v4().to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("bad database url: {0}")]
    BadUrl(String),
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("capture connection closed: {0}")]
    ConnectionClosed(String),
    #[error(transparent)]
    Cursor(#[from] CursorError),
}

/// Runs until `shutdown` (or until `out`'s receiver is dropped). Delivers, in pages,
/// every change that commits after the first successful connection, exactly once.
pub async fn run_capture(
    cfg: CaptureConfig,
    out: mpsc::Sender<LogBatch>,
    status: Arc<CaptureStatus>,
    shutdown: CancellationToken,
) {
    let mut position: Option<Position> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut connected_before = false;
    loop {
        let mut session = Session {
            cfg: &cfg,
            out: &out,
            status: &status,
            shutdown: &shutdown,
        };
        let result = session
            .run(&mut position, &mut connected_before, &mut backoff)
            .await;
        match result {
            Ok(()) => break,
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(error = %message, retry_in_ms = backoff.as_millis() as u64,
                    "capture connection failed");
                status.set_disconnected(Some(message));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(cfg.reconnect_max_backoff.max(FIRST_BACKOFF));
    }
    status.set_disconnected(None);
    tracing::info!("capture stopped");
}

/// One connection's lifetime.
struct Session<'a> {
    cfg: &'a CaptureConfig,
    out: &'a mpsc::Sender<LogBatch>,
    status: &'a CaptureStatus,
    shutdown: &'a CancellationToken,
}

/// Periodic upkeep on the capture connection, run between reads.
struct Upkeep {
    next_checkpoint: Instant,
    next_prune: Instant,
    prune_every: Duration,
}

/// An empty batch that only moves dispatch's position (at start, and about once a
/// second while the log is quiet, so positions handed to readers stay recent).
fn position_only(position: &Position) -> LogBatch {
    LogBatch {
        events: Vec::new(),
        position: position.to_string().into(),
        rules_version: None,
    }
}

impl Session<'_> {
    /// Ok on shutdown; Err when the connection failed (the caller reconnects).
    async fn run(
        &mut self,
        position: &mut Option<Position>,
        connected_before: &mut bool,
        backoff: &mut Duration,
    ) -> Result<(), CaptureError> {
        let (mut client, mut notified, driver) = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(()),
            opened = open(&self.cfg.database_url) => opened?,
        };
        let _abort_driver = AbortOnDrop(driver);
        client
            .batch_execute(&format!("listen {WAKE_CHANNEL}"))
            .await?;
        let stmts = Statements::prepare(&client).await?;
        if let Some(p) = position.as_mut() {
            if reader::correct(&client, p).await? {
                tracing::warn!(
                    position = %p,
                    "Postgres restarted since the last read; transaction ids it may have \
                     handed out again are read again"
                );
            }
        }
        let position = match position {
            Some(p) => p,
            None => position.insert(reader::current_position(&client).await?),
        };
        let text = position.to_string();
        if *connected_before {
            self.status.count_reconnect();
            tracing::info!(position = text, "capture reconnected; catching up");
        } else {
            tracing::info!(position = text, "capture connected");
        }
        *connected_before = true;
        *backoff = FIRST_BACKOFF;
        self.status.set_connected(&text);

        if !self.announce(position).await {
            return self.stop(&client).await;
        }
        let retention = &self.cfg.retention;
        let now = Instant::now();
        let mut upkeep = Upkeep {
            next_checkpoint: now,
            prune_every: retention_every(retention.keep),
            next_prune: now + retention_every(retention.keep),
        };
        let mut wake = Wake::new();
        loop {
            let Some(got_rows) = self.read(&mut client, &stmts, position).await? else {
                return self.stop(&client).await;
            };
            self.status.set_caught_up();
            self.upkeep(&client, position, &mut upkeep).await?;
            let now = Instant::now();
            match wake.after_read(got_rows, &position.cursor, now) {
                Next::ReadNow => {}
                Next::Lease => {
                    let held = want_wake(&client).await?;
                    wake.leased(now, held);
                }
                Next::Drop => {
                    client.execute(DROP_WAKE, &[]).await?;
                    wake.dropped();
                }
                Next::Poll(delay) => tokio::select! {
                    _ = self.shutdown.cancelled() => return self.stop(&client).await,
                    _ = tokio::time::sleep(delay) => {}
                    woke = notified.recv() => if woke.is_none() {
                        return Err(CaptureError::ConnectionClosed("connection lost".into()));
                    },
                },
                Next::Wait { mut renew_at } => loop {
                    // Wait for a wake-up or the poll; renew the lease and do upkeep meanwhile
                    // (the lease never lapses while waiting, so neither needs a read).
                    let poll_at = now + self.cfg.poll_interval.max(Duration::from_millis(1));
                    let upkeep_at = upkeep.next_checkpoint.min(upkeep.next_prune);
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return self.stop(&client).await,
                        woke = notified.recv() => match woke {
                            Some(()) => break,
                            None => return Err(CaptureError::ConnectionClosed("connection lost".into())),
                        },
                        _ = tokio::time::sleep_until(poll_at) => break,
                        _ = tokio::time::sleep_until(upkeep_at) => {
                            self.upkeep(&client, position, &mut upkeep).await?;
                        }
                        _ = tokio::time::sleep_until(renew_at) => {
                            let held = want_wake(&client).await?;
                            let renewed = Instant::now();
                            wake.leased(renewed, held);
                            if wake.needs_read() {
                                break;
                            }
                            renew_at = renewed + wake::LEASE / 2;
                        }
                    }
                },
            }
        }
    }

    /// Reads everything new (one statement, or a backlog page by page) and sends it on.
    /// `Some(found rows)`, or `None` when the hub is stopping.
    async fn read(
        &self,
        client: &mut Client,
        stmts: &Statements,
        position: &mut Position,
    ) -> Result<Option<bool>, CaptureError> {
        let limit = self.cfg.batch_limit.max(1);
        let page = reader::read_page(client, stmts, position, limit).await?;
        let full = page.rows >= limit;
        let found = page.rows > 0;
        let mut next = position.clone();
        reader::advance(&mut next, &page, limit);
        if !self.send(page, next.to_string()).await {
            return Ok(None);
        }
        *position = next;
        if full
            && !reader::read_backlog(client, position, limit, |page, at| self.send(page, at))
                .await?
        {
            return Ok(None);
        }
        if !found {
            self.status.set_idle();
        }
        self.status.set_cursor(&position.to_string());
        Ok(Some(found))
    }

    /// Hands a page to dispatch (waiting while dispatch is behind); false when stopping.
    async fn send(&self, page: Page, position: String) -> bool {
        if page.rows == 0 {
            return true;
        }
        let last_ts = page.events.iter().rev().find_map(|e| match e {
            crate::changes::DbEvent::Change(c) => {
                Some(crate::changes::format_commit_time(c.commit_time))
            }
            crate::changes::DbEvent::Broadcast(_) => None,
        });
        self.status.record_batch(
            page.events.len(),
            last_ts.as_deref(),
            page.age_ms.unwrap_or(0),
        );
        if page.events.is_empty() {
            return true;
        }
        let batch = LogBatch {
            events: page.events,
            position: position.into(),
            rules_version: page.rules_version,
        };
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            sent = self.out.send(batch) => sent.is_ok(),
        }
    }

    /// Tells dispatch where the reader is without events.
    async fn announce(&self, position: &Position) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            sent = self.out.send(position_only(position)) => sent.is_ok(),
        }
    }

    /// Checkpoints this hub's hold about once a second (and tells dispatch the position
    /// then), and prunes the log periodically.
    async fn upkeep(
        &self,
        client: &Client,
        position: &Position,
        upkeep: &mut Upkeep,
    ) -> Result<(), CaptureError> {
        let now = Instant::now();
        let retention = &self.cfg.retention;
        if now >= upkeep.next_checkpoint {
            retention::checkpoint(client, &self.cfg.node_id, &position.cursor, retention).await?;
            upkeep.next_checkpoint = now + CHECKPOINT_EVERY;
            // Never waits long: dispatch takes batches as fast as it can, and a full
            // queue means the position is about to be announced anyway.
            let _ = self.out.try_send(position_only(position));
        }
        if now >= upkeep.next_prune {
            let pruned = prune(client, &position.cursor, retention).await?;
            if pruned.deleted > 0 {
                tracing::info!(deleted = pruned.deleted, "pruned change log");
            }
            if pruned.lost > 0 {
                tracing::warn!(
                    readers = pruned.lost,
                    "change log pruned at the retention cap past durable readers' positions"
                );
            }
            upkeep.next_prune = now + upkeep.prune_every;
        }
        Ok(())
    }

    /// A clean stop: this hub no longer holds the log back.
    async fn stop(&self, client: &Client) -> Result<(), CaptureError> {
        if let Err(e) = retention::release(client, &self.cfg.node_id).await {
            tracing::debug!(error = %e, "could not release the log hold");
        }
        Ok(())
    }
}

/// Takes (or renews) the wake-up lease; whether one was still held just before.
async fn want_wake(client: &Client) -> Result<bool, CaptureError> {
    let lease_ms = wake::LEASE.as_millis() as i64;
    Ok(client.query_one(WANT_WAKE, &[&lease_ms]).await?.get(0))
}

/// Opens the capture connection; its messages are driven by a task that turns each
/// notification into a wake-up. The wake-up receiver closes when the connection ends.
async fn open(url: &str) -> Result<(Client, mpsc::Receiver<()>, JoinHandle<()>), CaptureError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| CaptureError::BadUrl(e.to_string()))?;
    config
        .application_name(APPLICATION_NAME)
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    let (client, mut connection) = config.connect(NoTls).await?;
    // Capacity 1: a pending wake-up already covers any later notification.
    let (wake_tx, wake_rx) = mpsc::channel(1);
    let driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    let _ = wake_tx.try_send(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "capture connection error");
                    return;
                }
                None => return,
            }
        }
    });
    Ok((client, wake_rx, driver))
}

/// How often retention runs: a tenth of the retention, between 1 s and 60 s.
fn retention_every(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
