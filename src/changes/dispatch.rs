//! From captured log batches to client frames, strictly in log order: match each change
//! against the subscription index in-process (and fix each database broadcast's
//! receivers), check row scope for the matched subscribers only (one round trip per
//! batch, a few batches in flight), then encode once per visibility shape and queue for
//! each member. A change whose receivers cannot depend on its row reuses those found
//! for the change to its table before it (`memo`).
//!
//! Matching happens under `Progress::cut`, the same lock a join registers under, so every
//! batch is cleanly "before" or "after" a new channel: a resumed channel replays from the
//! log exactly the batches matched before it and receives the rest live. After each batch
//! is queued, `Progress::delivered` moves on (connections turn it into acknowledged
//! positions). While resumes ask for it, each batch is also kept a while with the
//! positions around it (`Progress::recent`), so that a resume on this hub can replay it
//! from memory.

mod ddl;
mod held;
mod memo;

use foldhash::{HashMap, HashMapExt};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::catalog::{Catalog, TableInfo};
use super::index::{Matched, SubscriptionIndex};
use super::lane::Lane;
use super::logged::LogEntry;
use super::payload::{change_data, shape_key, ChangePayload, Conversions, FieldSizes, ShapeKey};
use super::recent::Recent;
use super::recycle::Recycled;
use super::row::{Change, DbBroadcast, DbEvent, LogBatch, Row};
use super::scope::{Gates, RlsChecker, Viewer, Visibility};
use super::stats::ChangeStats;
use crate::protocol::{self, Broadcast, BroadcastPayload, SystemMessage, Vsn, WireFrame};
use crate::router::{MemberId, Router, TopicKey};
use held::{At, Held, OutboxOf, MAX_HELD};
use memo::{Memo, Receivers};

/// A point in the stream of batches: how many have passed and the log position after
/// the last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub seq: u64,
    pub position: Arc<str>,
}

/// How far dispatch has got; shared with joins and connections.
#[derive(Debug)]
pub struct Progress {
    /// The last batch matched. Joins register under this lock.
    cut: Mutex<Option<Mark>>,
    /// The last batch whose frames are all queued; connections read it for their acks.
    delivered: watch::Sender<Option<Mark>>,
    /// The last batches matched, while resumes want them.
    recent: Recent,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            cut: Mutex::new(None),
            delivered: watch::Sender::new(None),
            recent: Recent::default(),
        }
    }
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Mark>> {
        self.cut.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `register` between two batches' matching, with the mark of the last batch
    /// matched before it (`None` before the first batch), and returns that mark.
    pub fn at_cut<T>(&self, register: impl FnOnce(Option<&Mark>) -> T) -> (Option<Mark>, T) {
        let cut = self.lock();
        let out = register(cut.as_ref());
        (cut.clone(), out)
    }

    pub fn delivered(&self) -> watch::Receiver<Option<Mark>> {
        self.delivered.subscribe()
    }

    /// The batches matched lately, with the positions around each.
    pub fn recent(&self) -> &Recent {
        &self.recent
    }
}

/// One change with its matched members and their distinct viewers (shared with other
/// changes that matched alike, see `memo`).
struct Planned {
    change: Change,
    table: Arc<TableInfo>,
    receivers: Arc<Receivers>,
}

enum Step {
    /// A database broadcast and the topic's members when it was matched.
    Broadcast(DbBroadcast, Vec<MemberId>),
    Change(Planned),
}

/// A batch matched against the index, before its catalog lookups and row-scope checks.
struct MatchedBatch {
    mark: Mark,
    events: Vec<MatchedEvent>,
    /// The rules version the log read carried (checks use the rules of that version or
    /// later); `None`: ask Postgres.
    rules_version: Option<i64>,
}

enum MatchedEvent {
    Broadcast(DbBroadcast, Vec<MemberId>),
    /// Members found for this change alone; their viewers are collected by `plan`.
    Change(Change, Vec<Matched>),
    /// Receivers kept from a change that matched alike.
    Kept(Change, Arc<Receivers>),
}

/// What dispatch reads from and writes to.
pub struct Dispatcher {
    pub(super) index: Arc<SubscriptionIndex>,
    pub(super) router: Arc<Router>,
    pub(super) catalog: Catalog,
    pub(super) rls: RlsChecker,
    pub(super) stats: Arc<ChangeStats>,
    pub(super) progress: Arc<Progress>,
    /// Judges the filters too costly for this path (`lane`).
    pub(super) lane: Lane,
    /// Large per-change buffers kept for the next change.
    pub(super) spare: Spare,
    /// Receivers kept for changes that match alike.
    pub(super) memo: Memo,
    /// Where the subscribed tables were last read after DDL.
    pub(super) ddl: ddl::Followed,
}

/// Large per-change buffers, given back once a change is delivered and kept (bounded,
/// see `recycle`) so that the next one does not fault in fresh pages.
#[derive(Default)]
pub(super) struct Spare {
    matched: Recycled<Vec<Matched>>,
    viewer_of: Recycled<Vec<usize>>,
    viewers: Recycled<Vec<Arc<Viewer>>>,
    distinct: Recycled<hashbrown::HashTable<usize>>,
}

/// Dispatch idle this long frees the buffers it kept.
const RELEASE_SPARE_AFTER: Duration = Duration::from_secs(2);

/// Batches whose row-scope checks may be in flight at once (over the pool); delivery
/// still happens strictly in capture order.
const PIPELINE_DEPTH: usize = 4;

/// Consumes captured batches until the capture side hangs up or the hub shuts down.
pub async fn run_dispatch(
    d: Dispatcher,
    rx: mpsc::Receiver<LogBatch>,
    shutdown: CancellationToken,
) {
    use futures_util::StreamExt;
    let d = Arc::new(d);
    let batches =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    let checked = batches
        .then(|batch| {
            let d = d.clone();
            async move {
                // DDL moved the rules version: enum filters compare by the labels' order
                // of now (an `ALTER TYPE … ADD VALUE` before the batch's changes), and
                // subscriptions follow a table renamed. (Position-only batches match
                // nothing.)
                if !batch.events.is_empty() {
                    d.follow_ddl(batch.rules_version).await;
                }
                batch
            }
        })
        .map(|batch| {
            // Matching runs here, in order, as each batch is taken from the channel.
            let matched = d.match_batch(batch);
            let (d, shutdown) = (d.clone(), shutdown.clone());
            async move {
                let mark = matched.mark.clone();
                let observed = matched.rules_version.is_some();
                let steps = d.plan(matched, &shutdown).await;
                let visibility = d.check(&steps, observed, &shutdown).await;
                (mark, steps, visibility)
            }
        })
        .buffered(PIPELINE_DEPTH);
    let mut checked = std::pin::pin!(checked);
    // Whether buffers may be kept since dispatch was last idle.
    let mut kept = false;
    let mut held = Held::default();
    let mut segment = Vec::new();
    loop {
        let (mark, steps, visibility) = tokio::select! {
            next = checked.next() => match next { Some(n) => n, None => return },
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RELEASE_SPARE_AFTER), if kept => {
                d.release_spare();
                held.release();
                kept = false;
                continue;
            }
        };
        if shutdown.is_cancelled() {
            return;
        }
        kept = true;
        let mut vis = visibility.into_iter();
        // Changes between two database broadcasts are delivered together (`held`).
        for step in steps {
            match step {
                Step::Broadcast(b, members) => {
                    d.deliver_changes(&mut segment, &mut held);
                    d.deliver_broadcast(b, &members);
                }
                Step::Change(p) => segment.push((p, vis.next().unwrap_or_default())),
            }
        }
        d.deliver_changes(&mut segment, &mut held);
        d.progress.delivered.send_replace(Some(mark));
    }
}

/// Retries `f` while the database is unreachable (any failure); `None` on shutdown.
async fn retrying<T, E: std::fmt::Display, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    f: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let every_failure = |_: &E| true;
    crate::db::retry_while(what, Duration::from_secs(5), shutdown, every_failure, f)
        .await
        .ok()
        .flatten()
}

impl Dispatcher {
    /// Matches a batch under the cut lock and moves the cut past it. Row scope's gates
    /// are those of the rules version the read carried.
    fn match_batch(&self, batch: LogBatch) -> MatchedBatch {
        self.stats.count_changes(
            batch
                .events
                .iter()
                .filter_map(|e| e.table().map(|(schema, table)| (schema, table, e.len()))),
        );
        let gates = match batch.rules_version {
            Some(version) => {
                self.rls.observe(version);
                self.catalog.observe(version);
                self.rls.gates()
            }
            None => Arc::default(),
        };
        let mut cut = self.progress.lock();
        let mut events = Vec::with_capacity(batch.events.len());
        // Kept for `recent` as they are (matched in place, a whole event copied), or
        // matched and moved on.
        let keep = cut.as_ref().filter(|_| self.progress.recent.wanted());
        let seq = cut.as_ref().map_or(1, |m| m.seq + 1);
        let mark = Mark {
            seq,
            position: batch.position,
        };
        match keep {
            Some(before) => {
                for entry in &batch.events {
                    self.match_entry(Cow::Borrowed(entry), &gates, &mut events);
                }
                let (before, after) = (before.position.clone(), mark.position.clone());
                let now = std::time::Instant::now();
                self.progress.recent.keep(before, after, batch.events, now);
            }
            None => {
                for entry in batch.events {
                    self.match_entry(Cow::Owned(entry), &gates, &mut events);
                }
            }
        }
        *cut = Some(mark.clone());
        MatchedBatch {
            mark,
            events,
            rules_version: batch.rules_version,
        }
    }

    /// Matches one log entry (under the cut lock) and queues what it found in `events`.
    fn match_entry(
        &self,
        entry: Cow<'_, LogEntry>,
        gates: &Arc<Gates>,
        events: &mut Vec<MatchedEvent>,
    ) {
        // A statement's rows are parsed only when someone may see them; nobody watching
        // its table now means nobody matches them, as matching would find.
        if let LogEntry::Statement(s) = &*entry {
            if self.index.watches(&s.schema, &s.table) {
                for c in s.changes() {
                    self.match_change(c, gates, events);
                }
            }
            return;
        }
        let LogEntry::Event(event) = entry.into_owned() else {
            return;
        };
        match event {
            DbEvent::Broadcast(b) => {
                let members = self.router.member_ids(&broadcast_key(&b));
                events.push(MatchedEvent::Broadcast(b, members));
            }
            DbEvent::Change(c) => self.match_change(c, gates, events),
        }
    }

    /// Matches one change (under the cut lock) and queues what it found in `events`.
    fn match_change(&self, c: Change, gates: &Arc<Gates>, events: &mut Vec<MatchedEvent>) {
        // Read before matching: a change to the index during it moves it on.
        let generation = self.index.generation();
        // (A change without a row to judge matches nobody, kept set or not.)
        let kept = c
            .judged_row()
            .and_then(|_| self.memo.get(generation, gates, &c));
        if let Some(kept) = kept {
            events.push(MatchedEvent::Kept(c, kept));
            return;
        }
        let gate_of = |schema: &str, table: &str, role: &str| gates.get(schema, table, role);
        let into = self.spare.matched.take();
        let matching = self
            .index
            .matching_gated(&c, &gate_of, self.lane.inline_cost, into);
        let matched = matching.found;
        if matched.is_empty() {
            self.spare.matched.give(matched);
        } else if matching.alike {
            // Viewers now, under the cut lock, so that the set holds as long as the
            // generation (token refreshes happen under it too).
            let set = Arc::new(self.receivers(matched));
            self.memo.keep(generation, gates, &c, &set);
            events.push(MatchedEvent::Kept(c, set));
        } else {
            events.push(MatchedEvent::Change(c, matched));
        }
    }

    /// Looks up each matched change's table (waiting out a database outage: nothing is
    /// dropped) and collects its distinct viewers. A run of changes to one table (one
    /// statement's rows) looks it up once.
    async fn plan(&self, batch: MatchedBatch, shutdown: &CancellationToken) -> Vec<Step> {
        let mut steps = Vec::with_capacity(batch.events.len());
        let mut last: Option<(String, String, Option<Arc<TableInfo>>)> = None;
        for event in batch.events {
            let (change, found) = match event {
                MatchedEvent::Broadcast(b, members) => {
                    steps.push(Step::Broadcast(b, members));
                    continue;
                }
                MatchedEvent::Change(c, m) => (c, Err(m)),
                MatchedEvent::Kept(c, set) => (c, Ok(set)),
            };
            let same = |(schema, table, _): &(String, String, _)| {
                *schema == change.schema && *table == change.table
            };
            if !last.as_ref().is_some_and(same) {
                let lookup = retrying("catalog lookup", shutdown, || {
                    self.table_of(&change.schema, &change.table)
                })
                .await;
                let Some(found) = lookup else {
                    return steps;
                };
                last = Some((change.schema.clone(), change.table.clone(), found));
            }
            // `None`: dropped since; nobody can be shown a row of a table that is gone.
            let Some(table) = last.as_ref().and_then(|(_, _, t)| t.clone()) else {
                continue;
            };
            // An event the table's publication does not publish.
            if !table.events.has(change.op) {
                if let Err(matched) = found {
                    self.spare.matched.give(matched);
                }
                continue;
            }
            let receivers = found.unwrap_or_else(|matched| Arc::new(self.receivers(matched)));
            steps.push(Step::Change(Planned {
                change,
                table,
                receivers,
            }));
        }
        steps
    }

    /// Each matched member's viewer, as an index into the change's distinct viewers.
    /// Viewers hash in O(1) (their hash is kept) and are looked at under the member's
    /// lock without being cloned; a viewer is cloned once, into the distinct list. One
    /// member after another with the same viewer (one connection's channels) skips even
    /// the lookup.
    fn receivers(&self, matched: Vec<Matched>) -> Receivers {
        let (viewer_of, viewers) = self.distinct_viewers(&matched);
        Receivers {
            matched,
            viewer_of,
            viewers,
        }
    }

    fn distinct_viewers(&self, matched: &[Matched]) -> (Vec<usize>, Vec<Arc<Viewer>>) {
        let mut distinct = self.spare.distinct.take();
        let mut viewers: Vec<Arc<Viewer>> = self.spare.viewers.take();
        viewers.reserve(matched.len());
        distinct.reserve(matched.len(), |&i| viewers[i].kept_hash());
        let mut viewer_of = self.spare.viewer_of.take();
        // The previous member's viewer; it stays alive in `viewers` meanwhile.
        let mut last: Option<(*const Viewer, usize)> = None;
        viewer_of.extend(matched.iter().map(|m| {
            m.member.with_viewer(|v| {
                let ptr = Arc::as_ptr(v);
                if let Some((prev, i)) = last {
                    if prev == ptr {
                        return i;
                    }
                }
                let hash = v.kept_hash();
                let i = match distinct.find(hash, |&j| *viewers[j] == **v) {
                    Some(&j) => j,
                    None => {
                        viewers.push(v.clone());
                        let j = viewers.len() - 1;
                        distinct.insert_unique(hash, j, |&k| viewers[k].kept_hash());
                        j
                    }
                };
                last = Some((ptr, i));
                i
            })
        }));
        self.spare.distinct.give(distinct);
        (viewer_of, viewers)
    }

    /// Row-scope checks for every planned change in at most one round trip (none when
    /// the rules are cached and decided in-process; `observed`: the batch's rules version
    /// was observed); retried while the database is unreachable (the capture side waits
    /// meanwhile, nothing is lost).
    async fn check(
        &self,
        steps: &[Step],
        observed: bool,
        shutdown: &CancellationToken,
    ) -> Vec<Vec<Visibility>> {
        let items: Vec<super::scope::Item<'_>> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Change(p) => {
                    Some((&p.change, p.table.as_ref(), p.receivers.viewers.as_slice()))
                }
                Step::Broadcast(..) => None,
            })
            .collect();
        if items.is_empty() {
            return Vec::new();
        }
        retrying("row-scope check", shutdown, || async {
            if observed {
                self.rls.check_observed(&items).await
            } else {
                self.rls.check(&items).await
            }
        })
        .await
        .unwrap_or_default()
    }

    /// Keeps a delivered change's large buffers for the next changes (its receivers'
    /// once no other change shares them).
    fn recycle(&self, p: Planned, answers: Vec<Visibility>) {
        if let Ok(r) = Arc::try_unwrap(p.receivers) {
            self.spare.matched.give(r.matched);
            self.spare.viewer_of.give(r.viewer_of);
            self.spare.viewers.give(r.viewers);
        }
        self.rls.recycle(answers);
    }

    /// Frees the buffers kept while dispatch was busy.
    fn release_spare(&self) {
        self.memo.release();
        self.spare.matched.release();
        self.spare.viewer_of.release();
        self.spare.viewers.release();
        self.spare.distinct.release();
        self.rls.release_spare();
    }

    /// A message from `realtime.messages` to the members it was matched for, with
    /// `meta: {"id": <uuid>}` (Supabase sends a binary kind-4 frame to v2 sockets, the
    /// text object to v1).
    fn deliver_broadcast(&self, b: DbBroadcast, members: &[MemberId]) {
        let (key, xid) = (broadcast_key(&b), b.xid);
        self.router
            .broadcast_logged_to(&key, &db_broadcast(b), Some(xid), members);
    }

    /// Tells a subscriber, once per viewer, that a row-scope policy raised for it.
    fn tell_problem(&self, m: &Matched, change: &Change, problem: &str) {
        if !m.member.first_problem() {
            return;
        }
        let table = format!(
            "{}.{}",
            super::quote_ident(&change.schema),
            super::quote_ident(&change.table)
        );
        // The operator sees it too: the subscriber gets nothing of this table until the
        // policy (or the grants it needs) is fixed.
        tracing::warn!(
            table = %table,
            topic = %m.member.topic,
            conn = m.member.conn_id,
            "row-level security check failed for a subscriber: {problem}"
        );
        let message = SystemMessage::RowScopeProblem {
            table,
            problem: problem.to_owned(),
        };
        let channel = m
            .member
            .topic
            .strip_prefix("realtime:")
            .unwrap_or(&m.member.topic);
        let frame = protocol::encode(
            m.member.vsn,
            Some(&m.member.join_ref),
            None,
            &m.member.topic,
            "system",
            &message.payload(channel),
        );
        self.router
            .deliver(&m.member.outbox, m.member.conn_id, frame, "system");
    }

    /// Delivers a run of changes in order, holding each connection's frames until the
    /// end of the run (or `MAX_HELD`) to queue them together; then keeps their buffers.
    fn deliver_changes(&self, segment: &mut Vec<(Planned, Vec<Visibility>)>, held: &mut Held) {
        let metrics = self.router.metrics();
        {
            let segment = &segment[..];
            let outbox_of = |at: At| {
                &segment[at.change as usize].0.receivers.matched[at.member as usize]
                    .member
                    .outbox
            };
            let flush = |held: &mut Held| {
                metrics.message_out("postgres_changes", held.flush(&self.router, &outbox_of));
            };
            for at in 0..segment.len() {
                self.deliver_change(at, segment, held, &outbox_of);
                if held.len() >= MAX_HELD {
                    flush(held);
                }
            }
            flush(held);
        }
        for (p, v) in segment.drain(..) {
            self.recycle(p, v);
        }
    }

    /// Frames for the change at `at` of `segment`, held in `held`.
    fn deliver_change(
        &self,
        at: usize,
        segment: &[(Planned, Vec<Visibility>)],
        held: &mut Held,
        outbox_of: &OutboxOf<'_>,
    ) {
        let (p, vis) = &segment[at];
        let metrics = self.router.metrics();
        let mut payloads = Payloads::default();
        // The judged row, shared by the filter lane's jobs for this change.
        let mut lane_row: Option<Arc<Row>> = None;
        // Encode once per distinct frame: members of one topic with the same ids, serializer
        // and visibility shape share the bytes. Looked up once per receiver, so the maps use
        // a fast seeded hash (foldhash) rather than SipHash.
        let mut frames: HashMap<(ShapeKey, Vsn, &str, &[u32]), WireFrame> = HashMap::new();
        // The previous receiver's frame: the next one, mostly of the same channel and shape,
        // takes it after comparing keys, without hashing (the topic by pointer first).
        let mut last: Option<LastFrame<'_>> = None;
        // Counted once per change, not per receiver.
        let mut hidden = 0u64;
        let r = &*p.receivers;
        for (i, (m, &vi)) in r.matched.iter().zip(&r.viewer_of).enumerate() {
            if m.member.was_sent(&p.change) {
                continue;
            }
            let at = At {
                change: at as u32,
                member: i as u32,
            };
            if let Some(problem) = vis.get(vi).and_then(|v| v.problem.as_deref()) {
                held.flush_conn(m.member.conn_id, &self.router, outbox_of);
                self.tell_problem(m, &p.change, problem);
            }
            let Some(v) = vis.get(vi).filter(|v| v.visible) else {
                hidden += 1;
                continue;
            };
            let shape_key = shape_key(v, m.select.as_ref());
            if !m.deferred.is_empty() {
                // Filters left to the lane: it fills this member's place in its queue.
                let data = payloads.data(p, shape_key, v, m.select.as_ref());
                if let (Some(data), Some(row)) = (data, p.change.judged_row()) {
                    let row = lane_row.get_or_insert_with(|| Arc::new(row.clone()));
                    held.flush_conn(m.member.conn_id, &self.router, outbox_of);
                    self.lane.defer(m, row, data.to_owned());
                }
                continue;
            }
            if let Some(l) = &last {
                if l.shape == shape_key
                    && l.vsn == m.member.vsn
                    && (Arc::ptr_eq(l.topic, &m.member.topic) || *l.topic == m.member.topic)
                    && l.ids == m.ids.as_slice()
                {
                    held.hold(at, m.member.conn_id, l.frame.clone());
                    continue;
                }
            }
            let frame_key = (shape_key, m.member.vsn, &*m.member.topic, m.ids.as_slice());
            let frame = match frames.get(&frame_key) {
                Some(frame) => frame.clone(),
                None => {
                    let Some(data) = payloads.data(p, shape_key, v, m.select.as_ref()) else {
                        continue;
                    };
                    let frame = change_frame(m.member.vsn, &m.member.topic, &m.ids, data);
                    // A change one member sees (a portal customer's own row) needs no map.
                    if r.matched.len() > 1 {
                        frames.insert(frame_key, frame.clone());
                    }
                    frame
                }
            };
            last = Some(LastFrame {
                shape: shape_key,
                vsn: m.member.vsn,
                topic: &m.member.topic,
                ids: m.ids.as_slice(),
                frame: frame.clone(),
            });
            held.hold(at, m.member.conn_id, frame);
        }
        metrics.dropped("row_scope", hidden);
        let lag = chrono::Utc::now().signed_duration_since(p.change.commit_time);
        metrics
            .fanout_latency
            .observe(lag.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
    }
}

/// One change's `data` per visibility shape, built on first use (with the field sizes
/// and column conversions it needs), for inline frames and filter-lane jobs alike.
#[derive(Default)]
struct Payloads {
    by_shape: HashMap<ShapeKey, Option<Box<RawValue>>>,
    sizes: Option<FieldSizes>,
    conversions: Option<Conversions>,
}

impl Payloads {
    fn data(
        &mut self,
        p: &Planned,
        shape: ShapeKey,
        v: &Visibility,
        select: Option<&Arc<[String]>>,
    ) -> Option<&RawValue> {
        let (sizes, conversions) = (&mut self.sizes, &mut self.conversions);
        self.by_shape
            .entry(shape)
            .or_insert_with(|| {
                let sizes = sizes.get_or_insert_with(|| FieldSizes::of(&p.change, &p.table));
                let conversions = conversions.get_or_insert_with(|| Conversions::of(&p.table));
                change_data(&p.change, sizes, &p.table, conversions, v, select)
            })
            .as_deref()
    }
}

/// The frame `deliver_change` queued last, and its key.
struct LastFrame<'a> {
    shape: ShapeKey,
    vsn: Vsn,
    topic: &'a Arc<str>,
    ids: &'a [u32],
    frame: WireFrame,
}

/// The topic a database broadcast goes to.
pub(super) fn broadcast_key(b: &DbBroadcast) -> TopicKey {
    TopicKey {
        private: b.private,
        topic: format!("realtime:{}", b.topic).into(),
    }
}

/// A database broadcast as clients receive it: `meta: {id}`, binary to v2 sockets.
pub(super) fn db_broadcast(b: DbBroadcast) -> Broadcast {
    let payload = match b.binary {
        Some(bytes) => BroadcastPayload::Binary(bytes),
        None => BroadcastPayload::Json(b.payload),
    };
    Broadcast {
        event: b.event,
        payload,
        meta: Some(serde_json::json!({ "id": b.id })),
        binary_origin: true,
    }
}

/// A `postgres_changes` frame for one channel.
pub(super) fn change_frame(vsn: Vsn, topic: &str, ids: &[u32], data: &RawValue) -> WireFrame {
    let payload = ChangePayload { ids, data };
    // `{"ids":[..],"data":..}`: at most 11 bytes per id.
    let len = 20 + 11 * ids.len() + data.get().len();
    protocol::encode_sized(vsn, None, None, topic, "postgres_changes", &payload, len)
}
