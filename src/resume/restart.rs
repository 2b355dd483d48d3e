//! Gaps from before this hub kept anything, read from the log once. After a hub restarts,
//! no resuming channel's gap begins where the batches this hub keeps (`changes::Recent`)
//! begin, so each would read its own gap from the log: a thousand customers with gaps a
//! few seconds long read the same rows a thousand times. Instead the first such resume
//! reads once every log row from the oldest resumable position still in its grace
//! (parked, or checkpointed by a hub that was killed; if that is too much, the oldest
//! written within the memory window) up to the end of its own gap (`Base`), the cut
//! of its join, from which dispatch keeps batches (a resuming join starts keeping under
//! the cut's lock). Each resume that read covers takes from it the rows its position has
//! not read (`Position::has_read`, the log read's own condition) and then the kept
//! batches from that end to its own (`Recent::gap`, which gives nothing unless they run
//! unbroken), as a gap kept in memory is replayed. A position the read cannot vouch for
//! (another server lifetime, older than the read, or not surely read within its end)
//! reads the log as before. Owns only this read; what a gap is stays `capture`'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;

use super::{store, ResumeConfig, ResumeError};
use crate::capture::{
    correct, entries_between, holds_large_row, log_rows_since, release, Cursor, LogTables,
    Position, READ_RANGE_SQL,
};
use crate::changes::{entry_bytes, Batch, Gap, Progress};

/// The read holds at most this many times `resume_max_replay` events (it holds every
/// table's changes, a gap only its channel's tables'); a longer one is not kept.
const READ_REPLAYS: usize = 4;
/// Nor more row text than this, in bytes (what `changes::Recent` keeps at most).
const READ_BYTES: usize = 32 << 20;
/// A read is not made when the log rows written since its start are estimated at more
/// than this many times its bound (every log row is one event at least). Reading finds
/// out as well, but Postgres fetches the whole range to return its first rows: a lone
/// resume after a long absence on a busy log would wait on reads of minutes of it, once a
/// memory window. The estimate counts ids that rolled-back transactions took, hence the
/// slack: a read that would fit is not passed over for them.
const ESTIMATE_SLACK: i64 = 2;

/// The restart read of this hub, if one was made (see the module).
#[derive(Default)]
pub(super) struct Restart {
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    base: Option<Arc<Base>>,
    /// When the last read was tried; another is tried a memory window later at most.
    tried: Option<Instant>,
}

/// The log rows read by `until` and not below transaction `xmin`, each a batch of its
/// own (parsed once, by the first resume that needs it), in log order.
struct Base {
    /// `until` as dispatch wrote it: the kept batches that follow the read begin there.
    at: Arc<str>,
    /// Of a known server lifetime (`read` keeps no other).
    until: Position,
    xmin: u64,
    rows: Vec<((u64, i64), Arc<Batch>)>,
    read_at: Instant,
}

impl Base {
    /// Whether the rows `from` has not read and `until` has are all here.
    fn covers(&self, from: &Position) -> bool {
        let server = |p: &Position| p.origin.map(|o| o.server);
        server(from).is_some_and(|s| Some(s) == server(&self.until))
            && from.cursor.xmin() >= self.xmin
            && from.read_within(&self.until)
    }

    /// Read longer ago than the memory window: the batches after it are let go by now.
    fn stale(&self, memory: Duration) -> bool {
        self.read_at.elapsed() > memory
    }
}

impl Restart {
    /// The gap from `from` to `until` (a position dispatch wrote), from the restart read
    /// and the batches kept after it; `None`: read the log.
    pub(super) async fn gap(
        &self,
        pool: &Pool,
        progress: &Progress,
        config: &ResumeConfig,
        from: &Position,
        until: &str,
    ) -> Option<Gap> {
        from.origin?;
        let base = {
            // Held while reading: the storm's other resumes wait for this read rather
            // than each reading the log.
            let mut state = self.state.lock().await;
            state.trim(config.memory);
            let now = Instant::now();
            let due = state
                .tried
                .is_none_or(|t| now.duration_since(t) > config.memory);
            if state.base.is_none() && due && progress.recent().wanted() {
                state.tried = Some(now);
                match read(pool, config, until, from).await {
                    Ok(base) => state.base = base.map(Arc::new),
                    Err(e) => tracing::debug!(error = %e, "no restart read; resumes read the log"),
                }
            }
            state.base.clone()?
        };
        if !base.covers(from) {
            return None;
        }
        let kept = progress.recent().gap(&base.at, until)?;
        let mut gap: Gap = base
            .rows
            .iter()
            .filter(|((xid, id), _)| !from.has_read(*xid, *id))
            .map(|(_, batch)| batch.clone())
            .collect();
        gap.extend(kept);
        Some(gap)
    }

    /// Lets go of a read older than `memory` (from the resume writer's tick, so an idle
    /// hub does not hold one).
    pub(super) fn trim(&self, memory: Duration) {
        if let Ok(mut state) = self.state.try_lock() {
            state.trim(memory);
        }
    }
}

impl State {
    fn trim(&mut self, memory: Duration) {
        if self.base.as_ref().is_some_and(|b| b.stale(memory)) {
            self.base = None;
        }
    }
}

/// Reads every log row from the oldest resumable position of `at`'s server lifetime
/// (`from`'s among them) to `at`, the end of the gap of the resume that asked. First
/// from every position still in its grace (a hub that was down longer than the memory
/// window), and when that holds too much, from those written within the memory window.
/// `None` when `at` is of an earlier lifetime than the server's now (its gap is read
/// corrected, `capture::correct`, on the log path), or every read holds too much.
async fn read(
    pool: &Pool,
    config: &ResumeConfig,
    at: &str,
    from: &Position,
) -> Result<Option<Base>, ResumeError> {
    let until = Position::parse(at).map_err(|_| ResumeError::Position(at.to_owned()))?;
    let Some(server) = until.origin.map(|o| o.server) else {
        return Ok(None);
    };
    let mut client = pool.get().await?;
    let mut corrected = until.clone();
    if correct(&**client, &mut corrected).await? || corrected != until {
        return Ok(None);
    }
    let stmt = client.prepare_cached(READ_RANGE_SQL).await?;
    let max = config.max_replay.saturating_mul(READ_REPLAYS);
    let mut tried = None;
    // A read carried a large row: the connection is closed, not given back (`release`).
    let mut large = false;
    for within in [config.grace.max(config.memory), config.memory] {
        let written = store::recent_positions(&client, within).await?;
        let positions = written.iter().filter_map(|p| Position::parse(p).ok());
        let xmin = positions
            .chain([from.clone()])
            .filter(|p| p.origin.is_some_and(|o| o.server == server))
            .map(|p| p.cursor.xmin())
            .min();
        let Some(xmin) = xmin.filter(|x| tried != Some(*x)) else {
            continue;
        };
        tried = Some(xmin);
        let estimate = log_rows_since(&client, xmin).await?;
        let bound = i64::try_from(max).unwrap_or(i64::MAX);
        if estimate > bound.saturating_mul(ESTIMATE_SLACK) {
            tracing::info!(max, estimate, ?within, "restart read too large to make");
            continue;
        }
        let start = Position::at(Cursor {
            xmax: xmin,
            xip: Vec::new(),
        });
        let tables = LogTables::all();
        let read = entries_between(&mut client, &stmt, &start, &until, &tables, max).await?;
        large |= holds_large_row(&read.entries);
        let bytes: usize = read.entries.iter().map(entry_bytes).sum();
        if read.over || bytes > READ_BYTES {
            tracing::info!(max, bytes, ?within, "restart read too large to keep");
            continue;
        }
        let rows = read
            .rows
            .into_iter()
            .zip(read.entries)
            .map(|(row, entry)| (row, Arc::new(Batch::new(vec![entry]))))
            .collect();
        release(client, large);
        return Ok(Some(Base {
            at: at.into(),
            until,
            xmin,
            rows,
            read_at: Instant::now(),
        }));
    }
    release(client, large);
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(until: &str, xmin: u64) -> Base {
        let until = Position::parse(until).unwrap();
        Base {
            at: until.to_string().into(),
            until,
            xmin,
            rows: Vec::new(),
            read_at: Instant::now(),
        }
    }

    #[test]
    fn a_read_covers_positions_of_its_lifetime_from_its_xmin_read_within_its_end() {
        let b = base("120:115/~7.1000", 100);
        let p = |t: &str| Position::parse(t).unwrap();
        assert!(b.covers(&p("105:100,102/~7.900")));
        assert!(b.covers(&p("100:/~7.900")), "xmin at the read's");
        assert!(!b.covers(&p("105:99,102/~7.900")), "xmin below the read's");
        assert!(
            !b.covers(&p("105:100,102/~8.900")),
            "another server lifetime"
        );
        assert!(!b.covers(&p("105:100,102")), "no lifetime known");
        assert!(!b.covers(&p("125:/~7.1100")), "ahead of the read's end");
        assert!(
            !b.covers(&p("118:/~7.900")),
            "saw 115, still running at the end"
        );
    }
}
