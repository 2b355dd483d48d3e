//! The postgres_changes subscription index: (schema, table) -> subscriptions, and the
//! in-process match of a change against event and filter. Row-scope checks happen after
//! matching (see `dispatch`), only for the subscriptions this returns.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use serde_json::Value;

use super::filter::{BoundFilter, IndexColumn};
use super::row::{Change, Op, Row};
use super::scope::Viewer;
use crate::protocol::Vsn;
use crate::router::outbox::ChannelOutbox;
use crate::router::MemberId;

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
}

impl Subscription {
    /// Whether `change` is for this subscription: its table (or schema, or any), its
    /// event, and its filter on the change's judged row.
    pub fn matches(&self, change: &Change) -> bool {
        let in_scope = match &self.scope {
            TableScope::Table { schema, table } => {
                **schema == change.schema && **table == change.table
            }
            TableScope::Schema(schema) => **schema == change.schema,
            TableScope::All => true,
        };
        in_scope
            && self.event.is_none_or(|e| e == change.op)
            && change
                .judged_row()
                .is_some_and(|row| self.filter.matches(row))
    }
}

/// Who receives a channel's changes, and how: one per joined channel with subscriptions.
pub struct Subscriber {
    pub member: MemberId,
    pub conn_id: u64,
    pub topic: Arc<str>,
    pub vsn: Vsn,
    pub outbox: ChannelOutbox,
    pub viewer: Arc<Viewer>,
}

/// A subscriber as the index holds it: its viewer is replaced on `access_token` refresh.
pub(super) struct Member {
    pub member: MemberId,
    pub conn_id: u64,
    pub topic: Arc<str>,
    pub vsn: Vsn,
    pub outbox: ChannelOutbox,
    /// Written on refresh, read (and copied out) by dispatch.
    viewer: RwLock<Arc<Viewer>>,
}

impl Member {
    pub fn viewer(&self) -> Arc<Viewer> {
        self.viewer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A member matched by a change, with the ids of its matching subscriptions.
pub(super) struct Matched {
    pub member: Arc<Member>,
    pub ids: Vec<u32>,
}

type Entry = (Arc<Member>, Subscription);
/// Where a subscription sits inside its scope: scanned, or under an index key.
type Slot = Option<(IndexColumn, String)>;
/// Every (scope, slot) a member's subscriptions occupy.
type Places = Vec<(TableScope, Slot)>;

/// The subscriptions of one scope: those with an `eq` filter on a text/uuid column are
/// found by hash lookup (the usual portal case, `customer_id=eq.<uuid>`), the rest are
/// scanned. Either way the whole filter is then checked.
#[derive(Default)]
struct ScopeSubs {
    scanned: Vec<Entry>,
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
            None => self.scanned.push(entry),
        }
    }

    /// Removes `member`'s entries from where `slot` says they are.
    fn remove_member(&mut self, member: MemberId, slot: &Slot) {
        match slot {
            None => self.scanned.retain(|(m, _)| m.member != member),
            Some((column, key)) => {
                if let Some(keys) = self.by_eq.get_mut(column) {
                    if let Some(subs) = keys.get_mut(key) {
                        subs.retain(|(m, _)| m.member != member);
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

    /// Entries that may match `row`: every scanned one, plus the indexed ones under
    /// the row's key.
    fn candidates<'a>(&'a self, row: &'a Row) -> impl Iterator<Item = &'a Entry> + 'a {
        let indexed = self.by_eq.iter().flat_map(move |(column, keys)| {
            column
                .key_of(row)
                .and_then(|key| keys.get(&key))
                .into_iter()
                .flatten()
        });
        self.scanned.iter().chain(indexed)
    }
}

/// Every live subscription, by scope.
#[derive(Default)]
pub(super) struct SubscriptionIndex {
    by_scope: DashMap<TableScope, ScopeSubs>,
    /// Each member's subscriptions' places, so leaving touches only those buckets.
    members: DashMap<MemberId, (Arc<Member>, Places)>,
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
        let member = s.member;
        self.remove(member);
        if subs.is_empty() {
            return;
        }
        let pm = Arc::new(Member {
            member,
            conn_id: s.conn_id,
            topic: s.topic,
            vsn: s.vsn,
            outbox: s.outbox,
            viewer: RwLock::new(s.viewer),
        });
        let mut places = Vec::new();
        for sub in subs {
            let place = (sub.scope.clone(), sub.filter.eq_index());
            if !places.contains(&place) {
                places.push(place);
            }
            self.by_scope
                .entry(sub.scope.clone())
                .or_default()
                .add((pm.clone(), sub));
        }
        self.members.insert(member, (pm, places));
    }

    pub fn remove(&self, member: MemberId) {
        let Some((_, (_, places))) = self.members.remove(&member) else {
            return;
        };
        for (scope, slot) in places {
            if let Some(mut subs) = self.by_scope.get_mut(&scope) {
                subs.remove_member(member, &slot);
            }
            self.by_scope.remove_if(&scope, |_, subs| subs.is_empty());
        }
    }

    /// Applies a refreshed token to a member's subscriptions.
    pub fn set_viewer(&self, member: MemberId, viewer: Arc<Viewer>) {
        if let Some(entry) = self.members.get(&member) {
            *entry.0.viewer.write().unwrap_or_else(|p| p.into_inner()) = viewer;
        }
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
    pub fn matching(&self, change: &Change) -> Vec<Matched> {
        let Some(row) = change.judged_row() else {
            return Vec::new();
        };
        let scopes = [
            TableScope::Table {
                schema: change.schema.as_str().into(),
                table: change.table.as_str().into(),
            },
            TableScope::Schema(change.schema.as_str().into()),
            TableScope::All,
        ];
        let mut by_member: HashMap<MemberId, Matched> = HashMap::new();
        for scope in &scopes {
            let Some(subs) = self.by_scope.get(scope) else {
                continue;
            };
            for (pm, sub) in subs.candidates(row) {
                if sub.event.is_some_and(|e| e != change.op) || !sub.filter.matches(row) {
                    continue;
                }
                let m = by_member.entry(pm.member).or_insert_with(|| Matched {
                    member: pm.clone(),
                    ids: Vec::new(),
                });
                if !m.ids.contains(&sub.id) {
                    m.ids.push(sub.id);
                }
            }
        }
        by_member.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::filter;
    use crate::changes::row::ColumnInfo;
    use crate::router::outbox::outbox;
    use serde_json::json;

    fn columns() -> Vec<ColumnInfo> {
        [("id", "int8"), ("customer_id", "uuid"), ("status", "text")]
            .into_iter()
            .map(|(name, type_name)| ColumnInfo {
                name: name.into(),
                type_name: type_name.into(),
            })
            .collect()
    }

    fn subscribe(index: &SubscriptionIndex, member: MemberId, filter_text: &str) {
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
        };
        let (tx, _rx) = outbox(8, 1024);
        let outbox = ChannelOutbox::direct(tx);
        let subscriber = Subscriber {
            member,
            conn_id: member,
            topic: "realtime:t".into(),
            vsn: Vsn::V2,
            outbox,
            viewer: Arc::new(Viewer::new("authenticated", "{}", None)),
        };
        index.add(subscriber, vec![sub]);
    }

    fn change(customer: &str, status: &str) -> Change {
        Change {
            id: 1,
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
}
