//! The hub's page read (`sql/053_read_page.sql`) finds what is new through the xid index
//! whatever Postgres knows about the log. Without statistics (a log never analyzed) the
//! planner used to read the whole log for every read, in id order: several milliseconds a
//! read at tens of thousands of rows, hundreds of reads a second while writers are busy.
//! So did a resume's reads of its gap, which scanned the whole log once per resume.

mod common;

use switchboard::capture::{
    current_position, entries_between, next_events, LogTables, Statements, READ_RANGE_SQL,
};
use switchboard::changes::into_events;

/// A log of 40,000 rows of about 300 bytes, vacuumed (so Postgres knows its size, as
/// after autovacuum's insert-triggered vacuum) but without column statistics (as before
/// its first analyze).
async fn unanalyzed_log() -> (common::pg::TestDb, tokio_postgres::Client) {
    let db = common::pg::test_db().await;
    let sql = db.client().await;
    switchboard::db::migrate(&sql).await.expect("migrate");
    sql.batch_execute(
        "insert into realtime.changes (op, schema_name, table_name, rows) \
             select 'INSERT', 'public', 'jobs', \
                    pg_catalog.json_build_array(pg_catalog.json_build_object( \
                        'id', g, 'body', pg_catalog.repeat('x', 250))) \
             from generate_series(1, 40000) g",
    )
    .await
    .expect("a log of 40,000 rows");
    sql.batch_execute("vacuum realtime.changes")
        .await
        .expect("vacuum");
    sql.batch_execute(
        "delete from pg_catalog.pg_statistic where starelid = 'realtime.changes'::regclass",
    )
    .await
    .expect("no column statistics");
    (db, sql)
}

async fn one_new_row(sql: &tokio_postgres::Client) {
    sql.batch_execute(
        "insert into realtime.changes (op, schema_name, table_name, rows) \
             values ('INSERT', 'public', 'jobs', '[{\"id\": 1}]')",
    )
    .await
    .expect("one new row");
}

/// Flushes `reader`'s scan counts to the shared stats (those of its last statement reach
/// them at its end, so one more statement follows).
async fn flush(reader: &tokio_postgres::Client) {
    reader
        .batch_execute("select pg_stat_force_next_flush()")
        .await
        .expect("flush");
    reader.batch_execute("select 1").await.expect("flush");
}

/// No read walked the log by id or in full, and at least `reads` went through the xid
/// index, between `before` and `after` (`scans`).
fn assert_xid_index_only(before: (i64, i64, i64), after: (i64, i64, i64), reads: i64) {
    assert_eq!(
        (after.1 - before.1, after.2 - before.2),
        (0, 0),
        "no read walked the log by id or in full (before {before:?}, after {after:?})"
    );
    assert!(
        after.0 - before.0 >= reads,
        "every read went through the xid index (before {before:?}, after {after:?})"
    );
}

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
    let (db, sql) = unanalyzed_log().await;
    let reader = db.hub_client().await;
    let stmts = Statements::prepare(&reader).await.expect("prepare");
    let mut position = current_position(&reader).await.expect("position");
    one_new_row(&sql).await;

    flush(&reader).await;
    let before = scans(&sql).await;
    let mut read = Vec::new();
    for _ in 0..3 {
        let events = next_events(&reader, &stmts, &mut position, 500)
            .await
            .expect("read");
        read.push(events.len());
    }
    assert_eq!(read, [1, 0, 0], "the new row, once");
    flush(&reader).await;
    assert_xid_index_only(before, scans(&sql).await, 3);
}

#[tokio::test]
async fn a_resumes_reads_of_its_gap_use_the_xid_index_on_a_log_without_statistics() {
    let (db, sql) = unanalyzed_log().await;
    let mut reader = db.hub_client().await;
    let range = reader.prepare(READ_RANGE_SQL).await.expect("prepare");
    let from = current_position(&reader).await.expect("position");
    one_new_row(&sql).await;
    let until = current_position(&reader).await.expect("position");

    flush(&reader).await;
    let before = scans(&sql).await;
    let page = common::pg::range_read(&mut reader, &range, &from, &until).await;
    let gap = into_events(page.entries);
    assert_eq!((gap.len(), page.over), (1, false), "the new row, once");
    flush(&reader).await;
    assert_xid_index_only(before, scans(&sql).await, 1);
}

/// A migrated database, a superuser connection, the hub's connection with the range
/// read prepared, and the position now.
async fn range_reader() -> (
    common::pg::TestDb,
    tokio_postgres::Client,
    tokio_postgres::Client,
    tokio_postgres::Statement,
    switchboard::capture::Position,
) {
    let db = common::pg::test_db().await;
    let sql = db.client().await;
    switchboard::db::migrate(&sql).await.expect("migrate");
    let reader = db.hub_client().await;
    let range = reader.prepare(READ_RANGE_SQL).await.expect("prepare");
    let from = current_position(&reader).await.expect("position");
    (db, sql, reader, range, from)
}

/// A range read stops once its rows hold more events than asked for (a gap too large to
/// replay is not read whole), and the connection it read on is usable at once.
#[tokio::test]
async fn a_range_read_stops_past_its_event_limit_and_leaves_the_connection_usable() {
    let (_db, sql, mut reader, range, from) = range_reader().await;
    // Three log rows of 10 rows each.
    for _ in 0..3 {
        sql.batch_execute(
            "insert into realtime.changes (op, schema_name, table_name, rows) \
             select 'INSERT', 'public', 'jobs', pg_catalog.json_agg(pg_catalog.json_build_object('id', g)) \
             from generate_series(1, 10) g",
        )
        .await
        .expect("a 10-row statement");
    }
    let until = current_position(&reader).await.expect("position");

    let all = LogTables::all();
    let mut read = async |max_events: usize| {
        entries_between(&mut reader, &range, &from, &until, &all, max_events)
            .await
            .expect("range")
    };
    let whole = read(30).await;
    assert_eq!((whole.entries.len(), whole.over), (3, false));
    let cut = read(15).await;
    assert_eq!(
        (cut.entries.len(), cut.over),
        (2, true),
        "20 events > 15: stopped at the second row"
    );
    let one_row = read(9).await;
    assert_eq!((one_row.entries.len(), one_row.over), (1, true));
    // The same connection reads again.
    let again = read(30).await;
    assert_eq!(again.entries.len(), 3);
}

/// Index entries of the log's xid index that scans have read, as Postgres counted them.
async fn xid_entries_read(sql: &tokio_postgres::Client) -> i64 {
    sql.query_one(
        "select idx_tup_read from pg_stat_user_indexes where indexrelname = 'changes_xid_idx'",
        &[],
    )
    .await
    .expect("entries read")
    .get(0)
}

/// A resume's gap ends where the hub's position stands: its read stops the xid index
/// scan there, instead of reading on through every row committed since
/// (which grows for as long as a reconnect storm lasts).
#[tokio::test]
async fn a_resumes_reads_of_its_gap_skip_rows_committed_after_it() {
    let (_db, sql, mut reader, range, from) = range_reader().await;
    one_new_row(&sql).await;
    one_new_row(&sql).await;
    let until = current_position(&reader).await.expect("position");
    sql.batch_execute(
        "insert into realtime.changes (op, schema_name, table_name, rows) \
             select 'INSERT', 'public', 'jobs', '[{\"id\": 1}]' from generate_series(1, 2000)",
    )
    .await
    .expect("2,000 rows after the gap");

    flush(&reader).await;
    let before = xid_entries_read(&sql).await;
    let page = common::pg::range_read(&mut reader, &range, &from, &until).await;
    flush(&reader).await;
    let entries_read = xid_entries_read(&sql).await - before;
    assert_eq!(page.entries.len(), 2, "the gap's two rows");
    let changes: Vec<_> = into_events(page.entries)
        .into_iter()
        .map(|e| match e {
            switchboard::changes::DbEvent::Change(c) => (c.id, c.commit_time),
            other => panic!("a change: {other:?}"),
        })
        .collect();
    let ids: Vec<i64> = changes.iter().map(|(id, _)| *id).collect();
    let times: Vec<(i64, chrono::DateTime<chrono::Utc>)> = sql
        .query(
            "select id, realtime.commit_time(xid, created_at) from realtime.changes \
             where id = any($1) order by id",
            &[&ids],
        )
        .await
        .expect("commit times")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(changes, times, "each change's time is commit_time()'s");
    assert!(
        entries_read <= 2,
        "the read met only the gap's index entries, not the 2,000 after it: {entries_read}"
    );
}

/// A range read for some tables returns their changes and every broadcast, and no
/// change of another table.
#[tokio::test]
async fn a_range_read_for_some_tables_returns_their_changes_and_every_broadcast() {
    let (_db, sql, mut reader, range, from) = range_reader().await;
    sql.batch_execute(
        "insert into realtime.changes (op, schema_name, table_name, rows) values \
             ('INSERT', 'public', 'jobs', '[{\"id\": 1}]'), \
             ('INSERT', 'public', 'notes', '[{\"id\": 2}]'), \
             ('INSERT', 'crm', 'jobs', '[{\"id\": 3}]'), \
             ('INSERT', 'crm', 'contacts', '[{\"id\": 4}]'), \
             ('INSERT', 'a.b', 'c', '[{\"id\": 6}]'), \
             ('INSERT', 'a', 'b.c', '[{\"id\": 7}]'); \
         insert into realtime.changes (op, topic, event, private, record) \
             values ('BROADCAST', 'room', 'said', false, '{\"id\": 5}')",
    )
    .await
    .expect("log rows");
    let until = current_position(&reader).await.expect("position");
    let mut ids = async |tables: LogTables| {
        let page = entries_between(&mut reader, &range, &from, &until, &tables, usize::MAX)
            .await
            .expect("range");
        into_events(page.entries)
            .into_iter()
            .map(|e| match e {
                switchboard::changes::DbEvent::Change(c) => c.record.unwrap()["id"].clone(),
                switchboard::changes::DbEvent::Broadcast(b) => b.payload["id"].clone(),
            })
            .collect::<Vec<_>>()
    };
    let table = |s: &str, t: &str| (s.to_owned(), t.to_owned());
    assert_eq!(ids(LogTables::all()).await, [1, 2, 3, 4, 6, 7, 5]);
    assert_eq!(ids(LogTables::default()).await, [5], "broadcasts alone");
    let one = LogTables {
        tables: vec![table("public", "jobs")],
        ..LogTables::default()
    };
    assert_eq!(ids(one).await, [1, 5]);
    let mixed = LogTables {
        schemas: vec!["crm".into()],
        tables: vec![table("public", "notes")],
        ..LogTables::default()
    };
    assert_eq!(ids(mixed).await, [2, 3, 4, 5]);
    let dotted = LogTables {
        tables: vec![table("a", "b.c")],
        ..LogTables::default()
    };
    assert_eq!(ids(dotted).await, [7, 5], "a.b / c is another table");
}
