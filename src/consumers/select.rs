//! Which changes a durable reader wants: its tables, its kinds of change, and a filter in
//! the postgres_changes syntax (`changes::parse_filter`) bound to each table's columns,
//! judged on the change's judged row as for subscribers.

use std::collections::HashMap;

use crate::changes::{parse_filter, BoundFilter, Catalog, Change, Op};

/// A reader's selection, ready to test changes in-process.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// (schema, table) -> the filter bound to that table (empty: every row).
    tables: HashMap<(String, String), BoundFilter>,
    ops: Vec<Op>,
}

/// Why a selection cannot be made; the text is shown to operators as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("table {0} does not exist")]
    NoSuchTable(String),
    #[error("unknown event {0:?} (use INSERT, UPDATE, DELETE)")]
    BadEvent(String),
    #[error("filter {filter:?} does not apply to {table}: {problem}")]
    BadFilter {
        filter: String,
        table: String,
        problem: String,
    },
    #[error("could not read the catalog: {0}")]
    Catalog(String),
}

impl Selection {
    /// The (schema, table) names it selects from.
    pub fn table_names(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tables.keys().map(|(s, t)| (s.as_str(), t.as_str()))
    }

    /// The kinds of change it selects.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Every change of `tables`.
    pub fn tables(tables: &[(String, String)]) -> Selection {
        Selection {
            tables: tables
                .iter()
                .map(|t| (t.clone(), BoundFilter::default()))
                .collect(),
            ops: vec![Op::Insert, Op::Update, Op::Delete],
        }
    }

    /// The changes of `tables` of the kinds in `events`, filtered by `filter`.
    pub async fn bind(
        catalog: &Catalog,
        tables: &[(String, String)],
        events: &[String],
        filter: Option<&str>,
    ) -> Result<Selection, SelectionError> {
        let ops = events
            .iter()
            .map(|e| Op::parse(&e.to_ascii_uppercase()).ok_or(SelectionError::BadEvent(e.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let parsed = parse_filter(filter.unwrap_or("")).map_err(|e| SelectionError::BadFilter {
            filter: filter.unwrap_or("").to_owned(),
            table: "any table".into(),
            problem: e.to_string(),
        })?;
        let mut bound = HashMap::new();
        for (schema, table) in tables {
            let name = format!("{schema}.{table}");
            let info = catalog
                .table(schema, table)
                .await
                .map_err(|e| SelectionError::Catalog(e.to_string()))?
                .ok_or_else(|| SelectionError::NoSuchTable(name.clone()))?;
            let f = parsed
                .bind(&info.columns)
                .map_err(|e| SelectionError::BadFilter {
                    filter: filter.unwrap_or("").to_owned(),
                    table: name,
                    problem: e.to_string(),
                })?;
            bound.insert((schema.clone(), table.clone()), f);
        }
        Ok(Selection { tables: bound, ops })
    }

    /// Selects the rows logged under `old`, a name `now` had before a rename, as `now`'s.
    pub fn alias(&mut self, old: &(String, String), now: &(String, String)) {
        if let Some(f) = self.tables.get(now).cloned() {
            self.tables.entry(old.clone()).or_insert(f);
        }
    }

    pub fn selects(&self, c: &Change) -> bool {
        self.filter_for(&c.schema, &c.table, c.op)
            .is_some_and(|f| f.is_empty() || c.judged_row().is_some_and(|r| f.matches(r)))
    }

    /// Whether some change of this table and kind may be selected (its row not judged):
    /// when not, a reader passes its rows over without parsing them.
    pub fn may_select(&self, schema: &str, table: &str, op: Op) -> bool {
        self.filter_for(schema, table, op).is_some()
    }

    fn filter_for(&self, schema: &str, table: &str, op: Op) -> Option<&BoundFilter> {
        if !self.ops.contains(&op) {
            return None;
        }
        // Looked up by borrowed parts without allocating: few tables, so scan.
        self.tables
            .iter()
            .find(|((s, t), _)| s == schema && t == table)
            .map(|(_, f)| f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(table: &str, op: Op) -> Change {
        Change {
            id: 1,
            xid: 1,
            seq: 0,
            schema: "public".into(),
            table: table.into(),
            op,
            record: json!({"id": 1}).as_object().cloned(),
            old_record: json!({"id": 1}).as_object().cloned(),
            commit_time: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_selection_of_tables_takes_every_kind_of_change_of_those_tables_only() {
        let s = Selection::tables(&[("public".into(), "a".into())]);
        assert!(s.selects(&change("a", Op::Insert)));
        assert!(s.selects(&change("a", Op::Delete)));
        assert!(!s.selects(&change("b", Op::Insert)));
        assert!(s.may_select("public", "a", Op::Update));
        assert!(!s.may_select("public", "b", Op::Update));
        assert!(!s.may_select("other", "a", Op::Update));
    }
}
