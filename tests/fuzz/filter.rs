//! The filter parser: any string parses or fails with a `FilterError`; a parsed filter
//! binds to any table or fails clearly; a bound filter matches any record without
//! panicking, whatever its values. (Agreement with Postgres: `filter_pg.rs`.)

use proptest::prelude::*;
use serde_json::{Map, Value};
use switchboard::changes::{parse_filter, ColumnInfo};

use super::{assert_clear, config};

pub const TYPES: &[&str] = &[
    "int2",
    "int4",
    "int8",
    "float4",
    "float8",
    "numeric",
    "text",
    "varchar",
    "bpchar",
    "citext",
    "bool",
    "uuid",
    "date",
    "timestamp",
    "timestamptz",
    "time",
    "json",
    "jsonb",
    "_text",
    "mood",
];

const OPS: &[&str] = &[
    "eq",
    "neq",
    "lt",
    "lte",
    "gt",
    "gte",
    "like",
    "ilike",
    "in",
    "is",
    "isdistinct",
    "not",
    "nope",
    "",
];

/// Values that stress the parsers of every type.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "-?[0-9]{1,25}(\\.[0-9]{0,12})?([eE][-+]?[0-9]{1,7})?",
        "(NaN|nan|[-+]?(Infinity|inf|infinity))",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}([ Tt][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,9})?)?)?( ?(Z|UTC|[-+][0-9]{1,2}(:?[0-9]{2}){0,2}))?",
        "[0-9a-fA-F-]{30,40}",
        "(t|true|f|false|yes|no|on|off|1|0|null|unknown)",
        "[%_\\\\a-zA-Z]{0,12}",
        "\\((.{0,6},){0,5}.{0,6}\\)",
        "\"([^\"\\\\]|\\\\.){0,10}\"?",
        "[\\[{].{0,16}[\\]}]?",
        ".{0,24}",
    ]
}

/// Filters made of the grammar's pieces, plus arbitrary text.
fn filter_text() -> impl Strategy<Value = String> {
    let column = prop_oneof!["(c[0-9]|id)", "\"([^\"\\\\]|\\\\.){0,8}\"", ".{0,8}"];
    let condition = (
        column,
        prop::sample::select(OPS),
        prop::option::of(prop::sample::select(OPS)),
        value(),
    )
        .prop_map(|(c, op, op2, v)| match op2 {
            Some(op2) => format!("{c}={op}.{op2}.{v}"),
            None => format!("{c}={op}.{v}"),
        });
    prop_oneof![
        prop::collection::vec(condition, 1..4).prop_map(|c| c.join(",")),
        ".{0,80}",
    ]
}

/// A table whose columns `c0..` have random types (and `id`, int8).
pub fn columns(types: &[&'static str]) -> Vec<ColumnInfo> {
    let mut cols = vec![ColumnInfo {
        name: "id".into(),
        type_name: "int8".into(),
        base_type: None,
        labels: None,
    }];
    cols.extend(types.iter().enumerate().map(|(i, t)| ColumnInfo {
        name: format!("c{i}"),
        type_name: (*t).into(),
        base_type: None,
        labels: None,
    }));
    cols
}

fn record_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        value().prop_map(Value::from),
        value().prop_map(|v| serde_json::from_str(&v).unwrap_or(Value::from(v))),
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn any_filter_parses_binds_and_matches_or_is_refused_clearly(
        text in filter_text(),
        types in prop::collection::vec(prop::sample::select(TYPES), 10),
        values in prop::collection::vec(record_value(), 11),
    ) {
        let filter = match parse_filter(&text) {
            Ok(f) => f,
            Err(e) => {
                assert_clear(&e.to_string());
                return Ok(());
            }
        };
        let cols = columns(&types);
        let bound = match filter.bind(&cols) {
            Ok(b) => b,
            Err(e) => {
                assert_clear(&e.to_string());
                return Ok(());
            }
        };
        let record: Map<String, Value> = cols.iter().map(|c| c.name.clone()).zip(values).collect();
        let _ = bound.matches(&record);
        let _ = bound.matches(&Map::new());
    }
}

#[test]
fn long_and_nested_inputs_are_refused_or_bound_quickly() {
    for text in [
        format!("c0=in.({})", "1,".repeat(100_000)),
        format!("c0=eq.{}", "(".repeat(100_000)),
        format!("c0=like.{}", "%".repeat(100_000)),
        format!("c0=eq.\"{}", "\\".repeat(100_001)),
        format!("c0=eq.1e{}", "9".repeat(50)),
        "c0=eq.1e999999".to_owned(),
        ",".repeat(10_000),
    ] {
        match parse_filter(&text) {
            Err(e) => assert_clear(&e.to_string()),
            Ok(f) => {
                if let Err(e) = f.bind(&columns(&["numeric"])) {
                    assert_clear(&e.to_string());
                }
            }
        }
    }
}
