//! Per-topic presence: who is tracked under which key, and the join/leave diffs that
//! changes produce. Pure state; the router holds one per topic and fans diffs out.
//! Metas are kept per source: a member of this node, or a member of another node
//! (cluster mode), so one `presence_state` holds the whole cluster's presence and a
//! dead node's metas can be dropped together.
//!
//! A topic's presence is bounded ([`PresenceLimits`]): a local track that would take it
//! past its presences or bytes is refused before anything changes. Remote presences are
//! bounded by their own node, so a cluster's topic can overshoot by what nodes track at
//! the same moment.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::{MemberId, NodeId};
use crate::protocol::encoded_len;

/// Bytes a meta adds to `presence_state` beyond its key and payload: `{"metas":[..]}`,
/// `phx_ref`, `phx_ref_prev`, separators. Generous, so the counted bytes are never fewer
/// than the state's JSON.
const META_OVERHEAD: usize = 96;

/// How much presence one topic may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceLimits {
    /// Tracked presences (one per member).
    pub max_presences: usize,
    /// Counted bytes of the state: keys, payloads and `META_OVERHEAD` per meta.
    pub max_bytes: usize,
}

impl Default for PresenceLimits {
    /// Unbounded (the hub sets its configured limits).
    fn default() -> Self {
        PresenceLimits {
            max_presences: usize::MAX,
            max_bytes: usize::MAX,
        }
    }
}

/// Why a track was refused; nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceFull {
    TooMany { max: usize },
    TooLarge { max: usize },
}

/// Whose presence a meta is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A member on this node.
    Local(MemberId),
    /// A member on another node of the cluster.
    Remote(NodeId, MemberId),
}

/// One tracked presence as it crosses nodes: its key, its refs and its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    pub key: String,
    pub phx_ref: String,
    pub phx_ref_prev: Option<String>,
    pub payload: Map<String, Value>,
}

#[derive(Debug, Clone)]
struct Meta {
    source: Source,
    phx_ref: String,
    phx_ref_prev: Option<String>,
    payload: Map<String, Value>,
    /// What it counts against the topic's byte bound (see [`meta_cost`]).
    cost: usize,
}

/// The counted bytes of a meta with `payload` under `key`: their JSON plus overhead.
fn meta_cost(key: &str, payload: &Map<String, Value>) -> usize {
    encoded_len(key) + encoded_len(payload) + META_OVERHEAD
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

    fn tracked(&self, key: &str) -> Tracked {
        Tracked {
            key: key.to_owned(),
            phx_ref: self.phx_ref.clone(),
            phx_ref_prev: self.phx_ref_prev.clone(),
            payload: self.payload.clone(),
        }
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

    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
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
    /// Which key each source tracks under (one presence per source).
    keys: BTreeMap<Source, String>,
    /// The sum of the metas' costs.
    bytes: usize,
}

/// A `phx_ref` unique across nodes: a random per-process prefix and a counter.
fn new_ref() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(rand::random);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("F{prefix:08x}{n:x}")
}

impl PresenceState {
    /// Tracks (or updates) local `member`'s presence within `limits`: `Ok(None)` when
    /// nothing changed, `Err` (and nothing changed) when the topic cannot take it.
    pub fn track(
        &mut self,
        member: MemberId,
        key: &str,
        payload: Map<String, Value>,
        limits: &PresenceLimits,
    ) -> Result<Option<Diff>, PresenceFull> {
        let source = Source::Local(member);
        let old = self.meta(source);
        if old.is_some_and(|old| self.keys[&source] == key && old.payload == payload) {
            return Ok(None);
        }
        let cost = self.admits(member, key, &payload, limits)?;
        let meta = Meta {
            source,
            phx_ref: new_ref(),
            phx_ref_prev: old.map(|m| m.phx_ref.clone()),
            payload,
            cost,
        };
        Ok(Some(self.put(key, meta)))
    }

    /// Whether local `member` may track `payload` under `key` within `limits`; `Ok` with
    /// the meta's cost.
    pub fn admits(
        &self,
        member: MemberId,
        key: &str,
        payload: &Map<String, Value>,
        limits: &PresenceLimits,
    ) -> Result<usize, PresenceFull> {
        let old = self.meta(Source::Local(member));
        if old.is_none() && self.keys.len() >= limits.max_presences {
            return Err(PresenceFull::TooMany {
                max: limits.max_presences,
            });
        }
        let cost = meta_cost(key, payload);
        let freed = old.map_or(0, |m| m.cost);
        if self.bytes - freed + cost > limits.max_bytes {
            return Err(PresenceFull::TooLarge {
                max: limits.max_bytes,
            });
        }
        Ok(cost)
    }

    /// Sets a remote member's presence as its node reported it. `None` when this very
    /// presence (same `phx_ref`) is already there.
    pub fn put_remote(&mut self, node: NodeId, member: MemberId, t: Tracked) -> Option<Diff> {
        let source = Source::Remote(node, member);
        if self.meta(source).is_some_and(|m| m.phx_ref == t.phx_ref) {
            return None;
        }
        let meta = Meta {
            source,
            phx_ref: t.phx_ref,
            phx_ref_prev: t.phx_ref_prev,
            cost: meta_cost(&t.key, &t.payload),
            payload: t.payload,
        };
        Some(self.put(&t.key, meta))
    }

    /// Replaces whatever `meta.source` had with `meta` under `key`.
    fn put(&mut self, key: &str, meta: Meta) -> Diff {
        let mut diff = Diff::default();
        if let Some((old_key, old)) = self.take(meta.source) {
            Diff::add(&mut diff.leaves, &old_key, &old);
        }
        Diff::add(&mut diff.joins, key, &meta);
        self.bytes += meta.cost;
        self.keys.insert(meta.source, key.to_owned());
        self.by_key.entry(key.to_owned()).or_default().push(meta);
        diff
    }

    fn meta(&self, source: Source) -> Option<&Meta> {
        let key = self.keys.get(&source)?;
        self.by_key.get(key)?.iter().find(|m| m.source == source)
    }

    /// Removes `source`'s meta; returns it with its key.
    fn take(&mut self, source: Source) -> Option<(String, Meta)> {
        let key = self.keys.remove(&source)?;
        let metas = self.by_key.get_mut(&key)?;
        let pos = metas.iter().position(|m| m.source == source)?;
        let old = metas.remove(pos);
        if metas.is_empty() {
            self.by_key.remove(&key);
        }
        self.bytes -= old.cost;
        Some((key, old))
    }

    /// Removes local `member`'s presence, if any (untrack, leave, disconnect).
    pub fn untrack(&mut self, member: MemberId) -> Option<Diff> {
        self.remove(Source::Local(member))
    }

    /// Removes `source`'s presence, if any.
    pub fn remove(&mut self, source: Source) -> Option<Diff> {
        let (key, old) = self.take(source)?;
        let mut diff = Diff::default();
        Diff::add(&mut diff.leaves, &key, &old);
        Some(diff)
    }

    /// Makes `node`'s presences exactly `entries` (a node's snapshot of this topic):
    /// unchanged ones (same `phx_ref`) produce nothing, the rest joins and leaves.
    pub fn replace_node(&mut self, node: NodeId, entries: Vec<(MemberId, Tracked)>) -> Diff {
        let mut diff = Diff::default();
        let wanted: HashMap<MemberId, &Tracked> = entries.iter().map(|(m, t)| (*m, t)).collect();
        let stale: Vec<Source> = self
            .keys
            .keys()
            .filter(|s| matches!(s, Source::Remote(n, m) if *n == node && !wanted.contains_key(m)))
            .copied()
            .collect();
        for source in stale {
            merge(&mut diff, self.remove(source));
        }
        for (member, t) in entries {
            merge(&mut diff, self.put_remote(node, member, t));
        }
        diff
    }

    /// Removes every presence of `node` (it died, left, or was found stale).
    pub fn drop_node(&mut self, node: NodeId) -> Option<Diff> {
        let gone: Vec<Source> = self
            .keys
            .keys()
            .filter(|s| matches!(s, Source::Remote(n, _) if *n == node))
            .copied()
            .collect();
        let mut diff = Diff::default();
        for source in gone {
            merge(&mut diff, self.remove(source));
        }
        (!diff.is_empty()).then_some(diff)
    }

    /// Local `member`'s presence, as other nodes should learn it.
    pub fn local(&self, member: MemberId) -> Option<Tracked> {
        let source = Source::Local(member);
        self.meta(source).map(|m| m.tracked(&self.keys[&source]))
    }

    /// Every local presence of this topic (a node's snapshot).
    pub fn locals(&self) -> Vec<(MemberId, Tracked)> {
        let mut out = Vec::new();
        for (key, metas) in &self.by_key {
            for m in metas {
                if let Source::Local(member) = m.source {
                    out.push((member, m.tracked(key)));
                }
            }
        }
        out
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

    /// Tracked presences (in cluster mode, those of every node).
    pub fn tracked(&self) -> usize {
        self.keys.len()
    }

    /// The counted bytes of the state (never fewer than its JSON's).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Folds `more` into `diff` (metas under the same key are appended).
fn merge(diff: &mut Diff, more: Option<Diff>) {
    let Some(more) = more else { return };
    for (side, from) in [
        (&mut diff.joins, more.joins),
        (&mut diff.leaves, more.leaves),
    ] {
        for (key, entry) in from {
            let metas = entry["metas"].as_array().cloned().unwrap_or_default();
            let slot = side.entry(key).or_insert_with(|| json!({ "metas": [] }));
            if let Some(Value::Array(all)) = slot.get_mut("metas") {
                all.extend(metas);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn remote(key: &str, phx_ref: &str, v: Value) -> Tracked {
        Tracked {
            key: key.into(),
            phx_ref: phx_ref.into(),
            phx_ref_prev: None,
            payload: payload(v),
        }
    }

    const N: NodeId = NodeId(7);
    const UNBOUNDED: PresenceLimits = PresenceLimits {
        max_presences: usize::MAX,
        max_bytes: usize::MAX,
    };

    #[test]
    fn a_track_past_the_topics_presences_or_bytes_is_refused_and_changes_nothing() {
        let mut p = PresenceState::default();
        let cost = meta_cost("u1", &payload(json!({"a": 1})));
        let limits = PresenceLimits {
            max_presences: 2,
            max_bytes: 2 * cost + 10,
        };
        p.track(1, "u1", payload(json!({"a": 1})), &limits).unwrap();
        p.track(2, "u2", payload(json!({"a": 2})), &limits).unwrap();
        assert_eq!(
            p.track(3, "u3", payload(json!({})), &limits),
            Err(PresenceFull::TooMany { max: 2 })
        );
        // An update of a tracked member replaces its bytes rather than adding to them.
        assert!(p
            .track(1, "u1", payload(json!({"a": 3})), &limits)
            .unwrap()
            .is_some());
        let big = payload(json!({"a": "x".repeat(20)}));
        assert_eq!(
            p.track(2, "u2", big, &limits),
            Err(PresenceFull::TooLarge { max: 2 * cost + 10 })
        );
        assert_eq!(p.state_json()["u2"]["metas"][0]["a"], 2, "unchanged");
        let counted = p.bytes();
        assert!(counted >= p.state_json().to_string().len(), "{counted}");
        p.untrack(1);
        p.untrack(2);
        assert_eq!(p.bytes(), 0);
    }

    #[test]
    fn track_then_identical_track_is_a_no_op() {
        let mut p = PresenceState::default();
        let d = p
            .track(1, "u1", payload(json!({"a": 1})), &UNBOUNDED)
            .unwrap()
            .unwrap();
        assert!(d.leaves.is_empty());
        assert_eq!(d.joins["u1"]["metas"][0]["a"], 1);
        assert!(p
            .track(1, "u1", payload(json!({"a": 1})), &UNBOUNDED)
            .unwrap()
            .is_none());
    }

    #[test]
    fn update_produces_join_with_prev_ref_and_leave_of_old_ref() {
        let mut p = PresenceState::default();
        let first = p
            .track(1, "u1", payload(json!({"a": 1})), &UNBOUNDED)
            .unwrap()
            .unwrap();
        let old_ref = first.joins["u1"]["metas"][0]["phx_ref"].clone();
        let d = p
            .track(1, "u1", payload(json!({"a": 2})), &UNBOUNDED)
            .unwrap()
            .unwrap();
        assert_eq!(d.leaves["u1"]["metas"][0]["phx_ref"], old_ref);
        assert_eq!(d.joins["u1"]["metas"][0]["phx_ref_prev"], old_ref);
        assert_eq!(p.state_json()["u1"]["metas"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn untrack_removes_only_that_members_meta() {
        let mut p = PresenceState::default();
        p.track(1, "shared", payload(json!({"d": 1})), &UNBOUNDED)
            .unwrap();
        p.track(2, "shared", payload(json!({"d": 2})), &UNBOUNDED)
            .unwrap();
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

    #[test]
    fn a_local_and_a_remote_member_with_the_same_id_are_distinct() {
        let mut p = PresenceState::default();
        p.track(1, "k", payload(json!({"here": true})), &UNBOUNDED)
            .unwrap();
        p.put_remote(N, 1, remote("k", "R1", json!({"there": true})));
        assert_eq!(p.state_json()["k"]["metas"].as_array().unwrap().len(), 2);
        assert_eq!(p.locals().len(), 1);
        p.untrack(1);
        assert_eq!(p.state_json()["k"]["metas"][0]["phx_ref"], "R1");
    }

    #[test]
    fn a_remote_presence_seen_again_with_the_same_ref_changes_nothing() {
        let mut p = PresenceState::default();
        let d = p.put_remote(N, 3, remote("k", "R1", json!({}))).unwrap();
        assert_eq!(d.joins["k"]["metas"][0]["phx_ref"], "R1");
        assert!(p.put_remote(N, 3, remote("k", "R1", json!({}))).is_none());
        let d = p.put_remote(N, 3, remote("k", "R2", json!({}))).unwrap();
        assert_eq!(d.leaves["k"]["metas"][0]["phx_ref"], "R1");
        assert_eq!(d.joins["k"]["metas"][0]["phx_ref"], "R2");
    }

    #[test]
    fn replacing_a_nodes_presences_reports_only_what_changed() {
        let mut p = PresenceState::default();
        p.put_remote(N, 1, remote("a", "R1", json!({})));
        p.put_remote(N, 2, remote("b", "R2", json!({})));
        p.put_remote(NodeId(8), 1, remote("c", "R3", json!({})));
        let d = p.replace_node(
            N,
            vec![
                (1, remote("a", "R1", json!({}))),
                (4, remote("d", "R4", json!({}))),
            ],
        );
        assert_eq!(d.leaves.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(d.joins.keys().collect::<Vec<_>>(), ["d"]);
        let state = p.state_json();
        assert_eq!(
            state.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["a", "c", "d"]
        );
    }

    #[test]
    fn dropping_a_node_leaves_all_its_metas_once() {
        let mut p = PresenceState::default();
        p.put_remote(N, 1, remote("same", "R1", json!({})));
        p.put_remote(N, 2, remote("same", "R2", json!({})));
        p.track(9, "mine", payload(json!({})), &UNBOUNDED).unwrap();
        let d = p.drop_node(N).unwrap();
        assert_eq!(d.leaves["same"]["metas"].as_array().unwrap().len(), 2);
        assert!(d.joins.is_empty());
        assert!(p.drop_node(N).is_none());
        assert_eq!(p.locals().len(), 1);
    }
}
