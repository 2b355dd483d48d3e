//! The postgres_changes `filter` string (PROTOCOL.md §4 "Filter syntax"): parsing it,
//! binding it to a table's columns and types, and matching records in-process. Pure: no
//! Postgres, no tokio.
//!
//! Syntax: conditions `<column>=[not.]<op>.<value>` separated by commas and ANDed. Ops:
//! `eq neq lt lte gt gte like ilike match imatch in is isdistinct` (`match`/`imatch`: a
//! Postgres regular expression, see `pattern`). Commas inside `(...)`, `{...}`,
//! `[...]` or `"..."` do not split, so `in.(a,b)` and unquoted JSON values work. Values and
//! column names may be double-quoted with `\` escapes (`name=eq."a,b"`).
//!
//! Types (see `value::Kind`): numbers compare exactly as decimals; text in byte order
//! (the "C" collation; a database collation may order some strings differently); uuids,
//! dates, timestamps and times by value; json, jsonb and array columns allow only
//! `eq`/`neq`/`in`/`is`/`isdistinct`, against a JSON filter value (`tags=eq.["a","b"]`,
//! not the `{a,b}` array literal). A NULL or missing value matches nothing but `is.null`,
//! `is.unknown`, `not.is.true`/`not.is.false` and `isdistinct`.

mod pattern;
mod value;

use std::cmp::Ordering;
use std::sync::Arc;

use super::enum_order::EnumOrder;
use super::row::{ColumnInfo, Row};
pub use crate::protocol::FilterError;
use pattern::{Pattern, PatternError};
use value::{Kind, Scalar};

/// Most values an `in.(...)` list may hold.
pub const MAX_IN_VALUES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    Like,
    Ilike,
    Match,
    Imatch,
    In,
    Is,
    IsDistinct,
}

impl Op {
    fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "like" => Op::Like,
            "ilike" => Op::Ilike,
            "match" => Op::Match,
            "imatch" => Op::Imatch,
            "in" => Op::In,
            "is" => Op::Is,
            "isdistinct" => Op::IsDistinct,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Like => "like",
            Op::Ilike => "ilike",
            Op::Match => "match",
            Op::Imatch => "imatch",
            Op::In => "in",
            Op::Is => "is",
            Op::IsDistinct => "isdistinct",
        }
    }
}

/// The value of `is.`: NULL and UNKNOWN are the same test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IsValue {
    Null,
    True,
    False,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operand {
    One(String),
    /// `in.(...)`: `None` for an unquoted `null`, which Postgres reads as a NULL element.
    List(Vec<Option<String>>),
    Is(IsValue),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    column: String,
    negate: bool,
    op: Op,
    operand: Operand,
}

/// A parsed filter, not yet checked against a table: conditions ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    conditions: Vec<Condition>,
}

/// Empty or whitespace-only means no filter (matches every record).
pub fn parse(s: &str) -> Result<Filter, FilterError> {
    if s.trim().is_empty() {
        return Ok(Filter::default());
    }
    let conditions = split_top_level(s)
        .into_iter()
        .map(|segment| parse_condition(segment.trim()))
        .collect::<Result<_, _>>()?;
    Ok(Filter { conditions })
}

impl Filter {
    /// Column names in order of first use.
    pub fn columns(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for c in &self.conditions {
            if !out.contains(&c.column.as_str()) {
                out.push(&c.column);
            }
        }
        out
    }

    /// Checks every column exists and every value reads as its column's type.
    pub fn bind(&self, columns: &[ColumnInfo]) -> Result<BoundFilter, FilterError> {
        self.bind_cast(columns, &Casts::new())
    }

    /// `bind`, reading a value the hub's own reading refuses as `casts` gives it:
    /// (column, value) -> the value as Postgres reads it for the column's type (what
    /// `unreadable` asked for).
    pub fn bind_cast(
        &self,
        columns: &[ColumnInfo],
        casts: &Casts,
    ) -> Result<BoundFilter, FilterError> {
        let conditions = self
            .conditions
            .iter()
            .map(|c| bind_condition(c, columns, casts))
            .collect::<Result<_, _>>()?;
        Ok(BoundFilter { conditions })
    }

    /// The (column, value) pairs compared with a column's values that the hub does not
    /// read as the column's type itself (`day=eq.2024-1-2`, `ok=eq.tru`, an enum label
    /// the type lacks, `{a,b}` for an array): Postgres is to read them (`bind_cast`), as
    /// Supabase has Postgres cast every value. Unknown columns are left to `bind`.
    pub fn unreadable(&self, columns: &[ColumnInfo]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for c in &self.conditions {
            let Some(info) = columns.iter().find(|col| col.name == c.column) else {
                continue;
            };
            let values: Vec<&str> = match (&c.operand, c.op) {
                (_, Op::Like | Op::Ilike | Op::Match | Op::Imatch) | (Operand::Is(_), _) => {
                    continue
                }
                (Operand::One(v), _) => vec![v],
                (Operand::List(items), _) => items.iter().flatten().map(String::as_str).collect(),
            };
            for v in values {
                let pair = (c.column.clone(), v.to_owned());
                if !readable(info, v) && !out.contains(&pair) {
                    out.push(pair);
                }
            }
        }
        out
    }

    /// The filter as Supabase logs a subscription's (`{"col", "op", "value", negated}`,
    /// an `in` list as `{a,b}`), for the text of a value Postgres refused.
    pub fn to_log(&self) -> String {
        let conditions: Vec<String> = self
            .conditions
            .iter()
            .map(|c| {
                let value = match &c.operand {
                    Operand::One(v) => v.clone(),
                    Operand::List(items) => {
                        let items: Vec<&str> = items
                            .iter()
                            .map(|i| i.as_deref().unwrap_or("null"))
                            .collect();
                        format!("{{{}}}", items.join(","))
                    }
                    Operand::Is(IsValue::Null) => "null".into(),
                    Operand::Is(IsValue::True) => "true".into(),
                    Operand::Is(IsValue::False) => "false".into(),
                };
                format!(
                    "{{{:?}, {:?}, {:?}, {}}}",
                    c.column,
                    c.op.name(),
                    value,
                    c.negate
                )
            })
            .collect();
        format!("[{}]", conditions.join(", "))
    }
}

/// Values as Postgres read them for a column's type: (column, value) -> the value's
/// JSON text (`Filter::bind_cast`).
pub type Casts = std::collections::HashMap<(String, String), String>;

/// Whether the hub reads `value` as `info`'s type itself.
fn readable(info: &ColumnInfo, value: &str) -> bool {
    match &info.labels {
        Some(labels) => labels.iter().any(|l| l == value),
        None => Kind::of(info.compared_type()).parse(value).is_some(),
    }
}

/// A column (and how its values compare) that subscriptions can be indexed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexColumn {
    column: String,
    kind: Kind,
}

impl IndexColumn {
    /// The key of `record`'s value in this column, as `BoundFilter::eq_index` keys
    /// filter values; `None` when the value is NULL, missing or unreadable.
    pub fn key_of(&self, record: &Row) -> Option<String> {
        let value = record.get(&self.column).filter(|v| !v.is_null())?;
        self.kind.read_record(value)?.index_key()
    }
}

/// A filter checked against a table, ready to match records.
#[derive(Debug, Clone, Default)]
pub struct BoundFilter {
    conditions: Vec<BoundCondition>,
}

impl BoundFilter {
    /// Whether `record` (to_jsonb output of a row) satisfies every condition.
    pub fn matches(&self, record: &Row) -> bool {
        self.conditions.iter().all(|c| c.matches(record))
    }

    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Has each condition that compares an enum column by its labels' order take the
    /// order `share` returns for that column (the one its other filters share).
    pub fn share_enum_orders(
        &mut self,
        mut share: impl FnMut(&str, &Arc<EnumOrder>) -> Arc<EnumOrder>,
    ) {
        for c in &mut self.conditions {
            if let Test::Rank(_, _, order) = &mut c.test {
                *order = share(&c.column, order);
            }
        }
    }

    /// The columns `matches` reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.conditions.iter().map(|c| c.column.as_str())
    }

    /// An upper estimate of the work `matches(record)` does beyond a fixed amount per
    /// condition: for each `like`/`ilike`/`match`/`imatch`, (pattern length + 1) × the
    /// length in bytes of the text it reads (what a linear-time matcher may take on that
    /// text). Other tests
    /// compare one value with one or a bounded list (`MAX_IN_VALUES`) of filter values and
    /// count nothing here.
    pub fn cost(&self, record: &Row) -> u64 {
        self.conditions
            .iter()
            .map(|c| match (&c.test, record.get(&c.column)) {
                (Test::Pattern(pattern), Some(serde_json::Value::String(text))) => {
                    (pattern.len() as u64 + 1).saturating_mul(text.len() as u64)
                }
                _ => 0,
            })
            .fold(0, u64::saturating_add)
    }

    /// An `eq` condition on a text or uuid column: a record can only match if its key
    /// in that column equals this key, so subscriptions can be looked up by it.
    pub fn eq_index(&self) -> Option<(IndexColumn, String)> {
        self.conditions
            .iter()
            .find_map(|c| match (&c.test, c.negate) {
                (Test::Cmp(Op::Eq, want), false) => {
                    let key = want.index_key()?;
                    let column = IndexColumn {
                        column: c.column.clone(),
                        kind: c.kind,
                    };
                    Some((column, key))
                }
                _ => None,
            })
    }
}

#[derive(Debug, Clone)]
enum Test {
    Cmp(Op, Scalar),
    /// `lt`/`lte`/`gt`/`gte` on an enum: by the labels' sort order as it is now
    /// (`EnumOrder`, shared by the column's filters), against the label `want`.
    Rank(Op, String, Arc<EnumOrder>),
    /// `= any(list)`; `true` when the list holds a NULL, so that a value matching none
    /// of the others is unknown (no match, negated or not).
    In(Vec<Scalar>, bool),
    Pattern(Pattern),
    Is(IsValue),
    IsDistinct(Scalar),
}

#[derive(Debug, Clone)]
struct BoundCondition {
    column: String,
    kind: Kind,
    negate: bool,
    test: Test,
    /// A float4, float8 or numeric column: `NaN` and the infinities are NULL here, as
    /// subscribers receive them (`payload`, as Supabase sends them).
    non_finite_null: bool,
}

impl BoundCondition {
    fn matches(&self, record: &Row) -> bool {
        let value = record
            .get(&self.column)
            .filter(|v| !(v.is_null() || self.non_finite_null && non_finite(v)));
        // Two-valued tests: defined on NULL too, so `not.` simply flips them.
        let two_valued = match &self.test {
            Test::Is(is) => Some(match (is, value) {
                (IsValue::Null, v) => v.is_none(),
                (IsValue::True, Some(v)) => self.kind.read_record(v) == Some(Scalar::Bool(true)),
                (IsValue::False, Some(v)) => self.kind.read_record(v) == Some(Scalar::Bool(false)),
                (_, None) => false,
            }),
            Test::IsDistinct(want) => Some(match value.map(|v| self.kind.read_record(v)) {
                None => true,
                Some(Some(have)) => !have.equals(want),
                Some(None) => return false,
            }),
            _ => None,
        };
        if let Some(result) = two_valued {
            return result != self.negate;
        }
        // SQL three-valued tests: NULL (or a value we cannot read) is never a match.
        let Some(have) = value.and_then(|v| self.kind.read_record(v)) else {
            return false;
        };
        let result = match &self.test {
            Test::Cmp(op, want) => compare(*op, &have, want),
            Test::Rank(op, want, order) => {
                let Scalar::Text(label) = &have else {
                    return false;
                };
                let ranks = order.with_labels(|labels| {
                    let rank = |l: &str| labels.iter().position(|x| x == l);
                    rank(label).zip(rank(want))
                });
                let Some((rank, want)) = ranks else {
                    return false;
                };
                compare_order(*op, rank.cmp(&want))
            }
            Test::In(list, null) => {
                let hit = list.iter().any(|want| have.equals(want));
                if !hit && *null {
                    return false;
                }
                hit
            }
            Test::Pattern(pattern) => match &have {
                Scalar::Text(text) => pattern.matches(text),
                _ => return false,
            },
            Test::Is(_) | Test::IsDistinct(_) => unreachable!("handled above"),
        };
        result != self.negate
    }
}

fn compare(op: Op, have: &Scalar, want: &Scalar) -> bool {
    match op {
        Op::Eq => have.equals(want),
        Op::Neq => !have.equals(want),
        _ => have.compare(want).is_some_and(|ord| compare_order(op, ord)),
    }
}

/// Whether `ord` (the value against the filter's) passes `lt`/`lte`/`gt`/`gte`.
fn compare_order(op: Op, ord: Ordering) -> bool {
    match op {
        Op::Lt => ord == Ordering::Less,
        Op::Lte => ord != Ordering::Greater,
        Op::Gt => ord == Ordering::Greater,
        Op::Gte => ord != Ordering::Less,
        _ => false,
    }
}

fn bind_condition(
    c: &Condition,
    columns: &[ColumnInfo],
    casts: &Casts,
) -> Result<BoundCondition, FilterError> {
    let info = columns
        .iter()
        .find(|col| col.name == c.column)
        .ok_or_else(|| FilterError::InvalidColumn(c.column.clone()))?;
    let kind = Kind::of(info.compared_type());
    let unsupported = || FilterError::UnsupportedOperator {
        op: c.op.name(),
        column: c.column.clone(),
        type_name: info.type_name.clone(),
    };
    let invalid = |s: &str| FilterError::InvalidValue {
        type_name: info.type_name.clone(),
        value: s.to_owned(),
    };
    // An enum's values are its labels, exactly (Postgres refuses any other input).
    let rank = |s: &str| {
        info.labels
            .as_ref()
            .and_then(|l| l.iter().position(|label| label == s))
    };
    // What Postgres read a value as, where the hub did not read it itself.
    let cast = |s: &str| {
        casts
            .get(&(c.column.clone(), s.to_owned()))
            .map(String::as_str)
    };
    let read = |s: &str| {
        let s = cast(s).unwrap_or(s);
        if info.labels.is_some() && rank(s).is_none() {
            return Err(invalid(s));
        }
        kind.parse(s).ok_or_else(|| invalid(s))
    };
    let test = match (&c.operand, c.op) {
        (Operand::Is(is), _) => {
            if *is != IsValue::Null && kind != Kind::Bool {
                return Err(unsupported());
            }
            Test::Is(*is)
        }
        (Operand::List(items), _) => Test::In(
            items
                .iter()
                .flatten()
                .map(|s| read(s))
                .collect::<Result<_, _>>()?,
            items.iter().any(Option::is_none),
        ),
        (Operand::One(s), op @ (Op::Like | Op::Ilike | Op::Match | Op::Imatch)) => {
            if !kind.textual() {
                return Err(unsupported());
            }
            // citext compares without case: its record values are read lowercased.
            let fold = matches!(op, Op::Ilike | Op::Imatch) || kind == Kind::Citext;
            let pattern = if matches!(op, Op::Like | Op::Ilike) {
                // Postgres refuses a pattern whose last `\\` escapes nothing.
                if s.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1 {
                    return Err(FilterError::PatternEndsWithEscape);
                }
                Pattern::like(s, fold)
            } else {
                Pattern::regex(s, fold)
            };
            Test::Pattern(pattern.map_err(|e| pattern_error(op, e))?)
        }
        (Operand::One(s), Op::IsDistinct) => Test::IsDistinct(read(s)?),
        (Operand::One(s), op @ (Op::Lt | Op::Lte | Op::Gt | Op::Gte)) if info.labels.is_some() => {
            let labels = info.labels.clone().unwrap_or_default();
            let s = cast(s).unwrap_or(s);
            rank(s).ok_or_else(|| invalid(s))?;
            Test::Rank(op, s.to_owned(), Arc::new(EnumOrder::new(labels)))
        }
        (Operand::One(s), op @ (Op::Lt | Op::Lte | Op::Gt | Op::Gte)) => {
            if !kind.orderable() {
                return Err(unsupported());
            }
            Test::Cmp(op, read(s)?)
        }
        (Operand::One(s), op) => Test::Cmp(op, read(s)?),
    };
    Ok(BoundCondition {
        column: c.column.clone(),
        kind,
        negate: c.negate,
        test,
        non_finite_null: matches!(info.type_name.as_str(), "float4" | "float8" | "numeric"),
    })
}

/// `NaN`, `Infinity` or `-Infinity` as a captured float or numeric value.
fn non_finite(v: &serde_json::Value) -> bool {
    matches!(v.as_str(), Some("NaN" | "Infinity" | "-Infinity"))
}

fn pattern_error(op: Op, e: PatternError) -> FilterError {
    match e {
        PatternError::TooLong => FilterError::PatternTooLong {
            op: op.name(),
            max: pattern::MAX_PATTERN,
        },
        PatternError::Invalid(reason) => FilterError::InvalidPattern {
            op: op.name(),
            reason,
        },
    }
}

fn syntax(msg: impl Into<String>) -> FilterError {
    FilterError::Syntax(msg.into())
}

fn parse_condition(segment: &str) -> Result<Condition, FilterError> {
    if segment.is_empty() {
        return Err(syntax("empty condition"));
    }
    let (column, rest) = if segment.starts_with('"') {
        let (column, rest) = read_quoted(segment)?;
        let rest = rest
            .trim_start()
            .strip_prefix('=')
            .ok_or_else(|| syntax(format!("expected `=` after column in {segment}")))?;
        (column, rest)
    } else {
        let (column, rest) = segment.split_once('=').ok_or_else(|| {
            syntax(format!(
                "expected <column>=<operator>.<value>, got {segment}"
            ))
        })?;
        (column.trim().to_owned(), rest)
    };
    if column.is_empty() {
        return Err(syntax(format!("missing column in {segment}")));
    }
    let (mut op_name, mut value) = split_op(rest)?;
    let negate = op_name == "not";
    if negate {
        (op_name, value) = split_op(value)?;
    }
    let op = Op::parse(op_name).ok_or_else(|| FilterError::UnknownOperator(op_name.to_owned()))?;
    let operand = match op {
        Op::In => Operand::List(parse_in_list(value)?),
        Op::Is => Operand::Is(match value.trim().to_ascii_lowercase().as_str() {
            "null" | "unknown" => IsValue::Null,
            "true" => IsValue::True,
            "false" => IsValue::False,
            _ => return Err(syntax(format!("invalid value for `is`: {value}"))),
        }),
        _ => Operand::One(parse_scalar(value)?),
    };
    Ok(Condition {
        column,
        negate,
        op,
        operand,
    })
}

/// `op.value` -> (`op`, `value`); an op without `.value` is an error naming the op.
fn split_op(s: &str) -> Result<(&str, &str), FilterError> {
    match s.split_once('.') {
        Some((op, value)) => Ok((op.trim(), value)),
        None if s.trim() == "not" || Op::parse(s.trim()).is_some() => {
            Err(syntax(format!("missing value for operator {}", s.trim())))
        }
        None => Err(FilterError::UnknownOperator(s.trim().to_owned())),
    }
}

/// A value: verbatim, or double-quoted with `\` escapes and nothing after the quote.
fn parse_scalar(value: &str) -> Result<String, FilterError> {
    if !value.starts_with('"') {
        return Ok(value.to_owned());
    }
    let (text, rest) = read_quoted(value)?;
    if !rest.trim().is_empty() {
        return Err(syntax(format!(
            "unexpected text after quoted value: {rest}"
        )));
    }
    Ok(text)
}

/// `(a, "b,c", d)` -> items, each trimmed (quote one to keep its spaces). As in a Postgres
/// array literal, an unquoted `null` (any case) is a NULL element and an empty item is
/// refused (`""` is the empty string).
fn parse_in_list(value: &str) -> Result<Vec<Option<String>>, FilterError> {
    let inner = value
        .trim()
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| syntax("`in` values must be written as in.(a,b,c)"))?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    let items = split_top_level(inner);
    if items.len() > MAX_IN_VALUES {
        return Err(FilterError::TooManyInValues);
    }
    items
        .into_iter()
        .map(|item| match item.trim() {
            "" => Err(syntax(format!(
                "empty value in `in` list {value}; write \"\" for an empty string"
            ))),
            null if null.eq_ignore_ascii_case("null") => Ok(None),
            item => parse_scalar(item).map(Some),
        })
        .collect()
}

/// `"..."` at the start of `s` -> (unescaped text, rest after the closing quote).
fn read_quoted(s: &str) -> Result<(String, &str), FilterError> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => out.push(escaped),
                None => break,
            },
            '"' => return Ok((out, &s[i + 1..])),
            c => out.push(c),
        }
    }
    Err(syntax(format!("unterminated quoted string: {s}")))
}

/// Splits on commas outside brackets and double quotes.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut in_quotes, mut escaped, mut start) = (0i32, false, false, 0);
    for (i, c) in s.char_indices() {
        if in_quotes {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth = (depth - 1).max(0),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    fn table() -> Vec<ColumnInfo> {
        [
            ("id", "int8"),
            ("n2", "int2"),
            ("n4", "int4"),
            ("f4", "float4"),
            ("f8", "float8"),
            ("amount", "numeric"),
            ("name", "text"),
            ("code", "varchar"),
            ("pad", "bpchar"),
            ("done", "bool"),
            ("uid", "uuid"),
            ("day", "date"),
            ("ts", "timestamp"),
            ("tstz", "timestamptz"),
            ("at", "time"),
            ("meta", "jsonb"),
            ("raw", "json"),
            ("tags", "_text"),
            ("mood", "mood_enum"),
            ("Weird, Name", "text"),
        ]
        .into_iter()
        .map(|(name, type_name)| ColumnInfo {
            name: name.into(),
            type_name: type_name.into(),
            base_type: None,
            labels: None,
        })
        .collect()
    }

    fn record() -> Map<String, Value> {
        json!({
            "id": 9007199254740993i64,
            "n2": 7,
            "n4": -42,
            "f4": 0.1,
            "f8": 1.5e300,
            "amount": 12.50,
            "name": "O'Brien, Ann",
            "code": "ab.c=d",
            "pad": "xy   ",
            "done": true,
            "uid": "0e4f6f5a-3c5b-4b8e-9d7a-2f1c0a9b8c7d",
            "day": "2026-01-02",
            "ts": "2026-01-02T03:04:05.5",
            "tstz": "2026-01-02T03:04:05.123+00:00",
            "at": "13:30:00",
            "meta": {"a": 1, "b": [true, null]},
            "raw": {"x": "y"},
            "tags": ["a", "b"],
            "mood": "happy",
            "Weird, Name": "w",
            "nothing": null,
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn matches(filter: &str, record: &Row) -> bool {
        let mut cols = table();
        cols.push(ColumnInfo {
            name: "nothing".into(),
            type_name: "text".into(),
            base_type: None,
            labels: None,
        });
        parse(filter)
            .unwrap_or_else(|e| panic!("{filter}: {e}"))
            .bind(&cols)
            .unwrap_or_else(|e| panic!("{filter}: {e}"))
            .matches(record)
    }

    fn bind_error(filter: &str) -> String {
        match parse(filter).and_then(|f| f.bind(&table())) {
            Ok(_) => panic!("{filter} should not bind"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn each_operator_and_type_compares_with_postgres_semantics() {
        let cases: &[(&str, bool)] = &[
            // int8 beyond f64 precision compares exactly
            ("id=eq.9007199254740993", true),
            ("id=eq.9007199254740992", false),
            ("id=gt.9007199254740992", true),
            ("id=lt.9007199254740994", true),
            ("id=neq.9007199254740993", false),
            ("id=gte.9007199254740993", true),
            ("id=lte.9007199254740992", false),
            ("n2=eq.7", true),
            ("n2=eq.+7", true),
            ("n4=lt.-41", true),
            ("n4=lte.-43", false),
            ("n4=gt.-43", true),
            // floats and numeric, as exact decimals of their text form
            ("f4=eq.0.1", true),
            ("f4=eq.0.10", true),
            ("f4=lt.0.2", true),
            ("f8=gt.1e299", true),
            ("f8=lt.Infinity", true),
            ("f8=lt.NaN", true),
            ("amount=eq.12.5", true),
            ("amount=eq.12.500", true),
            ("amount=gt.12.4999999999999999999999", true),
            ("amount=lt.12.5000000000000000000001", true),
            ("amount=gte.1.25e1", true),
            ("amount=neq.-12.5", true),
            // text in byte order
            ("code=eq.ab.c=d", true),
            ("code=gt.ab", true),
            ("code=lt.ab.d", true),
            ("code=lt.B", false),
            ("code=neq.AB.C=D", true),
            ("pad=eq.xy", true),
            ("pad=eq.xy ", true),
            // bool
            ("done=eq.true", true),
            ("done=eq.t", true),
            ("done=eq.f", false),
            ("done=gt.false", true),
            ("done=neq.false", true),
            // uuid, case-insensitive
            ("uid=eq.0E4F6F5A-3C5B-4B8E-9D7A-2F1C0A9B8C7D", true),
            ("uid=eq.0e4f6f5a3c5b4b8e9d7a2f1c0a9b8c7d", true),
            ("uid=lt.ffffffff-0000-0000-0000-000000000000", true),
            ("uid=gt.0e4f6f5a-3c5b-4b8e-9d7a-2f1c0a9b8c7d", false),
            // date, timestamp, timestamptz by instant
            ("day=eq.2026-01-02", true),
            ("day=gt.2026-01-01", true),
            ("day=lt.infinity", true),
            ("day=gt.-infinity", true),
            ("ts=gt.2026-01-02", true),
            ("ts=eq.2026-01-02 03:04:05.5", true),
            ("ts=lt.2026-01-02T03:04:06", true),
            ("ts=eq.2026-01-02 03:04:05.5+09", true), // timestamp ignores offsets
            ("tstz=eq.2026-01-02T03:04:05.123Z", true),
            ("tstz=eq.2026-01-02 05:04:05.123+02", true),
            ("tstz=eq.2026-01-02 05:04:05.123+02:00", true),
            ("tstz=eq.2026-01-01 22:34:05.123-0430", true),
            ("tstz=gt.2026-01-02", true),
            ("tstz=lt.2026-01-02 04:00:00+01", false),
            ("tstz=lt.2026-01-02 04:00:00", true),
            ("at=gt.13:00", true),
            ("at=eq.13:30:00.000", true),
            // json, jsonb, arrays: equality against JSON text
            (r#"meta=eq.{"b":[true,null],"a":1.0}"#, true),
            (r#"meta=neq.{"a":1}"#, true),
            (r#"raw=eq.{"x":"y"}"#, true),
            (r#"tags=eq.["a","b"]"#, true),
            (r#"tags=eq.["b","a"]"#, false),
            // unknown types (enums): text equality
            ("mood=eq.happy", true),
            ("mood=neq.happy", false),
            // like / ilike
            ("name=like.O'Brien%", true),
            ("name=like.o'brien%", false),
            ("name=ilike.o'BRIEN%", true),
            ("name=like.O_Brien%", true),
            ("name=like.%Ann", true),
            ("name=like.%nn_", false),
            ("code=like.ab\\.c%", true),
            ("name=like.100\\%", false),
            ("pad=like.x_", true),
            // in
            ("id=in.(1,9007199254740993)", true),
            ("id=in.(1,2)", false),
            ("id=in.()", false),
            ("mood=in.(sad,happy)", true),
            ("uid=in.(0E4F6F5A-3C5B-4B8E-9D7A-2F1C0A9B8C7D)", true),
            // not.
            ("id=not.eq.1", true),
            ("id=not.in.(1,2)", true),
            ("done=not.eq.true", false),
            ("name=not.like.X%", true),
            ("n4=not.gt.0", true),
            // is
            ("done=is.true", true),
            ("done=is.false", false),
            ("done=not.is.false", true),
            ("done=is.null", false),
            ("name=not.is.null", true),
            // isdistinct
            ("n2=isdistinct.8", true),
            ("n2=isdistinct.7", false),
            ("n2=not.isdistinct.7", true),
        ];
        for (filter, want) in cases {
            assert_eq!(matches(filter, &record()), *want, "{filter}");
        }
    }

    #[test]
    fn null_and_missing_values_match_only_null_tests() {
        let record = record();
        for (filter, want) in [
            ("nothing=eq.x", false),
            ("nothing=neq.x", false),
            ("nothing=not.eq.x", false),
            ("nothing=lt.x", false),
            ("nothing=like.%", false),
            ("nothing=in.(x)", false),
            ("nothing=not.in.(x)", false),
            ("nothing=is.null", true),
            ("nothing=not.is.null", false),
            ("nothing=isdistinct.x", true),
            ("nothing=not.isdistinct.x", false),
        ] {
            assert_eq!(matches(filter, &record), want, "{filter}");
        }
        let mut missing = record.clone();
        missing.remove("done");
        missing.remove("n2");
        assert!(matches("done=is.null", &missing));
        assert!(!matches("done=is.true", &missing));
        assert!(matches("done=not.is.true", &missing));
        assert!(matches("done=is.unknown", &missing));
        assert!(!matches("n2=neq.1", &missing));
        assert!(!matches("n2=not.eq.1", &missing));
    }

    #[test]
    fn quoted_values_and_columns_keep_commas_dots_and_escapes() {
        assert!(matches(r#"name=eq."O'Brien, Ann""#, &record()));
        assert!(matches(r#"name=in.("O'Brien, Ann",x)"#, &record()));
        assert!(matches(r#""Weird, Name"=eq.w"#, &record()));
        let mut r = record();
        r.insert("name".into(), json!(r#"say "hi", \ ok"#));
        assert!(matches(r#"name=eq."say \"hi\", \\ ok""#, &r));
        assert!(matches(r#"name=like."say \"hi\"%""#, &r));
    }

    #[test]
    fn commas_split_conditions_that_are_anded() {
        assert!(matches("id=gt.0,n2=eq.7,done=is.true", &record()));
        assert!(!matches("id=gt.0,n2=eq.8", &record()));
        assert!(matches(" id=gt.0 , n4=lt.0 ", &record()));
        let f = parse("id=gt.0,id=lt.10,name=in.(a,b)").unwrap();
        assert_eq!(f.columns(), vec!["id", "name"]);
        assert!(parse("id=gt.0,,id=lt.1").is_err());
        assert!(parse("id=gt.0,").is_err());
    }

    #[test]
    fn empty_filter_matches_everything() {
        for s in ["", "   ", "\t\n"] {
            let bound = parse(s).unwrap().bind(&table()).unwrap();
            assert!(bound.is_empty());
            assert!(bound.matches(&Map::new()));
        }
        assert!(!parse("id=eq.1").unwrap().bind(&table()).unwrap().is_empty());
    }

    #[test]
    fn in_accepts_at_most_one_hundred_values_and_needs_parentheses() {
        let list = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        assert!(parse(&format!("id=in.({})", list(100))).is_ok());
        assert_eq!(
            parse(&format!("id=in.({})", list(101)))
                .unwrap_err()
                .to_string(),
            "too many values for `in` filter. Maximum 100"
        );
        for bad in ["id=in.1,2", "id=in.(1,2", "id=in.1"] {
            assert!(
                parse(bad)
                    .unwrap_err()
                    .to_string()
                    .starts_with("Error parsing `filter` params: "),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_unquoted_null_in_a_list_is_a_null_element_and_an_empty_item_is_refused() {
        let mut r = record();
        assert!(!matches("name=in.(x,null)", &r));
        assert!(matches(r#"name=in.("O'Brien, Ann",NULL)"#, &r));
        // `not (name = any('{x,NULL}'))` is unknown for a name that is neither.
        assert!(!matches("name=not.in.(x,null)", &r));
        assert!(!matches(r#"name=not.in.("O'Brien, Ann",null)"#, &r));
        assert!(matches("name=not.in.(x)", &r));
        r.insert("name".into(), json!("null"));
        assert!(!matches("name=in.(null)", &r));
        assert!(matches(r#"name=in.("null")"#, &r));
        r.insert("name".into(), json!(""));
        assert!(matches(r#"name=in.(x,"")"#, &r));
        for bad in ["name=in.(x,)", "name=in.(,x)", "name=in.(x, ,y)"] {
            assert_eq!(
                parse(bad).unwrap_err().to_string(),
                format!(
                    "Error parsing `filter` params: empty value in `in` list {}; \
                     write \"\" for an empty string",
                    &bad[8..]
                ),
                "{bad}"
            );
        }
        // A NULL element needs no reading as the column's type.
        assert!(matches("n4=in.(-42,null)", &record()));
    }

    #[test]
    fn nan_and_infinities_are_null_as_subscribers_receive_them() {
        let mut r = record();
        for v in ["NaN", "Infinity", "-Infinity"] {
            r.insert("f8".into(), json!(v));
            r.insert("amount".into(), json!(v));
            for (filter, want) in [
                ("f8=gt.0", false),
                ("f8=lt.0", false),
                (&format!("f8=eq.{v}"), false),
                ("f8=neq.0", false),
                ("f8=is.null", true),
                ("amount=gte.-Infinity", false),
                ("amount=is.null", true),
                ("amount=isdistinct.1", true),
            ] {
                assert_eq!(matches(filter, &r), want, "{filter} on {v}");
            }
        }
    }

    #[test]
    fn syntax_errors_say_what_is_wrong() {
        for (filter, want) in [
            (
                "id=foo.1",
                "Error parsing `filter` params: unknown operator foo",
            ),
            (
                "id=not.foo.1",
                "Error parsing `filter` params: unknown operator foo",
            ),
            (
                "id=regex.^a",
                "Error parsing `filter` params: unknown operator regex",
            ),
            (
                "id",
                "Error parsing `filter` params: expected <column>=<operator>.<value>, got id",
            ),
            (
                "=eq.1",
                "Error parsing `filter` params: missing column in =eq.1",
            ),
            (
                "id=eq",
                "Error parsing `filter` params: missing value for operator eq",
            ),
            ("id=1", "Error parsing `filter` params: unknown operator 1"),
            (
                "done=is.maybe",
                "Error parsing `filter` params: invalid value for `is`: maybe",
            ),
        ] {
            assert_eq!(parse(filter).unwrap_err().to_string(), want, "{filter}");
        }
        assert!(parse(r#"name=eq."open"#).is_err());
        assert!(parse(r#"name=eq."a"b"#).is_err());
    }

    #[test]
    fn bind_rejects_unknown_columns_and_values_of_the_wrong_type() {
        assert_eq!(bind_error("nope=eq.1"), "invalid column for filter nope");
        assert_eq!(
            bind_error("id=eq.abc"),
            "Error parsing `filter` params: invalid input for type int8: \"abc\""
        );
        for bad in [
            "id=eq.1.5",
            "id=eq.99999999999999999999",
            "n2=eq.40000",
            "n4=in.(1,x)",
            "f8=eq.1e",
            "amount=eq.--1",
            // An exponent whose magnitude does not fit i64 (it overflowed, then matched
            // as a huge number).
            "amount=gt.1.5e-9223372036854775808",
            "done=eq.maybe",
            "uid=eq.not-a-uuid",
            "day=eq.2026-13-01",
            "ts=eq.yesterday",
            "tstz=eq.2026-01-02 03:04:05+99",
            "at=eq.25:00",
            "meta=eq.{a:1}",
            "tags=eq.{a,b}",
        ] {
            assert!(
                bind_error(bad)
                    .starts_with("Error parsing `filter` params: invalid input for type"),
                "{bad}"
            );
        }
        for unsupported in [
            "meta=lt.1",
            "tags=gt.[]",
            "id=like.1%",
            "mood=lt.happy",
            "name=is.true",
        ] {
            assert!(
                bind_error(unsupported).contains("is not supported"),
                "{unsupported}"
            );
        }
    }

    #[test]
    fn injection_looking_and_unicode_values_are_plain_data() {
        let mut r = record();
        r.insert("name".into(), json!("'; drop table x; --"));
        assert!(matches("name=eq.'; drop table x; --", &r));
        assert!(!matches("name=eq.' or 1=1 --", &r));
        r.insert("name".into(), json!("Zoë 🚀 ünïcødé"));
        assert!(matches("name=eq.Zoë 🚀 ünïcødé", &r));
        assert!(matches("name=ilike.zOË 🚀%", &r));
        assert!(matches("name=like.Zo_ 🚀 %", &r));
        assert!(matches("name=gt.Zo", &r));
        assert_eq!(
            bind_error("id=eq.1; drop table x"),
            "Error parsing `filter` params: invalid input for type int8: \"1; drop table x\""
        );
    }

    #[test]
    fn record_values_that_do_not_fit_the_type_never_match() {
        let mut r = record();
        r.insert("id".into(), json!("not a number"));
        r.insert("done".into(), json!(3));
        assert!(!matches("id=neq.1", &r));
        assert!(!matches("id=not.eq.1", &r));
        assert!(!matches("done=neq.true", &r));
        assert!(!matches("done=is.true", &r));
    }

    #[test]
    fn cost_counts_like_patterns_times_the_text_they_read() {
        let cost = |f: &str| parse(f).unwrap().bind(&table()).unwrap().cost(&record());
        // "O'Brien, Ann" is 12 bytes; "ab.c=d" 6.
        assert_eq!(cost("name=like.%Ann"), 5 * 12);
        assert_eq!(cost("name=ilike.o%,code=not.like.a_"), 3 * 12 + 3 * 6);
        assert_eq!(cost("name=eq.x,n4=lt.0,code=in.(a,b)"), 0);
        let mut without_name = record();
        without_name.remove("name");
        let like = parse("name=like.x%").unwrap().bind(&table()).unwrap();
        assert_eq!(like.cost(&without_name), 0, "a missing value reads nothing");
        assert_eq!(cost(""), 0);
    }

    #[test]
    fn match_and_imatch_read_a_postgres_regular_expression_on_text_columns() {
        let r = record();
        for (filter, want) in [
            (r#"name=match."^O'B""#, true),
            (r#"name=match."^o'b""#, false),
            (r#"name=imatch."^o'b""#, true),
            (r#"name=not.imatch."^o'b""#, false),
            ("code=match.^ab\\.c", true),
            ("code=match.\\d", false),
            ("code=not.match.\\d", true),
            ("pad=match.y$", true),
            // A NULL or missing value matches no three-valued test, negated or not.
            ("nothing=match.x", false),
            ("nothing=not.match.x", false),
            (r#"name=match."Ann$",code=imatch.C=D"#, true),
        ] {
            assert_eq!(matches(filter, &r), want, "{filter}");
        }
        assert_eq!(
            bind_error("n4=match.^4"),
            "Error parsing `filter` params: operator match is not supported for column n4 of type int4"
        );
        assert_eq!(
            bind_error("name=match.(a)\\1"),
            "Error parsing `filter` params: invalid regular expression for match filter: back references and octal escapes are not supported"
        );
        assert_eq!(
            bind_error(&format!(
                "name=imatch.{}",
                "a".repeat(pattern::MAX_PATTERN + 1)
            )),
            "Error parsing `filter` params: imatch pattern longer than 256 characters"
        );
        let cost = parse("name=match.Ann$")
            .unwrap()
            .bind(&table())
            .unwrap()
            .cost(&r);
        assert_eq!(cost, 5 * 12, "counted as a like pattern is");
    }

    #[test]
    fn citext_patterns_compare_without_case_as_postgres_does() {
        let cols = vec![ColumnInfo {
            name: "email".into(),
            type_name: "citext".into(),
            base_type: None,
            labels: None,
        }];
        let r = json!({"email": "Ann@Example.com"})
            .as_object()
            .unwrap()
            .clone();
        for filter in [
            "email=like.ANN@%",
            "email=match.^ANN@",
            "email=eq.ann@EXAMPLE.com",
        ] {
            let f = parse(filter).unwrap().bind(&cols).unwrap();
            assert!(f.matches(&r), "{filter}");
        }
    }

    #[test]
    fn bound_filter_is_send_sync_and_clone() {
        fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug>() {}
        assert_traits::<BoundFilter>();
        assert_traits::<Filter>();
    }

    #[test]
    fn float_filter_values_are_rounded_to_the_columns_type_as_postgres_does() {
        // Found by tests/fuzz/filter_pg.rs: Postgres reads `'16777217'::float4` as
        // 16777216; the hub compared the exact decimal and missed the row.
        let r = json!({"f4": 16777216.0, "f8": 0.1})
            .as_object()
            .unwrap()
            .clone();
        assert!(matches("f4=eq.16777217", &r));
        assert!(matches("f4=lte.16777217", &r));
        assert!(!matches("f4=lt.16777217", &r));
        assert!(matches("f4=in.(1,16777217)", &r));
        assert!(matches("f8=eq.0.10000000000000001", &r));
        assert!(!matches("f8=eq.0.1000000000000001", &r));
        assert!(matches("f4=lt.Infinity", &r));
        for (f, v) in [
            ("f4=eq.1e39", "1e39"),
            ("f4=eq.1e-50", "1e-50"),
            ("f8=eq.1e309", "1e309"),
        ] {
            let ty = if f.starts_with("f4") {
                "float4"
            } else {
                "float8"
            };
            assert_eq!(
                bind_error(f),
                format!("Error parsing `filter` params: invalid input for type {ty}: \"{v}\"")
            );
        }
    }

    #[test]
    fn a_like_pattern_ending_in_a_lone_escape_is_refused_as_postgres_does() {
        // Found by tests/fuzz/filter_pg.rs: Postgres raises "LIKE pattern must not end
        // with escape character"; the hub matched a literal `\` instead.
        for f in [r"name=like.\", r"name=ilike.ab\\\", r#"name=like."x\\""#] {
            assert_eq!(
                bind_error(f),
                "Error parsing `filter` params: like pattern must not end with the escape character `\\`",
                "{f}"
            );
        }
        let r = json!({"name": "a\\"}).as_object().unwrap().clone();
        assert!(matches(r"name=like.a\\", &r));
    }

    #[test]
    fn like_patterns_are_bounded_and_matched_by_an_automaton() {
        let long = format!("name=like.%{}b", "a".repeat(pattern::MAX_PATTERN));
        assert_eq!(
            bind_error(&long),
            "Error parsing `filter` params: like pattern longer than 256 characters"
        );
        // The longest pattern allowed against a long text that almost matches everywhere:
        // a backtracking matcher would try every start; the automaton reads the text once.
        let worst = format!("%{}b", "a".repeat(pattern::MAX_PATTERN - 2));
        let cols = table();
        let f = parse(&format!("name=like.{worst}"))
            .unwrap()
            .bind(&cols)
            .unwrap();
        let text = "a".repeat(200_000);
        let mut r = record();
        r.insert("name".into(), Value::String(text.clone()));
        assert!(!f.matches(&r));
        r.insert("name".into(), Value::String(text + "b"));
        assert!(f.matches(&r));
    }
}
