//! One endpoint's delivery loop, run while this hub holds its lease: read the log from
//! the stored cursor, gather a batch (at most `batch_events`, waiting at most
//! `batch_wait` for it to fill, counted from its oldest change's read or from the last
//! batch sent, whichever is sooner, so a change after a quiet spell goes at once), POST it until a 2xx (backing off between failures,
//! pausing after a run of them), then move the stored cursor past it. One batch at a
//! time, so the endpoint sees changes in log order. Every database write is fenced by the
//! lease, and the cursor's by the cursor it replaces (a replay that moved it meanwhile
//! wins); an operator's change (pause, resume, retry, replay, alter) makes the loop
//! reload the endpoint and start again from its stored cursor.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::deliver::{self, Outcome};
use super::log;
use super::mark::Mark;
use super::select::{Selection, SelectionError};
use super::store::{self, CursorWrite, EndpointDef};
use super::{ConsumersError, Inner};
use crate::changes::Change;

/// An attempt starts only if the lease outlasts its timeout by a quarter more (the
/// supervisor renews well before that: see `supervisor`).
const LEASE_MARGIN_DIVISOR: u32 = 4;
/// While nothing is selected, the stored cursor (and the hold) moves at most this often:
/// enough for retention, without a write per read on a busy database.
const STORE_IDLE_EVERY: Duration = Duration::from_secs(10);
/// Log rows read at a time at least (batches may be smaller): an endpoint with tiny
/// batches still passes over other tables' rows quickly.
const READ_ROWS_MIN: usize = 100;
/// While a batch fills (it waits up to `batch_wait` for more changes), the log is read
/// at most this many times in that wait, however often the capture reads rows of the
/// endpoint's tables (unless it has read enough rows to fill the batch): 100 commits a
/// second had made 100 reads a second per endpoint.
const FILL_READS_PER_WAIT: u32 = 10;
/// Wait between tries while the database is unreachable.
const DB_RETRY: Duration = Duration::from_secs(1);

/// The lease as the supervisor last saw it: valid until `until`; `version` is the
/// endpoint's row version (bumped by every operator change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lease {
    pub until: Instant,
    pub version: i64,
}

/// How a stretch of delivery ended.
enum Next {
    /// Load the endpoint again and go on from its stored cursor.
    Reload,
    /// The lease is gone or the hub is stopping.
    Stop,
}

/// Runs until the lease is lost or `stop` is cancelled.
pub(super) async fn run_endpoint(
    inner: Arc<Inner>,
    name: String,
    lease: watch::Receiver<Lease>,
    stop: CancellationToken,
) {
    let mut ep = Endpoint {
        progress: inner.progress.clone(),
        inner,
        name,
        lease,
        stop,
        renamed: Renamed::default(),
    };
    tracing::info!(endpoint = %ep.name, "delivering webhook endpoint");
    while let Next::Reload = ep.session().await {}
    ep.inner.forget_local(&ep.name);
    tracing::info!(endpoint = %ep.name, "stopped delivering webhook endpoint");
}

struct Endpoint {
    inner: Arc<Inner>,
    name: String,
    /// Sent by the supervisor on renewal and when the row's version changes; closed when
    /// the supervisor drops this endpoint.
    lease: watch::Receiver<Lease>,
    /// The capture's progress: new rows may be waiting.
    progress: watch::Receiver<u64>,
    stop: CancellationToken,
    renamed: Renamed,
}

/// The names the endpoint's tables had before a rename. The log keeps the name a row
/// was written under, so rows committed before a rename (or read before the reload it
/// causes) carry the old one: the selection takes them under both. Kept in the endpoint's
/// row too (`table_names`), so that a hub that takes the endpoint over (after a restart,
/// say) knows the names from before.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Renamed {
    /// The endpoint row (`EndpointDef::shape`'s first part) and its tables by oid, as
    /// last loaded.
    last: Option<(String, Vec<(u32, TableName)>)>,
    /// (old name, name now).
    aliases: Vec<(TableName, TableName)>,
}

/// (schema, table).
type TableName = (String, String);

impl Renamed {
    /// Notes the renames between the last load and `def`: a table (by oid) still selected
    /// under another name. A chain of them maps every earlier name to the one now; a
    /// table no longer selected takes its old names with it.
    fn note(&mut self, def: &EndpointDef) {
        let row = def.shape.split(' ').next().unwrap_or_default().to_owned();
        let now: Vec<(u32, TableName)> = def
            .oids
            .iter()
            .copied()
            .zip(def.tables.iter().cloned())
            .collect();
        match self.last.take() {
            Some((last_row, before)) if last_row == row => {
                for (oid, old) in before {
                    let Some((_, name)) = now.iter().find(|(o, n)| *o == oid && *n != old) else {
                        continue;
                    };
                    for (_, target) in &mut self.aliases {
                        if *target == old {
                            *target = name.clone();
                        }
                    }
                    self.aliases.push((old, name.clone()));
                }
                self.aliases
                    .retain(|(_, target)| def.tables.contains(target));
            }
            // Another row (dropped and created again): start over.
            Some(_) => self.aliases.clear(),
            None => {}
        }
        self.last = Some((row, now));
    }
}

impl Endpoint {
    /// Notes `def`'s table names (`Renamed`), starting from those its row keeps when this
    /// task has not loaded it before, and writes them back when they changed, before
    /// anything is delivered by them. False when the hub stops meanwhile.
    async fn note_names(&mut self, def: &EndpointDef) -> bool {
        if self.renamed.last.is_none() {
            use serde::Deserialize;
            let saved = def.table_names.as_ref();
            if let Some(saved) = saved.and_then(|v| Renamed::deserialize(v).ok()) {
                self.renamed = saved;
            }
        }
        self.renamed.note(def);
        let Ok(names) = serde_json::to_value(&self.renamed) else {
            return true;
        };
        if def.table_names.as_ref() == Some(&names) {
            return true;
        }
        let (name, node) = (self.name.clone(), self.inner.node_id.clone());
        self.db(|c| {
            let (name, node, names) = (name.clone(), node.clone(), names.clone());
            async move { store::save_table_names(&c, &name, &node, &names).await }
        })
        .await
        .is_some()
    }

    /// Loads the endpoint and delivers until something makes it reload or stop.
    async fn session(&mut self) -> Next {
        let (name, node) = (self.name.clone(), self.inner.node_id.clone());
        let overlap = self.inner.settings.secret_overlap;
        let Some(def) = self
            .db(|c| {
                let (name, node) = (name.clone(), node.clone());
                async move { store::load(&c, &name, &node, overlap).await }
            })
            .await
            .flatten()
        else {
            return Next::Stop;
        };
        self.inner
            .set_local(&self.name, |l| *l = Default::default());
        if def.paused {
            return self.wait_for_change(def.version).await;
        }
        if def.tables.is_empty() {
            return self
                .unusable(&def, "none of its tables exists any more")
                .await;
        }
        let catalog = self.inner.changes.catalog().cloned();
        let selection = match catalog {
            None => return Next::Stop,
            Some(catalog) => {
                Selection::bind(&catalog, &def.tables, &def.events, def.filter.as_deref()).await
            }
        };
        if !self.note_names(&def).await {
            return Next::Stop;
        }
        let selection = match selection {
            Ok(mut s) => {
                for (old, now) in &self.renamed.aliases {
                    s.alias(old, now);
                }
                s
            }
            Err(SelectionError::Catalog(e)) => {
                tracing::warn!(endpoint = %self.name, error = %e, "catalog unavailable; retrying");
                return self.pause_for(DB_RETRY).await;
            }
            Err(problem) => return self.unusable(&def, &problem.to_string()).await,
        };
        let mark = match Mark::parse(&def.position) {
            Ok(m) => m,
            Err(e) => return self.unusable(&def, &e.to_string()).await,
        };
        self.deliver_all(&def, &selection, mark).await
    }

    /// The delivery loop proper.
    async fn deliver_all(&mut self, def: &EndpointDef, selection: &Selection, from: Mark) -> Next {
        let settings = self.inner.settings.clone();
        let max = settings.batch_events.max(1);
        let mut pending: VecDeque<(Change, Mark)> = VecDeque::new();
        let mut tail = from.clone();
        // The cursor as stored (the row's own text, so the compare-and-set matches it).
        let mut stored = def.position.clone();
        let mut last_store = Instant::now();
        // The pending changes by the read that took them (how many, when): the batch
        // window runs from the first's time.
        let mut reads: VecDeque<(usize, Instant)> = VecDeque::new();
        // When the last batch was sent. After a quiet spell (nothing sent for a whole
        // `batch_wait`) a change goes at once: batches still leave at most once per
        // `batch_wait` under a steady rate, and a lone change is not held back.
        let mut last_sent: Option<Instant> = None;
        // The last read found more than it could take: more is waiting in the log. (A
        // turn reads whenever fewer than a batch are pending, so a turn that does not
        // read has a full batch due and never looks at this.)
        let mut more = false;
        // A read found more than it could take (the endpoint is behind the log), and the
        // backlog has not been sent yet: once a read finds the log drained (`!more`),
        // the end of that backlog goes at once instead of waiting a window behind its
        // full batches.
        let mut behind = false;
        let mut failures = u32::try_from(def.failures).unwrap_or(0);
        let ticks = self.inner.ticks.clone();
        // What the capture had read of this endpoint's tables, and when, at the last read.
        let (mut seen, mut rows_then) = (0, 0);
        let mut read_at = Instant::now();
        loop {
            if self.stop.is_cancelled() {
                return Next::Stop;
            }
            if self.newer_version(def.version) {
                return Next::Reload;
            }
            if pending.len() < max {
                rows_then = *self.progress.borrow_and_update();
                seen = ticks.of(selection.table_names());
                read_at = Instant::now();
                let limit = max.max(READ_ROWS_MIN);
                let read = log::read(&self.inner.pool, &tail, limit, selection).await;
                let read = match read {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(endpoint = %self.name, error = %e, "reading the change log failed; retrying");
                        if let Next::Stop = self.pause_for(DB_RETRY).await {
                            return Next::Stop;
                        }
                        continue;
                    }
                };
                more = read.full;
                behind = more || (behind && !(pending.is_empty() && read.items.is_empty()));
                if !read.items.is_empty() {
                    reads.push_back((read.items.len(), Instant::now()));
                }
                pending.extend(read.items);
                tail = read.tail;
                let tail_text = tail.to_string();
                if pending.is_empty()
                    && tail_text != stored
                    && last_store.elapsed() >= STORE_IDLE_EVERY
                {
                    // Rows of a table renamed since the load went unmatched: reload first.
                    if let Some(next) = self.changed_since(def).await {
                        return next;
                    }
                    match self.store_delivered(&tail_text, 0, &stored).await {
                        Some(CursorWrite::Stored) => {
                            stored = tail_text;
                            last_store = Instant::now();
                        }
                        Some(CursorWrite::Moved) => return Next::Reload,
                        Some(CursorWrite::Lost) | None => return Next::Stop,
                    }
                }
                let n = pending.len();
                self.inner.set_local(&self.name, |l| l.pending = n);
            }
            let since = reads.front().map(|r| r.1);
            let due_at = since.map(|t| batch_due(t, last_sent, settings.batch_wait));
            let due = pending.len() >= max
                || (behind && !more && !pending.is_empty())
                || due_at.is_some_and(|t| t <= Instant::now());
            if !due {
                if more {
                    continue;
                }
                let wake_at = due_at.map_or(Instant::now() + self.inner.poll, |t| {
                    t.min(Instant::now() + self.inner.poll)
                });
                // Read again when the capture has read rows of this endpoint's tables (not
                // after every commit of every table), and while a batch fills, at most
                // every `FILL_READS_PER_WAIT`th of its wait, unless enough rows may be there
                // to fill it: each read is a query.
                let fill_gap = settings.batch_wait / FILL_READS_PER_WAIT;
                let mut ticked = false;
                loop {
                    let at = match ticked {
                        true => (read_at + fill_gap).min(wake_at),
                        false => wake_at,
                    };
                    tokio::select! {
                        _ = self.stop.cancelled() => return Next::Stop,
                        r = self.progress.changed(), if !ticked => match r {
                            Err(_) => {
                                tokio::time::sleep_until(wake_at).await;
                                break;
                            }
                            Ok(()) if ticks.of(selection.table_names()) != seen => {
                                // Rows the capture has read since (of any table: at most
                                // this many are the endpoint's).
                                let new = self.progress.borrow().saturating_sub(rows_then);
                                if since.is_none()
                                    || read_at.elapsed() >= fill_gap
                                    || new >= (max - pending.len()) as u64
                                {
                                    break;
                                }
                                ticked = true;
                            }
                            Ok(()) => {}
                        },
                        _ = tokio::time::sleep_until(at) => break,
                        r = self.lease.changed() => match r {
                            Err(_) => return Next::Stop,
                            Ok(()) => break,
                        },
                    }
                }
                continue;
            }
            let Some(batch) = self.batch(&pending, max, settings.batch_bytes).await else {
                return self.pause_for(DB_RETRY).await;
            };
            let n = batch.events;
            let after = if n == pending.len() {
                tail.clone()
            } else {
                pending[n - 1].1.clone()
            };
            match self
                .deliver(def, batch, &after, &stored, &mut failures)
                .await
            {
                Delivery::Not(next) => return next,
                Delivery::Sent => {
                    // Cut by `batch_bytes` (not by `batch_events`, nor holding all).
                    let cut_by_bytes = n < max && n < pending.len();
                    pending.drain(..n);
                    stored = after.to_string();
                    last_store = Instant::now();
                    // Behind a batch cut by bytes, what is left goes on as that batch
                    // would have (due at once): it does not count as a new send.
                    if !cut_by_bytes {
                        last_sent = Some(last_store);
                    }
                    behind &= more || !pending.is_empty();
                    // What is left waits from when it was read: what was read with the
                    // batch is due at once, not a whole `batch_wait` later, and what was
                    // read after it waits its own. Behind a batch cut by bytes (large
                    // rows), all that is left is due at once: it would not fit either.
                    drain_reads(&mut reads, n);
                    if let (true, Some(front)) = (cut_by_bytes, reads.front_mut()) {
                        front.1 = since.unwrap_or(front.1);
                    }
                    let left = pending.len();
                    self.inner.set_local(&self.name, |l| l.pending = left);
                }
            }
        }
    }

    /// The next batch: the first changes of `pending`, at most `max` of them and, past
    /// the first, no more than fit in `max_bytes` of body. Each change is copied only
    /// while its event is written. `None` when the catalog is unavailable.
    async fn batch(
        &self,
        pending: &VecDeque<(Change, Mark)>,
        max: usize,
        max_bytes: usize,
    ) -> Option<Batch> {
        let mut body = deliver::Body::default();
        for (change, _) in pending.iter().take(max) {
            let mut one = [change.clone()];
            // Old rows as the table's REPLICA IDENTITY shows them, as on the WebSocket.
            if let Err(e) = self
                .inner
                .changes
                .cut_old_records(&mut one, &self.renamed.aliases)
                .await
            {
                tracing::warn!(endpoint = %self.name, error = %e, "catalog unavailable; retrying");
                return None;
            }
            if !body.push(&one[0], max_bytes) {
                break;
            }
        }
        let events = body.events();
        let body = body.finish();
        let ends = pending.front().zip(pending.get(events.max(1) - 1));
        let msg_id = deliver::message_id(ends.map(|((first, _), (last, _))| (first, last)), &body);
        Some(Batch {
            body,
            msg_id,
            events,
        })
    }

    /// POSTs one batch until it is acknowledged. `Sent` when the cursor moved past it.
    async fn deliver(
        &mut self,
        def: &EndpointDef,
        batch: Batch,
        after: &Mark,
        stored: &str,
        failures: &mut u32,
    ) -> Delivery {
        let settings = self.inner.settings.clone();
        let Batch {
            body,
            msg_id,
            events: n,
        } = batch;
        let after_text = after.to_string();
        loop {
            let needed = settings.timeout + settings.timeout / LEASE_MARGIN_DIVISOR;
            if let Some(next) = self.wait_for_lease(needed).await {
                return Delivery::Not(next);
            }
            // An operator's change since the endpoint was loaded wins over this batch.
            if let Some(next) = self.changed_since(def).await {
                return Delivery::Not(next);
            }
            // A stopping hub does not wait for the answer: the batch is sent again later.
            let secrets = def.signing_secrets(chrono::Utc::now());
            let outcome = tokio::select! {
                _ = self.stop.cancelled() => return Delivery::Not(Next::Stop),
                o = self.inner.sender.post(&def.url, &secrets, &msg_id, body.clone()) => o,
            };
            match outcome {
                Outcome::Delivered => {
                    let events = i32::try_from(n).unwrap_or(i32::MAX);
                    return match self.store_delivered(&after_text, events, stored).await {
                        Some(CursorWrite::Stored) => {
                            if *failures > 0 {
                                tracing::info!(endpoint = %self.name, after_failures = *failures,
                                    "webhook endpoint delivers again");
                            }
                            *failures = 0;
                            self.inner
                                .set_local(&self.name, |l| l.next_attempt_at = None);
                            Delivery::Sent
                        }
                        Some(CursorWrite::Moved) => Delivery::Not(Next::Reload),
                        Some(CursorWrite::Lost) | None => Delivery::Not(Next::Stop),
                    };
                }
                Outcome::Failed {
                    status,
                    error,
                    retry_after,
                } => {
                    *failures += 1;
                    tracing::warn!(endpoint = %self.name, status = ?status, error = %error,
                        failures = *failures, events = n, "webhook delivery failed");
                    let recorded = self.record_failure(&error, status.map(i32::from)).await;
                    let Some(recorded) = recorded else {
                        return Delivery::Not(Next::Stop);
                    };
                    if !recorded.held {
                        return Delivery::Not(Next::Stop);
                    }
                    if recorded.paused {
                        // Paused by this failure, or by an operator (or another hub)
                        // while the request was in flight: only the first is a streak
                        // this hub saw reach the limit.
                        if *failures >= self.inner.settings.pause_after_failures {
                            tracing::error!(endpoint = %self.name, failures = *failures,
                                "webhook endpoint paused after failed attempts in a row; nothing is \
                                 dropped: resume or retry it once the receiver works");
                        } else {
                            tracing::info!(endpoint = %self.name, failures = *failures,
                                "webhook endpoint was paused while a delivery failed (its \
                                 paused_reason says by whom); nothing is dropped");
                        }
                        return Delivery::Not(Next::Reload);
                    }
                    let delay = deliver::backoff(
                        *failures,
                        settings.retry_initial,
                        settings.retry_max,
                        retry_after,
                        rand::random::<f64>(),
                    );
                    let at =
                        chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                    self.inner
                        .set_local(&self.name, |l| l.next_attempt_at = Some(at));
                    if let Some(next) = self.sleep_unless_changed(delay, def.version).await {
                        return Delivery::Not(next);
                    }
                }
            }
        }
    }

    /// Waits until the lease is valid for at least `needed` more; `Some` when delivery
    /// must end instead.
    async fn wait_for_lease(&mut self, needed: Duration) -> Option<Next> {
        loop {
            let until = self.lease.borrow().until;
            if until > Instant::now() + needed {
                return None;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return Some(Next::Stop),
                r = self.lease.changed() => if r.is_err() {
                    return Some(Next::Stop);
                },
                _ = tokio::time::sleep(DB_RETRY) => {}
            }
        }
    }

    /// Sleeps `delay` (the backoff); `Some(Reload)` early when an operator changed the
    /// endpoint (e.g. `retry`), `Some(Stop)` when stopping.
    async fn sleep_unless_changed(&mut self, delay: Duration, version: i64) -> Option<Next> {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Some(Next::Stop),
                _ = tokio::time::sleep_until(deadline) => return None,
                r = self.lease.changed() => {
                    if r.is_err() {
                        return Some(Next::Stop);
                    }
                    if self.newer_version(version) {
                        return Some(Next::Reload);
                    }
                }
            }
        }
    }

    /// Waits for an operator's change (a paused or unusable endpoint).
    async fn wait_for_change(&mut self, version: i64) -> Next {
        loop {
            if self.newer_version(version) {
                return Next::Reload;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return Next::Stop,
                r = self.lease.changed() => if r.is_err() {
                    return Next::Stop;
                },
            }
        }
    }

    /// An endpoint that cannot be delivered as defined (a bad filter, a dropped table):
    /// said once in its row and the log, then nothing until it is changed.
    async fn unusable(&mut self, def: &EndpointDef, problem: &str) -> Next {
        tracing::error!(endpoint = %self.name, problem, "webhook endpoint cannot be delivered");
        if self.record_failure(problem, None).await.is_none() {
            return Next::Stop;
        }
        self.wait_for_change(def.version).await
    }

    async fn pause_for(&mut self, delay: Duration) -> Next {
        tokio::select! {
            _ = self.stop.cancelled() => Next::Stop,
            _ = tokio::time::sleep(delay) => Next::Reload,
        }
    }

    /// `Reload` when an operator changed the row since `def` was loaded, or it changed
    /// shape (a table renamed, the endpoint dropped and created again); `Stop` when it is
    /// no longer held.
    async fn changed_since(&mut self, def: &EndpointDef) -> Option<Next> {
        let (name, node) = (self.name.clone(), self.inner.node_id.clone());
        let state = self
            .db(|c| {
                let (name, node) = (name.clone(), node.clone());
                async move { store::version(&c, &name, &node).await }
            })
            .await;
        match state {
            None | Some(None) => Some(Next::Stop),
            Some(Some((v, shape))) if v > def.version || shape != def.shape => Some(Next::Reload),
            Some(Some(_)) => None,
        }
    }

    fn newer_version(&self, version: i64) -> bool {
        self.lease.borrow().version > version
    }

    /// Moves the stored cursor from `expected` to `position` (see `store::delivered`).
    async fn store_delivered(
        &self,
        position: &str,
        events: i32,
        expected: &str,
    ) -> Option<CursorWrite> {
        let (name, node) = (self.name.clone(), self.inner.node_id.clone());
        self.db(|c| {
            let (name, node) = (name.clone(), node.clone());
            let (position, expected) = (position.to_owned(), expected.to_owned());
            async move { store::delivered(&c, &name, &node, &position, events, &expected).await }
        })
        .await
    }

    async fn record_failure(&self, error: &str, status: Option<i32>) -> Option<store::Failed> {
        let (name, node) = (self.name.clone(), self.inner.node_id.clone());
        let pause_after =
            i32::try_from(self.inner.settings.pause_after_failures).unwrap_or(i32::MAX);
        self.db(|c| {
            let (name, node, error) = (name.clone(), node.clone(), error.to_owned());
            async move { store::failed(&c, &name, &node, &error, status, pause_after).await }
        })
        .await
    }

    /// Runs `op` on a pooled connection, trying again every second while the database
    /// is unreachable; `None` when stopping.
    async fn db<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: Fn(deadpool_postgres::Client) -> Fut,
        Fut: Future<Output = Result<T, ConsumersError>>,
    {
        loop {
            let result = match self.inner.pool.get().await {
                Ok(client) => op(client).await,
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(v) => return Some(v),
                Err(e) => {
                    tracing::warn!(endpoint = %self.name, error = %e, "webhook bookkeeping failed; retrying");
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        _ = tokio::time::sleep(DB_RETRY) => {}
                    }
                }
            }
        }
    }
}

/// One request's worth of changes, ready to send.
struct Batch {
    body: bytes::Bytes,
    /// Its `webhook-id`.
    msg_id: String,
    /// The changes it holds: the first this many of the pending ones.
    events: usize,
}

/// How delivering one batch ended.
enum Delivery {
    /// Acknowledged and recorded.
    Sent,
    Not(Next),
}

/// When a batch whose oldest change was read at `since` is due: `batch_wait` after
/// that, or after the last batch was sent if that is sooner (at once after a quiet
/// spell, or when none was sent yet).
fn batch_due(since: Instant, last_sent: Option<Instant>, batch_wait: Duration) -> Instant {
    match last_sent {
        Some(sent) => (since + batch_wait).min(sent + batch_wait),
        None => since,
    }
}

/// Takes the first `n` changes off `reads` (how many each read took, and when).
fn drain_reads(reads: &mut VecDeque<(usize, Instant)>, mut n: usize) {
    while n > 0 {
        let Some(front) = reads.front_mut() else {
            break;
        };
        if front.0 > n {
            front.0 -= n;
            break;
        }
        n -= front.0;
        reads.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_after_a_quiet_spell_is_due_at_once_and_otherwise_a_wait_after_the_last() {
        let wait = Duration::from_secs(1);
        let now = Instant::now();
        // None sent yet, or the last a whole wait ago: at once.
        assert_eq!(batch_due(now, None, wait), now);
        assert_eq!(batch_due(now, Some(now - wait * 2), wait), now - wait);
        // The last sent 200 ms ago: a wait after it, before a wait after the read.
        let sent = now - Duration::from_millis(200);
        assert_eq!(batch_due(now, Some(sent), wait), sent + wait);
        // Read long ago (left over from a batch): a wait after that read.
        let read = now - Duration::from_millis(900);
        assert_eq!(batch_due(read, Some(now), wait), read + wait);
    }

    #[test]
    fn what_is_left_of_a_batch_waits_from_the_read_that_took_it() {
        let t0 = Instant::now();
        let (t1, t2) = (
            t0 + Duration::from_millis(100),
            t0 + Duration::from_millis(200),
        );
        let mut reads = VecDeque::from([(10, t0), (95, t1), (5, t2)]);
        drain_reads(&mut reads, 100);
        assert_eq!(
            reads,
            VecDeque::from([(5, t1), (5, t2)]),
            "5 of the second read left"
        );
        drain_reads(&mut reads, 5);
        assert_eq!(reads, VecDeque::from([(5, t2)]));
        drain_reads(&mut reads, 5);
        assert!(reads.is_empty());
        drain_reads(&mut reads, 3);
        assert!(reads.is_empty(), "nothing to take");
    }

    fn def(row: &str, tables: &[(u32, &str)]) -> EndpointDef {
        EndpointDef {
            url: String::new(),
            tables: tables
                .iter()
                .map(|(_, t)| ("public".to_owned(), (*t).to_owned()))
                .collect(),
            oids: tables.iter().map(|(o, _)| *o).collect(),
            events: Vec::new(),
            filter: None,
            secret: String::new(),
            previous_secret: None,
            previous_until: None,
            paused: false,
            version: 1,
            shape: format!("{row} {{...}}"),
            position: String::new(),
            failures: 0,
            table_names: None,
        }
    }

    fn aliases(r: &Renamed) -> Vec<(&str, &str)> {
        r.aliases
            .iter()
            .map(|((_, o), (_, n))| (o.as_str(), n.as_str()))
            .collect()
    }

    #[test]
    fn a_table_renamed_keeps_its_old_names_and_one_replaced_does_not() {
        let mut r = Renamed::default();
        r.note(&def("1", &[(10, "a"), (20, "x")]));
        r.note(&def("1", &[(10, "b"), (20, "x")]));
        assert_eq!(aliases(&r), [("a", "b")]);
        r.note(&def("1", &[(10, "c"), (20, "x")]));
        assert_eq!(aliases(&r), [("a", "c"), ("b", "c")], "a chain of renames");
        // alter_webhook put another table in its place: not a rename, and its old names go.
        r.note(&def("1", &[(30, "c2"), (20, "x")]));
        assert!(aliases(&r).is_empty(), "{:?}", aliases(&r));
        r.note(&def("1", &[(30, "c2"), (20, "y")]));
        assert_eq!(aliases(&r), [("x", "y")]);
        // Dropped and created again: another endpoint.
        r.note(&def("2", &[(30, "c3"), (20, "y")]));
        assert!(aliases(&r).is_empty());
    }

    #[test]
    fn the_names_kept_in_the_row_read_back_as_they_were_written() {
        let mut r = Renamed::default();
        r.note(&def("1", &[(10, "a")]));
        r.note(&def("1", &[(10, "b")]));
        let kept = serde_json::to_value(&r).unwrap();
        let mut back: Renamed = serde_json::from_value(kept).unwrap();
        assert_eq!(aliases(&back), [("a", "b")]);
        back.note(&def("1", &[(10, "c")]));
        assert_eq!(aliases(&back), [("a", "c"), ("b", "c")]);
    }
}
