//! What capture hands dispatch, one log row at a time. A captured statement's rows stay
//! JSON text (`StatementRows`) until someone may see them: dispatch parses them only for a
//! table with subscribers, at match time, so a table nobody watches costs the hub the
//! read and nothing more. Every other reader of the log takes changes whole
//! (`LogEntry::into_events`). The rows are shared, so keeping an entry (`recent`) copies
//! no row.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::row::{Change, DbEvent, Op, Row};

/// One captured statement's log row (up to 100 of its rows): `rows` holds the new rows
/// (INSERT, UPDATE) and `old_rows` the old ones (UPDATE, DELETE), aligned by position,
/// one JSON text per row. The row texts are shared between clones.
#[derive(Debug, Clone)]
pub struct StatementRows {
    /// The log row's id.
    pub id: i64,
    /// The writing transaction (see `Change::xid`).
    pub xid: u64,
    pub op: Op,
    pub schema: String,
    pub table: String,
    pub commit_time: DateTime<Utc>,
    pub rows: Arc<[Box<RawValue>]>,
    pub old_rows: Arc<[Box<RawValue>]>,
}

impl StatementRows {
    /// The row changes it holds.
    pub fn len(&self) -> usize {
        self.rows.len().max(self.old_rows.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its changes, in the statement's order, each row parsed now (a row that is not a
    /// JSON object reads as none).
    pub fn changes(&self) -> impl Iterator<Item = Change> + '_ {
        (0..self.len()).map(|seq| self.change(seq))
    }

    /// Its change at `seq` (`< len()`), its rows parsed now.
    pub fn change(&self, seq: usize) -> Change {
        Change {
            id: self.id,
            seq: u32::try_from(seq).unwrap_or(u32::MAX),
            xid: self.xid,
            schema: self.schema.clone(),
            table: self.table.clone(),
            op: self.op,
            record: self.rows.get(seq).and_then(|r| parse_row(r)),
            old_record: self.old_rows.get(seq).and_then(|r| parse_row(r)),
            commit_time: self.commit_time,
        }
    }

    /// Of the row its change at `seq` is judged by (`Change::judged_row`: the new row,
    /// the old one for DELETE), only the values of `columns`, each read as a whole
    /// parse would read it; `None` where `judged_row` would be none. Anything that looks
    /// at these columns alone (a filter, a row key) decides the same on it, without
    /// building the rest of the row.
    pub fn judged_columns(&self, seq: usize, columns: &[&str]) -> Option<Row> {
        let rows = match self.op {
            Op::Delete => &self.old_rows,
            Op::Insert | Op::Update => &self.rows,
        };
        let raw = rows.get(seq)?;
        let mut de = serde_json::Deserializer::from_str(raw.get());
        de.deserialize_map(Columns(columns)).ok()
    }
}

fn parse_row(raw: &RawValue) -> Option<Row> {
    match serde_json::from_str(raw.get()) {
        Ok(Value::Object(row)) => Some(row),
        Ok(_) => None,
        Err(e) => {
            // JSON nested deeper than the parser's 128 levels (a jsonb value Postgres
            // holds): said, not silently dropped.
            tracing::warn!(error = %e, "a captured row could not be read and is not delivered");
            None
        }
    }
}

/// Reads a JSON object keeping only the members named (a later duplicate replaces an
/// earlier one, as in a whole parse); the others are stepped over without being built.
struct Columns<'c>(&'c [&'c str]);

impl<'de> Visitor<'de> for Columns<'_> {
    type Value = Row;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
        let mut row = Row::new();
        while let Some(name) = map.next_key::<Name<'de>>()? {
            if self.0.contains(&name.0.as_ref()) {
                let value: Value = map.next_value()?;
                row.insert(name.0.into_owned(), value);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(row)
    }
}

/// A member name, borrowed from the text unless it holds escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s)))
            }
        }
        d.deserialize_str(NameVisitor)
    }
}

/// One log row as capture read it.
#[derive(Debug, Clone)]
pub enum LogEntry {
    /// A broadcast, or a change logged whole (a single-row entry).
    Event(DbEvent),
    Statement(StatementRows),
}

impl LogEntry {
    /// The events it holds.
    pub fn len(&self) -> usize {
        match self {
            LogEntry::Event(_) => 1,
            LogEntry::Statement(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The changed table, for a change.
    pub fn table(&self) -> Option<(&str, &str)> {
        match self {
            LogEntry::Event(DbEvent::Change(c)) => Some((&c.schema, &c.table)),
            LogEntry::Statement(s) => Some((&s.schema, &s.table)),
            LogEntry::Event(DbEvent::Broadcast(_)) => None,
        }
    }

    /// The commit time of a change.
    pub fn commit_time(&self) -> Option<DateTime<Utc>> {
        match self {
            LogEntry::Event(DbEvent::Change(c)) => Some(c.commit_time),
            LogEntry::Statement(s) => Some(s.commit_time),
            LogEntry::Event(DbEvent::Broadcast(_)) => None,
        }
    }

    /// Its events, parsed.
    pub fn into_events(self, out: &mut Vec<DbEvent>) {
        match self {
            LogEntry::Event(e) => out.push(e),
            LogEntry::Statement(s) => out.extend(s.changes().map(DbEvent::Change)),
        }
    }
}

/// How many changes `entries` hold as the log counts them for a gap (a log row counts
/// at least one, even one that maps to no entry).
pub fn gap_len(entries: &[LogEntry]) -> usize {
    entries.iter().map(|e| e.len().max(1)).sum()
}

/// `entries`' events, parsed.
pub fn into_events(entries: Vec<LogEntry>) -> Vec<DbEvent> {
    let mut out = Vec::with_capacity(entries.iter().map(LogEntry::len).sum());
    for e in entries {
        e.into_events(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(rows: &str) -> Arc<[Box<RawValue>]> {
        serde_json::from_str::<Vec<Box<RawValue>>>(rows)
            .unwrap()
            .into()
    }

    #[test]
    fn a_statement_gives_one_change_per_row_pairing_old_and_new_by_position() {
        let s = StatementRows {
            id: 7,
            xid: 1,
            op: Op::Update,
            schema: "public".into(),
            table: "jobs".into(),
            commit_time: Utc::now(),
            rows: raw(r#"[{"id":1,"v":"b"},{"id":2,"v":"c"}]"#),
            old_rows: raw(r#"[{"id":1,"v":"a"},{"id":2,"v":"b"}]"#),
        };
        let entry = LogEntry::Statement(s);
        assert_eq!((entry.len(), entry.table()), (2, Some(("public", "jobs"))));
        let events = into_events(vec![entry]);
        let changes: Vec<_> = events
            .iter()
            .map(|e| match e {
                DbEvent::Change(c) => (
                    c.id,
                    c.seq,
                    c.record.as_ref().unwrap()["v"].clone(),
                    c.old_record.as_ref().unwrap()["v"].clone(),
                ),
                DbEvent::Broadcast(_) => panic!("a change"),
            })
            .collect();
        assert_eq!(
            changes,
            [
                (7, 0, "b".into(), "a".into()),
                (7, 1, "c".into(), "b".into())
            ]
        );
    }

    #[test]
    fn a_delete_has_old_rows_only_and_a_row_that_is_not_an_object_reads_as_none() {
        let s = StatementRows {
            id: 1,
            xid: 1,
            op: Op::Delete,
            schema: "public".into(),
            table: "t".into(),
            commit_time: Utc::now(),
            rows: Arc::default(),
            old_rows: raw(r#"[{"id":1}, 5]"#),
        };
        let changes: Vec<_> = s.changes().collect();
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|c| c.record.is_none()));
        assert_eq!(changes[0].old_record.as_ref().unwrap()["id"], 1);
        assert!(changes[1].old_record.is_none());
    }

    #[test]
    fn judged_columns_read_those_columns_as_the_whole_row_does_and_nothing_else() {
        let rows = r#"[{"a":1,"b":{"x":[1,2]},"c":"t","a":2},
                       {"c\u0061":"escaped name","n":12345678901234567890.5,"s":"q\"x"},
                       [1,2], "text", {}]"#;
        let s = |op| StatementRows {
            id: 1,
            xid: 1,
            op,
            schema: "public".into(),
            table: "t".into(),
            commit_time: Utc::now(),
            rows: if op == Op::Delete {
                Arc::default()
            } else {
                raw(rows)
            },
            old_rows: if op == Op::Delete {
                raw(rows)
            } else {
                Arc::default()
            },
        };
        for op in [Op::Insert, Op::Update, Op::Delete] {
            let s = s(op);
            for seq in 0..6 {
                let whole = s.change(seq).judged_row().cloned();
                let cols = ["a", "ca", "n", "s", "missing"];
                let part = s.judged_columns(seq, &cols);
                let want = whole.map(|row| {
                    row.into_iter()
                        .filter(|(k, _)| cols.contains(&k.as_str()))
                        .collect::<Row>()
                });
                assert_eq!(part, want, "{op:?} row {seq}");
            }
        }
        let first = s(Op::Insert).judged_columns(0, &["a", "c"]).unwrap();
        assert_eq!(serde_json::to_string(&first).unwrap(), r#"{"a":2,"c":"t"}"#);
    }
}
