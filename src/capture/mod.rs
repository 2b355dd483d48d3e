//! Change capture: one dedicated Postgres connection that reads `realtime.changes`
//! gap-free by transaction visibility (ARCHITECTURE.md, "Gap-free capture"), wakes on a
//! NOTIFY while writes are rare and polls while they are frequent (`wake`), reconnects
//! with backoff and catches up from the same position. It checkpoints this hub's position
//! as a hold on the log and prunes what every hold has read (`retention`). Beside it, on
//! the pool, `maintenance` keeps capture in line with the `supabase_realtime`
//! publication and prunes `realtime.messages`. Produces `LogBatch`es for `changes`;
//! knows nothing of clients.

mod carried;
mod cursor;
pub mod decoding;
mod maintenance;
mod reader;
mod retention;
mod status;
mod wake;

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;

pub use cursor::{Cursor, CursorError, Origin, Position};
pub use maintenance::{run_maintenance, Maintenance};
pub(crate) use reader::json_column;
pub use reader::{
    correct, current_cursor, current_position, entries_between, holds_large_row, log_rows_since,
    next_events, next_page, release, LogTables, PageRead, RangeRead, Statements, LARGE_ROW_BYTES,
    READ_PAGE_OF_SQL, READ_PAGE_SQL, READ_RANGE_SQL,
};
pub use retention::{prune, Pruned, Retention};
pub use status::{CaptureStatus, CaptureStatusSnapshot, TableTicks};

use crate::changes::{entry_bytes, LogBatch, LogEntry};
use crate::db::pg_message;
use reader::Page;
use wake::{Next, Wake};

/// Reads the NOTIFY channel the capture triggers and `realtime.send` signal: a random name
/// made by the migrations, which only they and the hub can read
/// (`sql/064_wake_channel.sql`), so no other role can send the hub a wake-up, let alone
/// a made-up change.
const WAKE_CHANNEL_NAME: &str = "select name from realtime.wake_channel";
/// `application_name` of the capture connection (visible in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "switchboard-capture";

/// The `application_name` of the connection a prune of the log runs on.
const PRUNE_APPLICATION_NAME: &str = "switchboard-prune";
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often this hub's position is checkpointed as its hold on the log.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

const WANT_WAKE: &str = "select realtime.want_wake($1)";
const DROP_WAKE: &str = "select realtime.drop_wake()";
/// A carried change's commit time is its log row's `created_at`, which is what a read
/// returns only while Postgres does not track commit timestamps.
const COMMIT_TIMES: &str = "select current_setting('track_commit_timestamp') = 'on'";
/// Wake-ups waiting for the capture loop at most; one more is dropped (`Wakes`).
const WAKES_QUEUED: usize = 256;
/// Changes delivered from wake-ups are confirmed by a read at most this long after the
/// first of them, or once this many log rows are waiting for it, whichever comes first
/// (until then the position names them: `Position::ahead`). Reading after every carried
/// change would cost a read per commit for nothing more than that.
const CONFIRM_AFTER: Duration = Duration::from_millis(50);
const CONFIRM_AHEAD: usize = 16;

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
    // The last connection was ended on purpose (`Ended::Reopen`), not lost.
    let mut reopened = false;
    loop {
        let mut session = Session {
            cfg: &cfg,
            out: &out,
            status: &status,
            shutdown: &shutdown,
            largest_row: AtomicUsize::new(0),
            reopened: std::mem::take(&mut reopened),
        };
        let result = session
            .run(&mut position, &mut connected_before, &mut backoff)
            .await;
        match result {
            Ok(Ended::Stopped) => break,
            Ok(Ended::Reopen { row_bytes }) => {
                tracing::info!(
                    row_bytes,
                    "capture read a large log row; opening a new connection to free its read buffer"
                );
                reopened = true;
                continue;
            }
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
    /// The largest log row read on this connection, in bytes.
    largest_row: AtomicUsize,
    /// The connection before this one was ended on purpose (`Ended::Reopen`).
    reopened: bool,
}

/// How a connection's session ended without failing.
enum Ended {
    /// The hub is stopping.
    Stopped,
    /// A read carried a row of at least `LARGE_ROW_BYTES`: open a new connection.
    Reopen { row_bytes: usize },
}

/// Periodic upkeep on the capture connection, run between reads (the prune runs on a
/// connection of its own: however long it takes, reads go on).
struct Upkeep {
    next_checkpoint: Instant,
    next_prune: Instant,
    prune_every: Duration,
    /// The prune under way, if any (one at a time).
    pruning: Option<AbortOnDrop>,
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
    /// Ok on shutdown or to reopen; Err when the connection failed (the caller
    /// reconnects).
    async fn run(
        &mut self,
        position: &mut Option<Position>,
        connected_before: &mut bool,
        backoff: &mut Duration,
    ) -> Result<Ended, CaptureError> {
        let (mut client, mut notified, driver) = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(Ended::Stopped),
            opened = open(&self.cfg.database_url) => opened?,
        };
        let _abort_driver = AbortOnDrop(driver);
        let channel: String = client.query_one(WAKE_CHANNEL_NAME, &[]).await?.get(0);
        client
            .batch_execute(&format!("listen \"{}\"", channel.replace('"', "\"\"")))
            .await?;
        let stmts = Statements::prepare(&client).await?;
        // Capture counts as connected only once the log can be read: this waits out a
        // lock on it (a migration, a bulk load).
        let backlog = reader::prepare_backlog(&client).await?;
        let may_carry = !client.query_one(COMMIT_TIMES, &[]).await?.get::<_, bool>(0);
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
        if self.reopened {
            tracing::debug!(position = text, "capture connection reopened");
        } else if *connected_before {
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
            pruning: None,
        };
        let mut wake = Wake::new();
        loop {
            let Some(got_rows) = self.read(&mut client, (&stmts, &backlog), position).await? else {
                return self.stop(&client).await;
            };
            // A read that carried a large row ends the connection (`LARGE_ROW_BYTES`: its
            // read buffer would keep that size for good; one 77 MB statement kept 77 MB).
            // Everything read is handed over and `position` is past it; the hold stays
            // (this is no stop), and the new connection reads on from here.
            let row_bytes = self.largest_row.load(Ordering::Relaxed);
            if row_bytes >= LARGE_ROW_BYTES {
                return Ok(Ended::Reopen { row_bytes });
            }
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
                Next::Poll(delay) => {
                    self.status.set_waiting(Some(false));
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return self.stop(&client).await,
                        _ = tokio::time::sleep(delay) => {}
                        woke = notified.rx.recv() => if woke.is_none() {
                            return Err(CaptureError::ConnectionClosed("connection lost".into()));
                        },
                    }
                }
                Next::Wait { mut renew_at } => {
                    self.status.set_waiting(Some(true));
                    // Changes carried since the read are confirmed by a read this soon.
                    let mut confirm_at: Option<Instant> = None;
                    loop {
                        // Wait for a wake-up or the poll; renew the lease and do upkeep
                        // meanwhile (the lease never lapses while waiting, so neither needs
                        // a read).
                        let poll_at = now + self.cfg.poll_interval.max(Duration::from_millis(1));
                        let upkeep_at = upkeep.next_checkpoint.min(upkeep.next_prune);
                        let read_at = confirm_at.unwrap_or(poll_at).min(poll_at);
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return self.stop(&client).await,
                            woke = notified.rx.recv() => {
                                let Some(payload) = woke else {
                                    return Err(CaptureError::ConnectionClosed("connection lost".into()));
                                };
                                let at = Instant::now();
                                let steady = may_carry && wake.steady(at);
                                let Some(carry) = self
                                    .deliver_carried(payload, &mut notified, steady, position)
                                    .await
                                else {
                                    return self.stop(&client).await;
                                };
                                if carry.went_ahead && wake.carried(at, carry.commits) {
                                    break;
                                }
                                if !carry.all_carried || position.ahead.len() >= CONFIRM_AHEAD {
                                    break;
                                }
                                confirm_at.get_or_insert(at + CONFIRM_AFTER);
                            }
                            _ = tokio::time::sleep_until(read_at) => break,
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
                    }
                }
            }
        }
    }

    /// Reads everything new (one statement, or a backlog page by page) and sends it on.
    /// `Some(found rows)`, or `None` when the hub is stopping.
    async fn read(
        &self,
        client: &mut Client,
        (stmts, backlog): (&Statements, &Statement),
        position: &mut Position,
    ) -> Result<Option<bool>, CaptureError> {
        self.status.set_waiting(None);
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
            && !reader::read_backlog(client, backlog, position, limit, |page, at| {
                self.send(page, at)
            })
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

    /// Delivers what the queued wake-ups carry (`first` and any queued behind it), ahead
    /// of the read they call for. Safe only while the lease is `steady`: then every
    /// transaction that committed since the last read sent a wake-up, in commit order, so
    /// the wake-ups queued here are all of them up to the newest. One that carries nothing
    /// (a large statement, `realtime.send`, a dropped wake-up) stops it: what follows waits
    /// for the read. A change the last read already saw is skipped, and the carried rows
    /// join the position as read ahead, so the next read skips them. `None` when stopping.
    async fn deliver_carried(
        &self,
        first: String,
        wakes: &mut Wakes,
        steady: bool,
        position: &mut Position,
    ) -> Option<Carry> {
        let mut go = steady;
        let mut events = Vec::new();
        // The rules version the carried rows share (`Some(None)` once two differ).
        let mut version: Option<Option<i64>> = None;
        // Transactions behind the wake-ups taken: a transaction's carried statements
        // arrive together and share its xid; an empty wake-up is one transaction's
        // (Postgres folds a transaction's identical payloads into one).
        let (mut commits, mut last_xid) = (0, None);
        let mut next = Some(first);
        while let Some(payload) = next.take() {
            let mut xid = None;
            if go {
                match carried::carried(&payload) {
                    Some(c) if position.cursor.sees(c.xid) => xid = Some(c.xid),
                    Some(c) => {
                        xid = Some(c.xid);
                        position.read_ahead(c.xid, c.id, c.created_at);
                        version = match version {
                            Some(v) if v != c.rules_version => Some(None),
                            Some(v) => Some(v),
                            None => Some(c.rules_version),
                        };
                        if !c.entry.is_empty() {
                            events.push(c.entry);
                        }
                    }
                    None => go = false,
                }
            }
            if xid.is_none() || xid != last_xid {
                commits += 1;
            }
            last_xid = xid;
            next = wakes.rx.try_recv().ok();
        }
        // Wake-ups were dropped after those taken here: the read comes first now.
        let all_carried = go && !wakes.overflowed.swap(false, Ordering::AcqRel);
        if events.is_empty() {
            return Some(Carry {
                went_ahead: false,
                commits,
                all_carried,
            });
        }
        self.status
            .count_ahead(events.iter().map(LogEntry::len).sum());
        let text = position.to_string();
        self.status.set_cursor(&text);
        self.hand_over(events, text, version.flatten(), 0)
            .await
            .then_some(Carry {
                went_ahead: true,
                commits,
                all_carried,
            })
    }

    /// Hands a page to dispatch (waiting while dispatch is behind); false when stopping.
    async fn send(&self, page: Page, position: String) -> bool {
        if page.rows == 0 {
            return true;
        }
        let age_ms = page.age_ms.unwrap_or(0);
        let largest = page.entries.iter().map(entry_bytes).max().unwrap_or(0);
        self.largest_row.fetch_max(largest, Ordering::Relaxed);
        self.hand_over(page.entries, position, page.rules_version, age_ms)
            .await
    }

    /// Records a batch in the status and hands its events (if any) to dispatch, waiting
    /// while dispatch is behind; false when stopping.
    async fn hand_over(
        &self,
        entries: Vec<LogEntry>,
        position: String,
        rules_version: Option<i64>,
        age_ms: i64,
    ) -> bool {
        let last_ts = entries
            .iter()
            .rev()
            .find_map(LogEntry::commit_time)
            .map(crate::changes::format_commit_time);
        let n = entries.iter().map(LogEntry::len).sum();
        let tables = entries.iter().filter_map(LogEntry::table);
        self.status
            .record_batch(n, tables, last_ts.as_deref(), age_ms);
        if n == 0 {
            return true;
        }
        let batch = LogBatch {
            events: entries,
            position: position.into(),
            rules_version,
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
        let busy = upkeep.pruning.as_ref().is_some_and(|p| !p.0.is_finished());
        if now >= upkeep.next_prune && !busy {
            let (url, cursor) = (self.cfg.database_url.clone(), position.cursor.clone());
            let retention = *retention;
            upkeep.pruning = Some(AbortOnDrop(tokio::spawn(async move {
                prune_apart(&url, &cursor, &retention).await;
            })));
            upkeep.next_prune = now + upkeep.prune_every;
        }
        Ok(())
    }

    /// A clean stop: this hub no longer holds the log back.
    async fn stop(&self, client: &Client) -> Result<Ended, CaptureError> {
        if let Err(e) = retention::release(client, &self.cfg.node_id).await {
            tracing::debug!(error = %e, "could not release the log hold");
        }
        Ok(Ended::Stopped)
    }
}

/// Prunes the log up to `cursor` (what this hub has read) on a connection of its own,
/// and logs the outcome; a failure waits for the next prune.
async fn prune_apart(url: &str, cursor: &Cursor, retention: &Retention) {
    let pruned = async {
        let (client, connection) = config(url, PRUNE_APPLICATION_NAME)?.connect(NoTls).await?;
        let _driver = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        prune(&client, cursor, retention).await
    }
    .await;
    match pruned {
        Ok(p) => {
            if p.deleted > 0 {
                tracing::info!(deleted = p.deleted, "pruned change log");
            }
            if p.lost > 0 {
                tracing::warn!(
                    readers = p.lost,
                    "change log pruned at the retention cap past durable readers' positions"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not prune the change log"),
    }
}

/// The connection settings of `url` for a connection of this module named
/// `application_name`.
fn config(url: &str, application_name: &str) -> Result<tokio_postgres::Config, CaptureError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| CaptureError::BadUrl(e.to_string()))?;
    config
        .application_name(application_name)
        .connect_timeout(CONNECT_TIMEOUT);
    Ok(config)
}

/// Takes (or renews) the wake-up lease; whether one was still held just before.
async fn want_wake(client: &Client) -> Result<bool, CaptureError> {
    let lease_ms = wake::LEASE.as_millis() as i64;
    Ok(client.query_one(WANT_WAKE, &[&lease_ms]).await?.get(0))
}

/// What `deliver_carried` did with the wake-ups waiting.
struct Carry {
    /// Changes were delivered ahead of the read.
    went_ahead: bool,
    /// Transactions whose wake-ups were taken (they count towards the write rate).
    commits: usize,
    /// Every wake-up taken carried its change (or one the last read had seen), and none
    /// was dropped: the read that confirms them may wait (`CONFIRM_AFTER`).
    all_carried: bool,
}

/// Wake-ups from the capture connection, in the order Postgres sent them (commit order).
/// When the queue is full the driver drops that wake-up and every later one until the
/// capture loop has seen `overflowed` (so what is queued is always a gap-free prefix).
struct Wakes {
    rx: mpsc::Receiver<String>,
    overflowed: Arc<AtomicBool>,
}

/// Opens the capture connection; its messages are driven by a task that queues each
/// notification's payload. The queue closes when the connection ends.
async fn open(url: &str) -> Result<(Client, Wakes, JoinHandle<()>), CaptureError> {
    let mut config = config(url, APPLICATION_NAME)?;
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    let (client, mut connection) = config.connect(NoTls).await?;
    let (wake_tx, rx) = mpsc::channel(WAKES_QUEUED);
    let overflowed = Arc::new(AtomicBool::new(false));
    let flag = overflowed.clone();
    let driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if !flag.load(Ordering::Acquire)
                        && wake_tx.try_send(n.payload().to_owned()).is_err()
                    {
                        flag.store(true, Ordering::Release);
                    }
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
    Ok((client, Wakes { rx, overflowed }, driver))
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
