//! The postgres_changes subscription index: (schema, table) -> subscriptions, and the
//! in-process match of a change against event and filter. Row-scope checks happen after
//! matching (see `dispatch`), only for the subscriptions this returns; row scope's gates
//! (`scope::Gates`) narrow them first, per role (`roles`): nobody of a role that sees
//! nothing of the table, and only the viewers whose claim value is the row's key when
//! the role's policies compare a column with a claim.

mod roles;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use serde_json::Value;

use super::catalog::TableInfo;
use super::filter::{BoundFilter, Filter, IndexColumn};
use super::keys::Gate;
use super::row::{Change, Op, Row};
use super::scope::Viewer;
use crate::protocol::Vsn;
use crate::router::outbox::ChannelOutbox;
use crate::router::MemberId;
use roles::RoleGroups;

/// Where a subscription sits in the index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TableScope {
    /// One table.
    Table { schema: Arc<str>, table: Arc<str> },
    /// Every enabled table of a schema (`table: "*"` or absent).
    Schema(Arc<str>),
    /// Every enabled table (`schema: "*"`).
    All,
}

/// One `config.postgres_changes` entry of a join, validated.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The integer id echoed in the join reply and carried in `ids`.
    pub id: u32,
    /// `None` means `*`.
    pub event: Option<Op>,
    pub scope: TableScope,
    pub filter: BoundFilter,
    /// The entry's `select`: only these columns (plus the primary key) are sent.
    pub select: Option<Arc<[String]>>,
    /// `TableScope::Table`: the table's oid at join, to follow it when renamed.
    pub table_oid: Option<u32>,
    /// `TableScope::Table` with a filter: what `filter` was bound from.
    pub rebind: Option<Arc<Rebind>>,
}

/// What a table subscription's filter was bound from, to bind it again when DDL changes
/// the type of a column it compares (`ALTER COLUMN … TYPE`): Supabase compares with the
/// column's type of now.
#[derive(Debug)]
pub struct Rebind {
    pub filter: Filter,
    /// The compared columns as bound: (name, type, base type of a domain).
    types: Vec<(String, String, Option<String>)>,
}

impl Rebind {
    pub fn new(filter: Filter, table: &TableInfo) -> Rebind {
        let types = Rebind::types_of(&filter, table);
        Rebind { filter, types }
    }

    fn types_of(filter: &Filter, table: &TableInfo) -> Vec<(String, String, Option<String>)> {
        filter
            .columns()
            .into_iter()
            .filter_map(|name| table.columns.iter().find(|c| c.name == name))
            .map(|c| (c.name.clone(), c.type_name.clone(), c.base_type.clone()))
            .collect()
    }

    /// Whether a compared column's type is not as bound (or the column is gone).
    pub fn retyped(&self, table: &TableInfo) -> bool {
        Rebind::types_of(&self.filter, table) != self.types
    }
}

impl Subscription {
    /// Whether `change` is for this subscription: its table (or schema, or any), its
    /// event, and its filter on the change's judged row.
    pub fn matches(&self, change: &Change) -> bool {
        self.covers(&change.schema, &change.table, change.op)
            && change
                .judged_row()
                .is_some_and(|row| self.filter.matches(row))
    }

    /// Whether changes of `op` to `schema.table` are for this subscription, by its table
    /// (or schema, or any) and event alone: those its filter then decides.
    pub fn covers(&self, schema: &str, table: &str, op: Op) -> bool {
        let in_scope = match &self.scope {
            TableScope::Table {
                schema: s,
                table: t,
            } => **s == *schema && **t == *table,
            TableScope::Schema(s) => **s == *schema,
            TableScope::All => true,
        };
        in_scope && self.event.is_none_or(|e| e == op)
    }
}

/// Who receives a channel's changes, and how: one per joined channel with subscriptions.
pub struct Subscriber {
    pub member: MemberId,
    pub conn_id: u64,
    pub topic: Arc<str>,
    /// For the `system` messages dispatch sends this channel.
    pub join_ref: Arc<str>,
    pub vsn: Vsn,
    pub outbox: ChannelOutbox,
    pub viewer: Arc<Viewer>,
    /// A resumed channel registered before this hub had read as far as the hub it left:
    /// the changes that hub already sent it (by transaction and log row), not sent again.
    pub sent: Option<Sent>,
}

/// Whether the change of log row `.1` written by transaction `.0` was sent already.
pub type Sent = Arc<dyn Fn(u64, i64) -> bool + Send + Sync>;

/// A subscriber as the index holds it: its viewer is replaced on `access_token` refresh.
pub(super) struct Member {
    pub member: MemberId,
    pub conn_id: u64,
    pub topic: Arc<str>,
    pub join_ref: Arc<str>,
    pub vsn: Vsn,
    pub outbox: ChannelOutbox,
    /// Written on refresh, read (and copied out) by dispatch.
    viewer: RwLock<Arc<Viewer>>,
    /// Whether this member was told that a row-scope policy failed for its viewer (once
    /// per viewer: a refresh clears it).
    told_problem: AtomicBool,
    /// `Subscriber::sent`.
    sent: Option<Sent>,
}

impl Member {
    pub fn viewer(&self) -> Arc<Viewer> {
        self.with_viewer(Arc::clone)
    }

    /// Runs `f` on the current viewer under the read lock, without cloning it.
    pub fn with_viewer<T>(&self, f: impl FnOnce(&Arc<Viewer>) -> T) -> T {
        f(&self.viewer.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// True the first time it is called for the current viewer.
    pub fn first_problem(&self) -> bool {
        !self.told_problem.swap(true, Ordering::Relaxed)
    }

    /// Whether `change` was sent to this member's channel before it resumed here.
    pub fn was_sent(&self, change: &Change) -> bool {
        self.sent.as_ref().is_some_and(|s| s(change.xid, change.id))
    }
}

/// A member matched by a change, with the ids of its matching subscriptions that share
/// one `select` (a member whose bindings select differently gets one `Matched` each).
pub(super) struct Matched {
    pub member: Arc<Member>,
    pub select: Option<Arc<[String]>>,
    /// Mostly one id: kept inline, so matching allocates nothing per member.
    pub ids: MatchedIds,
    /// Subscriptions whose filters were too costly to judge while matching (past the
    /// connection's inline budget): the filter lane judges them (`lane`).
    pub deferred: Vec<Entry>,
}

/// The ids of one member's matching subscriptions.
pub(super) type MatchedIds = smallvec::SmallVec<[u32; 2]>;

/// Where `candidates` found an entry: in a role group's by-member map, which yields each
/// member's entries together (and no member is in two role groups), or elsewhere (an index
/// or key bucket), where the same member may come again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    ByMember,
    Elsewhere,
}

/// What `candidates` calls for each entry.
pub(super) type Visit<'a> = &'a mut dyn FnMut(&Entry, Found);

/// Row scope's gate for a role of the scope being matched.
type GateOf<'a> = &'a dyn Fn(&str) -> Gate;
/// A subscription and its member, shared by every place that finds it.
pub(super) type Entry = Arc<(Arc<Member>, Subscription)>;
/// Where a subscription sits inside its scope: scanned, or under an index key.
type Slot = Option<(IndexColumn, String)>;
/// Every (scope, slot) a member's subscriptions occupy.
type Places = Vec<(TableScope, Slot)>;

/// The subscriptions of one scope: those with an `eq` filter on a text/uuid column are
/// found by hash lookup (the usual portal case, `customer_id=eq.<uuid>`), the rest are
/// scanned, grouped by role so that row scope can narrow them. Either way the whole
/// filter is then checked.
#[derive(Default)]
struct ScopeSubs {
    scanned: RoleGroups,
    by_eq: HashMap<IndexColumn, HashMap<String, Vec<Entry>>>,
}

impl ScopeSubs {
    fn add(&mut self, entry: Entry) {
        match entry.1.filter.eq_index() {
            Some((column, key)) => self
                .by_eq
                .entry(column)
                .or_default()
                .entry(key)
                .or_default()
                .push(entry),
            None => self.scanned.add(entry),
        }
    }

    /// Removes `member`'s entries from where `slot` says they are.
    fn remove_member(&mut self, member: MemberId, slot: &Slot) {
        match slot {
            None => {
                self.scanned.take_member(member);
            }
            Some((column, key)) => {
                if let Some(keys) = self.by_eq.get_mut(column) {
                    if let Some(subs) = keys.get_mut(key) {
                        subs.retain(|e| e.0.member != member);
                        if subs.is_empty() {
                            keys.remove(key);
                        }
                    }
                    if keys.is_empty() {
                        self.by_eq.remove(column);
                    }
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.scanned.is_empty() && self.by_eq.is_empty()
    }

    fn len(&self) -> usize {
        self.scanned.len()
            + self
                .by_eq
                .values()
                .flat_map(|keys| keys.values())
                .map(Vec::len)
                .sum::<usize>()
    }

    /// Calls `f` with every entry that may match `row`: the scanned ones row scope lets
    /// through (`gate_of` a role), plus the indexed ones under the row's key.
    fn candidates(&mut self, row: &Row, gate_of: &dyn Fn(&str) -> Gate, f: Visit<'_>) {
        self.scanned.candidates(row, gate_of, f);
        for (column, keys) in &self.by_eq {
            if let Some(subs) = column.key_of(row).and_then(|key| keys.get(&key)) {
                subs.iter().for_each(|e| f(e, Found::Elsewhere));
            }
        }
    }
}

/// The scopes whose subscriptions may match a change to `schema.table`: its table, its
/// schema, every table.
fn scopes_of(schema: &str, table: &str) -> [TableScope; 3] {
    [
        TableScope::Table {
            schema: schema.into(),
            table: table.into(),
        },
        TableScope::Schema(schema.into()),
        TableScope::All,
    ]
}

/// Every live subscription, by scope.
#[derive(Default)]
pub(super) struct SubscriptionIndex {
    by_scope: DashMap<TableScope, ScopeSubs>,
    /// Each member's subscriptions' places, so leaving touches only those buckets, and
    /// its entries.
    members: DashMap<MemberId, (Arc<Member>, Places, Vec<Entry>)>,
    /// Moves on after every change to who is subscribed or with which viewer: a match
    /// taken at one generation holds while it is still current (`Matching::alike`).
    generation: AtomicU64,
}

/// What [`SubscriptionIndex::matching_gated`] found.
pub(super) struct Matching {
    pub found: Vec<Matched>,
    /// Whether every change with this change's table and operation would have found the
    /// same, whatever its row (no filter, `eq` bucket or claim key was involved), while
    /// the index stays at the generation read before matching and the gates are the same.
    pub alike: bool,
}

/// The stable id of a requested entry: identical entries get identical ids (so frames
/// can be shared and ids survive reconnects), like the real server's `phash2`.
pub fn subscription_id(entry: &Value) -> u32 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    canonical(entry).hash(&mut h);
    (h.finish() % 100_000_000) as u32
}

fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<_> = m.iter().collect();
            keys.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = keys
                .into_iter()
                .map(|(k, v)| format!("{k:?}:{}", canonical(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        other => other.to_string(),
    }
}

impl SubscriptionIndex {
    /// Registers a subscriber's subscriptions (replacing any it had).
    pub fn add(&self, s: Subscriber, subs: Vec<Subscription>) {
        let pm = Arc::new(Member {
            member: s.member,
            conn_id: s.conn_id,
            topic: s.topic,
            join_ref: s.join_ref,
            vsn: s.vsn,
            outbox: s.outbox,
            viewer: RwLock::new(s.viewer),
            told_problem: AtomicBool::new(false),
            sent: s.sent,
        });
        self.place(pm, subs);
    }

    /// Puts `pm`'s subscriptions in their places, replacing any it had.
    fn place(&self, pm: Arc<Member>, subs: Vec<Subscription>) {
        let member = pm.member;
        self.remove(member);
        if subs.is_empty() {
            return;
        }
        let (places, entries) = self.put(&pm, subs);
        self.members.insert(member, (pm, places, entries));
        self.moved_on();
    }

    /// Adds `pm`'s subscriptions to their scopes: their places and entries.
    fn put(&self, pm: &Arc<Member>, subs: Vec<Subscription>) -> (Places, Vec<Entry>) {
        let mut places = Vec::new();
        let mut entries = Vec::with_capacity(subs.len());
        for sub in subs {
            let place = (sub.scope.clone(), sub.filter.eq_index());
            if !places.contains(&place) {
                places.push(place);
            }
            let entry = Arc::new((pm.clone(), sub));
            entries.push(entry.clone());
            self.by_scope
                .entry(entry.1.scope.clone())
                .or_default()
                .add(entry);
        }
        (places, entries)
    }

    pub fn remove(&self, member: MemberId) {
        let Some((_, (_, places, _))) = self.members.remove(&member) else {
            return;
        };
        self.unplace(member, &places);
        self.moved_on();
    }

    /// Takes `member`'s subscriptions out of `places`.
    fn unplace(&self, member: MemberId, places: &Places) {
        for (scope, slot) in places {
            if let Some(mut subs) = self.by_scope.get_mut(scope) {
                subs.remove_member(member, slot);
            }
            self.by_scope.remove_if(scope, |_, subs| subs.is_empty());
        }
    }

    /// Each table subscribed to by name, with the oid it had when subscribed (a table
    /// dropped and created again under its name holds subscriptions of both).
    pub fn tables(&self) -> Vec<(TableScope, u32)> {
        let mut out: Vec<(TableScope, u32)> = Vec::new();
        for m in self.members.iter() {
            for e in &m.value().2 {
                if let (TableScope::Table { .. }, Some(oid)) = (&e.1.scope, e.1.table_oid) {
                    if !out.iter().any(|(s, o)| *o == oid && *s == e.1.scope) {
                        out.push((e.1.scope.clone(), oid));
                    }
                }
            }
        }
        out
    }

    /// `member`'s subscriptions now (a renamed table's under its names).
    pub fn subscriptions_of(&self, member: MemberId) -> Vec<Subscription> {
        self.members
            .get(&member)
            .map(|m| m.2.iter().map(|e| e.1.clone()).collect())
            .unwrap_or_default()
    }

    /// Each table subscription with a filter (`Subscription::rebind`) and its table, once
    /// per filter.
    pub fn rebindable(&self) -> Vec<(TableScope, Arc<Rebind>)> {
        // Each filtered subscriber has its own `Rebind`: a set, not a scan of the output,
        // keeps this linear in subscriptions (it runs on the dispatch path after DDL).
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<(TableScope, Arc<Rebind>)> = Vec::new();
        for m in self.members.iter() {
            for e in &m.value().2 {
                if let Some(r) = &e.1.rebind {
                    if seen.insert(Arc::as_ptr(r)) {
                        out.push((e.1.scope.clone(), r.clone()));
                    }
                }
            }
        }
        out
    }

    /// Has the subscriptions made to the table of oid `oid` (under any name) match its
    /// changes under `to` too, the name the table has now (`ALTER TABLE … RENAME`, `SET
    /// SCHEMA`): its changes are logged under the new name from then on, while those
    /// logged under a name it had before (written before the rename, read after it) still
    /// find them there. A change has one name, so no change matches one twice.
    pub fn rename(&self, oid: u32, to: &TableScope) {
        let renamed = |sub: &Subscription| {
            sub.table_oid == Some(oid)
                && sub.scope != *to
                && matches!(sub.scope, TableScope::Table { .. })
        };
        let movers: Vec<MemberId> = self
            .members
            .iter()
            .filter(|m| m.value().2.iter().any(|e| renamed(&e.1)))
            .map(|m| *m.key())
            .collect();
        for member in movers {
            let Some(mut m) = self.members.get_mut(&member) else {
                continue;
            };
            let (pm, places, entries) = &mut *m;
            // The table's subscriptions under its name of now go last (a renewed token
            // binds them under it, `channel::retry`), copied there where missing.
            let here = |s: &Subscription| s.scope == *to && s.table_oid == Some(oid);
            let mut subs: Vec<Subscription> = entries
                .iter()
                .filter(|e| !here(&e.1))
                .map(|e| e.1.clone())
                .collect();
            let mut moved: Vec<Subscription> = entries
                .iter()
                .filter(|e| here(&e.1))
                .map(|e| e.1.clone())
                .collect();
            for e in entries.iter().filter(|e| renamed(&e.1)) {
                if !moved.iter().any(|s| s.id == e.1.id) {
                    moved.push(Subscription {
                        scope: to.clone(),
                        ..e.1.clone()
                    });
                }
            }
            subs.extend(moved);
            self.unplace(member, places);
            (*places, *entries) = self.put(pm, subs);
        }
        self.moved_on();
    }

    /// Replaces, member by member, each subscription `f` returns another for. The caller
    /// keeps matching out meanwhile; a member leaving meanwhile waits for its rewrite
    /// (under its `members` entry) and then leaves.
    pub fn rewrite(&self, f: impl Fn(&Subscription) -> Option<Subscription>) {
        let movers: Vec<MemberId> = self
            .members
            .iter()
            .filter(|m| m.value().2.iter().any(|e| f(&e.1).is_some()))
            .map(|m| *m.key())
            .collect();
        for member in movers {
            let Some(mut m) = self.members.get_mut(&member) else {
                continue;
            };
            let (pm, places, entries) = &mut *m;
            self.unplace(member, places);
            let subs = entries
                .iter()
                .map(|e| f(&e.1).unwrap_or_else(|| e.1.clone()))
                .collect();
            (*places, *entries) = self.put(pm, subs);
        }
        self.moved_on();
    }

    /// Called after each change to the index (never before it completes: a match that
    /// read the generation first and saw part of the change is then never reused).
    fn moved_on(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The current generation; read it before matching.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether any subscription may match a change to `schema.table` (through its table,
    /// its schema or every table). Read under the same lock as matching, it decides as
    /// matching would: a change nobody watches matches nobody.
    pub fn watches(&self, schema: &str, table: &str) -> bool {
        scopes_of(schema, table)
            .iter()
            .any(|scope| self.by_scope.contains_key(scope))
    }

    /// Applies a refreshed token to a member's subscriptions, moving its scanned ones to
    /// the new viewer's role and claim keys. The caller keeps matching out meanwhile.
    pub fn set_viewer(&self, member: MemberId, viewer: Arc<Viewer>) {
        let Some((pm, places)) = self
            .members
            .get(&member)
            .map(|e| (e.0.clone(), e.1.clone()))
        else {
            return;
        };
        let mut moved = Vec::new();
        for (scope, slot) in &places {
            if slot.is_none() {
                if let Some(mut subs) = self.by_scope.get_mut(scope) {
                    moved.push((scope.clone(), subs.scanned.take_member(member)));
                }
            }
        }
        *pm.viewer.write().unwrap_or_else(|p| p.into_inner()) = viewer;
        pm.told_problem.store(false, Ordering::Relaxed);
        for (scope, entries) in moved {
            let mut subs = self.by_scope.entry(scope).or_default();
            for e in entries {
                subs.scanned.add(e);
            }
        }
        self.moved_on();
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Live subscriptions per scope (for the inspector): counted under each scope's
    /// shard lock, one scope at a time.
    pub fn counts(&self) -> Vec<(TableScope, usize)> {
        self.by_scope
            .iter()
            .map(|e| (e.key().clone(), e.value().len()))
            .collect()
    }

    /// Members whose subscriptions match `change` by table, event and filter, one entry per
    /// member with all its matching ids. Filters see the change's judged row.
    #[cfg(test)]
    pub fn matching(&self, change: &Change) -> Vec<Matched> {
        self.matching_gated(change, &|_, _, _| Gate::Open, u64::MAX, Vec::new())
            .found
    }

    /// [`SubscriptionIndex::matching`], leaving out whom row scope's gates (by schema,
    /// table and role) show nothing of the change's table. Each connection's filters
    /// are judged here up to `inline_budget` of `BoundFilter::cost` for this change; the
    /// rest are returned as `deferred` candidates, unjudged. Matches go into `found`, an
    /// empty buffer (dispatch reuses large ones).
    pub fn matching_gated(
        &self,
        change: &Change,
        gates: &dyn Fn(&str, &str, &str) -> Gate,
        inline_budget: u64,
        mut found: Vec<Matched>,
    ) -> Matching {
        debug_assert!(found.is_empty());
        let Some(row) = change.judged_row() else {
            return Matching {
                found,
                alike: false,
            };
        };
        let mut alike = true;
        let table_gate = |role: &str| gates(&change.schema, &change.table, role);
        let open = |_: &str| Gate::Open;
        let [table, schema, all] = scopes_of(&change.schema, &change.table);
        // The schema's and every table's gates would change with every table: scanned as
        // they are.
        let scopes: [(TableScope, GateOf<'_>); 3] =
            [(table, &table_gate), (schema, &open), (all, &open)];
        // Matches in the order found. Entries found member by member (a role group's map)
        // in one scope put each member's matches side by side, so merging a member's
        // subscriptions looks back only over its own run; any other way (key buckets, more
        // than one scope) may find a member again later, and `merged` then joins them.
        let mut side_by_side = true;
        let mut scopes_found = 0;
        // Where the current member's run starts in `found`.
        let mut run = 0;
        // Filter cost judged so far per connection.
        let mut spent: foldhash::HashMap<u64, u64> = foldhash::HashMap::default();
        for (scope, gate_of) in &scopes {
            let Some(mut subs) = self.by_scope.get_mut(scope) else {
                continue;
            };
            // Sized up front: a large fan-out does not grow (and copy) as it goes.
            found.reserve(subs.scanned.open_members());
            let before = found.len();
            subs.candidates(row, *gate_of, &mut |entry, how| {
                let (pm, sub) = &**entry;
                if sub.event.is_some_and(|e| e != change.op) {
                    return;
                }
                alike &= sub.filter.is_empty();
                let cost = sub.filter.cost(row);
                let defer = cost > 0 && {
                    let spent = spent.entry(pm.conn_id).or_default();
                    let over = spent.saturating_add(cost) > inline_budget;
                    if !over {
                        *spent += cost;
                    }
                    over
                };
                if !defer && !sub.filter.matches(row) {
                    return;
                }
                side_by_side &= how == Found::ByMember;
                if found.get(run).is_none_or(|m| m.member.member != pm.member) {
                    run = found.len();
                }
                let select = select_key(sub.select.as_ref());
                let at = match found[run..]
                    .iter()
                    .position(|m| select_key(m.select.as_ref()) == select)
                {
                    Some(i) => run + i,
                    None => {
                        found.push(Matched {
                            member: pm.clone(),
                            select: sub.select.clone(),
                            ids: MatchedIds::new(),
                            deferred: Vec::new(),
                        });
                        found.len() - 1
                    }
                };
                let m = &mut found[at];
                if defer {
                    m.deferred.push(entry.clone());
                } else if !m.ids.contains(&sub.id) {
                    m.ids.push(sub.id);
                }
            });
            scopes_found += usize::from(found.len() > before);
            // Buckets by a row's value (`eq` filters, claim keys) find by the row.
            alike &= subs.by_eq.is_empty() && !subs.scanned.keyed();
        }
        let found = if side_by_side && scopes_found <= 1 {
            found
        } else {
            merged(found)
        };
        Matching { found, alike }
    }
}

/// A `select` by identity: bindings that select alike share one `Arc`.
fn select_key(select: Option<&Arc<[String]>>) -> Option<usize> {
    select.map(|s| Arc::as_ptr(s) as *const u8 as usize)
}

/// One `Matched` per member and `select`, joining the ids and deferred entries of every
/// place the member was found (a fast seeded hash, foldhash, not SipHash).
fn merged(found: Vec<Matched>) -> Vec<Matched> {
    use std::collections::hash_map::Entry as Slot;
    let mut at: foldhash::HashMap<(MemberId, Option<usize>), usize> =
        foldhash::HashMap::with_capacity_and_hasher(found.len(), Default::default());
    let mut out: Vec<Matched> = Vec::with_capacity(found.len());
    for m in found {
        match at.entry((m.member.member, select_key(m.select.as_ref()))) {
            Slot::Occupied(i) => {
                let into = &mut out[*i.get()];
                for id in m.ids {
                    if !into.ids.contains(&id) {
                        into.ids.push(id);
                    }
                }
                into.deferred.extend(m.deferred);
            }
            Slot::Vacant(v) => {
                v.insert(out.len());
                out.push(m);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::filter;
    use crate::changes::keys::RowKey;
    use crate::changes::row::ColumnInfo;
    use crate::router::outbox::outbox;
    use serde_json::json;

    fn columns() -> Vec<ColumnInfo> {
        [("id", "int8"), ("customer_id", "uuid"), ("status", "text")]
            .into_iter()
            .map(|(name, type_name)| ColumnInfo {
                name: name.into(),
                type_name: type_name.into(),
                base_type: None,
                labels: None,
            })
            .collect()
    }

    fn subscribe(index: &SubscriptionIndex, member: MemberId, filter_text: &str) {
        subscribe_as(
            index,
            member,
            filter_text,
            Viewer::new("authenticated", "{}", None),
        );
    }

    fn subscribe_as(
        index: &SubscriptionIndex,
        member: MemberId,
        filter_text: &str,
        viewer: Viewer,
    ) {
        let filter = filter::parse(filter_text)
            .unwrap()
            .bind(&columns())
            .unwrap();
        let sub = Subscription {
            id: member as u32,
            event: None,
            scope: TableScope::Table {
                schema: "public".into(),
                table: "jobs".into(),
            },
            filter,
            select: None,
            table_oid: Some(16384),
            rebind: None,
        };
        index.add(subscriber(member, viewer), vec![sub]);
    }

    /// A member of `realtime:t`, alone on its connection.
    fn subscriber(member: MemberId, viewer: Viewer) -> Subscriber {
        let (tx, _rx) = outbox(8, 1024);
        Subscriber {
            member,
            conn_id: member,
            topic: "realtime:t".into(),
            join_ref: "1".into(),
            vsn: Vsn::V2,
            outbox: ChannelOutbox::direct(tx),
            viewer: Arc::new(viewer),
            sent: None,
        }
    }

    fn change(customer: &str, status: &str) -> Change {
        Change {
            id: 1,
            xid: 1,
            seq: 0,
            schema: "public".into(),
            table: "jobs".into(),
            op: Op::Insert,
            record: json!({"id": 1, "customer_id": customer, "status": status})
                .as_object()
                .cloned(),
            old_record: None,
            commit_time: chrono::Utc::now(),
        }
    }

    fn matched(index: &SubscriptionIndex, c: &Change) -> Vec<MemberId> {
        let mut m: Vec<_> = index.matching(c).iter().map(|m| m.member.member).collect();
        m.sort();
        m
    }

    const A: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    const B: &str = "bbbbbbbb-0000-0000-0000-000000000002";

    #[test]
    fn indexed_and_scanned_subscriptions_match_exactly_their_rows() {
        let index = SubscriptionIndex::default();
        subscribe(&index, 1, &format!("customer_id=eq.{A}"));
        subscribe(&index, 2, &format!("customer_id=eq.{}", B.to_uppercase()));
        subscribe(&index, 3, &format!("customer_id=eq.{A},status=eq.open"));
        subscribe(&index, 4, "status=neq.open");
        subscribe(&index, 5, "");
        assert_eq!(matched(&index, &change(A, "open")), vec![1, 3, 5]);
        assert_eq!(matched(&index, &change(A, "done")), vec![1, 4, 5]);
        assert_eq!(matched(&index, &change(B, "open")), vec![2, 5]);
    }

    #[test]
    fn subscriptions_follow_a_renamed_table_and_leave_from_every_name() {
        let index = SubscriptionIndex::default();
        subscribe(&index, 1, &format!("customer_id=eq.{A}"));
        subscribe(&index, 2, "status=eq.open");
        let jobs = TableScope::Table {
            schema: "public".into(),
            table: "jobs".into(),
        };
        let moved = TableScope::Table {
            schema: "crm".into(),
            table: "work".into(),
        };
        assert_eq!(index.tables(), vec![(jobs.clone(), 16384)]);
        // Another table's oid: nothing moves.
        index.rename(16385, &moved);
        assert_eq!(index.tables(), vec![(jobs.clone(), 16384)]);
        index.rename(16384, &moved);
        // Once, however often it is told.
        index.rename(16384, &moved);
        let mut tables = index.tables();
        tables.sort_by_key(|(s, _)| format!("{s:?}"));
        assert_eq!(tables, vec![(moved.clone(), 16384), (jobs.clone(), 16384)]);
        let mut renamed = change(A, "open");
        (renamed.schema, renamed.table) = ("crm".into(), "work".into());
        assert_eq!(matched(&index, &renamed), vec![1, 2]);
        // Changes logged under the old name before the rename still find them, once.
        assert_eq!(matched(&index, &change(A, "open")), vec![1, 2]);
        let mut ids: Vec<Vec<u32>> = index
            .matching(&renamed)
            .iter()
            .map(|m| m.ids.to_vec())
            .collect();
        ids.sort();
        assert_eq!(ids, vec![vec![1], vec![2]]);
        index.remove(1);
        index.remove(2);
        assert!(index.is_empty() && index.counts().is_empty());
    }

    /// A subscription as `subscribe_many` takes it: (id, scope, filter, select).
    type SubSpec<'a> = (u32, TableScope, &'a str, Option<Arc<[String]>>);

    fn subscribe_many(index: &SubscriptionIndex, member: MemberId, subs: &[SubSpec<'_>]) {
        let subs = subs
            .iter()
            .map(|(id, scope, filter_text, select)| Subscription {
                id: *id,
                event: None,
                scope: scope.clone(),
                filter: filter::parse(filter_text)
                    .unwrap()
                    .bind(&columns())
                    .unwrap(),
                select: select.clone(),
                table_oid: None,
                rebind: None,
            })
            .collect();
        let viewer = Viewer::new("authenticated", "{}", None);
        index.add(subscriber(member, viewer), subs);
    }

    /// (member, has a select, sorted ids) of every `Matched`, sorted.
    fn matched_ids(index: &SubscriptionIndex, c: &Change) -> Vec<(MemberId, bool, Vec<u32>)> {
        let mut out: Vec<_> = index
            .matching(c)
            .into_iter()
            .map(|m| {
                let mut ids = m.ids.to_vec();
                ids.sort();
                (m.member.member, m.select.is_some(), ids)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_member_found_in_several_places_gets_one_match_per_select() {
        let jobs = TableScope::Table {
            schema: "public".into(),
            table: "jobs".into(),
        };
        let status: Arc<[String]> = vec!["status".to_owned()].into();
        let index = SubscriptionIndex::default();
        // Member 2: two unfiltered subscriptions of one scope, found side by side.
        subscribe_many(
            &index,
            2,
            &[(20, jobs.clone(), "", None), (21, jobs.clone(), "", None)],
        );
        subscribe(&index, 3, "");
        let c = change(A, "open");
        assert_eq!(
            matched_ids(&index, &c),
            vec![(2, false, vec![20, 21]), (3, false, vec![3])]
        );
        // Member 1 is found scanned, under an `eq` key, in another scope, and with a
        // `select` of its own.
        subscribe_many(
            &index,
            1,
            &[
                (10, jobs.clone(), "", None),
                (11, jobs.clone(), &format!("customer_id=eq.{A}"), None),
                (12, TableScope::All, "", None),
                (13, jobs.clone(), "", Some(status)),
            ],
        );
        assert_eq!(
            matched_ids(&index, &c),
            vec![
                (1, false, vec![10, 11, 12]),
                (1, true, vec![13]),
                (2, false, vec![20, 21]),
                (3, false, vec![3])
            ]
        );
        assert_eq!(
            matched_ids(&index, &change(B, "open")),
            vec![
                (1, false, vec![10, 12]),
                (1, true, vec![13]),
                (2, false, vec![20, 21]),
                (3, false, vec![3])
            ]
        );
    }

    #[test]
    fn removed_members_leave_no_entries_behind() {
        let index = SubscriptionIndex::default();
        subscribe(&index, 1, &format!("customer_id=eq.{A}"));
        subscribe(&index, 2, "status=eq.open");
        index.remove(1);
        assert_eq!(matched(&index, &change(A, "open")), vec![2]);
        index.remove(2);
        assert!(index.is_empty());
        assert!(index.by_scope.is_empty());
    }

    #[test]
    fn a_table_is_watched_through_its_own_scope_its_schema_or_every_table() {
        let index = SubscriptionIndex::default();
        assert!(!index.watches("public", "jobs"));
        subscribe(&index, 1, &format!("customer_id=eq.{A}"));
        assert!(index.watches("public", "jobs"));
        assert!(!index.watches("public", "invoices"));
        assert!(!index.watches("crm", "jobs"));
        subscribe_many(
            &index,
            2,
            &[(20, TableScope::Schema("crm".into()), "", None)],
        );
        assert!(index.watches("crm", "anything"));
        assert!(!index.watches("public", "invoices"));
        subscribe_many(&index, 3, &[(30, TableScope::All, "", None)]);
        assert!(index.watches("public", "invoices"));
        index.remove(3);
        index.remove(2);
        index.remove(1);
        assert!(!index.watches("public", "jobs"));
        assert!(!index.watches("crm", "anything"));
    }

    #[test]
    fn counts_include_indexed_and_scanned_subscriptions() {
        let index = SubscriptionIndex::default();
        subscribe(&index, 1, &format!("customer_id=eq.{A}"));
        subscribe(&index, 2, &format!("customer_id=eq.{A}"));
        subscribe(&index, 3, "status=eq.open");
        let jobs = TableScope::Table {
            schema: "public".into(),
            table: "jobs".into(),
        };
        assert_eq!(index.counts(), vec![(jobs, 3)]);
    }

    #[test]
    fn costly_filters_past_a_connections_budget_are_deferred_unjudged() {
        let index = SubscriptionIndex::default();
        // "open" is 4 bytes: `status=like.o%` costs 3 × 4 = 12.
        subscribe(&index, 1, "status=like.o%");
        subscribe(&index, 2, "status=like.x%");
        subscribe(&index, 3, &format!("customer_id=eq.{A}"));
        let c = change(A, "open");
        let mut by_member: Vec<_> = index
            .matching_gated(&c, &|_, _, _| Gate::Open, 11, Vec::new())
            .found
            .into_iter()
            .map(|m| {
                let deferred: Vec<u32> = m.deferred.iter().map(|e| e.1.id).collect();
                (m.member.member, m.ids.to_vec(), deferred)
            })
            .collect();
        by_member.sort();
        // Each member is its own connection here: 1 and 2 are over the budget of 11 and
        // come back unjudged (2 does not match); 3 costs nothing.
        assert_eq!(
            by_member,
            vec![
                (1, vec![], vec![1]),
                (2, vec![], vec![2]),
                (3, vec![3], vec![])
            ]
        );
        let judged: Vec<_> = index
            .matching_gated(&c, &|_, _, _| Gate::Open, 12, Vec::new())
            .found
            .into_iter()
            .map(|m| (m.member.member, m.deferred.len()))
            .collect();
        assert!(
            judged.contains(&(1, 0)) && judged.len() == 2,
            "within the budget"
        );
    }

    fn user(role: &str, sub: Option<&str>) -> Viewer {
        let claims = json!({"role": role, "sub": sub}).to_string();
        Viewer::new(role, &claims, sub)
    }

    #[test]
    fn a_match_is_alike_for_every_row_only_without_filters_or_keys_and_each_change_moves_the_generation(
    ) {
        let index = SubscriptionIndex::default();
        let alike = |gate: Gate| {
            index
                .matching_gated(
                    &change(A, "open"),
                    &|_, _, _| gate.clone(),
                    u64::MAX,
                    Vec::new(),
                )
                .alike
        };
        let g0 = index.generation();
        subscribe(&index, 1, "");
        subscribe(&index, 2, "");
        let g1 = index.generation();
        assert!(g1 > g0, "a join moves the generation");
        assert!(
            alike(Gate::Open),
            "unfiltered, open: every row finds 1 and 2"
        );
        assert!(alike(Gate::Nobody));
        let keys =
            RowKey::parse_all(&json!([{"column": "customer_id", "claim": null, "type": "uuid"}]))
                .unwrap();
        assert!(
            !alike(Gate::Keyed(keys.into())),
            "claim keys find by the row"
        );
        assert_eq!(index.generation(), g1, "matching is no change");

        subscribe(&index, 3, "status=like.o%");
        assert!(!alike(Gate::Open), "a scanned filter judges the row");
        index.remove(3);
        assert!(alike(Gate::Open));
        subscribe(&index, 4, &format!("customer_id=eq.{A}"));
        assert!(!alike(Gate::Open), "an eq bucket finds by the row");
        let g2 = index.generation();
        index.remove(4);
        assert!(index.generation() > g2, "a leave moves the generation");
        let g3 = index.generation();
        index.set_viewer(1, Arc::new(user("anon", None)));
        assert!(
            index.generation() > g3,
            "a token refresh moves the generation"
        );
    }

    #[test]
    fn keyed_gates_find_unfiltered_viewers_by_claim_and_follow_token_refreshes() {
        let index = SubscriptionIndex::default();
        subscribe_as(&index, 1, "", user("authenticated", Some(A)));
        subscribe_as(&index, 2, "", user("authenticated", Some(B)));
        // Postgres must judge a `sub` that is not a uuid: a candidate for every row.
        subscribe_as(&index, 3, "", user("authenticated", Some("not-a-uuid")));
        subscribe_as(&index, 4, "", user("authenticated", None));
        subscribe_as(&index, 5, "", user("anon", Some(A)));
        subscribe_as(&index, 6, "status=eq.open", user("authenticated", Some(B)));
        let keys =
            RowKey::parse_all(&json!([{"column": "customer_id", "claim": null, "type": "uuid"}]))
                .unwrap();
        let keyed = Gate::Keyed(keys.into());
        let gates = |role: &str| match role {
            "authenticated" => keyed.clone(),
            _ => Gate::Nobody,
        };
        let gated = |c: &Change| {
            let mut m: Vec<_> = index
                .matching_gated(c, &|_, _, role| gates(role), u64::MAX, Vec::new())
                .found
                .iter()
                .map(|m| m.member.member)
                .collect();
            m.sort();
            m
        };
        // 6 is found by its `eq` filter's index, the gate aside (checked afterwards).
        assert_eq!(gated(&change(A, "open")), vec![1, 3, 6]);
        assert_eq!(gated(&change(B, "open")), vec![2, 3, 6]);
        assert_eq!(gated(&change(B, "done")), vec![2, 3]);

        index.set_viewer(1, Arc::new(user("authenticated", Some(B))));
        assert_eq!(gated(&change(A, "done")), vec![3]);
        assert_eq!(gated(&change(B, "done")), vec![1, 2, 3]);
        index.set_viewer(5, Arc::new(user("authenticated", Some(A))));
        assert_eq!(gated(&change(A, "done")), vec![3, 5]);

        // Rules changed (no longer known): every subscriber is a candidate again.
        assert_eq!(matched(&index, &change(A, "done")), vec![1, 2, 3, 4, 5]);
        assert_eq!(gated(&change(A, "done")), vec![3, 5]);
        for m in 1..=6 {
            index.remove(m);
        }
        assert!(index.by_scope.is_empty());
    }
}
