//! The capture loses nothing and repeats nothing when its backend is killed or
//! Postgres restarts mid-load: it reconnects and catches up from its cursor.

mod common;
#[path = "capture/load.rs"]
mod load;

use std::time::Duration;

use load::{
    assert_exactly_committed_traced, connect_retrying, run_load, setup, start_capture,
    write_marker, LoadOpts, TABLES,
};
use switchboard::capture::{
    correct, current_position, next_events, Cursor, Position, Statements, APPLICATION_NAME,
};
use switchboard::changes::DbEvent;

const KILL_LISTENER: &str = "select count(pg_terminate_backend(pid))::int8 from pg_stat_activity \
     where application_name = $1 and datname = current_database()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_listener_backend_mid_load_loses_and_repeats_nothing() {
    let db = common::pg::test_db().await;
    let admin = db.client().await;
    setup(&admin).await;
    // Small pages and a slow consumer, so kills land mid-read as well as while idle.
    let mut capture = start_capture(&db.hub_url().await, 20).await;
    let opts = LoadOpts {
        writers: 8,
        duration: Duration::from_secs(4),
        long_tx: Some(Duration::from_secs(3)),
    };
    let marker = 1;
    let ((load, kills), events) = tokio::join!(
        async {
            let killer = async {
                let mut kills = 0;
                for _ in 0..7 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let row = admin.query_one(KILL_LISTENER, &[&APPLICATION_NAME]).await;
                    kills += row.unwrap().get::<_, i64>(0);
                }
                kills
            };
            let (load, kills) = tokio::join!(run_load(&db.url, &opts), killer);
            write_marker(&db.url, marker).await;
            (load, kills)
        },
        capture.collect_until(marker, Duration::from_secs(120), Duration::from_millis(5)),
    );
    assert!(kills >= 3, "only {kills} listener backends were killed");
    assert!(capture.status.snapshot().reconnects >= 3);
    assert_exactly_committed_traced(&load.committed, &events, &capture.pages);
    capture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_postgres_mid_load_loses_and_repeats_nothing() {
    let cluster = common::pg::dedicated_cluster().await;
    let url = cluster.create_db().await;
    setup(&connect_retrying(&url, Duration::from_secs(10)).await).await;
    let mut capture = start_capture(&url, 50).await;
    let opts = LoadOpts {
        writers: 8,
        duration: Duration::from_secs(5),
        long_tx: None,
    };
    let marker = 1;
    let ((load, ()), events) = tokio::join!(
        async {
            let restart = async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                tokio::task::block_in_place(|| cluster.stop());
                tokio::time::sleep(Duration::from_millis(700)).await;
                tokio::task::block_in_place(|| cluster.start());
            };
            let out = tokio::join!(run_load(&url, &opts), restart);
            write_marker(&url, marker).await;
            out
        },
        capture.collect_until(marker, Duration::from_secs(120), Duration::ZERO),
    );
    assert!(
        load.failed_txs > 0,
        "the restart interrupted no transaction"
    );
    let status = capture.status.snapshot();
    assert!(
        status.reconnects >= 1 && status.last_error.is_some(),
        "{status:?}"
    );
    assert_exactly_committed_traced(&load.committed, &events, &capture.pages);
    capture.stop().await;
}

/// The ids of the rows `events` changed.
fn ids(events: &[DbEvent]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| match e {
            DbEvent::Change(c) => c.record.as_ref()?.get("id")?.as_i64(),
            DbEvent::Broadcast(_) => None,
        })
        .collect()
}

/// After a crash Postgres can hand out again the ids of transactions that rolled back
/// after its last WAL write, ids a position may already have passed as finished. A
/// position read back in a later server lifetime is corrected (`capture::correct`, as
/// `run_capture` does on reconnecting and every read does when it finds the lifetime
/// changed): what committed since is read, and nothing read before the restart is read
/// again. `ahead` stands in for a position taken just before a crash: it has passed
/// 1,000 ids the restarted server has not handed out yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_ids_handed_out_again_are_read_and_nothing_twice() {
    let cluster = common::pg::dedicated_cluster().await;
    let url = cluster.create_db().await;
    let client = connect_retrying(&url, Duration::from_secs(10)).await;
    setup(&client).await;
    let insert = |id: i64| format!("insert into {} values ({id}, 0, 0, 0, null)", TABLES[0]);
    let stmts = Statements::prepare(&client).await.unwrap();
    let mut read = current_position(&client).await.unwrap();
    client.batch_execute(&insert(1)).await.unwrap();
    assert_eq!(
        ids(&next_events(&client, &stmts, &mut read, 100).await.unwrap()),
        [1]
    );
    let mut ahead = Position {
        origin: read.origin,
        ..Position::at(Cursor::parse(&format!("{}:", read.cursor.xmax + 1000)).unwrap())
    };
    assert!(
        !correct(&client, &mut ahead).await.unwrap(),
        "nothing to correct in the same lifetime"
    );
    drop(client);

    tokio::task::block_in_place(|| cluster.crash());
    tokio::task::block_in_place(|| cluster.start());
    let client = connect_retrying(&url, Duration::from_secs(10)).await;
    client.batch_execute(&insert(2)).await.unwrap();
    let stmts = Statements::prepare(&client).await.unwrap();
    let mut unaware = Position {
        origin: None,
        ..ahead.clone()
    };
    assert_eq!(
        ids(&next_events(&client, &stmts, &mut unaware, 100)
            .await
            .unwrap()),
        Vec::<i64>::new(),
        "a position past the new ids misses the row unless it is corrected"
    );

    assert!(correct(&client, &mut ahead).await.unwrap());
    assert_ne!(ahead.origin, read.origin, "stamped with the new lifetime");
    assert_eq!(
        ids(&next_events(&client, &stmts, &mut ahead, 100).await.unwrap()),
        [2]
    );
    assert_eq!(
        ids(&next_events(&client, &stmts, &mut read, 100).await.unwrap()),
        [2],
        "a read corrects on its own; row 1, read before the restart, is not read again"
    );
}
