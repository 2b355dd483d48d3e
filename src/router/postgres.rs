//! The postgres_changes subscription index: (schema, table) -> subscriptions, and the
//! in-process match of a change against event and filter. Row-scope checks happen after
//! matching (see `dispatch`), only for the subscriptions this returns.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use serde_json::Value;

use super::change::{Change, Op};
use super::filter::BoundFilter;
use super::outbox::OutboxTx;
use super::MemberId;
use crate::protocol::Vsn;

/// Whose eyes a subscription sees through: the role and JWT claims of the subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ViewerClaims {
    pub role: Arc<str>,
    /// The claims object as JSON text.
    pub claims: Arc<str>,
}

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
pub struct PgSubscription {
    /// The integer id echoed in the join reply and carried in `ids`.
    pub id: u32,
    /// `None` means `*`.
    pub event: Option<Op>,
    pub scope: TableScope,
    pub filter: BoundFilter,
}

/// A member's delivery details, shared by its subscriptions.
pub struct PgMember {
    pub member: MemberId,
    pub conn_id: u64,
    pub topic: Arc<str>,
    pub vsn: Vsn,
    pub outbox: OutboxTx,
    /// Replaced on `access_token` refresh; readers copy it out.
    viewer: RwLock<ViewerClaims>,
}

impl PgMember {
    pub fn viewer(&self) -> ViewerClaims {
        self.viewer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A member matched by a change, with the ids of its matching subscriptions.
pub struct Matched {
    pub member: Arc<PgMember>,
    pub ids: Vec<u32>,
}

#[derive(Default)]
pub struct PgIndex {
    by_scope: DashMap<TableScope, Vec<(Arc<PgMember>, PgSubscription)>>,
    members: DashMap<MemberId, (Arc<PgMember>, Vec<TableScope>)>,
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

impl PgIndex {
    /// Registers a member's subscriptions (replacing any it had).
    #[allow(clippy::too_many_arguments)]
    pub fn add_member(
        &self,
        member: MemberId,
        conn_id: u64,
        topic: Arc<str>,
        vsn: Vsn,
        outbox: OutboxTx,
        viewer: ViewerClaims,
        subs: Vec<PgSubscription>,
    ) {
        self.remove_member(member);
        if subs.is_empty() {
            return;
        }
        let pm = Arc::new(PgMember {
            member,
            conn_id,
            topic,
            vsn,
            outbox,
            viewer: RwLock::new(viewer),
        });
        let mut scopes = Vec::new();
        for sub in subs {
            scopes.push(sub.scope.clone());
            self.by_scope
                .entry(sub.scope.clone())
                .or_default()
                .push((pm.clone(), sub));
        }
        scopes.sort_by_key(|s| format!("{s:?}"));
        scopes.dedup();
        self.members.insert(member, (pm, scopes));
    }

    pub fn remove_member(&self, member: MemberId) {
        let Some((_, (_, scopes))) = self.members.remove(&member) else {
            return;
        };
        for scope in scopes {
            if let Some(mut subs) = self.by_scope.get_mut(&scope) {
                subs.retain(|(m, _)| m.member != member);
            }
            self.by_scope.remove_if(&scope, |_, subs| subs.is_empty());
        }
    }

    /// Applies a refreshed token to a member's subscriptions.
    pub fn update_viewer(&self, member: MemberId, viewer: ViewerClaims) {
        if let Some(entry) = self.members.get(&member) {
            *entry.0.viewer.write().unwrap_or_else(|p| p.into_inner()) = viewer;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Members whose subscriptions match `change` by table, event and filter, one entry per
    /// member with all its matching ids. Filters see the new row, or the old one for DELETE.
    pub fn matching(&self, change: &Change) -> Vec<Matched> {
        let row = match change.op {
            Op::Delete => change.old_record.as_ref(),
            _ => change.record.as_ref(),
        };
        let Some(row) = row else {
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
            for (pm, sub) in subs.iter() {
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
