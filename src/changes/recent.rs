//! The batches dispatch matched lately, each with the positions before and after it, kept
//! a short while so that a channel resuming on this hub replays its gap from memory: a
//! reconnect storm then reads nothing from the log and parses no row it did not already
//! hold. A gap is served only as an unbroken run of kept batches from exactly its start
//! to exactly its end, which is what a live channel received between the two; anything
//! else (a position of another hub, of before a restart, or older than what is kept) is
//! left to the log. A kept batch's rows are parsed once, by the first resume that needs
//! them, and then read by every other (`Batch::events`). Bounded by changes, row bytes,
//! batches and age. Keeping is switched on and off by `resume` (`start`, `stop`): only
//! while this hub has resumable channels, live or lately parked, since holding batches
//! costs dispatch (the allocator works harder with thousands of rows held a while;
//! measured in BENCHMARKS.md).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::logged::{gap_len, into_events, LogEntry};
use super::row::DbEvent;

/// Most batches kept, whatever their size (empty batches move positions too).
const MAX_BATCHES: usize = 20_000;
/// Most row text kept, in bytes.
const MAX_BYTES: usize = 32 << 20;
/// What a change or broadcast read whole counts for, besides a binary payload.
const WHOLE_EVENT_BYTES: usize = 512;

/// How much is kept while keeping (`Recent::limit`).
#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    changes: usize,
    age: Duration,
}

/// One kept batch's log entries, shared by every resume whose gap holds it.
#[derive(Debug)]
pub struct Batch {
    entries: Vec<LogEntry>,
    /// Changes as the log counts them for a gap (`gap_len`).
    changes: usize,
    parsed: OnceLock<Vec<DbEvent>>,
}

impl Batch {
    /// A batch of `entries`, in log order.
    pub fn new(entries: Vec<LogEntry>) -> Batch {
        Batch {
            changes: gap_len(&entries),
            entries,
            parsed: OnceLock::new(),
        }
    }

    /// Its events, in log order; parsed by the first caller, shared after.
    pub fn events(&self) -> &[DbEvent] {
        self.parsed
            .get_or_init(|| into_events(self.entries.clone()))
    }

    /// How many changes it holds as the log counts them for a gap.
    pub fn gap_len(&self) -> usize {
        self.changes
    }

    /// `gap_len` of its broadcasts and the changes of the tables `watched` names, as a
    /// range read of those tables counts them (`capture::LogTables`).
    pub fn gap_len_of(&self, watched: impl Fn(&str, &str) -> bool) -> usize {
        self.entries
            .iter()
            .filter(|e| e.table().is_none_or(|(s, t)| watched(s, t)))
            .map(|e| e.len().max(1))
            .sum()
    }
}

#[derive(Debug)]
struct Kept {
    before: Arc<str>,
    after: Arc<str>,
    batch: Arc<Batch>,
    bytes: usize,
    at: Instant,
}

#[derive(Debug, Default)]
struct Held {
    limits: Limits,
    batches: VecDeque<Kept>,
    changes: usize,
    bytes: usize,
}

/// Dispatch's recent batches (see the module).
#[derive(Debug, Default)]
pub struct Recent {
    /// Whether batches are kept at all (read without the lock on every batch).
    on: AtomicBool,
    held: Mutex<Held>,
}

/// A gap's batches, in log order (shared with what is kept).
pub type Gap = Vec<Arc<Batch>>;

/// The row text (or payload) one log entry holds, as what is kept is bounded by it.
pub fn entry_bytes(entry: &LogEntry) -> usize {
    match entry {
        LogEntry::Statement(s) => s
            .rows
            .iter()
            .chain(s.old_rows.iter())
            .map(|r| r.get().len())
            .sum(),
        LogEntry::Event(DbEvent::Broadcast(b)) => {
            WHOLE_EVENT_BYTES + b.binary.as_ref().map_or(0, |b| b.len())
        }
        LogEntry::Event(DbEvent::Change(_)) => WHOLE_EVENT_BYTES,
    }
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps at most `changes` changes, none longer than `age`, once started (`age` or
    /// `changes` zero: never keeps anything).
    pub fn limit(&self, changes: usize, age: Duration) {
        self.lock().limits = Limits { changes, age };
        if changes == 0 || age.is_zero() {
            self.stop();
        }
    }

    /// Keeps batches from now on (if the limits allow any).
    pub fn start(&self) {
        if self.wanted() {
            return;
        }
        let held = self.lock();
        let on = held.limits.changes > 0 && !held.limits.age.is_zero();
        self.on.store(on, Ordering::Relaxed);
    }

    /// Keeps nothing from now on and lets go of what is kept.
    pub fn stop(&self) {
        let mut held = self.lock();
        self.on.store(false, Ordering::Relaxed);
        held.batches = VecDeque::new();
        (held.changes, held.bytes) = (0, 0);
    }

    /// Whether `keep` wants batches (dispatch hands them over only then).
    pub fn wanted(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Keeps the batch that took dispatch from `before` to `after`, letting go of the
    /// oldest past the limits.
    pub fn keep(&self, before: Arc<str>, after: Arc<str>, entries: Vec<LogEntry>, now: Instant) {
        if !self.wanted() {
            return;
        }
        let kept = Kept {
            bytes: entries.iter().map(entry_bytes).sum(),
            before,
            after,
            batch: Arc::new(Batch::new(entries)),
            at: now,
        };
        let mut held = self.lock();
        held.changes += kept.batch.changes;
        held.bytes += kept.bytes;
        held.batches.push_back(kept);
        held.let_go(now);
    }

    /// Lets go of what has been kept longer than the limits' age.
    pub fn trim(&self, now: Instant) {
        if self.wanted() {
            self.lock().let_go(now);
        }
    }

    /// The log entries between positions `from` and `until`, if an unbroken run of kept
    /// batches leads from one to the other; `None` leaves the gap to the log. Only the
    /// batches are counted under the lock (dispatch waits on it), not their entries.
    pub fn gap(&self, from: &str, until: &str) -> Option<Gap> {
        if !self.wanted() {
            return None;
        }
        if from == until {
            return Some(Vec::new());
        }
        let held = self.lock();
        let start = held.batches.iter().position(|b| &*b.before == from)?;
        let mut gap = Vec::new();
        let mut at: Option<&Arc<str>> = None;
        for b in held.batches.range(start..) {
            if at.is_some_and(|at| *at != b.before) {
                return None;
            }
            gap.push(b.batch.clone());
            if &*b.after == until {
                return Some(gap);
            }
            at = Some(&b.after);
        }
        None
    }

    /// Batches, changes and row bytes kept now.
    pub fn held(&self) -> (usize, usize, usize) {
        let held = self.lock();
        (held.batches.len(), held.changes, held.bytes)
    }
}

impl Held {
    fn let_go(&mut self, now: Instant) {
        let limits = self.limits;
        while let Some(oldest) = self.batches.front() {
            let over = self.changes > limits.changes
                || self.bytes > MAX_BYTES
                || self.batches.len() > MAX_BATCHES
                || now.duration_since(oldest.at) > limits.age;
            if !over {
                break;
            }
            self.changes -= oldest.batch.changes;
            self.bytes -= oldest.bytes;
            self.batches.pop_front();
        }
        if self.batches.is_empty() {
            self.batches = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::logged::StatementRows;
    use crate::changes::row::Op;
    use serde_json::value::RawValue;

    fn statement(id: i64, rows: usize) -> LogEntry {
        let raw: Vec<Box<RawValue>> = (0..rows)
            .map(|i| RawValue::from_string(format!(r#"{{"id":{i}}}"#)).unwrap())
            .collect();
        LogEntry::Statement(StatementRows {
            id,
            xid: 1,
            op: Op::Insert,
            schema: "public".into(),
            table: "t".into(),
            commit_time: chrono::Utc::now(),
            rows: raw.into(),
            old_rows: Arc::default(),
        })
    }

    fn ids(gap: &Gap) -> Vec<i64> {
        gap.iter()
            .flat_map(|b| b.entries.iter())
            .map(|e| match e {
                LogEntry::Statement(s) => s.id,
                LogEntry::Event(_) => -1,
            })
            .collect()
    }

    fn started(changes: usize, age: Duration) -> Recent {
        let recent = Recent::default();
        recent.limit(changes, age);
        recent.start();
        recent
    }

    /// Batches p0 -> p1 -> ... -> p<n>, batch i holding log row i (2 rows each).
    fn chain(recent: &Recent, n: i64, now: Instant) {
        for i in 1..=n {
            let (before, after) = (format!("p{}", i - 1), format!("p{i}"));
            recent.keep(before.into(), after.into(), vec![statement(i, 2)], now);
        }
    }

    #[test]
    fn a_gap_is_the_run_of_batches_from_its_start_to_its_end() {
        let recent = started(100, Duration::from_secs(60));
        chain(&recent, 5, Instant::now());
        assert_eq!(ids(&recent.gap("p1", "p4").unwrap()), [2, 3, 4]);
        assert_eq!(ids(&recent.gap("p0", "p5").unwrap()), [1, 2, 3, 4, 5]);
        assert_eq!(recent.gap("p3", "p3").map(|g| g.len()), Some(0));
        assert!(recent.gap("p4", "p2").is_none(), "an end before the start");
        assert!(recent.gap("p9", "p5").is_none(), "a start not kept");
        assert!(recent.gap("p1", "p9").is_none(), "an end not reached");
        let gap = recent.gap("p0", "p5").unwrap();
        assert_eq!(gap.iter().map(|b| b.gap_len()).sum::<usize>(), 10);
        let events: Vec<_> = gap.iter().flat_map(|b| b.events()).collect();
        assert_eq!(events.len(), 10);
        let again = recent.gap("p1", "p2").unwrap();
        assert!(
            std::ptr::eq(again[0].events(), gap[1].events()),
            "a batch's rows are parsed once and shared"
        );
    }

    #[test]
    fn a_break_in_the_run_leaves_the_gap_to_the_log() {
        let recent = started(100, Duration::from_secs(60));
        let now = Instant::now();
        recent.keep("a".into(), "b".into(), vec![statement(1, 1)], now);
        recent.keep("x".into(), "c".into(), vec![statement(2, 1)], now);
        assert!(recent.gap("a", "c").is_none());
        assert_eq!(ids(&recent.gap("x", "c").unwrap()), [2]);
    }

    #[test]
    fn the_oldest_batches_go_past_the_change_limit_and_the_age() {
        let recent = started(6, Duration::from_secs(10));
        let start = Instant::now();
        chain(&recent, 5, start);
        assert_eq!(recent.held(), (3, 6, 3 * 2 * 8));
        assert!(recent.gap("p1", "p5").is_none(), "p1 -> p2 was let go");
        assert_eq!(ids(&recent.gap("p2", "p5").unwrap()), [3, 4, 5]);
        recent.trim(start + Duration::from_secs(11));
        assert_eq!(recent.held(), (0, 0, 0));
        assert!(recent.gap("p2", "p5").is_none());
    }

    #[test]
    fn nothing_is_kept_unless_started_within_limits() {
        let recent = Recent::default();
        recent.limit(100, Duration::from_secs(60));
        chain(&recent, 2, Instant::now());
        assert!(!recent.wanted(), "limited, not started");
        assert_eq!(recent.held(), (0, 0, 0));
        recent.start();
        chain(&recent, 2, Instant::now());
        assert_eq!(recent.held().0, 2);
        recent.stop();
        assert_eq!(recent.held(), (0, 0, 0));
        assert!(recent.gap("p0", "p2").is_none());
        recent.limit(100, Duration::ZERO);
        recent.start();
        chain(&recent, 2, Instant::now());
        assert!(!recent.wanted(), "no age: never kept");
        assert_eq!(recent.held(), (0, 0, 0));
    }
}
