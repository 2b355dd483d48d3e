//! The filter evaluator against Postgres: random rows of a table with many column types,
//! random conditions on them (every operator, `not.`, values near the row's own), judged
//! in-process (`BoundFilter::matches` on the row as the capture trigger logs it,
//! `row_to_json`) and by Postgres evaluating the same condition on the same row. They
//! must agree whenever the hub accepts the filter.
//!
//! The SQL each condition stands for (PROTOCOL.md §4): `col <op> '<value>'::<type>`, text
//! compared with `COLLATE "C"`, `like`/`ilike` with Postgres's escape `\`, `match`/`imatch`
//! as `~`/`~*` (random regular expressions, most of them invalid: whatever the hub
//! accepts Postgres must accept and judge alike), `in` as
//! `= any(array[...])`, `is`, `is distinct from`; `not.` negates; a NULL column matches
//! no three-valued test. Two known differences are left out on purpose: `ilike`, and
//! `match`/`imatch`, on non-ASCII text (Postgres folds case and classifies letters by the
//! database's locale, the hub by Unicode), and
//! a jsonb column holding JSON `null` (the log's JSON cannot tell it from SQL NULL).

use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{Map, Value};
use switchboard::changes::{parse_filter, ColumnInfo};
use tokio_postgres::Client;

use super::config;
use crate::common::pg::test_db;

/// (column, Postgres type, the type's name as the catalog gives it).
const COLUMNS: &[(&str, &str, &str)] = &[
    ("i4", "int4", "int4"),
    ("i8", "int8", "int8"),
    ("num", "numeric", "numeric"),
    ("f4", "float4", "float4"),
    ("f8", "float8", "float8"),
    ("txt", "text", "text"),
    ("vc", "varchar(40)", "varchar"),
    ("flag", "bool", "bool"),
    ("uid", "uuid", "uuid"),
    ("day", "date", "date"),
    ("ts", "timestamp", "timestamp"),
    ("tstz", "timestamptz", "timestamptz"),
    ("tm", "time", "time"),
    ("doc", "jsonb", "jsonb"),
];

struct Db {
    rt: tokio::runtime::Runtime,
    client: Client,
}

fn db() -> &'static Db {
    static DB: OnceLock<Db> = OnceLock::new();
    DB.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            let db = test_db().await;
            let client = db.client().await;
            let cols: Vec<String> = COLUMNS.iter().map(|(n, t, _)| format!("{n} {t}")).collect();
            client
                .batch_execute(&format!(
                    "create table fz (id bigserial primary key, {}); set timezone = 'UTC'",
                    cols.join(", ")
                ))
                .await
                .unwrap();
            client
        });
        Db { rt, client }
    })
}

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    prop::sample::select(items)
}

/// A value of column `i`'s type as Postgres input text (None: NULL).
fn sql_value(i: usize) -> BoxedStrategy<Option<String>> {
    let v: BoxedStrategy<String> = match COLUMNS[i].2 {
        "int4" => prop_oneof![
            any::<i32>().prop_map(|n| n.to_string()),
            (-3i32..3).prop_map(|n| n.to_string())
        ]
        .boxed(),
        "int8" => prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            (-3i64..3).prop_map(|n| n.to_string())
        ]
        .boxed(),
        "numeric" => prop_oneof![
            "-?[0-9]{1,20}(\\.[0-9]{1,12})?",
            "-?0\\.[0-9]{1,3}0{0,3}",
            pick(&["NaN", "Infinity", "-Infinity", "0", "-0", "1.50", "1.5"])
                .prop_map(String::from),
        ]
        .boxed(),
        "float4" => prop_oneof![
            any::<f32>().prop_map(|f| format!("{f:e}")),
            (-100i32..100).prop_map(|n| format!("{}", f64::from(n) / 10.0)),
            pick(&[
                "NaN",
                "Infinity",
                "-Infinity",
                "0",
                "-0",
                "0.1",
                "0.100000001",
                "0.1000000015",
                "3.4028235e38",
                "16777217",
                "1e-45"
            ])
            .prop_map(String::from),
        ]
        .boxed(),
        "float8" => prop_oneof![
            any::<f64>().prop_map(|f| format!("{f:e}")),
            (-100i32..100).prop_map(|n| format!("{}", f64::from(n) / 10.0)),
            pick(&[
                "NaN",
                "Infinity",
                "-Infinity",
                "0",
                "-0",
                "0.1",
                "0.10000000000000001",
                "1e300",
                "1e-300",
                "3.4028235e38",
                "16777217",
                "0.30000000000000004"
            ])
            .prop_map(String::from),
        ]
        .boxed(),
        "text" | "varchar" => text().boxed(),
        "bool" => pick(&[
            "t", "f", "true", "false", "yes", "no", "on", "off", "1", "0",
        ])
        .prop_map(String::from)
        .boxed(),
        "uuid" => pick(&[
            "0e4f6f5a-3c5b-4b8e-9d7a-2f1c0a9b8c7d",
            "0E4F6F5A-3C5B-4B8E-9D7A-2F1C0A9B8C7D",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "7fffffff-0000-4000-8000-000000000001",
        ])
        .prop_map(String::from)
        .boxed(),
        "date" => prop_oneof![
            (1900i32..2100, 1u32..13, 1u32..29)
                .prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")),
            pick(&["infinity", "-infinity"]).prop_map(String::from),
        ]
        .boxed(),
        "timestamp" => stamp(false).boxed(),
        "timestamptz" => stamp(true).boxed(),
        "time" => (
            0u32..24,
            0u32..60,
            0u32..60,
            prop::option::of(0u32..1_000_000),
        )
            .prop_map(|(h, m, s, f)| match f {
                Some(f) => format!("{h:02}:{m:02}:{s:02}.{f:06}"),
                None => format!("{h:02}:{m:02}:{s:02}"),
            })
            .boxed(),
        "jsonb" => pick(&[
            "{\"a\": 1}",
            "{\"a\": 1.0}",
            "[1, 2]",
            "[2, 1]",
            "1",
            "1.0",
            "\"x\"",
            "true",
            "{}",
            "{\"b\": [true, \"x\"], \"a\": 1}",
        ])
        .prop_map(String::from)
        .boxed(),
        other => unreachable!("{other}"),
    };
    prop::option::weighted(0.85, v).boxed()
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c%_\\\\ ,()\"']{0,8}",
        "[a-zA-Z]{0,6}",
        "[aéÉßẞ🙂 -~]{0,5}",
    ]
}

/// A Postgres regular expression, valid or not: pieces of its syntax (escapes of every
/// kind, brackets, classes, bounds, groups, anchors) strung together at random.
fn regex() -> impl Strategy<Value = String> {
    let valid = pick(&[
        "\\d",
        "\\D",
        "\\s",
        "\\S",
        "\\w",
        "\\W",
        "\\y",
        "\\Y",
        "\\m",
        "\\M",
        "\\A",
        "\\Z",
        "\\b",
        "\\B",
        "\\t",
        "\\x61",
        "\\x2c",
        "\\u0062",
        "\\.",
        "\\(",
        "\\*",
        "\\\\",
        "(?:",
        "[a-c]",
        "[^a]",
        "[]a]",
        "[[:alpha:]]",
        "[[:digit:][:space:]]",
        "[[:upper:]]",
        "[.]",
        "[\\d,]",
        "[a-]",
        "{",
        "}",
        "{2}",
        "{1,2}",
        "{0,}",
        "*?",
        "+?",
        "??",
        "{1,3}?",
        "***=",
        "***:",
    ]);
    let invalid = pick(&[
        "\\1", "\\q", "\\", "(?=", "(?i)", "[", "]", "[^", "[]", "[[.a.]]", "{2,1}", "é",
    ]);
    let piece = prop_oneof![
        6 => "[a-c ,.'()|*+?^$]",
        4 => "[a-c]{1,3}",
        6 => valid.prop_map(String::from),
        1 => invalid.prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|p| p.concat())
}

fn stamp(tz: bool) -> impl Strategy<Value = String> {
    let at = (
        1900i32..2100,
        1u32..13,
        1u32..29,
        0u32..24,
        0u32..60,
        0u32..60,
        prop::option::of(0u32..1_000_000),
    )
        .prop_map(|(y, mo, d, h, mi, s, f)| {
            let frac = f.map_or(String::new(), |f| format!(".{f:06}"));
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}{frac}")
        });
    let offset = if tz {
        prop_oneof![
            Just(String::new()),
            Just("Z".to_owned()),
            (-12i32..14).prop_map(|h| format!("{h:+03}:00")),
            Just("+05:30".to_owned())
        ]
        .boxed()
    } else {
        Just(String::new()).boxed()
    };
    prop_oneof![
        (at, offset).prop_map(|(a, o)| format!("{a}{o}")),
        pick(&["infinity", "-infinity"]).prop_map(String::from),
    ]
}

/// Operators that make sense for a catalog type name.
fn ops_for(type_name: &str) -> &'static [&'static str] {
    match type_name {
        "text" | "varchar" => &[
            "eq",
            "neq",
            "lt",
            "lte",
            "gt",
            "gte",
            "like",
            "ilike",
            "match",
            "imatch",
            "in",
            "is",
            "isdistinct",
        ],
        "bool" => &["eq", "neq", "lt", "gt", "in", "is", "isdistinct"],
        "jsonb" => &["eq", "neq", "in", "is", "isdistinct"],
        _ => &[
            "eq",
            "neq",
            "lt",
            "lte",
            "gt",
            "gte",
            "in",
            "is",
            "isdistinct",
        ],
    }
}

/// One condition: column index, operator, negated, values (one, or the `in` list), and
/// whether the `in` list also holds an unquoted `null` (a NULL element).
#[derive(Debug, Clone)]
struct Cond {
    col: usize,
    op: &'static str,
    negate: bool,
    values: Vec<String>,
    null_in: bool,
}

fn cond() -> impl Strategy<Value = Cond> {
    (0..COLUMNS.len()).prop_flat_map(|col| {
        let t = COLUMNS[col].2;
        let value = sql_value(col).prop_map(|v| v.unwrap_or_else(|| "0".into()));
        let like = prop_oneof![text(), "[a-c%_\\\\]{0,6}"];
        (
            pick(ops_for(t)),
            any::<bool>(),
            prop::collection::vec(value, 1..4),
            like,
            regex(),
            pick(&["null", "true", "false", "unknown"]),
            any::<bool>(),
        )
            .prop_map(move |(op, negate, values, like, regex, is, null_in)| {
                let values = match op {
                    "like" | "ilike" => vec![like],
                    "match" | "imatch" => vec![regex],
                    "is" => vec![is.to_owned()],
                    "in" => values,
                    _ => values[..1].to_vec(),
                };
                Cond {
                    col,
                    op,
                    negate,
                    values,
                    null_in: null_in && op == "in",
                }
            })
    })
}

/// `"..."` with `\` escapes: any value survives the filter syntax.
fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Cond {
    fn filter(&self) -> String {
        let not = if self.negate { "not." } else { "" };
        let value = match self.op {
            "in" => format!(
                "({})",
                self.values
                    .iter()
                    .map(|v| quoted(v))
                    .chain(self.null_in.then(|| "null".to_owned()))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            "is" => self.values[0].clone(),
            _ => quoted(&self.values[0]),
        };
        format!("{}={not}{}.{value}", COLUMNS[self.col].0, self.op)
    }

    /// The condition in SQL over table `fz`, values as parameters `$2..`.
    fn sql(&self) -> String {
        let (name, pg_type, catalog) = COLUMNS[self.col];
        // NaN and the infinities reach subscribers as null (as Supabase sends them), and
        // filters read them so.
        let finite;
        let name = match catalog {
            "numeric" | "float4" | "float8" => {
                finite = format!("nullif(nullif(nullif({name}, 'NaN'), 'Infinity'), '-Infinity')");
                finite.as_str()
            }
            _ => name,
        };
        let textual = matches!(catalog, "text" | "varchar");
        let col = if textual {
            format!("{name} collate \"C\"")
        } else {
            name.to_owned()
        };
        let param = |i: usize| {
            let p = format!("${}::text::{pg_type}", i + 2);
            if textual {
                format!("({p} collate \"C\")")
            } else {
                p
            }
        };
        let three_valued = |expr: String| {
            let expr = if self.negate {
                format!("not ({expr})")
            } else {
                expr
            };
            format!("case when {name} is null then false else coalesce({expr}, false) end")
        };
        let two_valued = |expr: String| {
            if self.negate {
                format!("not ({expr})")
            } else {
                expr
            }
        };
        match self.op {
            "eq" => three_valued(format!("{col} = {}", param(0))),
            "neq" => three_valued(format!("{col} <> {}", param(0))),
            "lt" => three_valued(format!("{col} < {}", param(0))),
            "lte" => three_valued(format!("{col} <= {}", param(0))),
            "gt" => three_valued(format!("{col} > {}", param(0))),
            "gte" => three_valued(format!("{col} >= {}", param(0))),
            "like" => three_valued(format!("{name} like $2::text")),
            "ilike" => three_valued(format!("{name} ilike $2::text")),
            "match" => three_valued(format!("{name} ~ $2::text")),
            "imatch" => three_valued(format!("{name} ~* $2::text")),
            "in" => three_valued(format!(
                "{col} = any(array[{}])",
                (0..self.values.len())
                    .map(param)
                    .chain(self.null_in.then(|| format!("null::{pg_type}")))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            "is" => two_valued(match self.values[0].as_str() {
                "null" | "unknown" => format!("{name} is null"),
                "true" => format!("{name} is true"),
                _ => format!("{name} is false"),
            }),
            "isdistinct" => two_valued(format!("{name} is distinct from {}", param(0))),
            other => unreachable!("{other}"),
        }
    }

    /// Cases the module header leaves out.
    fn skipped(&self, row: &Map<String, Value>) -> bool {
        let (name, _, catalog) = COLUMNS[self.col];
        let non_ascii = |s: &str| !s.is_ascii();
        (matches!(self.op, "ilike" | "match" | "imatch")
            && (non_ascii(&self.values[0]) || row[name].as_str().is_some_and(non_ascii)))
            || catalog == "jsonb" && self.values.iter().any(|v| v == "null")
    }
}

fn columns() -> Vec<ColumnInfo> {
    let mut cols = vec![ColumnInfo {
        name: "id".into(),
        type_name: "int8".into(),
        base_type: None,
        labels: None,
    }];
    cols.extend(COLUMNS.iter().map(|(n, _, t)| ColumnInfo {
        name: (*n).into(),
        type_name: (*t).into(),
        base_type: None,
        labels: None,
    }));
    cols
}

/// Inserts the row, returns it as the capture logs it and every condition's verdict in
/// Postgres (`Err` with Postgres's message when it refuses the condition).
async fn judge(
    client: &Client,
    row: &[Option<String>],
    conds: &[Cond],
) -> (Map<String, Value>, Vec<Result<bool, String>>) {
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
    let casts: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::text::{}", i + 1, c.1))
        .collect();
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = row
        .iter()
        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let inserted = client
        .query_one(
            &format!(
                "insert into fz ({}) values ({}) returning id, row_to_json(fz)::text",
                names.join(", "),
                casts.join(", ")
            ),
            &params,
        )
        .await
        .unwrap_or_else(|e| panic!("insert {row:?}: {e}"));
    let id: i64 = inserted.get(0);
    let record: Value = serde_json::from_str(inserted.get::<_, &str>(1)).unwrap();
    let mut verdicts = Vec::new();
    for c in conds {
        let sql = format!("select {} from fz where id = $1", c.sql());
        let mut p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&id];
        p.extend(
            c.values
                .iter()
                .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)),
        );
        if c.op == "is" {
            p.truncate(1);
        }
        verdicts.push(match client.query_one(&sql, &p).await {
            Ok(r) => Ok(r.get(0)),
            Err(e) => Err(format!("{}: {}", switchboard::db::pg_message(&e), sql)),
        });
    }
    client
        .execute("delete from fz where id = $1", &[&id])
        .await
        .unwrap();
    let Value::Object(record) = record else {
        unreachable!()
    };
    (record, verdicts)
}

fn row() -> impl Strategy<Value = Vec<Option<String>>> {
    (0..COLUMNS.len()).map(sql_value).collect::<Vec<_>>()
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn the_hub_and_postgres_agree_on_every_filter_the_hub_accepts(
        row in row(),
        conds in prop::collection::vec(cond(), 1..12),
    ) {
        let db = db();
        let (record, verdicts) = db.rt.block_on(judge(&db.client, &row, &conds));
        let cols = columns();
        for (c, pg) in conds.iter().zip(verdicts) {
            if c.skipped(&record) {
                continue;
            }
            let text = c.filter();
            let bound = match parse_filter(&text).and_then(|f| f.bind(&cols)) {
                Ok(b) => b,
                Err(_) => continue,
            };
            let hub = bound.matches(&record);
            match pg {
                Ok(pg) => prop_assert_eq!(hub, pg, "filter {} on {}", text, Value::Object(record.clone())),
                Err(e) => prop_assert!(false, "the hub accepts {} but Postgres refuses it: {}", text, e),
            }
        }
    }
}

/// Text for regular expressions to search: the letters and punctuation they are made of.
fn searched() -> impl Strategy<Value = String> {
    prop_oneof!["[a-cAB ,.()*\\\\\t0-9_]{0,10}", "[abB\n.]{0,4}"]
}

proptest! {
    #![proptest_config(config(512))]

    /// Every regular expression the hub accepts for `match`/`imatch`, Postgres accepts too
    /// (`~`/`~*`), and both give the same answer on the same text.
    #[test]
    fn the_hub_and_postgres_agree_on_every_regular_expression_the_hub_accepts(
        pattern in regex(),
        text in searched(),
        insensitive in any::<bool>(),
    ) {
        let db = db();
        let (op, sql) = if insensitive { ("imatch", "~*") } else { ("match", "~") };
        let filter = format!("t={op}.{}", quoted(&pattern));
        let cols = vec![ColumnInfo { name: "t".into(), type_name: "text".into(), base_type: None, labels: None }];
        let Ok(bound) = parse_filter(&filter).and_then(|f| f.bind(&cols)) else {
            return Ok(());
        };
        let record = serde_json::json!({"t": text});
        let hub = bound.matches(record.as_object().unwrap());
        let pg = db.rt.block_on(
            db.client.query_one(&format!("select $1::text {sql} $2::text"), &[&text, &pattern]),
        );
        match pg {
            Ok(row) => prop_assert_eq!(hub, row.get::<_, bool>(0), "{} on {:?}", filter, text),
            Err(e) => prop_assert!(
                false,
                "the hub accepts {} but Postgres refuses it: {}",
                filter,
                switchboard::db::pg_message(&e)
            ),
        }
    }
}
