//! What the statement-level capture triggers record for statements touching many rows,
//! and how the hub is woken: changes in the statement's row order, each UPDATE paired with
//! its own old row, nothing from rolled-back savepoints, and no change left waiting for a
//! poll when a writer could not see the hub's wake-up lease.

mod common;
#[path = "capture/load.rs"]
mod load;

use std::time::Duration;

use load::{start_capture, start_capture_polling, Capture};
use serde_json::{json, Value};
use switchboard::changes::{Change, DbEvent, Op};
use tokio_postgres::Client;

/// A migrated database with `ddl` applied and capture enabled on `table`.
async fn database(ddl: &str, table: &str) -> (common::pg::TestDb, Client) {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    switchboard::db::migrate(&client).await.unwrap();
    client.batch_execute(ddl).await.unwrap();
    switchboard::db::enable(&client, table).await.unwrap();
    (db, client)
}

/// Changes until `n` have arrived.
async fn changes(capture: &mut Capture, n: usize) -> Vec<Change> {
    let mut out = Vec::new();
    while out.len() < n {
        for e in capture.next_events(Duration::from_secs(30)).await {
            if let DbEvent::Change(c) = e {
                out.push(c);
            }
        }
    }
    out
}

fn id(row: &Option<serde_json::Map<String, Value>>) -> Value {
    row.as_ref().map(|r| r["id"].clone()).unwrap_or(Value::Null)
}

#[tokio::test]
async fn an_update_that_moves_primary_keys_pairs_each_old_row_with_its_new_row() {
    let (db, client) = database(
        "create table t (id int primary key, v text);
         insert into t select g, 'v' || g from generate_series(1, 5) g;",
        "t",
    )
    .await;
    let mut capture = start_capture(&db.hub_url().await, 1000).await;
    client
        .batch_execute("update t set id = id + 100, v = v || '!' where id > 1")
        .await
        .unwrap();
    let got = changes(&mut capture, 4).await;
    for c in &got {
        assert_eq!(c.op, Op::Update);
        let (old, new) = (id(&c.old_record), id(&c.record));
        assert_eq!(new.as_i64(), old.as_i64().map(|o| o + 100), "{c:?}");
        let old_v = c.old_record.as_ref().unwrap()["v"].as_str().unwrap();
        assert_eq!(c.record.as_ref().unwrap()["v"], json!(format!("{old_v}!")));
    }
    let mut ids: Vec<i64> = got
        .iter()
        .map(|c| id(&c.old_record).as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [2, 3, 4, 5]);
    capture.stop().await;
}

#[tokio::test]
async fn multi_row_statements_arrive_in_row_order_and_rolled_back_savepoints_never() {
    savepoints_case("create table t (id int primary key, v int)", "t").await;
}

/// The same statements through the parent of a captured partition `t` (captured row by
/// row): exactly the committed rows, in row order.
#[tokio::test]
async fn rows_written_through_a_partitioned_parent_arrive_in_row_order_and_rolled_back_savepoints_never(
) {
    savepoints_case(
        "create table p (id int primary key, v int) partition by range (id);
         create table t partition of p for values from (0) to (1000);",
        "p",
    )
    .await;
}

/// Multi-row statements written to `written`, inside savepoints some of which roll back;
/// the captured table is `t`.
async fn savepoints_case(ddl: &str, written: &str) {
    let (db, client) = database(ddl, "t").await;
    let mut capture = start_capture(&db.hub_url().await, 1000).await;
    client
        .batch_execute(&format!(
            "begin;
             insert into {written} select g, 0 from generate_series(1, 50) g;
             savepoint s1;
             insert into {written} select g, 0 from generate_series(51, 60) g;
             update {written} set v = 1 where id <= 10;
             rollback to savepoint s1;
             delete from {written} where id > 45;
             savepoint s2;
             update {written} set v = 2 where id between 11 and 13;
             release savepoint s2;
             commit;"
        ))
        .await
        .unwrap();
    let got = changes(&mut capture, 58).await;
    assert!(got.iter().all(|c| c.table == "t"), "{got:?}");
    let summary: Vec<(Op, i64)> = got
        .iter()
        .map(|c| {
            (
                c.op,
                c.judged_row().map(|r| r["id"].as_i64().unwrap()).unwrap(),
            )
        })
        .collect();
    let mut want: Vec<(Op, i64)> = (1..=50).map(|i| (Op::Insert, i)).collect();
    want.extend((46..=50).map(|i| (Op::Delete, i)));
    want.extend((11..=13).map(|i| (Op::Update, i)));
    let (mut got_sorted, mut want_sorted) = (summary.clone(), want.clone());
    got_sorted.sort_by_key(|(op, i)| (op.as_str(), *i));
    want_sorted.sort_by_key(|(op, i)| (op.as_str(), *i));
    assert_eq!(got_sorted, want_sorted, "exactly the committed changes");
    assert_eq!(
        &summary[..50],
        &want[..50],
        "the insert's rows in insert order"
    );
    assert!(got.iter().all(|c| c.commit_time == got[0].commit_time));
    capture.stop().await;
}

#[tokio::test]
async fn statements_of_every_size_are_logged_a_hundred_rows_to_a_log_row_in_row_order() {
    // 1 and 100 rows take the single-aggregate path, 101 and 250 the chunked one; an
    // empty statement logs nothing.
    let (db, client) = database("create table t (id int primary key, v int)", "t").await;
    let mut capture = start_capture(&db.hub_url().await, 1000).await;
    let sizes = [0, 1, 100, 101, 250];
    let mut want = Vec::new();
    for (k, n) in sizes.iter().enumerate() {
        let base = 1000 * k as i32;
        client
            .execute(
                "insert into t select $1 + g, 0 from generate_series($2::int, 1, -1) g",
                &[&base, n],
            )
            .await
            .unwrap();
        want.extend((1..=*n).rev().map(|g| (Op::Insert, i64::from(base + g))));
    }
    for statement in [
        "update t set v = v + 1 where id > 3000",
        "update t set v = v + 1 where id = 1001",
        "delete from t where id between 3000 and 3101",
        "delete from t where id < 0",
    ] {
        client.batch_execute(statement).await.unwrap();
    }
    let total = want.len() + 352 + 101;
    let got = changes(&mut capture, total).await;
    let inserts: Vec<(Op, i64)> = got[..want.len()]
        .iter()
        .map(|c| (c.op, id(&c.record).as_i64().unwrap()))
        .collect();
    assert_eq!(
        inserts, want,
        "every insert's rows in the order it wrote them"
    );
    for c in got[want.len()..want.len() + 352].iter() {
        assert_eq!(c.op, Op::Update);
        assert_eq!(id(&c.old_record), id(&c.record), "{c:?}");
        let v = |r: &Option<serde_json::Map<String, Value>>| r.as_ref().unwrap()["v"].as_i64();
        assert_eq!(v(&c.record), v(&c.old_record).map(|x| x + 1), "{c:?}");
    }
    let mut deleted: Vec<i64> = got[want.len() + 352..]
        .iter()
        .map(|c| id(&c.old_record).as_i64().unwrap())
        .collect();
    deleted.sort();
    assert_eq!(deleted, (3001..=3101).collect::<Vec<i64>>());
    let log: Vec<(String, i32)> = client
        .query(
            "select op, json_array_length(coalesce(rows, old_rows)) from realtime.changes \
             order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let sizes_of = |op: &str| -> Vec<i32> {
        log.iter()
            .filter(|(o, _)| o == op)
            .map(|(_, n)| *n)
            .collect()
    };
    assert_eq!(sizes_of("INSERT"), [1, 100, 100, 1, 100, 100, 50]);
    assert_eq!(sizes_of("UPDATE"), [100, 100, 100, 51, 1]);
    assert_eq!(sizes_of("DELETE"), [100, 1]);
    capture.stop().await;
}

#[tokio::test]
async fn a_partitioned_tables_changes_carry_the_table_name_subscribers_use() {
    let (db, client) = database(
        "create table m (id int, day date, primary key (id, day)) partition by range (day);
         create table m_2026 partition of m for values from ('2026-01-01') to ('2027-01-01');",
        "m",
    )
    .await;
    let mut capture = start_capture(&db.hub_url().await, 1000).await;
    client
        .batch_execute("insert into m values (1, '2026-05-01'), (2, '2026-06-01')")
        .await
        .unwrap();
    let got = changes(&mut capture, 2).await;
    assert!(
        got.iter().all(|c| c.table == "m" && c.op == Op::Insert),
        "{got:?}"
    );
    capture.stop().await;
}

/// Plain inheritance: an UPDATE or DELETE through a parent reaches its child's rows too;
/// each row is logged under the table that holds it, with that table's columns (as
/// logical decoding reports it), also for a child made after the parent was captured.
#[tokio::test]
async fn rows_changed_through_an_inheritance_parent_are_logged_under_the_table_holding_them() {
    let (db, client) = database("create table par (id int primary key, v text)", "par").await;
    client
        .batch_execute(
            "create table kid (extra text) inherits (par); alter table kid add primary key (id);",
        )
        .await
        .unwrap();
    switchboard::db::enable(&client, "kid").await.unwrap();
    let mut capture = start_capture(&db.hub_url().await, 1000).await;
    client
        .batch_execute(
            "insert into par values (1, 'p'); insert into kid values (2, 'k', 'x'), (3, 'k', 'y');
             update par set v = 'via parent'; delete from par where id = 3;",
        )
        .await
        .unwrap();
    let got: Vec<_> = changes(&mut capture, 7)
        .await
        .into_iter()
        .map(|c| {
            let row = if c.op == Op::Delete {
                &c.old_record
            } else {
                &c.record
            };
            (c.table.clone(), c.op, Value::Object(row.clone().unwrap()))
        })
        .collect();
    let kid = |id: i64, v: &str, extra: &str| json!({"id": id, "v": v, "extra": extra});
    assert_eq!(
        got,
        [
            ("par".to_owned(), Op::Insert, json!({"id": 1, "v": "p"})),
            ("kid".to_owned(), Op::Insert, kid(2, "k", "x")),
            ("kid".to_owned(), Op::Insert, kid(3, "k", "y")),
            (
                "par".to_owned(),
                Op::Update,
                json!({"id": 1, "v": "via parent"})
            ),
            ("kid".to_owned(), Op::Update, kid(2, "via parent", "x")),
            ("kid".to_owned(), Op::Update, kid(3, "via parent", "y")),
            ("kid".to_owned(), Op::Delete, kid(3, "via parent", "y")),
        ]
    );
    capture.stop().await;
}

#[tokio::test]
async fn tables_without_a_primary_key_are_captured_statement_by_statement() {
    let (db, client) = database("create table log (msg text)", "log").await;
    let mut capture = start_capture(&db.hub_url().await, 1000).await;
    client
        .batch_execute(
            "insert into log values ('a'), ('b');
             update log set msg = msg || '2';
             delete from log where msg = 'a2';",
        )
        .await
        .unwrap();
    let got = changes(&mut capture, 5).await;
    let ops: Vec<&str> = got.iter().map(|c| c.op.as_str()).collect();
    assert_eq!(ops, ["INSERT", "INSERT", "UPDATE", "UPDATE", "DELETE"]);
    for c in &got[2..4] {
        let old = c.old_record.as_ref().unwrap()["msg"].as_str().unwrap();
        assert_eq!(c.record.as_ref().unwrap()["msg"], json!(format!("{old}2")));
    }
    capture.stop().await;
}

#[tokio::test]
async fn a_change_arrives_at_once_when_the_hub_is_idle_even_with_a_slow_poll() {
    let (db, client) = database("create table t (id int primary key)", "t").await;
    let mut capture =
        start_capture_polling(&db.hub_url().await, 1000, Duration::from_secs(60)).await;
    // Once the hub holds its lease, a writer's commit wakes it.
    wait_for_lease(&client).await;
    client
        .batch_execute("insert into t values (1)")
        .await
        .unwrap();
    let got = changes(&mut capture, 1).await;
    assert_eq!(id(&got[0].record), json!(1));
    capture.stop().await;
}

#[tokio::test]
async fn a_writer_that_ran_before_the_lease_is_read_without_waiting_for_the_poll() {
    let (db, client) = database("create table t (id int primary key)", "t").await;
    // This transaction writes while no hub holds a lease, so its commit sends no
    // wake-up; it commits only after the hub has taken its lease and gone quiet.
    let early = db.client().await;
    early
        .batch_execute("begin; insert into t values (1)")
        .await
        .unwrap();
    let mut capture =
        start_capture_polling(&db.hub_url().await, 1000, Duration::from_secs(60)).await;
    wait_for_lease(&client).await;
    early.batch_execute("commit").await.unwrap();
    let got = changes(&mut capture, 1).await;
    assert_eq!(id(&got[0].record), json!(1));
    capture.stop().await;
}

/// Waits until some hub holds a wake-up lease.
async fn wait_for_lease(client: &Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let held: bool = client
            .query_one(
                "select last_value > (extract(epoch from clock_timestamp()) * 1000)::bigint \
                 from realtime.wake_until",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if held {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no lease taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn columns_named_like_the_triggers_aliases_do_not_hide_the_row() {
    let (db, client) = database(
        "create table t (id int primary key, n int, o int, x int, r int, i int)",
        "t",
    )
    .await;
    let mut capture = start_capture(&db.hub_url().await, 1000).await;
    client
        .batch_execute(
            "insert into t values (1, 2, 3, 4, 5, 6);
             update t set n = 20;
             delete from t;",
        )
        .await
        .unwrap();
    let got = changes(&mut capture, 3).await;
    let row = json!({"id": 1, "n": 2, "o": 3, "x": 4, "r": 5, "i": 6});
    let updated = json!({"id": 1, "n": 20, "o": 3, "x": 4, "r": 5, "i": 6});
    let as_value = |r: &Option<serde_json::Map<String, Value>>| r.clone().map(Value::Object);
    assert_eq!(as_value(&got[0].record), Some(row.clone()));
    assert_eq!(
        (as_value(&got[1].old_record), as_value(&got[1].record)),
        (Some(row), Some(updated.clone()))
    );
    assert_eq!(as_value(&got[2].old_record), Some(updated));
    capture.stop().await;
}
