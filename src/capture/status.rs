//! What the capture loop reports about itself: shared with `/api/status`, metrics and
//! readiness. The capture task writes; everyone else reads a `snapshot()`.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

use crate::telemetry::Metrics;

/// Live capture state. The capture task holds one `Arc` and writes; readers clone the Arc.
#[derive(Debug)]
pub struct CaptureStatus {
    /// Sent by the capture task; `wait_connected` subscribers receive.
    connected: watch::Sender<bool>,
    /// A read finished since the last (re)connect: nothing committed is waiting.
    caught_up: AtomicBool,
    /// Changes (and database broadcasts) read from the log.
    rows_read: AtomicU64,
    /// Of those, changes delivered from a wake-up's payload ahead of the log read.
    rows_ahead: AtomicU64,
    batches: AtomicU64,
    reconnects: AtomicU64,
    /// What the loop does: 0 reads, 1 waits for a wake-up, 2 waits for a poll.
    waiting: AtomicU8,
    /// Age in ms of the newest row at the time it was read; -1 before the first row.
    lag_ms: AtomicI64,
    /// When (unix ms) the read under way started; 0 while the loop waits. A read that
    /// hangs (Postgres stopped or stalled, dispatch backed up) makes the lag grow with it:
    /// changes committed meanwhile wait at least that long.
    read_since_ms: AtomicI64,
    /// Short-held, never across an await.
    text: Mutex<TextFields>,
    /// Rows read so far, sent after each read that found rows: readers of the log with
    /// positions of their own (webhooks, the change feed) wait on it instead of polling.
    progress: watch::Sender<u64>,
    /// Which tables those rows were of (set before `progress` is sent).
    ticks: Arc<TableTicks>,
}

/// Slots of table names' hashes in `TableTicks`.
const TABLE_SLOTS: usize = 64;

/// For each slot of a table name's hash, the capture's row count when it last read rows
/// of a table in that slot. A reader waiting on `progress` for some tables (a change feed
/// long-poll) reads the log again only when one of their slots moved, not after every
/// batch of every table: hundreds of waiting polls had read the log after each batch and
/// slowed everyone's deliveries. Names sharing a slot cost a read, never a missed one.
#[derive(Debug)]
pub struct TableTicks {
    slots: [AtomicU64; TABLE_SLOTS],
}

impl Default for TableTicks {
    fn default() -> Self {
        TableTicks {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl TableTicks {
    fn slot(&self, schema: &str, table: &str) -> &AtomicU64 {
        let hash = foldhash::fast::FixedState::with_seed(0).hash_one((schema, table));
        &self.slots[(hash % TABLE_SLOTS as u64) as usize]
    }

    fn record(&self, schema: &str, table: &str, tick: u64) {
        self.slot(schema, table).fetch_max(tick, Ordering::Release);
    }

    /// A value that changes whenever rows of one of `tables` are read.
    pub fn of<'a>(&self, tables: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
        tables
            .map(|(schema, table)| self.slot(schema, table).load(Ordering::Acquire))
            .fold(0, u64::wrapping_add)
    }
}

#[derive(Debug, Default, Clone)]
struct TextFields {
    cursor: Option<String>,
    last_error: Option<String>,
    last_commit_ts: Option<String>,
}

/// A point-in-time copy of `CaptureStatus`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CaptureStatusSnapshot {
    pub connected: bool,
    /// `xmax:xip,xip`; `None` until the first connection.
    pub cursor: Option<String>,
    pub rows_read: u64,
    pub rows_ahead: u64,
    /// What the capture is doing: `"read"` (reading the log), `"notify"` (waiting for
    /// writers' wake-ups, which carry small changes), `"poll"` (waiting for the next poll:
    /// writes are frequent, or transactions from before the lease are still running).
    pub waiting: &'static str,
    pub batches: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub last_commit_ts: Option<String>,
    pub lag_ms: Option<u64>,
}

impl Default for CaptureStatus {
    fn default() -> Self {
        CaptureStatus {
            connected: watch::Sender::new(false),
            caught_up: AtomicBool::new(false),
            rows_read: AtomicU64::new(0),
            rows_ahead: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            waiting: AtomicU8::new(0),
            lag_ms: AtomicI64::new(-1),
            read_since_ms: AtomicI64::new(0),
            text: Mutex::new(TextFields::default()),
            progress: watch::Sender::new(0),
            ticks: Arc::default(),
        }
    }
}

impl CaptureStatus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn snapshot(&self) -> CaptureStatusSnapshot {
        let text = self.text.lock().unwrap_or_else(|p| p.into_inner()).clone();
        CaptureStatusSnapshot {
            connected: *self.connected.borrow(),
            cursor: text.cursor,
            rows_read: self.rows_read.load(Ordering::Relaxed),
            rows_ahead: self.rows_ahead.load(Ordering::Relaxed),
            waiting: match self.waiting.load(Ordering::Relaxed) {
                1 => "notify",
                2 => "poll",
                _ => "read",
            },
            batches: self.batches.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_error: text.last_error,
            last_commit_ts: text.last_commit_ts,
            lag_ms: u64::try_from(self.lag_now(unix_ms())).ok(),
        }
    }

    /// The lag at `now` (unix ms): the last read's, or how long the read under way has
    /// taken if longer; -1 when unknown.
    fn lag_now(&self, now: i64) -> i64 {
        let lag = self.lag_ms.load(Ordering::Relaxed);
        let since = self.read_since_ms.load(Ordering::Relaxed);
        if lag < 0 || since <= 0 {
            return lag;
        }
        lag.max(now - since)
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Connected and caught up with the log: what `/ready` reports.
    pub fn is_ready(&self) -> bool {
        self.is_connected() && self.caught_up.load(Ordering::Relaxed)
    }

    /// Copies the counters into the hub's metrics registry (called on scrape).
    pub fn export(&self, metrics: &Metrics) {
        let rows = self.rows_read.load(Ordering::Relaxed);
        let exported = metrics.capture_rows.get();
        if rows > exported {
            metrics.capture_rows.inc_by(rows - exported);
        }
        let ahead = self.rows_ahead.load(Ordering::Relaxed);
        let exported = metrics.capture_rows_ahead.get();
        if ahead > exported {
            metrics.capture_rows_ahead.inc_by(ahead - exported);
        }
        metrics.capture_lag_ms.set(self.lag_now(unix_ms()).max(0));
    }

    /// Resolves once the listener is connected and its cursor is set: changes that
    /// commit after this are delivered.
    pub async fn wait_connected(&self) {
        let mut rx = self.connected.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Changes each time the capture has read new rows from the log.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    pub(crate) fn set_connected(&self, cursor: &str) {
        self.set_cursor(cursor);
        self.connected.send_replace(true);
    }

    pub(crate) fn set_caught_up(&self) {
        self.caught_up.store(true, Ordering::Relaxed);
    }

    /// Nothing was new at the last read.
    pub(crate) fn set_idle(&self) {
        self.lag_ms.store(0, Ordering::Relaxed);
    }

    pub(crate) fn set_disconnected(&self, error: Option<String>) {
        self.caught_up.store(false, Ordering::Relaxed);
        // Unknown until the next read: `/api/status` and the inspector show none rather
        // than the last figure (0 after an idle read).
        self.lag_ms.store(-1, Ordering::Relaxed);
        self.read_since_ms.store(0, Ordering::Relaxed);
        self.connected.send_replace(false);
        if error.is_some() {
            self.with_text(|t| t.last_error = error);
        }
    }

    pub(crate) fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_cursor(&self, cursor: &str) {
        self.with_text(|t| t.cursor = Some(cursor.to_string()));
    }

    /// Which tables' rows the capture has read since (see `TableTicks`).
    pub fn table_ticks(&self) -> Arc<TableTicks> {
        self.ticks.clone()
    }

    /// Records a batch of `rows` rows of `tables`.
    pub(crate) fn record_batch<'a>(
        &self,
        rows: usize,
        tables: impl Iterator<Item = (&'a str, &'a str)>,
        last_commit_ts: Option<&str>,
        lag_ms: i64,
    ) {
        let total = self.rows_read.fetch_add(rows as u64, Ordering::Relaxed) + rows as u64;
        for (schema, table) in tables {
            self.ticks.record(schema, table, total);
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.lag_ms.store(lag_ms.max(0), Ordering::Relaxed);
        if let Some(ts) = last_commit_ts {
            self.with_text(|t| t.last_commit_ts = Some(ts.to_string()));
        }
        self.progress.send_replace(total);
    }

    /// The capture reads the log (`None`), waits for a wake-up (`Some(true)`) or for the
    /// next poll (`Some(false)`).
    pub(crate) fn set_waiting(&self, notify: Option<bool>) {
        let state = match notify {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        self.waiting.store(state, Ordering::Relaxed);
        let since = if notify.is_none() { unix_ms() } else { 0 };
        self.read_since_ms.store(since, Ordering::Relaxed);
    }

    /// `rows` of the batch just recorded were delivered from a wake-up's payload.
    pub(crate) fn count_ahead(&self, rows: usize) {
        self.rows_ahead.fetch_add(rows as u64, Ordering::Relaxed);
    }

    fn with_text(&self, f: impl FnOnce(&mut TextFields)) {
        f(&mut self.text.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_is_unknown_while_disconnected() {
        let s = CaptureStatus::new();
        assert_eq!(s.snapshot().lag_ms, None, "nothing read yet");
        s.set_connected("1:");
        s.set_idle();
        assert_eq!(s.snapshot().lag_ms, Some(0));
        s.set_disconnected(Some("connection refused".into()));
        assert_eq!(s.snapshot().lag_ms, None);
        assert_eq!(
            s.snapshot().last_error.as_deref(),
            Some("connection refused")
        );
    }

    #[test]
    fn a_read_under_way_counts_in_the_lag_until_the_loop_waits_again() {
        let s = CaptureStatus::new();
        s.set_connected("1:");
        s.set_idle();
        s.set_waiting(None);
        let started = s.read_since_ms.load(Ordering::Relaxed);
        assert_eq!(s.lag_now(started + 6_000), 6_000, "a read stalled for 6 s");
        s.record_batch(1, std::iter::empty(), None, 7_500);
        assert_eq!(
            s.lag_now(started + 6_000),
            7_500,
            "the batch's own age when larger"
        );
        s.set_waiting(Some(true));
        assert_eq!(s.lag_now(started + 60_000), 7_500, "waiting adds nothing");
        s.set_waiting(None);
        s.set_idle();
        assert!(s.lag_now(unix_ms()) < 1_000);
    }
}
