//! Capture by logical decoding (`switchboard::capture::decoding`), against the capture
//! trigger it is to replace: a table both captured by the trigger and published to a
//! `pgoutput` slot; the slot's changes, written into `realtime.changes` by `LogRows`,
//! must be the trigger's own log rows, JSON text and all, for every kind of column and
//! statement. Also: a slot read again after a restart logs nothing twice, changes
//! written before their table changed are still logged, and the streaming reader logs
//! every commit once across lost connections and its own restart.
//!
//! The cluster runs with `wal_level=logical` (`common::pg::logical_cluster`).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use switchboard::capture::decoding::{
    self, parse, written_position, LogRows, ReaderConfig, ReaderStats, Written,
};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// A migrated database on the logical cluster, with `ddl` applied, `table` captured by
/// the trigger and published (replica identity FULL) to a new `pgoutput` slot `slot`.
async fn database(ddl: &str, table: &str, slot: &str) -> Client {
    published(ddl, table, slot, true).await.0
}

/// As `database`, with the trigger only when `trigger`; also the database's URL.
async fn published(ddl: &str, table: &str, slot: &str, trigger: bool) -> (Client, String) {
    let url = common::pg::logical_cluster().await.create_db().await;
    let client = common::pg::connect(&url).await;
    switchboard::db::migrate(&client).await.unwrap();
    client.batch_execute(ddl).await.unwrap();
    if trigger {
        switchboard::db::enable(&client, table).await.unwrap();
    }
    client
        .batch_execute(&format!(
            "alter table {table} replica identity full;
             create publication p for table {table};"
        ))
        .await
        .unwrap();
    // On its own: a slot is not made in a transaction that has written.
    client
        .execute(
            "select pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    (client, url)
}

/// Everything in `slot` from its start (a peek: the slot is not advanced, as after a
/// restart before its position was confirmed), taken in by `rows` and written.
async fn log_slot(client: &Client, slot: &str, rows: &mut LogRows) -> Written {
    let messages = client
        .query(
            "select data from pg_logical_slot_peek_binary_changes($1, null, null, \
             'proto_version', '1', 'publication_names', 'p')",
            &[&slot],
        )
        .await
        .unwrap();
    for m in messages {
        rows.apply(parse(m.get::<_, &[u8]>(0)).unwrap()).unwrap();
    }
    rows.write(client, slot).await.unwrap()
}

/// Log rows after id `after`, as text: (op, schema, table, rows, old_rows).
async fn log_after(client: &Client, after: i64) -> Vec<[Option<String>; 5]> {
    client
        .query(
            "select op, schema_name, table_name, rows::text, old_rows::text \
             from realtime.changes where id > $1 order by id",
            &[&after],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| [r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)])
        .collect()
}

/// One column of the log rows after id `after`, as text.
async fn texts_after(client: &Client, column: &str, after: i64) -> Vec<String> {
    client
        .query(
            &format!("select {column}::text from realtime.changes where id > $1 order by id"),
            &[&after],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn last_id(client: &Client) -> i64 {
    client
        .query_one("select coalesce(max(id), 0) from realtime.changes", &[])
        .await
        .unwrap()
        .get(0)
}

const TYPES: &str = r#"
create type mood as enum ('sad', 'ok', 'happy');
create domain positive as int check (value > 0);
create type pair as (a int, b text);
create table t (
    id bigint primary key,
    body text,
    nums int[],
    tags text[],
    doc jsonb,
    raw json,
    amount numeric,
    ratio float8,
    at timestamptz,
    day date,
    span interval,
    flag boolean,
    uid uuid,
    bin bytea,
    feeling mood,
    pos positive,
    pr pair,
    addr inet,
    during tstzrange,
    spot point,
    gone int,
    big text
);
alter table t drop column gone;
"#;

/// Each its own transaction, so each statement is one run of changes.
const WRITES: &[&str] = &[
    r#"insert into t values
        (1, 'plain', '{1,NULL,3}', '{"a b","c,d","e\"f",NULL,"NULL"}',
         '{"k": [1, 2.50, null, "x\\y"], "n": {"deep": true}}', '{ "spaced" :  1 }',
         1.50, 0.1, '2026-12-05 10:00:00.123456+02', '2026-02-28', '1 day 02:03:04.5', true,
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00ff27', 'ok', 5, '(1,"x, y")',
         '10.0.0.1/8', '[2026-01-01,2026-02-01)', '(1.5,2)',
         (select string_agg(md5(g::text), '') from generate_series(1, 3000) g)),
        (2, E'"quoted" \\back\\slash, (parens) {braces}\nnewline ünï ☃', null, null, null,
         null, null, null, null, null, null, null, null, null, null, null, null, null, null,
         null, null),
        (3, '', '{}', '{}', 'null', '[]', 'NaN', '-Infinity', '-infinity', '-infinity',
         '-1 mons', false, null, '', 'sad', 1, '(,)', '::1', 'empty', '(0,0)', '')"#,
    "insert into t (id, body) select g, 'row ' || g from generate_series(100, 249) g",
    // Leaves `big` (stored out of line) as it was: pgoutput does not send it again.
    "update t set flag = not flag where id = 1",
    "update t set id = id + 1000, body = body || '!' where id between 100 and 104",
    "delete from t where id in (2, 3)",
    "begin;
     insert into t (id) values (500);
     savepoint s;
     insert into t (id) values (501);
     rollback to s;
     update t set body = 'in a transaction' where id = 500;
     commit",
];

#[tokio::test]
async fn decoded_changes_are_logged_with_the_triggers_json_for_every_kind_of_column() {
    let client = database(TYPES, "t", "s_types").await;
    let before = last_id(&client).await;
    for w in WRITES {
        client.batch_execute(w).await.unwrap();
    }
    let by_trigger = log_after(&client, before).await;
    let mark = last_id(&client).await;

    let written = log_slot(&client, "s_types", &mut LogRows::default()).await;
    let decoded = log_after(&client, mark).await;

    // insert 3, insert 150 (two chunks), update, update 5, delete 2, insert + update.
    assert_eq!(by_trigger.len(), 8, "{by_trigger:#?}");
    assert_eq!(
        (written.log_rows, written.changes, written.dropped),
        (8, 163, 0)
    );
    for (i, (d, t)) in decoded.iter().zip(&by_trigger).enumerate() {
        assert_eq!(
            d, t,
            "log row {i}: decoded (left) against the trigger's (right)"
        );
    }
    assert_eq!(decoded.len(), by_trigger.len());
    // The unchanged large value came from the old row.
    let big: i32 = client
        .query_one(
            "select length(rows->0->>'big') from realtime.changes \
             where id > $1 and op = 'UPDATE' order by id limit 1",
            &[&mark],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(big, 96_000);
    // The slot's position is recorded with the rows.
    let end = written.end_lsn.expect("a position");
    assert_eq!(
        written_position(&client, "s_types").await.unwrap(),
        Some(end)
    );
}

#[tokio::test]
async fn a_slot_read_again_after_a_restart_logs_nothing_twice() {
    let client = database(
        "create table t (id int primary key, v text)",
        "t",
        "s_restart",
    )
    .await;
    client
        .batch_execute(
            "insert into t values (1, 'a'); insert into t values (2, 'b');
             update t set v = 'c' where id = 1",
        )
        .await
        .unwrap();
    let mark = last_id(&client).await;
    let first = log_slot(&client, "s_restart", &mut LogRows::default()).await;
    // One transaction: its two inserts are one run, so one log row.
    assert_eq!((first.log_rows, first.changes), (2, 3));

    // A new reader, as after a crash before the slot was confirmed: the slot gives
    // everything again, and the position written with the log rows skips it.
    let end = written_position(&client, "s_restart")
        .await
        .unwrap()
        .unwrap();
    let again = log_slot(&client, "s_restart", &mut LogRows::resume_after(end)).await;
    assert_eq!(again, Written::default());

    client
        .batch_execute("delete from t where id = 2")
        .await
        .unwrap();
    let mut rows = LogRows::resume_after(end);
    let later = log_slot(&client, "s_restart", &mut rows).await;
    assert_eq!((later.log_rows, later.changes), (1, 1));
    let ops = texts_after(&client, "op", mark).await;
    // The decoded rows once, the trigger's delete, the decoded delete once.
    assert_eq!(ops, ["INSERT", "UPDATE", "DELETE", "DELETE"]);
    assert!(later.end_lsn > Some(end));
    assert_eq!(
        written_position(&client, "s_restart").await.unwrap(),
        later.end_lsn
    );
}

#[tokio::test]
async fn changes_written_before_their_table_changed_follow_the_table_as_it_is_now() {
    let client = database(
        "create table u (id int primary key, a text, b text);
         create table v (id int primary key);",
        "u",
        "s_columns",
    )
    .await;
    client
        .batch_execute(
            "alter publication p add table v;
             insert into u values (1, 'x', 'y');
             insert into v values (9);
             alter table u drop column b;
             alter table u add column c int default 7;
             insert into u (id, a) values (2, 'z');
             drop table v;",
        )
        .await
        .unwrap();
    let mark = last_id(&client).await;
    let written = log_slot(&client, "s_columns", &mut LogRows::default()).await;
    // v's row cannot be rendered: the table is gone.
    assert_eq!(
        (written.log_rows, written.changes, written.dropped),
        (2, 2, 1)
    );
    let rows = texts_after(&client, "rows", mark).await;
    // Dropped `b` left out; `c`, added after the first row was written, null in it.
    assert_eq!(
        rows,
        [
            r#"[{"id":1,"a":"x","c":null}]"#,
            r#"[{"id":2,"a":"z","c":7}]"#
        ]
    );
}

/// A reader of `slot` (publication `p`) writing up to 100 transactions at most 5 ms late.
fn reader_config(url: &str, slot: &str) -> ReaderConfig {
    ReaderConfig {
        url: url.to_owned(),
        slot: slot.to_owned(),
        publication: "p".into(),
        write_wait: Duration::from_millis(5),
        write_batch: 100,
    }
}

/// Asserts that the log comes to hold `n` rows of table `t` with `n` distinct ids: each
/// committed row logged once (waiting up to 60 s for them).
async fn assert_each_row_of_t_logged_once(admin: &Client, n: i64) {
    assert_eq!(
        logged_rows_of_t(admin, n).await,
        (n, n),
        "rows of t logged, and distinct ids among them"
    );
}

/// Rows of table `t` in the log, and how many distinct ids they carry, once there are at
/// least `n` (or after 60 s).
async fn logged_rows_of_t(admin: &Client, n: i64) -> (i64, i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = admin
            .query_one(
                "select count(*), count(distinct (r->>'id')) \
                 from realtime.changes c, json_array_elements(c.rows) r \
                 where c.table_name = 't'",
                &[],
            )
            .await
            .unwrap();
        let (rows, distinct): (i64, i64) = (r.get(0), r.get(1));
        if rows >= n || tokio::time::Instant::now() > deadline {
            return (rows, distinct);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pid of the walsender holding `slot` for a reader, once one does (up to 10 s): a
/// reader's walsender is listed from its connection on, before it has the slot.
async fn streaming(admin: &Client, slot: &str) -> i32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pid = admin
            .query_opt(
                "select r.pid from pg_stat_replication r \
                 join pg_replication_slots s on s.active_pid = r.pid \
                 where r.application_name = $1 and s.slot_name = $2",
                &[&decoding::APPLICATION_NAME, &slot],
            )
            .await
            .unwrap();
        if let Some(pid) = pid {
            return pid.get(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reader holds {slot}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Once the reader streams, ends its walsender, and waits (up to 10 s) until that has
/// exited, so it is not taken for the reader streaming again.
async fn end_walsender(admin: &Client, slot: &str) {
    let pid = streaming(admin, slot).await;
    let ended: bool = admin
        .query_one("select pg_terminate_backend($1, 10000)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(ended, "walsender {pid} did not exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_logs_every_commit_once_across_lost_connections_and_a_restart() {
    let (admin, url) = published(
        "create table t (id int primary key, v text)",
        "t",
        "s_reader",
        false,
    )
    .await;
    let config = reader_config(&url, "s_reader");
    let stats = Arc::new(ReaderStats::default());
    let start = || {
        let stop = CancellationToken::new();
        let task = tokio::spawn(decoding::run(config.clone(), stats.clone(), stop.clone()));
        (stop, task)
    };
    let (mut stop, mut task) = start();
    let writer = common::pg::connect(&url).await;
    for i in 1..=600 {
        writer
            .execute("insert into t (id, v) values ($1, 'x')", &[&i])
            .await
            .unwrap();
        match i {
            150 | 450 => end_walsender(&admin, "s_reader").await,
            300 => {
                // The reader stopped and started again, as by a hub restart.
                streaming(&admin, "s_reader").await;
                stop.cancel();
                task.await.unwrap();
                (stop, task) = start();
            }
            _ => {}
        }
    }
    assert_each_row_of_t_logged_once(&admin, 600).await;
    stop.cancel();
    task.await.unwrap();
    // Connected at first, after each ended walsender and after the restart (each only
    // once the reader streamed again).
    let sessions = stats.sessions.load(Ordering::Relaxed);
    assert!(sessions >= 4, "{sessions} sessions");
    assert_eq!(
        written_position(&admin, "s_reader").await.unwrap(),
        Some(stats.written_lsn.load(Ordering::Relaxed))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reader_of_the_slot_stands_by_and_takes_over() {
    let (admin, url) = published(
        "create table t (id int primary key, v text)",
        "t",
        "s_standby",
        false,
    )
    .await;
    let config = reader_config(&url, "s_standby");
    let (first, second) = (
        Arc::new(ReaderStats::default()),
        Arc::new(ReaderStats::default()),
    );
    let stop_first = CancellationToken::new();
    let first_task = tokio::spawn(decoding::run(
        config.clone(),
        first.clone(),
        stop_first.clone(),
    ));
    streaming(&admin, "s_standby").await;
    let stop_second = CancellationToken::new();
    let second_task = tokio::spawn(decoding::run(
        config.clone(),
        second.clone(),
        stop_second.clone(),
    ));
    let writer = common::pg::connect(&url).await;
    let insert = |from: i32| {
        let writer = &writer;
        async move {
            for i in from..from + 100 {
                writer
                    .execute("insert into t (id, v) values ($1, 'x')", &[&i])
                    .await
                    .unwrap();
            }
        }
    };
    insert(1).await;
    // The first stops (as its hub would); the second takes over.
    stop_first.cancel();
    first_task.await.unwrap();
    insert(101).await;
    assert_each_row_of_t_logged_once(&admin, 200).await;
    stop_second.cancel();
    second_task.await.unwrap();
    assert_eq!(first.sessions.load(Ordering::Relaxed), 1);
    assert_eq!(
        second.sessions.load(Ordering::Relaxed),
        1,
        "it read only once the first stopped"
    );
    assert!(first.log_rows.load(Ordering::Relaxed) > 0);
    assert!(second.log_rows.load(Ordering::Relaxed) > 0);
}
