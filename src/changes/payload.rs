//! The `data` object of a `postgres_changes` frame for one visibility shape (PROTOCOL.md
//! §4): which columns and rows a subscriber is shown (column privileges, the binding's
//! `select`, the table's REPLICA IDENTITY for `old_record`), the 400 and 413 rules, the
//! exact keys Supabase sends for INSERT, UPDATE and DELETE, and the few values whose
//! encoding differs between `row_to_json` (what the capture trigger logs) and Supabase's
//! `to_jsonb` of the decoded value: `bytea` without its `\x` prefix, and a float or
//! numeric NaN or infinity as `null`. Rows are serialized straight from the captured
//! record, never copied.

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

/// Which columns (by identity of the allowed list and of the binding's selection) and
/// whether the old row is shown.
pub(super) type ShapeKey = (Option<usize>, Option<usize>, bool);

fn list_id(list: Option<&Arc<[String]>>) -> Option<usize> {
    list.map(|c| Arc::as_ptr(c) as *const u8 as usize)
}

/// The shape key of a visibility and a selection: subscribers with equal keys get the
/// same `data`.
pub(super) fn shape_key(v: &Visibility, select: Option<&Arc<[String]>>) -> ShapeKey {
    (list_id(v.columns.as_ref()), list_id(select), v.old_visible)
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

fn listed(list: Option<&[String]>, name: &str) -> bool {
    list.is_none_or(|l| l.iter().any(|n| n == name))
}

/// Which fields of a row are shown.
#[derive(Clone, Copy)]
struct Keep<'a> {
    /// Columns the subscriber may select (`None`: all).
    allowed: Option<&'a [String]>,
    /// The binding's `select` (`None`: all); the primary key is always kept.
    select: Option<&'a [String]>,
    primary_key: &'a [String],
    /// For an old row: the columns its REPLICA IDENTITY shows (`None`: all).
    identity: Option<&'a [String]>,
}

impl Keep<'_> {
    fn keeps(&self, name: &str) -> bool {
        listed(self.allowed, name)
            && (listed(self.select, name) || self.primary_key.iter().any(|n| n == name))
            && listed(self.identity, name)
    }
}

/// How a captured value is turned into the value Supabase sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Convert {
    /// `bytea`: `"\\xdeadbeef"` becomes `"deadbeef"`.
    Bytea,
    /// float4, float8, numeric: `"NaN"`, `"Infinity"`, `"-Infinity"` become `null`.
    NonFinite,
}

/// The columns of a table whose values need a `Convert` (usually none).
pub(super) struct Conversions(Vec<(String, Convert)>);

impl Conversions {
    pub fn of(table: &TableInfo) -> Conversions {
        Conversions(
            table
                .columns
                .iter()
                .filter_map(|c| {
                    let convert = match c.type_name.as_str() {
                        "bytea" => Convert::Bytea,
                        "float4" | "float8" | "numeric" => Convert::NonFinite,
                        _ => return None,
                    };
                    Some((c.name.clone(), convert))
                })
                .collect(),
        )
    }

    fn get(&self, column: &str) -> Option<Convert> {
        self.0.iter().find(|(n, _)| n == column).map(|(_, c)| *c)
    }
}

/// `value` as Supabase sends it for a column needing `convert`.
fn converted(convert: Convert, value: &Value) -> Option<Value> {
    let Value::String(s) = value else {
        return None;
    };
    match convert {
        Convert::Bytea => s
            .strip_prefix("\\x")
            .map(|hex| Value::String(hex.to_owned())),
        Convert::NonFinite => {
            matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity").then_some(Value::Null)
        }
    }
}

/// A row serialized through a `Keep`, optionally without fields over the 413 limit.
struct Projected<'a> {
    row: &'a Row,
    sizes: &'a [usize],
    keep: Keep<'a>,
    conversions: &'a Conversions,
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
            match self.conversions.get(k).and_then(|c| converted(c, v)) {
                Some(v) => map.serialize_entry(k, &v)?,
                None => map.serialize_entry(k, v)?,
            }
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

/// Supabase's answer for INSERT/UPDATE on a table without a primary key: no row data,
/// but every key its clients require (`columns: []`, `commit_timestamp: null`, empty
/// records; `old_record` only for UPDATE).
#[derive(Serialize)]
struct NoPrimaryKey<'a> {
    schema: &'a str,
    table: &'a str,
    commit_timestamp: Option<()>,
    #[serde(rename = "type")]
    kind: &'static str,
    columns: [(); 0],
    record: EmptyObject,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_record: Option<EmptyObject>,
    errors: [RowError; 1],
}

/// `{}`.
struct EmptyObject;

impl Serialize for EmptyObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_map(Some(0))?.end()
    }
}

/// The `data` of `change` as `v` and the binding's `select` let a subscriber see it;
/// `None` only if serializing fails (it cannot for JSON rows).
///
/// `old_record` shows the columns the table's REPLICA IDENTITY names (the primary key by
/// default, every column under FULL), and only the primary key when the subscriber could
/// not see the old row.
pub(super) fn change_data(
    change: &Change,
    sizes: &FieldSizes,
    table: &TableInfo,
    conversions: &Conversions,
    v: &Visibility,
    select: Option<&Arc<[String]>>,
) -> Option<Box<RawValue>> {
    if table.primary_key.is_empty() && change.op != Op::Delete {
        let data = NoPrimaryKey {
            schema: &change.schema,
            table: &change.table,
            commit_timestamp: None,
            kind: change.op.as_str(),
            columns: [],
            record: EmptyObject,
            old_record: (change.op == Op::Update).then_some(EmptyObject),
            errors: [RowError::NoPrimaryKey],
        };
        return serde_json::value::to_raw_value(&data).ok();
    }
    let allowed = Keep {
        allowed: v.columns.as_deref(),
        select: select.map(|s| &s[..]),
        primary_key: &table.primary_key,
        identity: None,
    };
    let old_keep = if v.old_visible {
        Keep {
            identity: table.identity_columns(),
            ..allowed
        }
    } else {
        Keep {
            identity: Some(&table.primary_key),
            ..allowed
        }
    };
    let mut record = match change.op {
        Op::Delete => None,
        Op::Insert | Op::Update => change.record.as_ref().map(|row| Projected {
            row,
            sizes: &sizes.record,
            keep: allowed,
            conversions,
            drop_large: false,
        }),
    };
    let mut old_record = match change.op {
        Op::Insert => None,
        Op::Update | Op::Delete => change.old_record.as_ref().map(|row| Projected {
            row,
            sizes: &sizes.old_record,
            keep: old_keep,
            conversions,
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
