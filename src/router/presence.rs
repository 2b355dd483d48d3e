//! Per-topic presence: who is tracked under which key, and the join/leave diffs that
//! changes produce. Pure state; the router holds one per topic and fans diffs out.
//! Metas are kept per source (`member`), so state from several nodes can merge later.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use super::MemberId;

#[derive(Debug, Clone)]
struct Meta {
    member: MemberId,
    phx_ref: String,
    phx_ref_prev: Option<String>,
    payload: Map<String, Value>,
}

impl Meta {
    fn to_json(&self) -> Value {
        let mut m = self.payload.clone();
        m.insert("phx_ref".into(), Value::String(self.phx_ref.clone()));
        if let Some(prev) = &self.phx_ref_prev {
            m.insert("phx_ref_prev".into(), Value::String(prev.clone()));
        }
        Value::Object(m)
    }
}

/// A `presence_diff` payload: `{"joins": {...}, "leaves": {...}}`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Diff {
    pub joins: Map<String, Value>,
    pub leaves: Map<String, Value>,
}

impl Diff {
    pub fn to_json(&self) -> Value {
        json!({ "joins": self.joins, "leaves": self.leaves })
    }

    fn add(side: &mut Map<String, Value>, key: &str, meta: &Meta) {
        let entry = side
            .entry(key.to_owned())
            .or_insert_with(|| json!({ "metas": [] }));
        if let Some(Value::Array(metas)) = entry.get_mut("metas") {
            metas.push(meta.to_json());
        }
    }
}

/// Presence of one topic.
#[derive(Debug, Default)]
pub struct PresenceState {
    by_key: BTreeMap<String, Vec<Meta>>,
    /// Which key each member tracks under (one presence per member).
    keys: BTreeMap<MemberId, String>,
}

fn new_ref() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("F{:x}{:x}", std::process::id(), n)
}

impl PresenceState {
    /// Tracks (or updates) `member`'s presence. `None` when nothing changed.
    pub fn track(
        &mut self,
        member: MemberId,
        key: &str,
        payload: Map<String, Value>,
    ) -> Option<Diff> {
        let mut diff = Diff::default();
        let mut prev_ref = None;
        if let Some(old_key) = self.keys.get(&member).cloned() {
            let metas = self.by_key.get_mut(&old_key)?;
            let pos = metas.iter().position(|m| m.member == member)?;
            if old_key == key && metas[pos].payload == payload {
                return None;
            }
            let old = metas.remove(pos);
            if metas.is_empty() {
                self.by_key.remove(&old_key);
            }
            Diff::add(&mut diff.leaves, &old_key, &old);
            prev_ref = Some(old.phx_ref);
        }
        let meta = Meta {
            member,
            phx_ref: new_ref(),
            phx_ref_prev: prev_ref,
            payload,
        };
        Diff::add(&mut diff.joins, key, &meta);
        self.by_key.entry(key.to_owned()).or_default().push(meta);
        self.keys.insert(member, key.to_owned());
        Some(diff)
    }

    /// Removes `member`'s presence, if any (untrack, leave, disconnect).
    pub fn untrack(&mut self, member: MemberId) -> Option<Diff> {
        let key = self.keys.remove(&member)?;
        let metas = self.by_key.get_mut(&key)?;
        let pos = metas.iter().position(|m| m.member == member)?;
        let old = metas.remove(pos);
        if metas.is_empty() {
            self.by_key.remove(&key);
        }
        let mut diff = Diff::default();
        Diff::add(&mut diff.leaves, &key, &old);
        Some(diff)
    }

    /// The `presence_state` payload: `{key: {"metas": [...]}}`.
    pub fn state_json(&self) -> Value {
        let mut out = Map::new();
        for (key, metas) in &self.by_key {
            let metas: Vec<Value> = metas.iter().map(Meta::to_json).collect();
            out.insert(key.clone(), json!({ "metas": metas }));
        }
        Value::Object(out)
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Members with a tracked presence.
    pub fn tracked(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn track_then_identical_track_is_a_no_op() {
        let mut p = PresenceState::default();
        let d = p.track(1, "u1", payload(json!({"a": 1}))).unwrap();
        assert!(d.leaves.is_empty());
        assert_eq!(d.joins["u1"]["metas"][0]["a"], 1);
        assert!(p.track(1, "u1", payload(json!({"a": 1}))).is_none());
    }

    #[test]
    fn update_produces_join_with_prev_ref_and_leave_of_old_ref() {
        let mut p = PresenceState::default();
        let first = p.track(1, "u1", payload(json!({"a": 1}))).unwrap();
        let old_ref = first.joins["u1"]["metas"][0]["phx_ref"].clone();
        let d = p.track(1, "u1", payload(json!({"a": 2}))).unwrap();
        assert_eq!(d.leaves["u1"]["metas"][0]["phx_ref"], old_ref);
        assert_eq!(d.joins["u1"]["metas"][0]["phx_ref_prev"], old_ref);
        assert_eq!(p.state_json()["u1"]["metas"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn untrack_removes_only_that_members_meta() {
        let mut p = PresenceState::default();
        p.track(1, "shared", payload(json!({"d": 1})));
        p.track(2, "shared", payload(json!({"d": 2})));
        let d = p.untrack(1).unwrap();
        assert_eq!(d.leaves["shared"]["metas"][0]["d"], 1);
        assert_eq!(
            p.state_json()["shared"]["metas"].as_array().unwrap().len(),
            1
        );
        assert!(p.untrack(1).is_none());
        assert_eq!(p.tracked(), 1);
        p.untrack(2);
        assert!(p.is_empty());
        assert_eq!(p.tracked(), 0);
        assert_eq!(p.state_json(), json!({}));
    }
}
