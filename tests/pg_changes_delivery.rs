//! postgres_changes delivery through the running hub (PROTOCOL.md §4): frame shape for
//! INSERT/UPDATE/DELETE on both serializers, typed values and columns, ids from the join
//! reply, event filters, one frame per change per channel, and wildcard subscriptions.

mod common;

use common::e2e::*;
use common::hub::{Vsn, WsClient};
use serde_json::{json, Value};

const SETUP: &str = r#"
create table public.jobs (
    id    bigserial primary key,
    title text not null,
    done  bool not null default false,
    owner uuid,
    due   timestamptz,
    meta  jsonb,
    price numeric,
    tags  int4[]
);
grant select on public.jobs to anon, authenticated;
-- old_record follows REPLICA IDENTITY (only the key by default): these tests want it whole.
alter table public.jobs replica identity full;
select realtime.enable('public.jobs');
create table public.notes (id bigserial primary key, body text);
grant select on public.notes to anon, authenticated;
select realtime.enable('public.notes');
create schema other;
grant usage on schema other to anon, authenticated;
create table other.things (id bigserial primary key, name text);
grant select on other.things to anon, authenticated;
select realtime.enable('other.things');
create table public.quiet (id bigserial primary key, name text);
grant select on public.quiet to anon, authenticated;
"#;

const USER: &str = "6a3c0e8e-51c4-4b59-9a43-0c2f3c4a9d10";
const OWNER: &str = "0b9f7c9a-8a57-4a3c-8b8f-1d2e3f4a5b6c";

fn jobs(event: &str) -> Value {
    json!({"event": event, "schema": "public", "table": "jobs"})
}

/// The columns of `public.jobs`, in attribute order, with their typnames.
fn jobs_columns() -> Value {
    json!([
        {"name": "id", "type": "int8"},
        {"name": "title", "type": "text"},
        {"name": "done", "type": "bool"},
        {"name": "owner", "type": "uuid"},
        {"name": "due", "type": "timestamptz"},
        {"name": "meta", "type": "jsonb"},
        {"name": "price", "type": "numeric"},
        {"name": "tags", "type": "_int4"}
    ])
}

/// Frame envelope per serializer: v2 `[null,null,topic,"postgres_changes",payload]`;
/// v1 exactly `{topic, event, payload, ref: null}`; payload exactly `{ids, data}`.
fn assert_envelope(ch: &ChangeFrame, vsn: Vsn, topic: &str) {
    let raw = ch.frame.json();
    match vsn {
        Vsn::V2 => {
            let a = raw.as_array().expect("v2 frame is an array");
            assert_eq!(a.len(), 5, "{raw}");
            assert_eq!((&a[0], &a[1]), (&Value::Null, &Value::Null), "{raw}");
            assert_eq!(a[2], topic, "{raw}");
            assert_eq!(a[3], "postgres_changes", "{raw}");
        }
        Vsn::V1 => {
            assert_eq!(keys(raw), ["event", "payload", "ref", "topic"], "{raw}");
            assert_eq!(raw["ref"], Value::Null, "{raw}");
            assert_eq!(raw["topic"], topic, "{raw}");
            assert_eq!(raw["event"], "postgres_changes", "{raw}");
        }
    }
    assert_eq!(keys(ch.frame.payload()), ["data", "ids"], "{raw}");
}

/// `data` keys per type, common fields, and the commit timestamp format.
fn assert_data(ch: &ChangeFrame, kind: &str) {
    let d = &ch.data;
    let expected: &[&str] = match kind {
        "INSERT" => &[
            "columns",
            "commit_timestamp",
            "errors",
            "record",
            "schema",
            "table",
            "type",
        ],
        "UPDATE" => &[
            "columns",
            "commit_timestamp",
            "errors",
            "old_record",
            "record",
            "schema",
            "table",
            "type",
        ],
        "DELETE" => &[
            "columns",
            "commit_timestamp",
            "errors",
            "old_record",
            "schema",
            "table",
            "type",
        ],
        other => panic!("unknown kind {other}"),
    };
    assert_eq!(keys(d), expected, "data keys of {kind}: {d}");
    assert_eq!(d["type"], kind, "{d}");
    assert_eq!(d["schema"], "public", "{d}");
    assert_eq!(d["table"], "jobs", "{d}");
    assert_eq!(d["errors"], Value::Null, "{d}");
    assert_eq!(d["columns"], jobs_columns(), "{d}");
    let ts = d["commit_timestamp"].as_str().unwrap_or_default();
    assert!(
        is_commit_timestamp(ts),
        "commit_timestamp {ts:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    );
}

/// A full `jobs` row as typed JSON.
fn assert_typed_row(row: &Value, id: i64, title: &str, done: bool) {
    assert_eq!(row["id"], json!(id), "{row}");
    assert_eq!(row["title"], title, "{row}");
    assert_eq!(row["done"], done, "{row}");
    assert_eq!(row["owner"], OWNER, "{row}");
    let due = row["due"]
        .as_str()
        .unwrap_or_else(|| panic!("due is a string: {row}"));
    assert!(due.starts_with("2026-01-02T03:04:05.678"), "{row}");
    assert_eq!(
        row["meta"],
        json!({"a": 1, "b": [true, null], "c": "x"}),
        "{row}"
    );
    assert!(row["price"].is_number(), "numeric is a JSON number: {row}");
    assert_eq!(row["price"].as_f64(), Some(12.5), "{row}");
    assert_eq!(row["tags"], json!([1, 2, 3]), "{row}");
    assert_eq!(keys(row).len(), 8, "every column: {row}");
}

async fn insert_update_delete_have_the_documented_shape(vsn: Vsn) {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(vsn).await;
    let token = pg.user(USER);
    let sub = subscribe(&mut c, "realtime:room", json!([jobs("*")]), Some(&token)).await;
    assert_eq!(
        sub.entries,
        vec![json!({"event": "*", "schema": "public", "table": "jobs", "id": sub.ids[0]})]
    );

    let id = pg
        .id(
            &format!(
                "insert into public.jobs (title, done, owner, due, meta, price, tags) \
                 values ('first', true, '{OWNER}', '2026-01-02 03:04:05.678+00', \
                 '{{\"a\":1,\"b\":[true,null],\"c\":\"x\"}}', 12.50, '{{1,2,3}}') returning id"
            ),
            &[],
        )
        .await;
    let ins = next_change(&mut c).await;
    assert_envelope(&ins, vsn, "realtime:room");
    assert_eq!(ins.ids, sub.ids);
    assert_data(&ins, "INSERT");
    assert_typed_row(&ins.data["record"], id, "first", true);

    pg.run(
        "update public.jobs set title = 'second', done = false where id = $1",
        &[&id],
    )
    .await;
    let upd = next_change(&mut c).await;
    assert_envelope(&upd, vsn, "realtime:room");
    assert_eq!(upd.ids, sub.ids);
    assert_data(&upd, "UPDATE");
    assert_typed_row(&upd.data["record"], id, "second", false);
    assert_typed_row(&upd.data["old_record"], id, "first", true);

    pg.run("delete from public.jobs where id = $1", &[&id])
        .await;
    let del = next_change(&mut c).await;
    assert_envelope(&del, vsn, "realtime:room");
    assert_eq!(del.ids, sub.ids);
    assert_data(&del, "DELETE");
    // The whole old row, not only the key: the subscriber may see it.
    assert_typed_row(&del.data["old_record"], id, "second", false);
}

#[tokio::test]
async fn insert_update_and_delete_frames_have_the_documented_shape_on_v2() {
    insert_update_delete_have_the_documented_shape(Vsn::V2).await;
}

#[tokio::test]
async fn insert_update_and_delete_frames_have_the_documented_shape_on_v1() {
    insert_update_delete_have_the_documented_shape(Vsn::V1).await;
}

async fn insert_job(pg: &PgHub, title: &str) -> i64 {
    pg.id(
        "insert into public.jobs (title) values ($1) returning id",
        &[&title],
    )
    .await
}

#[tokio::test]
async fn an_insert_only_listener_gets_no_update_or_delete() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let sub = subscribe(
        &mut c,
        "realtime:room",
        json!([jobs("INSERT")]),
        Some(&pg.user(USER)),
    )
    .await;
    let id = insert_job(&pg, "a").await;
    let first = expect_row(&mut c, "INSERT", "jobs", id).await;
    assert_eq!(first.ids, sub.ids);
    pg.run("update public.jobs set title = 'b' where id = $1", &[&id])
        .await;
    pg.run("delete from public.jobs where id = $1", &[&id])
        .await;
    let marker = insert_job(&pg, "marker").await;
    expect_row(&mut c, "INSERT", "jobs", marker).await;
}

#[tokio::test]
async fn update_and_delete_listeners_get_only_their_event() {
    let pg = PgHub::start(SETUP).await;
    let token = pg.user(USER);
    let mut u = pg.connect(Vsn::V2).await;
    let mut d = pg.connect(Vsn::V2).await;
    subscribe(
        &mut u,
        "realtime:room",
        json!([jobs("UPDATE"), jobs("DELETE")]),
        Some(&token),
    )
    .await;
    let del_only = subscribe(
        &mut d,
        "realtime:room",
        json!([jobs("DELETE")]),
        Some(&token),
    )
    .await;
    let id = insert_job(&pg, "a").await;
    pg.run("update public.jobs set title = 'b' where id = $1", &[&id])
        .await;
    pg.run("delete from public.jobs where id = $1", &[&id])
        .await;
    expect_row(&mut u, "UPDATE", "jobs", id).await;
    expect_row(&mut u, "DELETE", "jobs", id).await;
    let del = expect_row(&mut d, "DELETE", "jobs", id).await;
    assert_eq!(del.ids, del_only.ids);
}

#[tokio::test]
async fn two_listeners_matching_one_change_share_one_frame_with_both_ids() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let entries = json!([
        jobs("*"),
        {"event": "INSERT", "schema": "public", "table": "jobs", "filter": "title=eq.both"}
    ]);
    let sub = subscribe(&mut c, "realtime:room", entries, Some(&pg.user(USER))).await;
    assert_eq!(sub.ids.len(), 2);
    assert_ne!(
        sub.ids[0], sub.ids[1],
        "different entries get different ids"
    );

    let both = insert_job(&pg, "both").await;
    let one = insert_job(&pg, "one").await;
    let f = expect_row(&mut c, "INSERT", "jobs", both).await;
    let mut got = f.ids.clone();
    got.sort();
    let mut want = sub.ids.clone();
    want.sort();
    assert_eq!(got, want, "one frame carrying both ids: {:?}", f.frame);
    // The next frame is the second change: the first was not sent twice.
    let f = expect_row(&mut c, "INSERT", "jobs", one).await;
    assert_eq!(f.ids, vec![sub.ids[0]]);
}

#[tokio::test]
async fn identical_entries_on_two_sockets_get_the_same_id() {
    let pg = PgHub::start(SETUP).await;
    let token = pg.user(USER);
    let mut a = pg.connect(Vsn::V2).await;
    let mut b = pg.connect(Vsn::V1).await;
    let sa = subscribe(&mut a, "realtime:room", json!([jobs("*")]), Some(&token)).await;
    let sb = subscribe(&mut b, "realtime:other", json!([jobs("*")]), Some(&token)).await;
    assert_eq!(sa.ids, sb.ids);
    let id = insert_job(&pg, "x").await;
    assert_eq!(expect_row(&mut a, "INSERT", "jobs", id).await.ids, sa.ids);
    let on_b = expect_row(&mut b, "INSERT", "jobs", id).await;
    assert_eq!(on_b.ids, sb.ids);
    assert_eq!(on_b.topic, "realtime:other");
}

/// Inserts into jobs, notes, other.things and the non-enabled quiet table, then a
/// marker note; returns (jobs id, notes id, things id, marker id).
async fn write_one_of_each(pg: &PgHub) -> (i64, i64, i64, i64) {
    let job = insert_job(pg, "j").await;
    let note = pg
        .id(
            "insert into public.notes (body) values ('n') returning id",
            &[],
        )
        .await;
    let thing = pg
        .id(
            "insert into other.things (name) values ('t') returning id",
            &[],
        )
        .await;
    pg.exec("insert into public.quiet (name) values ('q')")
        .await;
    let marker = pg
        .id(
            "insert into public.notes (body) values ('marker') returning id",
            &[],
        )
        .await;
    (job, note, thing, marker)
}

async fn expect_schema_table(c: &mut WsClient, schema: &str, table: &str, id: i64, ids: &[u64]) {
    let ch = next_change(c).await;
    assert_eq!(
        (ch.data["schema"].as_str(), ch.table(), ch.row_id()),
        (Some(schema), table, Some(id)),
        "expected {schema}.{table} row {id}, got {:?}",
        ch.frame
    );
    assert_eq!(ch.ids, ids);
}

#[tokio::test]
async fn a_whole_schema_subscription_gets_every_enabled_table_of_that_schema() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let sub = subscribe(
        &mut c,
        "realtime:room",
        json!([{"event": "*", "schema": "public", "table": "*"}]),
        Some(&pg.user(USER)),
    )
    .await;
    let (job, note, _thing, marker) = write_one_of_each(&pg).await;
    expect_schema_table(&mut c, "public", "jobs", job, &sub.ids).await;
    expect_schema_table(&mut c, "public", "notes", note, &sub.ids).await;
    // Not other.things (another schema), not public.quiet (not enabled).
    expect_schema_table(&mut c, "public", "notes", marker, &sub.ids).await;
}

#[tokio::test]
async fn an_all_schemas_subscription_gets_every_enabled_table() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let sub = subscribe(
        &mut c,
        "realtime:room",
        json!([{"event": "*", "schema": "*"}]),
        Some(&pg.user(USER)),
    )
    .await;
    let (job, note, thing, marker) = write_one_of_each(&pg).await;
    expect_schema_table(&mut c, "public", "jobs", job, &sub.ids).await;
    expect_schema_table(&mut c, "public", "notes", note, &sub.ids).await;
    expect_schema_table(&mut c, "other", "things", thing, &sub.ids).await;
    // public.quiet is not enabled: nothing from it.
    expect_schema_table(&mut c, "public", "notes", marker, &sub.ids).await;
}

#[tokio::test]
async fn a_table_only_entry_means_schema_public() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let sub = subscribe(
        &mut c,
        "realtime:room",
        json!([{"event": "*", "table": "jobs"}]),
        Some(&pg.user(USER)),
    )
    .await;
    assert_eq!(
        sub.entries[0],
        json!({"event": "*", "table": "jobs", "id": sub.ids[0]}),
        "echoed verbatim"
    );
    let id = insert_job(&pg, "x").await;
    expect_row(&mut c, "INSERT", "jobs", id).await;
}

#[tokio::test]
async fn a_channel_that_left_gets_no_more_changes() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let token = pg.user(USER);
    let left = subscribe(&mut c, "realtime:left", json!([jobs("*")]), Some(&token)).await;
    leave(&mut c, &left).await;
    subscribe(
        &mut c,
        "realtime:stay",
        json!([jobs("INSERT")]),
        Some(&token),
    )
    .await;
    let id = insert_job(&pg, "x").await;
    let ch = expect_row(&mut c, "INSERT", "jobs", id).await;
    assert_eq!(ch.topic, "realtime:stay");
}

#[tokio::test]
async fn two_channels_on_one_socket_each_get_their_own_frame() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let token = pg.user(USER);
    let one = subscribe(&mut c, "realtime:one", json!([jobs("*")]), Some(&token)).await;
    let two = subscribe(
        &mut c,
        "realtime:two",
        json!([jobs("INSERT")]),
        Some(&token),
    )
    .await;
    let id = insert_job(&pg, "x").await;
    let mut got = [
        expect_row(&mut c, "INSERT", "jobs", id).await,
        expect_row(&mut c, "INSERT", "jobs", id).await,
    ];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        (got[0].topic.as_str(), &got[0].ids),
        ("realtime:one", &one.ids)
    );
    assert_eq!(
        (got[1].topic.as_str(), &got[1].ids),
        ("realtime:two", &two.ids)
    );
}

#[tokio::test]
async fn a_lower_case_event_is_echoed_verbatim_and_still_filters() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!({"event": "insert", "schema": "public", "table": "jobs"});
    let sub = subscribe(
        &mut c,
        "realtime:room",
        json!([entry]),
        Some(&pg.user(USER)),
    )
    .await;
    assert_eq!(sub.entries[0]["event"], "insert", "echoed verbatim");
    let id = insert_job(&pg, "a").await;
    pg.run("update public.jobs set title = 'b' where id = $1", &[&id])
        .await;
    let marker = insert_job(&pg, "marker").await;
    expect_row(&mut c, "INSERT", "jobs", id).await;
    expect_row(&mut c, "INSERT", "jobs", marker).await;
}

#[tokio::test]
async fn changes_of_one_transaction_arrive_in_order_and_rolled_back_ones_never() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    subscribe(
        &mut c,
        "realtime:room",
        json!([jobs("*")]),
        Some(&pg.user(USER)),
    )
    .await;
    pg.exec("begin; insert into public.jobs (title) values ('gone'); rollback")
        .await;
    pg.exec(
        "begin; \
         insert into public.jobs (id, title) values (1001, 'a'); \
         update public.jobs set title = 'b' where id = 1001; \
         savepoint s; insert into public.jobs (id, title) values (1002, 'undone'); rollback to s; \
         insert into public.jobs (id, title) values (1003, 'c'); \
         delete from public.jobs where id = 1001; \
         commit",
    )
    .await;
    expect_row(&mut c, "INSERT", "jobs", 1001).await;
    let up = expect_row(&mut c, "UPDATE", "jobs", 1001).await;
    assert_eq!(up.data["record"]["title"], "b");
    expect_row(&mut c, "INSERT", "jobs", 1003).await;
    expect_row(&mut c, "DELETE", "jobs", 1001).await;
}

#[tokio::test]
async fn changes_of_one_transaction_share_its_commit_timestamp() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    subscribe(
        &mut c,
        "realtime:room",
        json!([jobs("INSERT")]),
        Some(&pg.user(USER)),
    )
    .await;
    // The pause inside the transaction makes statement times differ by more than 1 ms.
    pg.exec(
        "begin; \
         insert into public.jobs (id, title) values (2001, 'a'); \
         select pg_sleep(0.05); \
         insert into public.jobs (id, title) values (2002, 'b'); \
         commit",
    )
    .await;
    let first = expect_row(&mut c, "INSERT", "jobs", 2001).await;
    let second = expect_row(&mut c, "INSERT", "jobs", 2002).await;
    assert_eq!(
        first.data["commit_timestamp"], second.data["commit_timestamp"],
        "commit_timestamp is the transaction's commit time, the same for all its changes"
    );
}

/// A table renamed or moved to another schema while subscribed: its subscribers go on
/// receiving its changes, under its new name and with the ids their join was answered
/// with, as Supabase's do (they name a subscribed table by oid). Filtered (indexed by
/// value) and unfiltered subscriptions both follow, also when the rename commits with
/// the rows; a join naming the old table is refused as any join to a missing table.
#[tokio::test]
async fn subscribers_follow_a_table_renamed_or_moved_while_subscribed() {
    let pg = PgHub::start(
        "create table public.tasks (id bigserial primary key, owner uuid);
         grant select on public.tasks to authenticated;
         select realtime.enable('public.tasks');
         create schema crm;
         grant usage on schema crm to authenticated;",
    )
    .await;
    const OTHER: &str = "0b5e6c1a-7d4f-4e2b-9c3a-1f2e3d4c5b6a";
    let entry = |filter: String| json!([{"event": "*", "schema": "public", "table": "tasks", "filter": filter}]);
    let token = pg.user(USER);
    let mut all = pg.connect(Vsn::V2).await;
    let all_joined = subscribe(&mut all, "realtime:all", entry(String::new()), Some(&token)).await;
    let mut mine = pg.connect(Vsn::V2).await;
    let mine_filter = entry(format!("owner=eq.{USER}"));
    let mine_joined = subscribe(&mut mine, "realtime:mine", mine_filter, Some(&token)).await;
    for (ddl, schema, table) in [
        ("", "public", "tasks"),
        ("alter table public.tasks rename to jobs;", "public", "jobs"),
        ("alter table public.jobs set schema crm;", "crm", "jobs"),
        // The rename commits with the rows written after it.
        ("begin; alter table crm.jobs rename to work;", "crm", "work"),
    ] {
        let write = format!(
            "{ddl} insert into {schema}.{table} (owner) values ('{OTHER}'); \
             insert into {schema}.{table} (owner) values ('{USER}'); {}",
            if ddl.starts_with("begin") {
                "commit;"
            } else {
                ""
            }
        );
        pg.exec(&write).await;
        let last = format!("select max(id) from {schema}.{table}");
        let own = pg.id(&last, &[]).await;
        let other = own - 1;
        for (c, joined, rows) in [
            (&mut all, &all_joined, vec![other, own]),
            (&mut mine, &mine_joined, vec![own]),
        ] {
            for id in rows {
                let ch = expect_row(c, "INSERT", table, id).await;
                assert_eq!(ch.data["schema"], schema, "{:?}", ch.frame);
                assert_eq!(ch.ids, joined.ids, "{:?}", ch.frame);
            }
        }
    }
    // Rows written before a rename in its own transaction keep the name they were
    // written under, and still reach the table's subscribers.
    let before = pg
        .id(
            &format!("insert into crm.work (owner) values ('{USER}') returning id"),
            &[],
        )
        .await;
    pg.exec(&format!(
        "begin; insert into crm.work (owner) values ('{USER}'); \
         alter table crm.work rename to done; commit;"
    ))
    .await;
    for (c, joined) in [(&mut all, &all_joined), (&mut mine, &mine_joined)] {
        for id in [before, before + 1] {
            let ch = expect_row(c, "INSERT", "work", id).await;
            assert_eq!(ch.ids, joined.ids, "{:?}", ch.frame);
        }
    }
    // A new token judges the entries again as the table they name now, and keeps their
    // ids.
    let other = pg.user(OTHER);
    for (c, joined) in [(&mut all, &all_joined), (&mut mine, &mine_joined)] {
        let told = refresh_token(c, joined, &other).await;
        let messages: Vec<&serde_json::Value> = told.iter().map(|t| &t["message"]).collect();
        assert_eq!(messages, [&json!("Subscribed to PostgreSQL")], "{told:?}");
    }
    let id = pg
        .id(
            &format!("insert into crm.done (owner) values ('{USER}') returning id"),
            &[],
        )
        .await;
    for (c, joined) in [(&mut all, &all_joined), (&mut mine, &mine_joined)] {
        let ch = expect_row(c, "INSERT", "done", id).await;
        assert_eq!(ch.ids, joined.ids, "{:?}", ch.frame);
    }
    let mut late = pg.connect(Vsn::V2).await;
    let (join_ref, reply) = join_changes(
        &mut late,
        "realtime:late",
        entry(String::new()),
        Some(&token),
        json!({}),
    )
    .await;
    joined_from_reply("realtime:late", join_ref, &reply);
    let sys = next_system(&mut late).await;
    assert_eq!(sys["status"], "error", "{sys}");
}
