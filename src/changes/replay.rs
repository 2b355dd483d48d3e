//! The frames one channel would have received for past log events: the same matching,
//! row scope (judged with the channel's current claims) and encoding as live dispatch,
//! for one subscriber. Resumed subscriptions replay through this; it decides nothing
//! about positions.

use std::sync::Arc;

use super::catalog::TableInfo;
use super::dispatch::{broadcast_key, change_frame, db_broadcast};
use super::index::Subscription;
use super::logged::{LogEntry, StatementRows};
use super::payload::{change_data, Conversions, FieldSizes};
use super::row::{DbBroadcast, DbEvent, Row};
use super::scope::{RlsError, ScopeHint, Viewer};
use super::Changes;
use crate::protocol::{self, Vsn, WireFrame};
use crate::router::TopicKey;

/// The channel a replay is for.
pub struct ReplayTarget {
    pub key: TopicKey,
    pub vsn: Vsn,
    pub viewer: Arc<Viewer>,
    pub subscriptions: Vec<Subscription>,
}

/// Frames for `events` in log order, and how many changes and broadcasts they carry.
#[derive(Default)]
pub struct Replayed {
    pub frames: Vec<WireFrame>,
    pub count: usize,
}

impl Changes {
    /// What `target` would have received for `events` (row scope judged now, with its
    /// claims). Database broadcasts to its topic are marked `replayed`. The events are
    /// only read, so resumes of one gap can share them (`Recent`).
    pub async fn replay(
        &self,
        target: &ReplayTarget,
        events: &[&DbEvent],
    ) -> Result<Replayed, RlsError> {
        self.replay_observed(target, events, &mut Tables::default())
            .await
    }

    /// The events of log entries as read that may reach `target`, to be judged part by
    /// part with [`Changes::replay_narrowed`]. A statement's row is parsed only when the
    /// channel's filters and row scope, looking at the columns they read, may pass it: a
    /// channel that sees a few rows of a long gap does not build all the others, nor
    /// keep them.
    pub async fn narrow_gap(
        &self,
        target: &ReplayTarget,
        entries: Vec<LogEntry>,
    ) -> Result<Narrowed, RlsError> {
        let mut narrowed = Narrowed::default();
        if self.rls.is_none() {
            return Ok(narrowed);
        }
        for entry in entries {
            match entry {
                LogEntry::Event(e) => narrowed.events.push(e),
                LogEntry::Statement(s) => {
                    self.narrow(target, &s, &mut narrowed.tables, &mut narrowed.events)
                        .await?;
                }
            }
        }
        Ok(narrowed)
    }

    /// [`Changes::replay`] of `narrowed.events[range]`, with the tables (and rules
    /// version) the narrowing met.
    pub async fn replay_narrowed(
        &self,
        target: &ReplayTarget,
        narrowed: &mut Narrowed,
        range: std::ops::Range<usize>,
    ) -> Result<Replayed, RlsError> {
        let Narrowed { events, tables } = narrowed;
        let events: Vec<&DbEvent> = events[range].iter().collect();
        self.replay_observed(target, &events, tables).await
    }

    /// Into `out`, the changes of `s` that may reach `target` (its rows parsed only then).
    async fn narrow(
        &self,
        target: &ReplayTarget,
        s: &StatementRows,
        tables: &mut Tables,
        out: &mut Vec<DbEvent>,
    ) -> Result<(), RlsError> {
        let subs: Vec<&Subscription> = target
            .subscriptions
            .iter()
            .filter(|sub| sub.covers(&s.schema, &s.table, s.op))
            .collect();
        if subs.is_empty() {
            return Ok(());
        }
        // (A table the catalog does not know is never picked, nor its rows parsed.)
        let found = self.table_of(tables, &s.schema, &s.table, target).await?;
        // Nor are the rows of an event its publication does not publish.
        let visible = |(t, h): &&TableHint| t.events.has(s.op) && !matches!(h, ScopeHint::Nothing);
        let Some((_, hint)) = found.filter(visible) else {
            return Ok(());
        };
        // A subscription without a filter takes every row its table's row scope allows.
        let every = subs.iter().any(|sub| sub.filter.is_empty());
        let mut columns: Vec<&str> = hint.columns().collect();
        if !every {
            columns.extend(subs.iter().flat_map(|sub| sub.filter.columns()));
        }
        columns.sort_unstable();
        columns.dedup();
        let may_pass = |row: &Row| {
            hint.may_see(row) && (every || subs.iter().any(|sub| sub.filter.matches(row)))
        };
        if columns.is_empty() {
            // Nothing to look at (some subscription has no filter and row scope has no
            // key): every row may pass.
            if may_pass(&Row::new()) {
                out.extend(s.changes().map(DbEvent::Change));
            }
            return Ok(());
        }
        for seq in 0..s.len() {
            // No row to judge matches nothing, as the whole row would not.
            let row = s.judged_columns(seq, &columns);
            if row.is_some_and(|r| may_pass(&r)) {
                out.push(DbEvent::Change(s.change(seq)));
            }
        }
        Ok(())
    }

    /// The catalog's table and row scope's hint for `target`'s viewer, looked up once
    /// per replay; `None` for a table the catalog does not know.
    async fn table_of<'t>(
        &self,
        tables: &'t mut Tables,
        schema: &str,
        table: &str,
        target: &ReplayTarget,
    ) -> Result<Option<&'t TableHint>, RlsError> {
        let (Some(catalog), Some(rls)) = (&self.catalog, &self.rls) else {
            return Ok(None);
        };
        let known = tables
            .met
            .iter()
            .position(|(s, t, _)| s == schema && t == table);
        let at = match known {
            Some(at) => at,
            None => {
                let found = match catalog.table(schema, table).await? {
                    Some(info) => {
                        if !tables.observed {
                            // Row scope is judged by the rules of now.
                            rls.refresh().await?;
                            tables.observed = true;
                        }
                        let hint = rls.hint(&info, &target.viewer).await?;
                        Some((info, hint))
                    }
                    None => None,
                };
                tables
                    .met
                    .push((schema.to_owned(), table.to_owned(), found));
                tables.met.len() - 1
            }
        };
        Ok(tables.met[at].2.as_ref())
    }

    /// `replay`, with the tables (and rules version) met so far.
    async fn replay_observed(
        &self,
        target: &ReplayTarget,
        events: &[&DbEvent],
        tables: &mut Tables,
    ) -> Result<Replayed, RlsError> {
        let Some(rls) = &self.rls else {
            return Ok(Replayed::default());
        };
        // Which events reach the channel, before asking about row scope.
        let mut picked = Vec::new();
        for event in events {
            match event {
                DbEvent::Broadcast(b) if broadcast_key(b) == target.key => {
                    picked.push(Picked::Broadcast(b.clone()));
                }
                DbEvent::Broadcast(_) => {}
                DbEvent::Change(c) => {
                    // One frame per distinct `select`, as live dispatch sends them.
                    let mut groups: Vec<Group> = Vec::new();
                    for s in target.subscriptions.iter().filter(|s| s.matches(c)) {
                        match groups.iter_mut().find(|(select, _)| *select == s.select) {
                            Some((_, ids)) => ids.push(s.id),
                            None => groups.push((s.select.clone(), vec![s.id])),
                        }
                    }
                    if groups.is_empty() {
                        continue;
                    }
                    let found = self.table_of(tables, &c.schema, &c.table, target).await?;
                    let Some((table, hint)) = found else {
                        continue;
                    };
                    // As live dispatch: an event the publication does not publish.
                    if !table.events.has(c.op) {
                        continue;
                    }
                    // Rows row scope surely hides are not judged one by one.
                    if c.judged_row().is_some_and(|row| hint.may_see(row)) {
                        picked.push(Picked::Change(c, table.clone(), groups));
                    }
                }
            }
        }
        let viewers = [target.viewer.clone()];
        let items: Vec<super::scope::Item<'_>> = picked
            .iter()
            .filter_map(|p| match p {
                Picked::Change(c, table, _) => Some((*c, table.as_ref(), &viewers[..])),
                Picked::Broadcast(_) => None,
            })
            .collect();
        let visibility = rls.check_observed(&items).await?;
        let mut vis = visibility.into_iter();
        let mut out = Replayed::default();
        for p in picked {
            match p {
                Picked::Broadcast(b) => {
                    if let Some(frame) = replayed_broadcast(target, b) {
                        out.frames.push(frame);
                        out.count += 1;
                    }
                }
                Picked::Change(c, table, groups) => {
                    let v = vis.next().unwrap_or_default();
                    let Some(v) = v.first().filter(|v| v.visible) else {
                        continue;
                    };
                    let sizes = FieldSizes::of(c, &table);
                    let conversions = Conversions::of(&table);
                    for (select, ids) in &groups {
                        let data = change_data(c, &sizes, &table, &conversions, v, select.as_ref());
                        if let Some(data) = data {
                            let topic = &target.key.topic;
                            out.frames.push(change_frame(target.vsn, topic, ids, &data));
                        }
                    }
                    out.count += 1;
                }
            }
        }
        Ok(out)
    }
}

/// A gap's events that may reach one channel (`Changes::narrow_gap`), and the tables
/// met while narrowing them.
#[derive(Default)]
pub struct Narrowed {
    pub events: Vec<DbEvent>,
    tables: Tables,
}

/// The tables one replay met: (schema, table, the catalog's table and the viewer's row
/// scope hint; `None` when the catalog does not know it). A replay meets few. The rules
/// version is asked for once, when the first table is met: a replay in which no change
/// may reach the channel (broadcasts alone, say) needs no database.
#[derive(Default)]
struct Tables {
    observed: bool,
    met: Vec<(String, String, Option<TableHint>)>,
}

/// A table as the catalog knows it, and row scope's hint for the replay's viewer.
type TableHint = (Arc<TableInfo>, ScopeHint);

/// Subscription ids of one channel that share a `select`.
type Group = (Option<Arc<[String]>>, Vec<u32>);

enum Picked<'a> {
    Broadcast(DbBroadcast),
    Change(&'a super::row::Change, Arc<TableInfo>, Vec<Group>),
}

fn replayed_broadcast(target: &ReplayTarget, b: DbBroadcast) -> Option<WireFrame> {
    let mut msg = db_broadcast(b);
    if let Some(serde_json::Value::Object(meta)) = msg.meta.as_mut() {
        meta.insert("replayed".into(), serde_json::Value::Bool(true));
    }
    protocol::encode_broadcast(target.vsn, &target.key.topic, &msg)
}
