//! The hub's page read (`sql/053_read_page.sql`) finds what is new through the xid index
//! whatever Postgres knows about the log. Without statistics (a log never analyzed) the
//! planner used to read the whole log for every read, in id order: several milliseconds a
//! read at tens of thousands of rows, hundreds of reads a second while writers are busy.

mod common;

use switchboard::capture::{current_position, next_events, Statements};

/// Scans of the log through each of its indexes, and in full, as Postgres counted them.
async fn scans(sql: &tokio_postgres::Client) -> (i64, i64, i64) {
    let row = sql
        .query_one(
            "select (select idx_scan from pg_stat_user_indexes where indexrelname = 'changes_xid_idx'), \
                    (select idx_scan from pg_stat_user_indexes where indexrelname = 'changes_pkey'), \
                    (select seq_scan from pg_stat_user_tables \
                      where schemaname = 'realtime' and relname = 'changes')",
            &[],
        )
        .await
        .expect("scan counts");
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test]
async fn the_page_read_uses_the_xid_index_on_a_log_without_statistics() {
    let db = common::pg::test_db().await;
    let sql = db.client().await;
    switchboard::db::migrate(&sql).await.expect("migrate");
    sql.batch_execute(
        "insert into realtime.changes (op, schema_name, table_name, rows) \
             select 'INSERT', 'public', 'jobs', '[]' from generate_series(1, 20000); \
         delete from pg_catalog.pg_statistic where starelid = 'realtime.changes'::regclass",
    )
    .await
    .expect("a log of 20,000 rows, never analyzed");
    let reader = db.hub_client().await;
    let stmts = Statements::prepare(&reader).await.expect("prepare");
    let mut position = current_position(&reader).await.expect("position");
    sql.batch_execute(
        "insert into realtime.changes (op, schema_name, table_name, rows) \
             values ('INSERT', 'public', 'jobs', '[{\"id\": 1}]')",
    )
    .await
    .expect("one new row");

    let before = scans(&sql).await;
    let mut read = Vec::new();
    for _ in 0..3 {
        reader
            .batch_execute("select pg_stat_force_next_flush()")
            .await
            .expect("flush");
        let events = next_events(&reader, &stmts, &mut position, 500)
            .await
            .expect("read");
        read.push(events.len());
    }
    assert_eq!(read, [1, 0, 0], "the new row, once");
    reader
        .batch_execute("select pg_stat_force_next_flush()")
        .await
        .expect("flush");
    // The counts of the reader's last statement reach the shared stats at its end.
    reader.batch_execute("select 1").await.expect("flush");
    let after = scans(&sql).await;
    assert_eq!(
        (after.1 - before.1, after.2 - before.2),
        (0, 0),
        "no read walked the log by id or in full (before {before:?}, after {after:?})"
    );
    assert!(
        after.0 - before.0 >= 3,
        "every read went through the xid index (before {before:?}, after {after:?})"
    );
}
