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

/// Changes whose `record` and `old_record` together, with the frame around them
/// (`envelope`), weigh more than this are cut down (PROTOCOL.md §4, "Error 413"):
/// Supabase weighs the whole change, new row and old together with the columns, so that
/// no frame reaches a client's 1 MiB message limit (the Python client's).
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
/// shared by every shape, in row order; `None` when the two rows and the frame's
/// envelope cannot reach the 413 limit together.
/// Most rows are far below it, and a bound read off their values (no serializing) says
/// so: measuring every field took 7 % of the hub for changes seen by one subscriber.
pub(super) struct FieldSizes {
    record: Option<Vec<usize>>,
    old_record: Option<Vec<usize>>,
}

impl FieldSizes {
    pub fn of(change: &Change, table: &TableInfo) -> FieldSizes {
        let bound = |r: &Option<Row>| r.as_ref().map_or(0, row_len_bound);
        if bound(&change.record) + bound(&change.old_record) + envelope(table) <= MAX_RECORD_BYTES {
            return FieldSizes {
                record: None,
                old_record: None,
            };
        }
        let sizes = |r: &Option<Row>| {
            Some(
                r.as_ref()
                    .map(|r| r.values().map(encoded_len).collect())
                    .unwrap_or_default(),
            )
        };
        FieldSizes {
            record: sizes(&change.record),
            old_record: sizes(&change.old_record),
        }
    }
}

/// What a frame carries beside its rows, at most: the `columns` list, the other `data`
/// keys, `ids` and the frame's envelope with its topic (at most 8,192 bytes). Counted
/// with the rows so that no frame passes 1 MiB.
fn envelope(table: &TableInfo) -> usize {
    let columns: usize = table
        .columns
        .iter()
        .map(|c| str_len_bound(&c.name) + str_len_bound(&c.type_name) + 20)
        .sum();
    columns + 12 * 1024
}

/// At least what `Projected::weight` counts for the whole row: each key and value as
/// long as their JSON could be.
fn row_len_bound(row: &Row) -> usize {
    row.iter()
        .map(|(k, v)| str_len_bound(k) + json_len_bound(v) + 4)
        .sum()
}

/// An upper bound of a string's JSON length: quoted, every byte escaped as `\u00XX`.
fn str_len_bound(s: &str) -> usize {
    2 + 6 * s.len()
}

/// An upper bound of `v`'s JSON length.
fn json_len_bound(v: &Value) -> usize {
    match v {
        Value::Null => 4,
        Value::Bool(_) => 5,
        Value::Number(n) => n.as_str().len(),
        Value::String(s) => str_len_bound(s),
        Value::Array(a) => 2 + a.iter().map(|x| json_len_bound(x) + 1).sum::<usize>(),
        Value::Object(m) => {
            2 + m
                .iter()
                .map(|(k, x)| str_len_bound(k) + json_len_bound(x) + 2)
                .sum::<usize>()
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

impl<'a> Keep<'a> {
    /// What `self` keeps of an old row of `table`: the columns its REPLICA IDENTITY
    /// shows, or only the primary key when the reader could not see the old row.
    fn old_row(self, table: &'a TableInfo, old_visible: bool) -> Keep<'a> {
        let identity = if old_visible {
            table.identity_columns()
        } else {
            Some(&table.primary_key[..])
        };
        Keep { identity, ..self }
    }

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
    /// timestamptz written by a session in another time zone: the same instant in UTC,
    /// as Supabase's session prints it (`2024-01-01T00:00:00+00:00`).
    Utc,
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
                        "timestamptz" => Convert::Utc,
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
        Convert::Bytea => match s.strip_prefix("\\x") {
            Some(hex) => Some(Value::String(hex.to_owned())),
            // A writer whose session has `bytea_output = escape`.
            None => escaped_bytea_as_hex(s).map(Value::String),
        },
        Convert::Utc => in_utc(s).map(Value::String),
        Convert::NonFinite => {
            matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity").then_some(Value::Null)
        }
    }
}

/// A timestamptz as Postgres prints it in a session whose zone is not UTC
/// (`2023-12-31T19:00:00.5-05:00`), as it prints it in UTC (`2024-01-01T00:00:00.5+00:00`);
/// `None` when it is in UTC already or not of that form (infinity, a year past 9999, BC).
fn in_utc(s: &str) -> Option<String> {
    if s.ends_with("+00:00") {
        return None;
    }
    let at = chrono::DateTime::parse_from_rfc3339(s).ok()?.naive_utc();
    let mut out = at.format("%Y-%m-%dT%H:%M:%S").to_string();
    let micros = at.and_utc().timestamp_subsec_micros();
    if micros > 0 {
        let fraction = format!(".{micros:06}");
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push_str("+00:00");
    Some(out)
}

/// A `bytea` in Postgres's escape output (`A\\377`: printable bytes as themselves, a
/// backslash doubled, any other byte as three octal digits) as the hex Supabase sends;
/// `None` if it is not that.
fn escaped_bytea_as_hex(s: &str) -> Option<String> {
    use std::fmt::Write;
    let bytes = s.as_bytes();
    let mut hex = String::with_capacity(bytes.len() * 2);
    let mut i = 0;
    while i < bytes.len() {
        let byte = match bytes[i] {
            b'\\' if bytes.get(i + 1) == Some(&b'\\') => {
                i += 2;
                b'\\'
            }
            b'\\' => {
                let digits = bytes.get(i + 1..i + 4)?;
                if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    return None;
                }
                i += 4;
                u8::try_from(digits.iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0'))).ok()?
            }
            b @ 0x20..=0x7e => {
                i += 1;
                b
            }
            _ => return None,
        };
        let _ = write!(hex, "{byte:02x}");
    }
    Some(hex)
}

/// A row serialized through a `Keep`, optionally without fields over the 413 limit.
struct Projected<'a> {
    row: &'a Row,
    /// `None`: neither row of the change can reach the 413 limit (see `FieldSizes`).
    sizes: Option<&'a [usize]>,
    keep: Keep<'a>,
    conversions: &'a Conversions,
    drop_large: bool,
}

impl Projected<'_> {
    fn fields(&self) -> impl Iterator<Item = ((&String, &Value), usize)> + '_ {
        self.row
            .iter()
            .enumerate()
            .map(|(i, field)| (field, self.sizes.map_or(0, |s| s[i])))
            .filter(move |((k, _), size)| {
                self.keep.keeps(k) && !(self.drop_large && *size > MAX_FIELD_BYTES_WHEN_TOO_LARGE)
            })
    }

    /// What the object's JSON weighs for the 413 rule (keys, values, quotes and
    /// separators); 0 when the change cannot reach the limit (not measured).
    fn weight(&self) -> usize {
        match self.sizes {
            None => 0,
            Some(_) => self.fields().map(|((k, _), size)| k.len() + size + 4).sum(),
        }
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
/// but every key its clients require (`columns: []`, empty records; `old_record` only for
/// UPDATE). Supabase sends `commit_timestamp: null`, which the Python client's model
/// refuses, so it drops the frame and the app never sees the error; the hub sends the
/// commit time, as for any change.
#[derive(Serialize)]
struct NoPrimaryKey<'a> {
    schema: &'a str,
    table: &'a str,
    commit_timestamp: String,
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
            commit_timestamp: format_commit_time(change.commit_time),
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
    let old_keep = allowed.old_row(table, v.old_visible);
    let mut record = match change.op {
        Op::Delete => None,
        Op::Insert | Op::Update => change.record.as_ref().map(|row| Projected {
            row,
            sizes: sizes.record.as_deref(),
            keep: allowed,
            conversions,
            drop_large: false,
        }),
    };
    let mut old_record = match change.op {
        Op::Insert => None,
        Op::Update | Op::Delete => change.old_record.as_ref().map(|row| Projected {
            row,
            sizes: sizes.old_record.as_deref(),
            keep: old_keep,
            conversions,
            drop_large: false,
        }),
    };
    let weight = |r: &Option<Projected>| r.as_ref().map_or(0, Projected::weight);
    let mut errors = None;
    // Unmeasured rows (nearly all) cannot reach the limit: no envelope to count.
    let measured = sizes.record.is_some() || sizes.old_record.is_some();
    if measured && weight(&record) + weight(&old_record) + envelope(table) > MAX_RECORD_BYTES {
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

/// `old`, an old row of `table`, cut to what `change_data` shows of it to a reader who
/// sees every row and column (the columns its REPLICA IDENTITY names), values as
/// captured: a webhook's `old_record`.
pub(super) fn identity_row(table: &TableInfo, old: &Row) -> Row {
    let everything = Keep {
        allowed: None,
        select: None,
        primary_key: &table.primary_key,
        identity: None,
    };
    let keep = everything.old_row(table, true);
    old.iter()
        .filter(|(k, _)| keep.keeps(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC*".prop_map(Value::String),
            "[\\x00-\\x1f\"\\\\]{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec(("[\\x00-\\x7f]{0,12}", inner), 0..8)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        // The bound may only err upwards: a row under it is never measured, so a bound
        // below the real size would let a record past the 413 rule.
        #[test]
        fn the_length_bound_is_never_below_the_json(v in value()) {
            prop_assert!(json_len_bound(&v) >= encoded_len(&v));
        }

        #[test]
        fn the_row_bound_covers_what_the_413_rule_counts(
            fields in prop::collection::vec(("[\\x00-\\x7f]{0,12}", value()), 0..8)
        ) {
            let row: Row = fields.into_iter().collect();
            let counted: usize = row.iter().map(|(k, v)| k.len() + encoded_len(v) + 4).sum();
            prop_assert!(row_len_bound(&row) >= counted);
        }
    }

    #[test]
    fn a_timestamptz_written_in_another_zone_is_sent_in_utc() {
        let utc = |s: &str| in_utc(s);
        assert_eq!(
            utc("2023-12-31T19:00:00-05:00").as_deref(),
            Some("2024-01-01T00:00:00+00:00")
        );
        assert_eq!(
            utc("2024-01-01T05:30:00.12+05:30").as_deref(),
            Some("2024-01-01T00:00:00.12+00:00")
        );
        assert_eq!(
            utc("2024-06-01T02:00:00.000001+02:00").as_deref(),
            Some("2024-06-01T00:00:00.000001+00:00")
        );
        for unchanged in [
            "2024-01-01T00:00:00+00:00",
            "infinity",
            "-infinity",
            "0044-03-15T12:00:00+00:53:28 BC",
        ] {
            assert_eq!(utc(unchanged), None, "{unchanged}");
        }
    }

    #[test]
    fn bytea_in_escape_output_is_sent_as_hex() {
        let hex = |s: &str| escaped_bytea_as_hex(s);
        assert_eq!(hex(r"A\377").as_deref(), Some("41ff"));
        assert_eq!(hex(r"a\\b\000").as_deref(), Some("615c6200"));
        assert_eq!(hex("").as_deref(), Some(""));
        for bad in [r"\9", r"\77", r"\400", "é"] {
            assert_eq!(hex(bad), None, "{bad}");
        }
        let v = Value::String(r"A\377".into());
        assert_eq!(
            converted(Convert::Bytea, &v),
            Some(Value::String("41ff".into()))
        );
        let v = Value::String(r"\x41ff".into());
        assert_eq!(
            converted(Convert::Bytea, &v),
            Some(Value::String("41ff".into()))
        );
    }

    #[test]
    fn only_a_row_that_may_reach_the_limit_is_measured() {
        let row = |text: String| -> Option<Row> {
            Some(
                [
                    ("id".to_string(), Value::from(1)),
                    ("body".to_string(), Value::String(text)),
                ]
                .into_iter()
                .collect(),
            )
        };
        let change = |record: Option<Row>| Change {
            id: 1,
            xid: 1,
            seq: 0,
            schema: "public".into(),
            table: "t".into(),
            op: Op::Update,
            record,
            old_record: row("old".into()),
            commit_time: chrono::Utc::now(),
        };
        let table = TableInfo {
            schema: "public".into(),
            name: "t".into(),
            oid: 1,
            columns: Vec::new(),
            primary_key: vec!["id".into()],
            rls_enabled: false,
            rls_forced: false,
            realtime_enabled: true,
            partitioned: false,
            replica_identity: crate::changes::catalog::ReplicaIdentity::Default,
            events: crate::changes::catalog::Events::ALL,
        };
        let small = FieldSizes::of(&change(row("x".repeat(1000))), &table);
        assert!(small.record.is_none() && small.old_record.is_none());
        // Under the limit as JSON, but not by the bound: both rows are measured, so the
        // 413 rule sees every field of either.
        let near = FieldSizes::of(&change(row("x".repeat(MAX_RECORD_BYTES / 2))), &table);
        assert_eq!(
            near.record.as_deref(),
            Some(&[1, MAX_RECORD_BYTES / 2 + 2][..])
        );
        assert_eq!(near.old_record.as_deref(), Some(&[1, 5][..]));
    }
}
