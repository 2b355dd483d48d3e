//! The scanned subscriptions of one scope (those without an `eq` filter to be found by),
//! grouped by their viewers' role so that row scope narrows them before any check: a
//! role that sees nothing of the table is skipped, and a role whose policies compare a
//! column with a claim (`Gate::Keyed`) is indexed by its viewers' claim values, so a
//! change finds its viewers with one lookup however many subscribe. Each group is laid
//! out for the gate it was last asked with and lays itself out again when that changes
//! (rules change with DDL and are learnt as dispatch first checks a role).

use std::collections::HashMap;
use std::sync::Arc;

use super::{Entry, Found, Visit};
use crate::changes::keys::{ClaimKey, Gate};
use crate::changes::row::Row;
use crate::router::MemberId;

#[derive(Default)]
pub(super) struct RoleGroups {
    groups: HashMap<Arc<str>, RoleGroup>,
}

#[derive(Default)]
struct RoleGroup {
    gate: Gate,
    /// Every entry, by member (a member may hold several subscriptions here).
    all: HashMap<MemberId, Vec<Entry>>,
    /// `Gate::Keyed`: for each of the gate's keys, viewer key -> entries.
    by_key: Vec<HashMap<String, Vec<Entry>>>,
    /// `Gate::Keyed`: entries whose viewer Postgres must judge (candidates for every row).
    unsure: Vec<Entry>,
}

impl RoleGroup {
    fn place(&mut self, entry: &Entry) {
        let Gate::Keyed(keys) = &self.gate else {
            return;
        };
        match entry.0.viewer().keys_under(keys) {
            None => self.unsure.push(entry.clone()),
            Some(mine) => {
                for (i, k) in mine.into_iter().enumerate() {
                    if let ClaimKey::Key(k) = k {
                        self.by_key[i].entry(k).or_default().push(entry.clone());
                    }
                }
            }
        }
    }

    fn unplace(&mut self, member: MemberId, entries: &[Entry]) {
        let Gate::Keyed(keys) = &self.gate else {
            return;
        };
        self.unsure.retain(|e| e.0.member != member);
        let Some(first) = entries.first() else {
            return;
        };
        let Some(mine) = first.0.viewer().keys_under(keys) else {
            return;
        };
        for (i, k) in mine.into_iter().enumerate() {
            let ClaimKey::Key(k) = k else { continue };
            if let Some(bucket) = self.by_key[i].get_mut(&k) {
                bucket.retain(|e| e.0.member != member);
                if bucket.is_empty() {
                    self.by_key[i].remove(&k);
                }
            }
        }
    }

    /// Lays the group out for `gate`.
    fn rearrange(&mut self, gate: Gate) {
        self.by_key = match &gate {
            Gate::Keyed(keys) => vec![HashMap::new(); keys.len()],
            Gate::Open | Gate::Nobody => Vec::new(),
        };
        self.unsure.clear();
        self.gate = gate;
        let entries: Vec<Entry> = self.all.values().flatten().cloned().collect();
        for e in &entries {
            self.place(e);
        }
    }

    fn len(&self) -> usize {
        self.all.values().map(Vec::len).sum()
    }
}

impl RoleGroups {
    pub fn add(&mut self, entry: Entry) {
        let role = entry.0.viewer().role.clone();
        let group = self.groups.entry(role).or_default();
        group
            .all
            .entry(entry.0.member)
            .or_default()
            .push(entry.clone());
        group.place(&entry);
    }

    /// Takes `member`'s entries out (before its viewer changes, or when it leaves).
    pub fn take_member(&mut self, member: MemberId) -> Vec<Entry> {
        let mut taken = Vec::new();
        self.groups.retain(|_, group| {
            if let Some(entries) = group.all.remove(&member) {
                group.unplace(member, &entries);
                taken.extend(entries);
            }
            !group.all.is_empty()
        });
        taken
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn len(&self) -> usize {
        self.groups.values().map(RoleGroup::len).sum()
    }

    /// Whether a group is laid out by claim keys (its candidates depend on the row).
    pub fn keyed(&self) -> bool {
        self.groups
            .values()
            .any(|g| matches!(g.gate, Gate::Keyed(_)))
    }

    /// How many members of roles whose gate was open last time hold entries here (one
    /// step per role): the members a change will likely find, to size for.
    pub fn open_members(&self) -> usize {
        self.groups
            .values()
            .filter(|g| g.gate == Gate::Open)
            .map(|g| g.all.len())
            .sum()
    }

    /// Calls `f` with every entry that may see `row`: per role, as `gate_of(role)` says
    /// (laying the group out again first when its gate changed).
    pub fn candidates(&mut self, row: &Row, gate_of: &dyn Fn(&str) -> Gate, f: Visit<'_>) {
        for (role, group) in &mut self.groups {
            let gate = gate_of(role);
            if gate != group.gate {
                group.rearrange(gate);
            }
            match &group.gate {
                Gate::Open => group
                    .all
                    .values()
                    .flatten()
                    .for_each(|e| f(e, Found::ByMember)),
                Gate::Nobody => {}
                Gate::Keyed(keys) => {
                    for (i, key) in keys.iter().enumerate() {
                        let found = key.of_row(row).and_then(|k| group.by_key[i].get(&k));
                        found
                            .into_iter()
                            .flatten()
                            .for_each(|e| f(e, Found::Elsewhere));
                    }
                    group.unsure.iter().for_each(|e| f(e, Found::Elsewhere));
                }
            }
        }
    }
}
