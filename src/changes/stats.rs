//! Counters the inspector shows about postgres_changes: changes read per table (counted
//! in dispatch, once per batch under one short lock) and joins refused because their
//! table is not enabled, with a count and when it was last asked for. Totals only; rates
//! are computed by whoever samples them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

/// A table by schema and name.
pub type TableName = (Arc<str>, Arc<str>);

/// Most distinct refused tables remembered; the oldest is forgotten first.
const MAX_REFUSED: usize = 256;

/// Shared by dispatch (writes), join validation (writes) and the inspector (reads).
#[derive(Default)]
pub struct ChangeStats {
    /// Changes read from the log per table, since start. Short-held, never across an await.
    changes: Mutex<HashMap<TableName, u64>>,
    /// Joins refused with "not enabled", per table. Short-held, never across an await.
    refused: Mutex<HashMap<TableName, Refused>>,
}

/// Joins refused for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub count: u64,
    pub last_seen: DateTime<Utc>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ChangeStats {
    /// Adds one batch's per-table counts: (schema, table, changes) per log row.
    pub fn count_changes<'a>(&self, tables: impl IntoIterator<Item = (&'a str, &'a str, usize)>) {
        let mut batch: HashMap<(&str, &str), u64> = HashMap::new();
        for (schema, table, n) in tables {
            *batch.entry((schema, table)).or_default() += n as u64;
        }
        if batch.is_empty() {
            return;
        }
        let mut totals = lock(&self.changes);
        for ((schema, table), n) in batch {
            *totals.entry((schema.into(), table.into())).or_default() += n;
        }
    }

    /// A join asked for `schema.table`, which exists but is not enabled.
    pub fn refused(&self, schema: &str, table: &str, at: DateTime<Utc>) {
        let mut refused = lock(&self.refused);
        let key: TableName = (schema.into(), table.into());
        if !refused.contains_key(&key) && refused.len() >= MAX_REFUSED {
            let oldest = refused
                .iter()
                .min_by_key(|(_, r)| r.last_seen)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                refused.remove(&k);
            }
        }
        let entry = refused.entry(key).or_insert(Refused {
            count: 0,
            last_seen: at,
        });
        entry.count += 1;
        entry.last_seen = entry.last_seen.max(at);
    }

    /// Changes read per table since start.
    pub fn change_totals(&self) -> HashMap<TableName, u64> {
        lock(&self.changes).clone()
    }

    /// Refused tables, most recently asked for first.
    pub fn refused_tables(&self) -> Vec<(TableName, Refused)> {
        let mut out: Vec<_> = lock(&self.refused)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| b.1.last_seen.cmp(&a.1.last_seen).then(a.0.cmp(&b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str, t: &str) -> TableName {
        (s.into(), t.into())
    }

    #[test]
    fn batches_add_up_per_table() {
        let stats = ChangeStats::default();
        stats.count_changes([("public", "a", 1), ("public", "b", 1), ("public", "a", 1)]);
        stats.count_changes([("public", "a", 50)]);
        let totals = stats.change_totals();
        assert_eq!(totals[&name("public", "a")], 52);
        assert_eq!(totals[&name("public", "b")], 1);
    }

    #[test]
    fn refused_joins_count_and_keep_the_latest_time() {
        let stats = ChangeStats::default();
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(5);
        stats.refused("public", "x", t1);
        stats.refused("public", "x", t0);
        stats.refused("public", "y", t0);
        let list = stats.refused_tables();
        assert_eq!(list[0].0, name("public", "x"));
        assert_eq!(list[0].1.count, 2);
        assert_eq!(list[0].1.last_seen, t1);
        assert_eq!(list[1].0, name("public", "y"));
    }

    #[test]
    fn refused_tables_are_bounded_forgetting_the_oldest() {
        let stats = ChangeStats::default();
        let t0 = Utc::now();
        for i in 0..=MAX_REFUSED {
            stats.refused(
                "s",
                &format!("t{i}"),
                t0 + chrono::Duration::seconds(i as i64),
            );
        }
        let list = stats.refused_tables();
        assert_eq!(list.len(), MAX_REFUSED);
        assert!(list.iter().all(|(k, _)| &*k.1 != "t0"), "t0 was the oldest");
    }
}
