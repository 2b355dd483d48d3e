//! A partitioned table captured as itself also logs what is written straight into its
//! partitions (sql/065_partition_roots.sql), read from the log itself: whatever the
//! writer's snapshot, under the table's current name, never for a partition no longer
//! below it, and the upkeep settles beside what it cannot or may not change.

mod common;

use serde_json::Value;
use tokio_postgres::Client;

const TREE: &str = "
create table public.ev (id bigint, v text) partition by range (id);
create table public.ev_low partition of public.ev for values from (0) to (100);
create table public.ev_high partition of public.ev for values from (100) to (1000);
";

/// A migrated database holding `ddl`.
async fn database(ddl: &str) -> (common::pg::TestDb, Client) {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    switchboard::db::migrate(&client).await.unwrap();
    client.batch_execute(ddl).await.unwrap();
    (db, client)
}

/// (table, ids) of each log row, in log order.
async fn logged(client: &Client) -> Vec<(String, Vec<i64>)> {
    client
        .query(
            "select table_name, coalesce(rows, old_rows) from realtime.changes order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let rows: Value = r.get(1);
            let ids = rows
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row["id"].as_i64().unwrap())
                .collect();
            (r.get(0), ids)
        })
        .collect()
}

fn entry(table: &str, ids: &[i64]) -> (String, Vec<i64>) {
    (table.to_string(), ids.to_vec())
}

/// (name, function, oid) of each trigger on `table`, by name.
async fn triggers(client: &Client, table: &str) -> Vec<(String, String, i64)> {
    client
        .query(
            "select tgname::text, tgfoid::regproc::text, oid::bigint from pg_catalog.pg_trigger \
             where tgrelid = $1::text::regclass order by 1",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn drift(client: &Client) -> i64 {
    client
        .query_one(
            "select count(*) from realtime.partition_root_drift(null, true)",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The triggers fire by the current catalog, as Postgres fires them: a REPEATABLE READ
/// writer whose snapshot was taken before the table was captured logs its rows all the
/// same.
#[tokio::test]
async fn a_writer_whose_snapshot_predates_the_capture_logs_its_rows_straight_into_a_partition() {
    let (db, admin) = database(TREE).await;
    let writer = db.client().await;
    writer
        .batch_execute("begin isolation level repeatable read; select count(*) from public.ev_low;")
        .await
        .unwrap();
    admin
        .batch_execute("select realtime.enable('public.ev')")
        .await
        .unwrap();
    writer
        .batch_execute("insert into public.ev_low values (1, 'old snapshot'); commit;")
        .await
        .unwrap();
    assert_eq!(logged(&admin).await, [entry("ev", &[1])]);
}

/// Rows carry the captured table's name at the time they are written; a partition that
/// left the tree logs nothing under it, even while its triggers are still there (the event
/// trigger off, so no sync ran), and the next sync takes them away.
#[tokio::test]
async fn rows_carry_the_current_name_and_a_detached_partition_logs_nothing() {
    let (_db, client) = database(TREE).await;
    client
        .batch_execute(
            "select realtime.enable('public.ev');
             alter table public.ev rename to ev2;
             insert into public.ev_low values (1, 'renamed');
             alter event trigger switchboard_publication_sync disable;
             alter table public.ev2 detach partition public.ev_high;
             insert into public.ev_high values (100, 'detached');
             insert into public.ev_low values (2, 'still below');",
        )
        .await
        .unwrap();
    assert_eq!(
        logged(&client).await,
        [entry("ev2", &[1]), entry("ev2", &[2])]
    );
    let stale = triggers(&client, "public.ev_high").await.len();
    assert_eq!(stale, 3, "no sync ran, so the triggers are still there");
    assert_eq!(drift(&client).await, 1);
    let changed: i32 = client
        .query_one("select realtime.sync_publication()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(changed, 1);
    assert_eq!(drift(&client).await, 0);
    assert!(triggers(&client, "public.ev_high").await.is_empty());
}

/// A captured table inside another: a statement straight into the partition below both
/// is logged under each, nearest first.
#[tokio::test]
async fn a_partition_below_two_captured_tables_is_logged_under_each() {
    let (_db, client) = database(
        "create table public.ev (id bigint, v text) partition by range (id);
         create table public.ev_mid partition of public.ev
             for values from (0) to (1000) partition by range (id);
         create table public.ev_leaf partition of public.ev_mid for values from (0) to (500);",
    )
    .await;
    client
        .batch_execute(
            "select realtime.enable('public.ev');
             select realtime.enable('public.ev_mid');
             insert into public.ev_leaf values (1, 'x'), (2, 'y');",
        )
        .await
        .unwrap();
    assert_eq!(
        logged(&client).await,
        [entry("ev_mid", &[1, 2]), entry("ev", &[1, 2])]
    );
}

/// Foreign-table partitions take no triggers and another's trigger with one of the names
/// is kept: the partition is warned about and left uncaptured, the others are captured,
/// and the upkeep settles on everything it can change.
#[tokio::test]
async fn the_upkeep_settles_beside_foreign_partitions_and_another_trigger_of_the_same_name() {
    let (_db, client) = database(
        "create extension if not exists postgres_fdw;
         create server nowhere foreign data wrapper postgres_fdw;
         create table public.ev (id bigint, v text) partition by range (id);
         create table public.ev_low partition of public.ev for values from (0) to (100);
         create foreign table public.ev_far partition of public.ev
             for values from (5000) to (6000) server nowhere;
         create table public.ev_mid partition of public.ev
             for values from (1000) to (3000) partition by range (id);
         create table public.ev_mid_a partition of public.ev_mid for values from (1000) to (2000);
         create foreign table public.ev_mid_far partition of public.ev_mid
             for values from (2000) to (3000) server nowhere;
         create function public.mine() returns trigger language plpgsql
             as $$ begin return null; end $$;
         create table public.ev_mine (id bigint, v text);
         create trigger switchboard_root_insert after insert on public.ev_mine
             for each statement execute function public.mine();",
    )
    .await;
    client
        .batch_execute(
            "select realtime.enable('public.ev');
             alter table public.ev attach partition public.ev_mine for values from (100) to (200);",
        )
        .await
        .unwrap();
    let mine: Vec<(String, String)> = triggers(&client, "public.ev_mine")
        .await
        .into_iter()
        .map(|(name, function, _)| (name, function))
        .collect();
    assert_eq!(
        mine,
        [("switchboard_root_insert".to_string(), "mine".to_string())]
    );
    assert_eq!(
        drift(&client).await,
        1,
        "only the partition with the taken name"
    );
    // A statement through ev_mid could reach its foreign partition, for which Postgres
    // refuses transition tables: ev_mid takes no triggers, the table below it does.
    assert!(triggers(&client, "public.ev_mid").await.is_empty());
    assert_eq!(triggers(&client, "public.ev_mid_a").await.len(), 3);
    assert!(triggers(&client, "public.ev_far").await.is_empty());
    // A foreign table made a partition later takes them off the table above it at once.
    client
        .batch_execute(
            "create table public.ev_mid2 partition of public.ev
                 for values from (3000) to (5000) partition by range (id);
             create table public.ev_mid2_a partition of public.ev_mid2
                 for values from (3000) to (4000);",
        )
        .await
        .unwrap();
    assert_eq!(triggers(&client, "public.ev_mid2").await.len(), 3);
    client
        .batch_execute(
            "create foreign table public.ev_mid2_far partition of public.ev_mid2
                 for values from (4000) to (5000) server nowhere;",
        )
        .await
        .unwrap();
    assert!(triggers(&client, "public.ev_mid2").await.is_empty());
    assert_eq!(triggers(&client, "public.ev_mid2_a").await.len(), 3);
    client
        .batch_execute(
            "alter table public.ev detach partition public.ev_mine;
             insert into public.ev_low values (1, 'x');",
        )
        .await
        .unwrap();
    assert_eq!(drift(&client).await, 0);
    assert_eq!(logged(&client).await, [entry("ev", &[1])]);
}

/// A partition missing one of its triggers gets that one made again; the others are kept
/// as they are (dropping one locks the partition against readers too).
#[tokio::test]
async fn a_missing_trigger_is_made_again_and_the_others_are_kept() {
    let (_db, client) = database(TREE).await;
    client
        .batch_execute("select realtime.enable('public.ev')")
        .await
        .unwrap();
    let before = triggers(&client, "public.ev_low").await;
    client
        .batch_execute(
            "alter event trigger switchboard_publication_sync disable;
             drop trigger switchboard_root_update on public.ev_low;
             select realtime.sync_publication();",
        )
        .await
        .unwrap();
    let after = triggers(&client, "public.ev_low").await;
    let names = |v: &[(String, String, i64)]| v.iter().map(|t| t.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before));
    for ((name, _, old), (_, _, new)) in before.iter().zip(&after) {
        assert_eq!(old == new, name != "switchboard_root_update", "{name}");
    }
    client
        .batch_execute("update public.ev_low set v = 'y'; insert into public.ev_low values (1, 'x'); update public.ev_low set v = 'z';")
        .await
        .unwrap();
    assert_eq!(
        logged(&client).await,
        [entry("ev", &[1]), entry("ev", &[1])]
    );
}

/// A table is captured when it has the capture trigger, told by its function: another
/// role's own trigger that is merely named like it gets its partitions nothing.
#[tokio::test]
async fn a_trigger_named_like_the_capture_trigger_captures_nothing_below_it() {
    let (_db, client) = database(
        "create function public.mine() returns trigger language plpgsql
             as $$ begin return null; end $$;
         create table public.m (id bigint, v text) partition by range (id);
         create trigger switchboard_capture_insert after insert on public.m
             for each statement execute function public.mine();
         create table public.m_a partition of public.m for values from (0) to (100);
         insert into public.m_a values (1, 'x');",
    )
    .await;
    assert!(triggers(&client, "public.m_a").await.is_empty());
    assert_eq!(drift(&client).await, 0);
    assert_eq!(logged(&client).await, []);
}

/// The event trigger's work does not depend on the session's settings: with
/// `standard_conforming_strings` off, a partition created under a captured table is
/// captured in the same transaction.
#[tokio::test]
async fn a_partition_made_with_standard_conforming_strings_off_is_captured() {
    let (_db, client) = database(TREE).await;
    client
        .batch_execute(
            "select realtime.enable('public.ev');
             set standard_conforming_strings = off;
             create table public.ev_top partition of public.ev for values from (1000) to (2000);
             insert into public.ev_top values (1001, 'x');",
        )
        .await
        .unwrap();
    assert_eq!(logged(&client).await, [entry("ev", &[1001])]);
}

/// At the end of another role's DDL the event trigger puts right only the tables that DDL
/// touched: a partition that drifted elsewhere is neither locked nor changed inside that
/// transaction, and is left to the hub's sync.
#[tokio::test]
async fn unrelated_ddl_locks_no_partition_it_did_not_touch() {
    let (_db, client) = database(TREE).await;
    client
        .batch_execute(
            "select realtime.enable('public.ev');
             alter event trigger switchboard_publication_sync disable;
             drop trigger switchboard_root_update on public.ev_low;
             alter event trigger switchboard_publication_sync enable;",
        )
        .await
        .unwrap();
    client
        .batch_execute("begin; create table public.unrelated (id int);")
        .await
        .unwrap();
    let locked: i64 = client
        .query_one(
            "select count(*) from pg_catalog.pg_locks \
             where pid = pg_catalog.pg_backend_pid() and relation = 'public.ev_low'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(locked, 0);
    assert_eq!(drift(&client).await, 1);
    client.batch_execute("commit").await.unwrap();
}

/// A partition's owner may disable its triggers (or set them to fire on replicas only):
/// the event trigger makes them again at the end of that ALTER TABLE, and without it the
/// next sync does.
#[tokio::test]
async fn a_disabled_trigger_is_made_again() {
    let (_db, client) = database(TREE).await;
    client
        .batch_execute(
            "select realtime.enable('public.ev');
             alter table public.ev_low disable trigger switchboard_root_insert;
             insert into public.ev_low values (1, 'x');
             alter event trigger switchboard_publication_sync disable;
             alter table public.ev_high disable trigger switchboard_root_insert;
             alter table public.ev_low enable replica trigger switchboard_root_update;",
        )
        .await
        .unwrap();
    assert_eq!(
        drift(&client).await,
        2,
        "ev_high's and ev_low's, with no event trigger"
    );
    client
        .batch_execute(
            "select realtime.sync_publication();
             insert into public.ev_high values (100, 'y');",
        )
        .await
        .unwrap();
    assert_eq!(drift(&client).await, 0);
    assert_eq!(
        logged(&client).await,
        [entry("ev", &[1]), entry("ev", &[100])]
    );
}
