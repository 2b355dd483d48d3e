//! What the change log holds: row changes and SQL-originated broadcasts, as `capture`
//! reads them. Pure data, plus the one rule of which row a change is judged by.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// A row as `to_jsonb` gives it: column name -> JSON value.
pub type Row = Map<String, Value>;

/// The kind of row change, as the log table stores it (`INSERT`, `UPDATE`, `DELETE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "INSERT" => Some(Op::Insert),
            "UPDATE" => Some(Op::Update),
            "DELETE" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One column of a table: its name and Postgres `typname` (`int8`, `text`, `_int4`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub type_name: String,
    /// For a domain, the `typname` of the type under it (under every domain it stacks):
    /// what its values compare as.
    pub base_type: Option<String>,
    /// For an enum (or a domain over one), its labels in their sort order: what filters
    /// may name, and how `lt`/`gt` order them.
    pub labels: Option<std::sync::Arc<[String]>>,
}

impl ColumnInfo {
    /// The `typname` its values compare as: the base type of a domain, else its own.
    pub fn compared_type(&self) -> &str {
        self.base_type.as_deref().unwrap_or(&self.type_name)
    }
}

/// One committed row change read from `realtime.changes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The log row's id (unique, not commit-ordered).
    pub id: i64,
    /// The change's place among the rows of its log row (one statement's rows share a log
    /// row): `(id, seq)` names a change for good, e.g. as a webhook event id.
    pub seq: u32,
    /// The writing transaction (`xid8`; `u64::MAX` when unknown: then no position counts
    /// it as read, so it is never taken for one sent already).
    pub xid: u64,
    pub schema: String,
    pub table: String,
    pub op: Op,
    /// New row (INSERT, UPDATE); `None` for DELETE.
    pub record: Option<Row>,
    /// Previous row (UPDATE, DELETE): the whole row, captured by the trigger.
    pub old_record: Option<Row>,
    /// The transaction's commit time (the same for every change of one transaction).
    pub commit_time: DateTime<Utc>,
}

impl Change {
    /// The row a subscriber's filter and row scope are judged by: the new row, or the old
    /// row for DELETE (the only place this rule is written).
    pub fn judged_row(&self) -> Option<&Row> {
        match self.op {
            Op::Delete => self.old_record.as_ref(),
            Op::Insert | Op::Update => self.record.as_ref(),
        }
    }

    /// The old row of an UPDATE, which is judged too (to decide whether it may be shown).
    pub fn judged_old_row(&self) -> Option<&Row> {
        match self.op {
            Op::Update => self.old_record.as_ref(),
            Op::Insert | Op::Delete => None,
        }
    }
}

/// A broadcast sent from SQL: a row inserted into `realtime.messages` (by `realtime.send`,
/// `send_binary`, `broadcast_changes` or the project's own code).
#[derive(Debug, Clone, PartialEq)]
pub struct DbBroadcast {
    /// Its `realtime.changes` row (log readers' positions count these).
    pub log_id: i64,
    /// The message's id (`realtime.messages.id`, a uuid), sent as `meta.id`.
    pub id: String,
    /// Topic name without the `realtime:` prefix.
    pub topic: String,
    pub event: String,
    /// The JSON payload (`Null` when the message is binary).
    pub payload: Value,
    /// The payload of `realtime.send_binary`.
    pub binary: Option<bytes::Bytes>,
    pub private: bool,
    /// The inserting transaction's id: Broadcast Replay uses it to tell which live
    /// messages its stored ones already covered.
    pub xid: u64,
}

/// One item read from the log, in commit-visibility order.
#[derive(Debug, Clone, PartialEq)]
pub enum DbEvent {
    Change(Change),
    Broadcast(DbBroadcast),
}

/// What capture hands dispatch: log rows in log order and the log position right after
/// them (opaque here; `capture::Position` text).
#[derive(Debug, Clone)]
pub struct LogBatch {
    pub events: Vec<super::logged::LogEntry>,
    pub position: std::sync::Arc<str>,
    /// `realtime.rules_version()` as the read saw it (row scope's cached rules follow
    /// it); `None` when not read.
    pub rules_version: Option<i64>,
}

/// UTC with millisecond precision, `YYYY-MM-DDTHH:MM:SS.mmmZ`: the wire form of
/// `commit_timestamp`.
pub fn format_commit_time(t: DateTime<Utc>) -> String {
    // chrono's RFC 3339 writer: no format string parsed per change (it showed at 7 % of
    // the hub's samples for changes seen by one subscriber).
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn commit_timestamps_are_utc_with_milliseconds() {
        let t = Utc.with_ymd_and_hms(2024, 3, 9, 7, 5, 1).unwrap()
            + chrono::Duration::microseconds(42_999);
        assert_eq!(format_commit_time(t), "2024-03-09T07:05:01.042Z");
    }

    #[test]
    fn a_delete_is_judged_by_its_old_row_and_an_update_by_both() {
        let row = |n: i64| serde_json::json!({ "id": n }).as_object().cloned();
        let mut c = Change {
            id: 1,
            seq: 0,
            xid: 1,
            schema: "public".into(),
            table: "t".into(),
            op: Op::Delete,
            record: None,
            old_record: row(1),
            commit_time: Utc::now(),
        };
        assert_eq!(c.judged_row(), row(1).as_ref());
        assert_eq!(c.judged_old_row(), None);
        c.op = Op::Update;
        c.record = row(2);
        assert_eq!(c.judged_row(), row(2).as_ref());
        assert_eq!(c.judged_old_row(), row(1).as_ref());
    }
}
