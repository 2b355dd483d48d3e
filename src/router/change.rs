//! What the database hands the router: row changes and SQL-originated broadcasts.
//! `capture` produces these; `router` matches and fans them out. Pure data, no I/O.

use serde_json::{Map, Value};

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
}

/// One committed row change read from `realtime.changes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The log row's id (unique, not commit-ordered).
    pub id: i64,
    pub schema: String,
    pub table: String,
    pub op: Op,
    /// New row (INSERT, UPDATE); `None` for DELETE.
    pub record: Option<Map<String, Value>>,
    /// Previous row (UPDATE, DELETE): the whole row, captured by the trigger.
    pub old_record: Option<Map<String, Value>>,
    /// UTC, millisecond precision: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub commit_timestamp: String,
}

/// A broadcast sent from SQL with `realtime.send(payload, event, topic, private)`.
#[derive(Debug, Clone, PartialEq)]
pub struct DbBroadcast {
    pub id: i64,
    /// Topic name without the `realtime:` prefix.
    pub topic: String,
    pub event: String,
    pub payload: Value,
    pub private: bool,
}

/// One item read from the log, in commit-visibility order.
#[derive(Debug, Clone, PartialEq)]
pub enum DbEvent {
    Change(Change),
    Broadcast(DbBroadcast),
}
