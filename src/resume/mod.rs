//! Resumable subscriptions: nothing committed is lost across reconnects and hub restarts.
//! A connection opts in with `resume=<key>`. Each of its channels keeps an acknowledged
//! log position (`ack`: WebSocket pings and pongs), checkpointed to Postgres about once a
//! second and parked there when the socket drops or the hub stops (`store`). A join with
//! the same key, topic and bindings, on any hub within the grace, takes the row over and
//! replays the gap from the log (judged by `changes` with the new join's claims) before
//! anything live; on the hub that delivered the gap, from the batches dispatch kept
//! (`changes::Recent`), when they cover it. Owns positions and parked rows; decides no row
//! scope itself.

mod ack;
mod restart;
mod store;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use ack::{ChannelAck, ConnAcks};
pub use store::Found;

use crate::capture::{correct, entries_between, LogTables, Position, RangeRead, READ_RANGE_SQL};
use crate::changes::{Changes, DbEvent, Gap, ReplayTarget, TableScope};
use crate::protocol::WireFrame;
use crate::router::outbox::OutboxTx;
use crate::telemetry::Metrics;

/// How often live channels' positions are written.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How often the parked count (a metric) is refreshed.
const COUNT_EVERY: Duration = Duration::from_secs(5);
/// Changes judged (row scope) and pushed at a time in a replay.
const REPLAY_PAGE: usize = 500;
/// How long a replay waits out database errors before the client is told to refetch.
const REPLAY_RETRY_FOR: Duration = Duration::from_secs(30);
/// Longest resume key accepted.
pub const MAX_KEY_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("resume store: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("replay: {0}")]
    Capture(#[from] crate::capture::CaptureError),
    #[error("replay: {0}")]
    RowScope(#[from] crate::changes::RlsError),
    #[error("bad stored position {0:?}")]
    Position(String),
    #[error("parks and releases queued earlier are not written yet")]
    Unwritten,
}

/// Resume settings.
#[derive(Debug, Clone, Copy)]
pub struct ResumeConfig {
    /// How long a parked subscription waits for its client.
    pub grace: Duration,
    /// Most changes one resume replays; beyond it the client is told to refetch.
    pub max_replay: usize,
    /// How long dispatch keeps the batches it matched for resumes on this hub (up to
    /// `max_replay` changes); zero: every replay reads the log.
    pub memory: Duration,
}

/// Which channel a row is for: the connection's resume key, the topic (and namespace)
/// and the join's postgres_changes bindings.
#[derive(Debug, Clone)]
pub struct ChannelIdent {
    pub key: Arc<str>,
    pub topic: Arc<str>,
    pub private: bool,
    pub bindings: Value,
}

/// Topics longer than this are named in a row's key by their SHA-256: the key is a
/// btree key, and Postgres refuses index entries over about 2.7 kB (a long topic then
/// failed every checkpoint write, everyone's, since they share one statement).
const HOLDER_TOPIC_BYTES: usize = 512;

impl ChannelIdent {
    /// The row's key: equal for the same key, topic, namespace and bindings.
    pub fn holder(&self) -> String {
        use sha2::{Digest, Sha256};
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.bindings.to_string().hash(&mut h);
        let ns = if self.private { "private" } else { "public" };
        let topic = match self.topic.len() > HOLDER_TOPIC_BYTES {
            true => format!("sha256:{:x}", Sha256::digest(self.topic.as_bytes())),
            false => self.topic.to_string(),
        };
        format!("{}|{ns}|{topic}|{:016x}", self.key, h.finish())
    }
}

/// A channel of a resume-enabled connection, while it is live on this hub.
pub struct LiveChannel {
    pub ident: ChannelIdent,
    pub holder: String,
    /// This channel's claim on its row (a later resume of the same channel takes it over).
    pub owner: String,
    pub conn: Arc<ConnAcks>,
    pub ack: Arc<ChannelAck>,
    /// The position last written, and when.
    written: Mutex<Option<(String, Instant)>>,
}

impl LiveChannel {
    /// `owner` is the claim `ResumeHandle::take` made for it.
    pub fn new(
        ident: ChannelIdent,
        owner: String,
        conn: Arc<ConnAcks>,
        ack: Arc<ChannelAck>,
    ) -> LiveChannel {
        LiveChannel {
            holder: ident.holder(),
            ident,
            owner,
            conn,
            ack,
            written: Mutex::new(None),
        }
    }

    /// The row to write for this channel now (`None` if its position is unreadable).
    fn row(&self, parked: bool, node: &str) -> Option<store::Row> {
        let position = self.ack.position(&self.conn);
        let snapshot = Position::parse(&position).ok()?.cursor.to_pg_snapshot();
        Some(store::Row {
            holder: self.holder.clone(),
            snapshot,
            detail: json!({
                "key": &*self.ident.key,
                "topic": &*self.ident.topic,
                "private": self.ident.private,
                "bindings": self.ident.bindings,
                "position": position,
                "parked": parked,
                "owner": self.owner,
                "node": node,
            }),
        })
    }
}

enum Cmd {
    /// A channel that just went live: written at once, not at the next checkpoint, so
    /// that a hub killed within a second of the join can still be resumed from it.
    Live(Arc<LiveChannel>),
    Park(Arc<LiveChannel>),
    Release {
        holder: String,
        owner: String,
    },
    /// Answered `true` once everything queued before is written, `false` when some of it
    /// could not be (it stays pending).
    Flush(oneshot::Sender<bool>),
}

/// Rows and releases whose write failed (the database was out); written with the next
/// write or checkpoint, so a park is never dropped for an outage. One row per holder.
#[derive(Default)]
struct Pending {
    rows: Vec<store::Row>,
    releases: Vec<(String, String)>,
}

impl Pending {
    /// Keeps `rows` and `releases` for the next write; a holder's latest row wins.
    fn keep(&mut self, rows: Vec<store::Row>, releases: Vec<(String, String)>) {
        self.rows.extend(rows);
        self.rows = store::latest_per_holder(std::mem::take(&mut self.rows).into_iter());
        for r in releases {
            if !self.releases.contains(&r) {
                self.releases.push(r);
            }
        }
    }

    fn len(&self) -> usize {
        self.rows.len() + self.releases.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The resume side of the hub; cheap to clone.
#[derive(Clone)]
pub struct ResumeHandle {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    changes: Changes,
    node: String,
    config: ResumeConfig,
    metrics: Arc<Metrics>,
    /// Live channels by holder; the writer checkpoints them.
    live: DashMap<String, Arc<LiveChannel>>,
    /// Parks, releases and flush requests for the writer, in order.
    cmds: mpsc::UnboundedSender<Cmd>,
    /// The writer's end, until `run_writer` takes it.
    commands: Mutex<Option<mpsc::UnboundedReceiver<Cmd>>>,
    /// Gaps from before this hub kept batches, read once (`restart`).
    restart: restart::Restart,
}

/// How a resuming join went (told to the client as a `system` message).
pub use crate::protocol::{NotRecovered, Resumed as Outcome};

impl ResumeHandle {
    pub fn new(
        pool: Pool,
        changes: Changes,
        node: String,
        config: ResumeConfig,
        metrics: Arc<Metrics>,
    ) -> ResumeHandle {
        let (cmds, rx) = mpsc::unbounded_channel();
        changes
            .progress()
            .recent()
            .limit(config.max_replay, config.memory);
        ResumeHandle {
            inner: Arc::new(Inner {
                pool,
                changes,
                node,
                config,
                metrics,
                live: DashMap::new(),
                cmds,
                commands: Mutex::new(Some(rx)),
                restart: restart::Restart::default(),
            }),
        }
    }

    pub fn config(&self) -> ResumeConfig {
        self.inner.config
    }

    /// A fresh claim for a channel about to join.
    pub fn new_owner() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// Takes over `holder`'s row for `owner` (so a stale writer cannot overwrite it) and
    /// says where it left off. Parks and releases queued before are written first; when
    /// they cannot be (the database is out), nothing is taken: the row read now could be
    /// missing a park that is still to come.
    pub async fn take(&self, holder: &str, owner: &str) -> Result<Found, ResumeError> {
        let (done, flushed) = oneshot::channel();
        if self.inner.cmds.send(Cmd::Flush(done)).is_ok() && flushed.await == Ok(false) {
            return Err(ResumeError::Unwritten);
        }
        let client = self.inner.pool.get().await?;
        let found = store::take(&client, holder, owner).await?;
        // A channel of this very key still live here (a reconnect while the old socket is
        // half open): its in-memory position is the freshest; it is retired. Only once the
        // row is taken: a take that fails leaves it live (and checkpointed) as it was, and
        // a checkpoint of it written in between is refused by the row's new owner.
        // Told to refetch, unread: a resume from its position would skip the refetch.
        let local = self.inner.live.remove(holder).map(|(_, old)| {
            match old.ack.unread_refetch(&old.conn) {
                Some(why) => Err(why),
                None => Ok(old.ack.position(&old.conn)),
            }
        });
        Ok(match (local, found) {
            (Some(Err(why)), _) => Found::ToldRefetch(why),
            (Some(Ok(position)), Found::At(_) | Found::Unknown) => Found::At(position),
            (_, found) => found,
        })
    }

    /// `live` is running on this hub: its position is written now and checkpointed
    /// from then on. (Its join started dispatch's keeping under the cut's lock, so its
    /// gaps may be resumed here from memory.)
    pub fn track(&self, live: Arc<LiveChannel>) {
        self.inner.live.insert(live.holder.clone(), live.clone());
        let _ = self.inner.cmds.send(Cmd::Live(live));
    }

    /// The connection of `holder`'s channel dropped (or the hub is stopping): park it
    /// for the grace. A channel taken over since is left alone.
    /// A channel told to refetch whose client is not shown to have read that is released
    /// instead: parked, its next join would resume from where it started and say nothing
    /// was missed, so the client would never refetch; released, that join is told to.
    pub fn park(&self, holder: &str, owner: &str) {
        if let Some((_, live)) = self
            .inner
            .live
            .remove_if(holder, |_, live| live.owner == owner)
        {
            let cmd = match live.ack.unread_refetch(&live.conn) {
                Some(_) => Cmd::Release {
                    holder: holder.to_owned(),
                    owner: owner.to_owned(),
                },
                None => Cmd::Park(live),
            };
            let _ = self.inner.cmds.send(cmd);
        }
    }

    /// The channel left on purpose (or was closed by the hub): nothing to resume.
    pub fn release(&self, holder: &str, owner: &str) {
        self.inner
            .live
            .remove_if(holder, |_, live| live.owner == owner);
        let _ = self.inner.cmds.send(Cmd::Release {
            holder: holder.to_owned(),
            owner: owner.to_owned(),
        });
    }

    /// Queues into `out`, page by page, the frames `target` missed between `from` and
    /// `until` (log positions); how many it sent, or `None` when the gap holds more changes
    /// than the configured maximum (then nothing is sent).
    pub async fn replay(
        &self,
        target: &ReplayTarget,
        from: &str,
        until: &str,
        out: &OutboxTx,
    ) -> Result<Option<usize>, ResumeError> {
        if let Some(gap) = self.inner.changes.progress().recent().gap(from, until) {
            self.inner.metrics.resume_from_memory.inc();
            return self.replay_kept(target, gap, out).await;
        }
        let mut from = Position::parse(from).map_err(|_| ResumeError::Position(from.to_owned()))?;
        let inner = &self.inner;
        let progress = inner.changes.progress();
        let restart = inner
            .restart
            .gap(&inner.pool, progress, &inner.config, &from, until);
        if let Some(gap) = restart.await {
            inner.metrics.resume_from_restart_read.inc();
            return self.replay_kept(target, gap, out).await;
        }
        let mut until =
            Position::parse(until).map_err(|_| ResumeError::Position(until.to_owned()))?;
        let max = self.inner.config.max_replay;
        let mut retry = Retry::new();
        loop {
            match self.correct(&mut from, &mut until).await {
                Ok(()) => break,
                Err(e) => retry.wait(e).await?,
            }
        }
        // The gap in one read, of broadcasts and the channel's tables only, no further
        // than `max` events (so never more than `max` + 1 log rows, each a change at
        // least): a gap that ends before that is whole. Narrowing drops what cannot reach
        // the channel as the gap is taken in.
        let tables = log_tables(target);
        let mut narrowed = loop {
            let gap = match self.gap(&from, &until, &tables, max).await {
                Ok(gap) => gap,
                Err(e) => {
                    retry.wait(e).await?;
                    continue;
                }
            };
            if gap.over {
                return Ok(None);
            }
            // A database error (an outage, a killed connection) is waited out like live
            // dispatch does, reading the gap again: nothing of it was pushed yet.
            match self.inner.changes.narrow_gap(target, gap.entries).await {
                Ok(narrowed) => break narrowed,
                Err(e) => retry.wait(e.into()).await?,
            }
        };
        let mut count = 0;
        let len = narrowed.events.len();
        for start in (0..len).step_by(REPLAY_PAGE) {
            let part = start..len.min(start + REPLAY_PAGE);
            let replayed = loop {
                let judged =
                    self.inner
                        .changes
                        .replay_narrowed(target, &mut narrowed, part.clone());
                match judged.await {
                    Ok(replayed) => break replayed,
                    Err(e) => retry.wait(e.into()).await?,
                }
            };
            count += replayed.count;
            if !push_all(out, replayed.frames).await {
                return Ok(Some(count));
            }
        }
        Ok(Some(count))
    }

    /// `replay` of a gap this hub kept (`changes::Recent`): its rows are at hand and
    /// parsed once for every resume, so only row scope may wait on the database.
    async fn replay_kept(
        &self,
        target: &ReplayTarget,
        gap: Gap,
        out: &OutboxTx,
    ) -> Result<Option<usize>, ResumeError> {
        let tables = log_tables(target);
        let len: usize = gap
            .iter()
            .map(|b| b.gap_len_of(|s, t| tables.has(s, t)))
            .sum();
        if len > self.inner.config.max_replay {
            return Ok(None);
        }
        let events: Vec<&DbEvent> = gap.iter().flat_map(|b| b.events()).collect();
        let mut retry = Retry::new();
        let mut count = 0;
        for page in events.chunks(REPLAY_PAGE) {
            let replayed = loop {
                match self.inner.changes.replay(target, page).await {
                    Ok(replayed) => break replayed,
                    Err(e) => retry.wait(e.into()).await?,
                }
            };
            count += replayed.count;
            if !push_all(out, replayed.frames).await {
                return Ok(Some(count));
            }
        }
        Ok(Some(count))
    }

    /// Corrects both ends of a gap taken before a Postgres crash (`capture::correct`): a
    /// position parked before the crash counts as read the ids the restarted server
    /// handed out again. Both are corrected alike, so the gap holds what `until` will
    /// still read live neither.
    async fn correct(&self, from: &mut Position, until: &mut Position) -> Result<(), ResumeError> {
        let client = self.inner.pool.get().await?;
        correct(&**client, from).await?;
        correct(&**client, until).await?;
        Ok(())
    }

    /// The gap between `from` and `until`, read in one statement no further than
    /// `max` events (`RangeRead::over`). The pooled connection is given back before the
    /// gap is judged (row scope takes one of its own) and pushed (which waits for the
    /// client): holding it meanwhile let as many resumes as the pool has connections
    /// take them all and wait forever for one more, stalling dispatch for everyone.
    async fn gap(
        &self,
        from: &Position,
        until: &Position,
        tables: &LogTables,
        max: usize,
    ) -> Result<RangeRead, ResumeError> {
        let mut client = self.inner.pool.get().await?;
        let stmt = client.prepare_cached(READ_RANGE_SQL).await?;
        let read = entries_between(&mut client, &stmt, from, until, tables, max).await?;
        crate::capture::release(client, crate::capture::holds_large_row(&read.entries));
        Ok(read)
    }

    /// For `/api/status`: live and parked subscriptions, resumes by outcome, replayed.
    pub fn status(&self) -> Value {
        let m = &self.inner.metrics;
        let held = self.inner.changes.progress().recent().held();
        let outcomes = [
            "true", "unknown", "expired", "pruned", "too_many", "failed", "refused",
        ];
        let resumes: serde_json::Map<String, Value> = outcomes
            .iter()
            .map(|o| {
                let n = m.resumes.get_or_create(&[("recovered", *o)]).get();
                let key = if *o == "true" { "recovered" } else { o };
                (key.to_owned(), Value::from(n))
            })
            .collect();
        json!({
            "live": self.inner.live.len(),
            "parked": m.resume_parked.get(),
            "unwritten": m.resume_unwritten.get(),
            "resumes": resumes,
            "replayed": m.resume_replayed.get(),
            "from_memory": m.resume_from_memory.get(),
            "from_restart_read": m.resume_from_restart_read.get(),
            "memory": {
                "batches": held.0,
                "changes": held.1,
                "row_bytes": held.2,
            },
            "grace_secs": self.inner.config.grace.as_secs(),
        })
    }

    /// Counts a resuming join's outcome.
    pub fn count(&self, outcome: &Outcome) {
        let m = &self.inner.metrics;
        let label = match outcome {
            Outcome::Recovered { count } => {
                m.resume_replayed.inc_by(*count as u64);
                "true"
            }
            Outcome::NotRecovered(NotRecovered::Unknown) => "unknown",
            Outcome::NotRecovered(NotRecovered::Expired) => "expired",
            Outcome::NotRecovered(NotRecovered::Pruned) => "pruned",
            Outcome::NotRecovered(NotRecovered::TooMany { .. }) => "too_many",
            Outcome::NotRecovered(NotRecovered::Failed) => "failed",
            Outcome::NotRecovered(NotRecovered::Refused) => "refused",
        };
        m.resumes.get_or_create(&[("recovered", label)]).inc();
    }

    /// Writes parks and releases as they come and live positions about once a second;
    /// on `stop`, writes what is queued and parks every channel still live.
    pub async fn run_writer(self, stop: CancellationToken) {
        let Some(mut rx) = self
            .inner
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let mut checkpoint = tokio::time::interval(CHECKPOINT_EVERY);
        let mut count = tokio::time::interval(COUNT_EVERY);
        let mut pending = Pending::default();
        let mut last_live = Instant::now();
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        let mut cmds = vec![cmd];
                        while let Ok(more) = rx.try_recv() {
                            cmds.push(more);
                        }
                        self.write(cmds, &mut pending).await;
                    }
                    None => return,
                },
                _ = checkpoint.tick() => {
                    self.keep_recent(&mut last_live);
                    self.checkpoint(&mut pending).await;
                }
                _ = count.tick() => self.count_parked().await,
                _ = stop.cancelled() => break,
            }
        }
        let mut cmds = Vec::new();
        while let Ok(cmd) = rx.try_recv() {
            cmds.push(cmd);
        }
        let live: Vec<Arc<LiveChannel>> =
            self.inner.live.iter().map(|e| e.value().clone()).collect();
        self.inner.live.clear();
        cmds.extend(live.into_iter().map(Cmd::Park));
        self.write(cmds, &mut pending).await;
    }

    /// Dispatch keeps what it delivers while channels here may resume: while any is live,
    /// and for the memory window after the last one went (parked gaps may come back).
    fn keep_recent(&self, last_live: &mut Instant) {
        let now = Instant::now();
        let recent = self.inner.changes.progress().recent();
        if !self.inner.live.is_empty() {
            *last_live = now;
            // (Again each tick: a stop racing a join's start may have won.)
            recent.start();
        }
        if now.duration_since(*last_live) > self.inner.config.memory {
            recent.stop();
        } else {
            recent.trim(now);
        }
        self.inner.restart.trim(self.inner.config.memory);
    }

    /// Writes what is pending and `cmds`; what fails stays pending.
    async fn write(&self, cmds: Vec<Cmd>, pending: &mut Pending) {
        let node = &self.inner.node;
        let mut rows = std::mem::take(&mut pending.rows);
        let mut releases = std::mem::take(&mut pending.releases);
        let mut flushed = Vec::new();
        for cmd in cmds {
            match cmd {
                Cmd::Live(live) => rows.extend(live.row(false, node)),
                Cmd::Park(live) => rows.extend(live.row(true, node)),
                Cmd::Release { holder, owner } => releases.push((holder, owner)),
                Cmd::Flush(done) => flushed.push(done),
            }
        }
        if let Err(e) = self.write_rows(&rows, &releases).await {
            tracing::warn!(error = %e, "could not park resumable subscriptions; kept for the next write");
            pending.keep(rows, releases);
        }
        self.inner
            .metrics
            .resume_unwritten
            .set(pending.len() as i64);
        for done in flushed {
            let _ = done.send(pending.is_empty());
        }
    }

    async fn write_rows(
        &self,
        rows: &[store::Row],
        releases: &[(String, String)],
    ) -> Result<(), ResumeError> {
        if rows.is_empty() && releases.is_empty() {
            return Ok(());
        }
        let client = self.inner.pool.get().await?;
        store::upsert(&client, rows, self.inner.config.grace).await?;
        for (holder, owner) in releases {
            store::release(&client, holder, owner).await?;
        }
        Ok(())
    }

    /// Writes each live channel whose position moved, or whose row is half-way to
    /// expiring.
    async fn checkpoint(&self, pending: &mut Pending) {
        let now = Instant::now();
        let refresh = self.inner.config.grace / 2;
        let earlier = std::mem::take(pending);
        let mut rows = earlier.rows.clone();
        let mut written = Vec::new();
        for entry in self.inner.live.iter() {
            let live = entry.value();
            let Some(row) = live.row(false, &self.inner.node) else {
                continue;
            };
            let position = row.detail["position"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let last = live
                .written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let due = match last {
                None => true,
                Some((p, at)) => p != position || now.duration_since(at) >= refresh,
            };
            if due {
                rows.push(row);
                written.push((live.clone(), position));
            }
        }
        match self.write_rows(&rows, &earlier.releases).await {
            Ok(()) => {
                for (live, position) in written {
                    *live.written.lock().unwrap_or_else(|p| p.into_inner()) = Some((position, now));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not checkpoint resumable subscriptions");
                // Live rows are due again next time; what was pending stays pending.
                *pending = earlier;
            }
        }
        self.inner
            .metrics
            .resume_unwritten
            .set(pending.len() as i64);
    }

    async fn count_parked(&self) {
        let Ok(client) = self.inner.pool.get().await else {
            return;
        };
        if let Ok(n) = store::count_parked(&client).await {
            self.inner.metrics.resume_parked.set(n);
        }
    }
}

/// Backoff for a replay's database errors, up to `REPLAY_RETRY_FOR` in all.
struct Retry {
    until: Instant,
    backoff: Duration,
}

impl Retry {
    fn new() -> Retry {
        Retry {
            until: Instant::now() + REPLAY_RETRY_FOR,
            backoff: Duration::from_millis(50),
        }
    }

    /// Waits before the next attempt, or gives `e` back when time is up.
    async fn wait(&mut self, e: ResumeError) -> Result<(), ResumeError> {
        if Instant::now() + self.backoff > self.until {
            return Err(e);
        }
        tracing::debug!(error = %e, "replay failed; retrying");
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
        Ok(())
    }
}

/// The tables whose changes can reach `target`: a replay counts and reads no others
/// (a gap of changes to tables the channel does not subscribe to is no gap for it).
fn log_tables(target: &ReplayTarget) -> LogTables {
    let mut tables = LogTables::default();
    for sub in &target.subscriptions {
        match &sub.scope {
            TableScope::All => tables.all = true,
            TableScope::Schema(s) => tables.schemas.push(s.to_string()),
            TableScope::Table { schema, table } => {
                tables.tables.push((schema.to_string(), table.to_string()));
            }
        }
    }
    tables
}

/// Queues a replay's frames for the client, each waiting for room; false once the client
/// is gone (the rest is dropped).
async fn push_all(out: &OutboxTx, frames: Vec<WireFrame>) -> bool {
    for frame in frames {
        if !out.push_patiently(frame).await {
            return false;
        }
    }
    true
}
