//! The exact `postgres_changes` frames for INSERT, UPDATE and DELETE on a table with the
//! default REPLICA IDENTITY and on one with REPLICA IDENTITY FULL, both enabled the
//! Supabase way (in the `supabase_realtime` publication): every key, `columns` with their
//! type names, `errors: null`, and each value encoded as Supabase's `to_jsonb` of the
//! decoded value (notes/dropin.md §5). Only the commit timestamp varies (its format is
//! checked). Also: `select` columns, and the raw text of numbers (scale and precision kept).

mod common;

use common::e2e::*;
use common::hub::{Frame, Vsn};
use serde_json::{json, Value};

const SETUP: &str = r#"
create type public.mood as enum ('happy', 'sad');
create table public.kinds (
    id    bigint primary key,
    i2    int2,
    i4    int4,
    f4    float4,
    f8    float8,
    num   numeric(30, 2),
    flag  bool,
    t     text,
    vc    varchar(10),
    u     uuid,
    m     public.mood,
    d     date,
    tm    time,
    ts    timestamp,
    tstz  timestamptz,
    j     json,
    jb    jsonb,
    ints  int4[],
    texts text[],
    b     bytea,
    nan   float8
);
create table public.kinds_full (like public.kinds including all);
alter table public.kinds_full replica identity full;
grant select on public.kinds, public.kinds_full to authenticated;
alter publication supabase_realtime add table public.kinds, public.kinds_full;
"#;

const USER: &str = "6a3c0e8e-51c4-4b59-9a43-0c2f3c4a9d10";

// The writer's session prints timestamptz in its own zone and bytea in escape form: the
// frame still carries UTC and hex, as Supabase's session prints them.
const INSERT: &str = r#"
set timezone = 'America/New_York';
set bytea_output = 'escape';
insert into public.{table} values (
    1, 2, 4, 1.5, 2.25, 12345678901234567890.50, true, 'text', 'vc',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', '2026-01-02', '03:04:05',
    '2026-01-02 03:04:05.123456', '2026-01-02 03:04:05.123456+00',
    '{"b": 1, "a": [1, 2]}', '{"a": 1}', '{1,2}', '{a,b}', '\xdeadbeef', 'NaN')
"#;

/// `columns` of both tables: name and Postgres `typname`, in attribute order.
fn columns() -> Value {
    let cols = [
        ("id", "int8"),
        ("i2", "int2"),
        ("i4", "int4"),
        ("f4", "float4"),
        ("f8", "float8"),
        ("num", "numeric"),
        ("flag", "bool"),
        ("t", "text"),
        ("vc", "varchar"),
        ("u", "uuid"),
        ("m", "mood"),
        ("d", "date"),
        ("tm", "time"),
        ("ts", "timestamp"),
        ("tstz", "timestamptz"),
        ("j", "json"),
        ("jb", "jsonb"),
        ("ints", "_int4"),
        ("texts", "_text"),
        ("b", "bytea"),
        ("nan", "float8"),
    ];
    Value::Array(
        cols.iter()
            .map(|(name, ty)| json!({"name": name, "type": ty}))
            .collect(),
    )
}

/// The inserted row as Supabase sends it: bytea as hex without `\x`, NaN as null.
fn row(title: &str) -> Value {
    json!({
        "id": 1, "i2": 2, "i4": 4, "f4": 1.5, "f8": 2.25,
        "num": serde_json::from_str::<Value>("12345678901234567890.50").unwrap(),
        "flag": true, "t": title, "vc": "vc",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "m": "happy",
        "d": "2026-01-02", "tm": "03:04:05",
        "ts": "2026-01-02T03:04:05.123456", "tstz": "2026-01-02T03:04:05.123456+00:00",
        "j": {"b": 1, "a": [1, 2]}, "jb": {"a": 1},
        "ints": [1, 2], "texts": ["a", "b"], "b": "deadbeef", "nan": null
    })
}

/// `data` without its commit timestamp, whose format is checked.
fn data(ch: &ChangeFrame) -> Value {
    let mut d = ch.data.clone();
    let ts = d
        .as_object_mut()
        .and_then(|o| o.remove("commit_timestamp"))
        .unwrap_or_else(|| panic!("no commit_timestamp: {:?}", ch.frame));
    assert!(
        is_commit_timestamp(ts.as_str().unwrap_or_default()),
        "commit_timestamp {ts}"
    );
    d
}

/// The raw text of the frame (to see numbers exactly as sent).
fn raw(ch: &ChangeFrame) -> String {
    match &ch.frame {
        Frame::Text(v) => v.to_string(),
        other => panic!("text frame expected: {other:?}"),
    }
}

async fn frames_for(table: &str, full: bool) {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!({"event": "*", "schema": "public", "table": table});
    subscribe(
        &mut c,
        "realtime:room",
        json!([entry]),
        Some(&pg.user(USER)),
    )
    .await;

    pg.exec(&INSERT.replace("{table}", table)).await;
    let ins = next_change(&mut c).await;
    assert_eq!(
        data(&ins),
        json!({
            "schema": "public", "table": table, "type": "INSERT",
            "columns": columns(), "record": row("text"), "errors": null
        }),
        "{:?}",
        ins.frame
    );
    // numeric keeps its scale and every digit, as jsonb prints it.
    assert!(
        raw(&ins).contains(r#""num":12345678901234567890.50"#),
        "{}",
        raw(&ins)
    );

    pg.exec(&format!(
        "update public.{table} set t = 'changed' where id = 1"
    ))
    .await;
    let upd = next_change(&mut c).await;
    let old = if full { row("text") } else { json!({"id": 1}) };
    assert_eq!(
        data(&upd),
        json!({
            "schema": "public", "table": table, "type": "UPDATE",
            "columns": columns(), "record": row("changed"), "old_record": old, "errors": null
        }),
        "{:?}",
        upd.frame
    );

    pg.exec(&format!("delete from public.{table} where id = 1"))
        .await;
    let del = next_change(&mut c).await;
    let old = if full {
        row("changed")
    } else {
        json!({"id": 1})
    };
    assert_eq!(
        data(&del),
        json!({
            "schema": "public", "table": table, "type": "DELETE",
            "columns": columns(), "old_record": old, "errors": null
        }),
        "{:?}",
        del.frame
    );
}

#[tokio::test]
async fn default_replica_identity_frames_carry_the_key_as_old_record() {
    frames_for("kinds", false).await;
}

#[tokio::test]
async fn replica_identity_full_frames_carry_the_whole_old_row() {
    frames_for("kinds_full", true).await;
}

#[tokio::test]
async fn select_limits_record_old_record_and_columns_and_keeps_the_primary_key() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V1).await;
    let entry =
        json!({"event": "*", "schema": "public", "table": "kinds_full", "select": ["t", "flag"]});
    let joined = subscribe(
        &mut c,
        "realtime:room",
        json!([entry]),
        Some(&pg.user(USER)),
    )
    .await;
    // The entry is echoed with its `select`.
    assert_eq!(joined.entries[0]["select"], json!(["t", "flag"]));

    pg.exec(&INSERT.replace("{table}", "kinds_full")).await;
    let ins = next_change(&mut c).await;
    assert_eq!(
        ins.data["columns"],
        json!([
            {"name": "id", "type": "int8"},
            {"name": "flag", "type": "bool"},
            {"name": "t", "type": "text"}
        ])
    );
    assert_eq!(
        ins.data["record"],
        json!({"id": 1, "flag": true, "t": "text"})
    );
    pg.exec("update public.kinds_full set t = 'x', i4 = 9 where id = 1")
        .await;
    let upd = next_change(&mut c).await;
    assert_eq!(upd.data["record"], json!({"id": 1, "flag": true, "t": "x"}));
    assert_eq!(
        upd.data["old_record"],
        json!({"id": 1, "flag": true, "t": "text"})
    );
}

#[tokio::test]
async fn a_select_column_the_role_cannot_read_is_refused_at_join() {
    let pg = PgHub::start(
        "create table public.secrets (id bigint primary key, shown text, hidden text); \
         grant select (id, shown) on public.secrets to authenticated; \
         select realtime.enable('public.secrets');",
    )
    .await;
    let mut c = pg.connect(Vsn::V2).await;
    let entries = json!([
        {"event": "*", "schema": "public", "table": "secrets", "select": ["shown", "hidden"]},
        {"event": "*", "schema": "public", "table": "secrets", "select": ["nope"]},
        {"event": "*", "schema": "public", "table": "secrets", "select": "shown"},
        {"event": "*", "schema": "public", "table": "*", "select": ["shown"]}
    ]);
    let (join_ref, reply) = join_changes(
        &mut c,
        "realtime:room",
        entries,
        Some(&pg.user(USER)),
        json!({}),
    )
    .await;
    joined_from_reply("realtime:room", join_ref, &reply);
    let mut messages = Vec::new();
    for _ in 0..4 {
        let sys = next_system(&mut c).await;
        assert_eq!(
            (&sys["extension"], &sys["status"]),
            (&json!("postgres_changes"), &json!("error")),
            "{sys}"
        );
        messages.push(sys["message"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        messages,
        [
            "invalid column for select hidden: role authenticated may not select it",
            "invalid column for select nope",
            "Error parsing `select` params: expected a list of column name strings, e.g. select: [\"col1\", \"col2\"]",
            "Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name.",
        ]
    );
}

#[tokio::test]
async fn filters_judge_the_whole_old_row_even_when_old_record_shows_only_the_key() {
    // Supabase filters a DELETE on the identity columns only (REPLICA IDENTITY FULL is
    // needed to filter on anything else); the hub captured the whole old row.
    let pg = PgHub::start(
        "create table public.tasks (id bigint primary key, tag text); \
         grant select on public.tasks to authenticated; \
         alter publication supabase_realtime add table public.tasks;",
    )
    .await;
    let mut c = pg.connect(Vsn::V2).await;
    let entry =
        json!({"event": "DELETE", "schema": "public", "table": "tasks", "filter": "tag=eq.red"});
    subscribe(
        &mut c,
        "realtime:room",
        json!([entry]),
        Some(&pg.user(USER)),
    )
    .await;
    pg.exec(
        "insert into public.tasks values (1, 'blue'), (2, 'red'); \
         delete from public.tasks where id = 1; delete from public.tasks where id = 2;",
    )
    .await;
    let del = next_change(&mut c).await;
    assert_eq!(del.data["old_record"], json!({"id": 2}), "{:?}", del.frame);
    c.assert_quiet().await;
}
