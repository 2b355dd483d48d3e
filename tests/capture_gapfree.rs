//! The capture delivers every committed change exactly once, in per-row order, under
//! concurrent writers with savepoints, rollbacks, pauses and a late-committing long
//! transaction; and rows of any size and tables of any name.

mod common;
#[path = "capture/load.rs"]
mod load;

use std::time::Duration;

use load::{
    assert_exactly_committed_traced, run_load, setup, start_capture, write_marker, LoadOpts,
};
use switchboard::capture::{prune, Cursor, Retention};
use switchboard::changes::{DbEvent, Op};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_change_arrives_exactly_once_in_row_order() {
    let db = common::pg::test_db().await;
    setup(&db.client().await).await;
    let mut capture = start_capture(&db.hub_url().await, 50).await;
    let opts = LoadOpts {
        writers: 10,
        duration: Duration::from_secs(4),
        long_tx: Some(Duration::from_secs(3)),
    };
    // The consumer keeps up here; capture_faults also has a slow one.
    let marker = 1;
    let (load, events) = tokio::join!(
        async {
            let load = run_load(&db.url, &opts).await;
            write_marker(&db.url, marker).await;
            load
        },
        capture.collect_until(marker, Duration::from_secs(90), Duration::ZERO),
    );
    assert!(
        load.committed.len() > 300,
        "too little load: {}",
        load.committed.len()
    );
    assert!(load.rolled_back_writes > 0, "no rolled-back writes to leak");
    assert_exactly_committed_traced(&load.committed, &events, &capture.pages);
    let status = capture.status.snapshot();
    assert!(status.batches > 1 && status.rows_read as usize >= load.committed.len());
    capture.stop().await;
}

#[tokio::test]
async fn a_one_megabyte_row_arrives_intact() {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    switchboard::db::migrate(&client).await.unwrap();
    client
        .batch_execute("create table docs (id int primary key, body text)")
        .await
        .unwrap();
    switchboard::db::enable(&client, "public.docs")
        .await
        .unwrap();
    let mut capture = start_capture(&db.hub_url().await, 1000).await;
    let body: String = (0..1_048_576u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    client
        .execute("insert into docs values (1, $1)", &[&body])
        .await
        .unwrap();
    let page = capture.next_events(Duration::from_secs(30)).await;
    let DbEvent::Change(change) = &page[0] else {
        panic!("expected a change, got {page:?}")
    };
    let record = change.record.as_ref().unwrap();
    assert_eq!(record["body"].as_str(), Some(body.as_str()));
    capture.stop().await;
}

#[tokio::test]
async fn tables_with_quotes_semicolons_and_unicode_in_their_names_are_captured() {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    switchboard::db::migrate(&client).await.unwrap();
    client
        .batch_execute(
            r#"create schema "sch ✓;""x";
               create table "sch ✓;""x"."we""ird; tbl ✓" (id int primary key, v text);"#,
        )
        .await
        .unwrap();
    let name = r#""sch ✓;""x"."we""ird; tbl ✓""#;
    switchboard::db::enable(&client, name).await.unwrap();
    switchboard::db::enable(&client, name).await.unwrap();
    assert_eq!(
        enabled_tables(&client).await,
        vec![("sch ✓;\"x".to_string(), "we\"ird; tbl ✓".to_string())]
    );

    let mut capture = start_capture(&db.hub_url().await, 1000).await;
    client
        .batch_execute(r#"insert into "sch ✓;""x"."we""ird; tbl ✓" values (7, 'ok')"#)
        .await
        .unwrap();
    let page = capture.next_events(Duration::from_secs(30)).await;
    let DbEvent::Change(change) = &page[0] else {
        panic!("expected a change, got {page:?}")
    };
    assert_eq!(
        (change.schema.as_str(), change.table.as_str(), change.op),
        ("sch ✓;\"x", "we\"ird; tbl ✓", Op::Insert)
    );
    assert_eq!(change.record.as_ref().unwrap()["v"], "ok");

    switchboard::db::disable(&client, name).await.unwrap();
    switchboard::db::disable(&client, name).await.unwrap();
    assert!(enabled_tables(&client).await.is_empty());
    capture.stop().await;
}

#[tokio::test]
async fn enabling_a_missing_table_names_it_in_the_error() {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    switchboard::db::migrate(&client).await.unwrap();
    let err = switchboard::db::enable(&client, "public.deals")
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), r#"table "public.deals" does not exist"#);
}

#[tokio::test]
async fn enabling_before_migrating_says_to_migrate() {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    client
        .batch_execute("create table deals (id int)")
        .await
        .unwrap();
    let err = switchboard::db::enable(&client, "deals").await.unwrap_err();
    assert!(
        matches!(err, switchboard::db::DbError::NotMigrated),
        "{err}"
    );
}

#[tokio::test]
async fn migrations_apply_once_and_rerunning_every_file_changes_nothing() {
    let db = common::pg::test_db().await;
    let (a, b) = (db.client().await, db.client().await);
    let (ra, rb) = tokio::join!(switchboard::db::migrate(&a), switchboard::db::migrate(&b));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let mut all = [ra.clone(), rb.clone()].concat();
    all.sort();
    let recorded: Vec<i32> = a
        .query(
            "select version from realtime.switchboard_migrations order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(all, recorded, "each migration applied once: {ra:?} {rb:?}");
    assert!(switchboard::db::migrate(&a).await.unwrap().is_empty());
    // Files whose objects later migrations reshape (002, 012 and 020 define the
    // `enabled_tables` view that 020 and then 057 extend, 010 the `visible_to` that 022
    // extends) cannot be replayed over a newer schema; they never are (each version runs
    // once).
    for file in [
        "001_changes_log.sql",
        "003_roles_auth.sql",
        "021_messages.sql",
        "022_row_scope_problems.sql",
        "040_hub_role.sql",
        "057_publication_events.sql",
        "058_partitions.sql",
        "059_ddl_by_any_role.sql",
        "061_sync_lock.sql",
        "060_search_path.sql",
        "062_capture_sources_by_name.sql",
        "063_json_casts.sql",
    ] {
        let sql =
            std::fs::read_to_string(format!("{}/sql/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        a.batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("re-running {file}: {e}"));
    }
}

#[tokio::test]
async fn realtime_send_is_delivered_as_a_broadcast() {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    switchboard::db::migrate(&client).await.unwrap();
    let mut capture = start_capture(&db.hub_url().await, 1000).await;
    client
        .execute(
            "select realtime.send('{\"n\": 1}'::jsonb, 'ping', 'room:1', false)",
            &[],
        )
        .await
        .unwrap();
    let page = capture.next_events(Duration::from_secs(30)).await;
    let DbEvent::Broadcast(b) = &page[0] else {
        panic!("expected a broadcast, got {page:?}")
    };
    assert_eq!(
        (
            b.topic.as_str(),
            b.event.as_str(),
            b.private,
            &b.payload["n"]
        ),
        ("room:1", "ping", false, &serde_json::json!(1))
    );
    // realtime.send adds the message id to the payload, as Supabase's does.
    assert_eq!(b.payload["id"].as_str(), Some(b.id.as_str()));
    capture.stop().await;
}

#[tokio::test]
async fn changes_committed_before_the_capture_started_are_not_delivered() {
    let (db, client) = notes_db().await;
    client
        .batch_execute("insert into notes values (1)")
        .await
        .unwrap();
    let mut capture = start_capture(&db.hub_url().await, 1000).await;
    client
        .batch_execute("insert into notes values (2)")
        .await
        .unwrap();
    let page = capture.next_events(Duration::from_secs(30)).await;
    let ids: Vec<_> = page
        .iter()
        .map(|e| match e {
            DbEvent::Change(c) => c.record.as_ref().unwrap()["id"].clone(),
            DbEvent::Broadcast(_) => serde_json::Value::Null,
        })
        .collect();
    assert_eq!(ids, vec![serde_json::json!(2)]);
    capture.stop().await;
}

#[tokio::test]
async fn retention_deletes_only_old_rows_the_cursor_has_passed() {
    let (db, client) = notes_db().await;
    let open_tx = db.client().await;
    client
        .batch_execute("insert into notes values (1); insert into notes values (2)")
        .await
        .unwrap();
    // Still running when the cursor is taken: its row is unread and must survive.
    open_tx
        .batch_execute("begin; insert into notes values (3)")
        .await
        .unwrap();
    let snapshot: String = client
        .query_one("select pg_current_snapshot()::text", &[])
        .await
        .unwrap()
        .get(0);
    let cursor = Cursor::from_pg_snapshot(&snapshot).unwrap();
    client
        .batch_execute("insert into notes values (4)")
        .await
        .unwrap();
    open_tx.batch_execute("commit").await.unwrap();

    let keep = |secs| Retention {
        keep: Duration::from_secs(secs),
        ..Retention::default()
    };
    // As the hub prunes: superuser or the authenticator role, whichever it runs as.
    let hub = db.hub_client().await;
    let kept = prune(&hub, &cursor, &keep(3600)).await.unwrap();
    assert_eq!(kept.deleted, 0, "rows younger than the retention are kept");
    let deleted = prune(&hub, &cursor, &keep(0)).await.unwrap();
    assert_eq!(deleted.deleted, 2);
    assert_eq!(notes_left(&client).await, [3, 4]);
}

/// Holds: a row goes once every live hold has read it (a durable reader's hold only up to
/// the cap, past which that reader is marked lost; a node's always); expired holds count
/// for nothing, however many there are.
#[tokio::test]
async fn retention_waits_for_live_holds_and_marks_readers_it_passes_at_the_cap() {
    let (db, client) = notes_db().await;
    let snapshot = || async {
        let s: String = client
            .query_one("select pg_current_snapshot()::text", &[])
            .await
            .unwrap()
            .get(0);
        s
    };
    let mut seen = Vec::new();
    for id in 1..=3 {
        client
            .execute("insert into notes values ($1)", &[&id])
            .await
            .unwrap();
        seen.push(snapshot().await);
    }
    let hold = "insert into realtime.log_holds (kind, holder, snapshot, expires_at) \
                values ($1, $2, $3::text::pg_snapshot, now() + make_interval(secs => $4))";
    // A durable reader that has read row 1, another hub that has read rows 1 and 2, and
    // many expired holds that have read nothing.
    client
        .execute(hold, &[&"resume", &"reader", &seen[0], &3600.0f64])
        .await
        .unwrap();
    client
        .execute(hold, &[&"node", &"other-hub", &seen[1], &3600.0f64])
        .await
        .unwrap();
    client
        .batch_execute(
            "insert into realtime.log_holds (kind, holder, snapshot, expires_at) \
             select 'resume', 'gone-' || i, '1:1:'::pg_snapshot, now() - interval '1 hour' \
             from generate_series(1, 2000) i",
        )
        .await
        .unwrap();
    let cursor = Cursor::from_pg_snapshot(&seen[2]).unwrap();
    let hub = db.hub_client().await;
    let retention = |cap| Retention {
        keep: Duration::ZERO,
        cap: Duration::from_secs(cap),
        ..Retention::default()
    };
    let pruned = prune(&hub, &cursor, &retention(3600)).await.unwrap();
    assert_eq!((pruned.deleted, pruned.lost), (1, 0));
    assert_eq!(
        notes_left(&client).await,
        [2, 3],
        "row 2 waits for the reader, row 3 for the hub"
    );
    let pruned = prune(&hub, &cursor, &retention(0)).await.unwrap();
    assert_eq!((pruned.deleted, pruned.lost), (1, 1));
    assert_eq!(
        notes_left(&client).await,
        [3],
        "past the cap only the other hub holds a row back"
    );
    let lost: Vec<String> = client
        .query(
            "select holder from realtime.log_holds where lost_at is not null",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(lost, ["reader"]);
}

/// A migrated database with table `notes (id int primary key)` captured.
async fn notes_db() -> (common::pg::TestDb, tokio_postgres::Client) {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    switchboard::db::migrate(&client).await.unwrap();
    client
        .batch_execute("create table notes (id int primary key)")
        .await
        .unwrap();
    switchboard::db::enable(&client, "notes").await.unwrap();
    (db, client)
}

/// The ids of the `notes` rows still in the log, in order.
async fn notes_left(client: &tokio_postgres::Client) -> Vec<i32> {
    client
        .query(
            "select (rows->0->>'id')::int from realtime.changes order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// (schema, table) of every row of the `realtime.enabled_tables` view.
async fn enabled_tables(client: &tokio_postgres::Client) -> Vec<(String, String)> {
    client
        .query(
            "select schema_name, table_name from realtime.enabled_tables order by 1, 2",
            &[],
        )
        .await
        .expect("realtime.enabled_tables")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}
