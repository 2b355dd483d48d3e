//! The `data` object of a `postgres_changes` frame for one visibility shape (PROTOCOL.md
//! §4): which columns and rows a subscriber is shown, the 400 and 413 rules, and the exact
//! keys Supabase sends for INSERT, UPDATE and DELETE. Rows are serialized straight from
//! the captured record, never copied.

use std::sync::Arc;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::catalog::TableInfo;
use super::row::{format_commit_time, Change, Op, Row};
use super::scope::Visibility;
use crate::protocol::{encoded_len, RowError};

/// Records larger than this are cut down (PROTOCOL.md §4, "Error 413").
const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Under the 413 rule, fields whose JSON is longer than this are dropped.
const MAX_FIELD_BYTES_WHEN_TOO_LARGE: usize = 64;

/// Which columns (by identity of the allowed list) and whether the old row is shown.
pub(super) type ShapeKey = (Option<usize>, bool);

/// The shape key of a visibility: subscribers with equal keys get the same `data`.
pub(super) fn shape_key(v: &Visibility) -> ShapeKey {
    (
        v.columns
            .as_ref()
            .map(|c| Arc::as_ptr(c) as *const u8 as usize),
        v.old_visible,
    )
}

#[derive(Serialize)]
pub(super) struct ChangePayload<'a> {
    pub ids: &'a [u32],
    pub data: &'a RawValue,
}

/// The serialized size of each field of a change's rows, measured once per change and
/// shared by every shape: `(name, bytes of the JSON value)` in row order.
pub(super) struct FieldSizes {
    record: Vec<usize>,
    old_record: Vec<usize>,
}

impl FieldSizes {
    pub fn of(change: &Change) -> FieldSizes {
        let sizes = |r: &Option<Row>| {
            r.as_ref()
                .map(|r| r.values().map(encoded_len).collect())
                .unwrap_or_default()
        };
        FieldSizes {
            record: sizes(&change.record),
            old_record: sizes(&change.old_record),
        }
    }
}

/// Which fields of a row are shown.
#[derive(Clone, Copy)]
enum Keep<'a> {
    /// Columns the subscriber may select (`None`: all).
    Allowed(&'a Option<Arc<[String]>>),
    /// Only the primary key.
    PrimaryKey(&'a [String]),
}

impl Keep<'_> {
    fn keeps(&self, name: &str) -> bool {
        match self {
            Keep::Allowed(cols) => cols.as_ref().is_none_or(|c| c.iter().any(|n| n == name)),
            Keep::PrimaryKey(pk) => pk.iter().any(|n| n == name),
        }
    }
}

/// A row serialized through a `Keep`, optionally without fields over the 413 limit.
struct Projected<'a> {
    row: &'a Row,
    sizes: &'a [usize],
    keep: Keep<'a>,
    drop_large: bool,
}

impl Projected<'_> {
    fn fields(&self) -> impl Iterator<Item = ((&String, &Value), usize)> + '_ {
        self.row
            .iter()
            .zip(self.sizes.iter().copied())
            .filter(move |((k, _), size)| {
                self.keep.keeps(k) && !(self.drop_large && *size > MAX_FIELD_BYTES_WHEN_TOO_LARGE)
            })
    }

    /// What the object's JSON will roughly weigh (keys, values, quotes and separators).
    fn bytes(&self) -> usize {
        self.fields().map(|((k, _), size)| k.len() + size + 4).sum()
    }
}

impl Serialize for Projected<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for ((k, v), _) in self.fields() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The `data` object of a `postgres_changes` frame for one visibility shape.
#[derive(Serialize)]
struct ChangeData<'a> {
    schema: &'a str,
    table: &'a str,
    commit_timestamp: String,
    #[serde(rename = "type")]
    kind: &'static str,
    columns: Vec<ColumnOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<Projected<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_record: Option<Projected<'a>>,
    errors: Option<[RowError; 1]>,
}

#[derive(Serialize)]
struct ColumnOut<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    type_name: &'a str,
}

/// Supabase's answer for INSERT/UPDATE on a table without a primary key: no row data.
#[derive(Serialize)]
struct NoPrimaryKey<'a> {
    schema: &'a str,
    table: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    errors: [RowError; 1],
}

/// The `data` of `change` as `v` lets a subscriber see it; `None` only if serializing
/// fails (it cannot for JSON rows).
pub(super) fn change_data(
    change: &Change,
    sizes: &FieldSizes,
    table: &TableInfo,
    v: &Visibility,
) -> Option<Box<RawValue>> {
    if table.primary_key.is_empty() && change.op != Op::Delete {
        let data = NoPrimaryKey {
            schema: &change.schema,
            table: &change.table,
            kind: change.op.as_str(),
            errors: [RowError::NoPrimaryKey],
        };
        return serde_json::value::to_raw_value(&data).ok();
    }
    let allowed = Keep::Allowed(&v.columns);
    let mut record = match change.op {
        Op::Delete => None,
        Op::Insert | Op::Update => change.record.as_ref().map(|row| Projected {
            row,
            sizes: &sizes.record,
            keep: allowed,
            drop_large: false,
        }),
    };
    let mut old_record = match change.op {
        Op::Insert => None,
        Op::Update | Op::Delete => change.old_record.as_ref().map(|row| Projected {
            row,
            sizes: &sizes.old_record,
            keep: if v.old_visible {
                allowed
            } else {
                Keep::PrimaryKey(&table.primary_key)
            },
            drop_large: false,
        }),
    };
    let too_large =
        |r: &Option<Projected>| r.as_ref().is_some_and(|r| r.bytes() > MAX_RECORD_BYTES);
    let mut errors = None;
    if too_large(&record) || too_large(&old_record) {
        for r in [&mut record, &mut old_record].into_iter().flatten() {
            r.drop_large = true;
        }
        errors = Some([RowError::TooLarge]);
    }
    let data = ChangeData {
        schema: &change.schema,
        table: &change.table,
        commit_timestamp: format_commit_time(change.commit_time),
        kind: change.op.as_str(),
        columns: table
            .columns
            .iter()
            .filter(|c| allowed.keeps(&c.name))
            .map(|c| ColumnOut {
                name: &c.name,
                type_name: &c.type_name,
            })
            .collect(),
        record,
        old_record,
        errors,
    };
    serde_json::value::to_raw_value(&data).ok()
}
