//! Positions kept across a Postgres crash: a parked resume position, a webhook cursor and
//! a feed cursor taken before `pg_ctl stop -m immediate` are corrected when read back in
//! the restarted server's lifetime, so a transaction that got an id handed out again is
//! not missed, and nothing read before the crash is read twice (README, "After a Postgres
//! crash"). A restart storm after a crash is read per resume, corrected, each getting
//! exactly its gap.
//!
//! Which ids a crashed server hands out again depends on what reached its WAL, so each
//! test stands in for that as `tests/capture_faults.rs` does: the position read back is a
//! real one taken before the crash (its lifetime and time included) moved 1,000 ids
//! ahead, past every id the restarted server hands out in the test. Without the
//! correction it counts the rows written after the crash as read.

mod common;

use std::time::{Duration, Instant};

use common::e2e::{expect_row, next_system, subscribe, CAPTURE_POLL};
use common::hub::{test_config, TestHub, WsClient, RECV_TIMEOUT};
use common::pg::{dedicated_cluster, Cluster};
use common::receiver::{Mode, Receiver};
use serde_json::{json, Value};
use switchboard::capture::{Cursor, Position};
use switchboard::consumers::{FeedCursor, Mark};
use tokio_postgres::{Client, NoTls};

const SETUP: &str = "
create table public.items (id bigint primary key, note text);
grant select on public.items to anon, authenticated, service_role;
select realtime.enable('public.items');
";

/// A database on a cluster of its own, migrated, with `public.items`.
async fn database() -> (Cluster, String) {
    let cluster = dedicated_cluster().await;
    let url = cluster.create_db().await;
    let sql = connect(&url).await;
    switchboard::db::migrate(&sql).await.expect("migrate");
    sql.batch_execute(SETUP).await.expect("setup");
    (cluster, url)
}

async fn connect(url: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                return client;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "connect: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Crashes Postgres and starts it again; returns a fresh connection. A checkpoint first
/// keeps what committed before (test clusters run with `synchronous_commit = off`, so a
/// crash could otherwise lose the last commits, the positions stored among them).
async fn crash_and_restart(cluster: &Cluster, url: &str) -> Client {
    connect(url)
        .await
        .batch_execute("checkpoint")
        .await
        .expect("checkpoint");
    tokio::task::block_in_place(|| {
        cluster.crash();
        cluster.start();
    });
    connect(url).await
}

async fn insert(sql: &Client, id: i64) {
    sql.execute("insert into public.items (id) values ($1)", &[&id])
        .await
        .expect("insert");
}

/// `position` moved 1,000 ids ahead, keeping its origin (or dropping it, `keep_origin`
/// false: a position from before origins were kept).
fn ahead(position: &Position, keep_origin: bool) -> Position {
    let cursor = Cursor::parse(&format!("{}:", position.cursor.xmax + 1000)).unwrap();
    Position {
        origin: position.origin.filter(|_| keep_origin),
        ..Position::at(cursor)
    }
}

fn hub_config(url: &str) -> switchboard::config::Config {
    let mut config = test_config();
    config.database_url = Some(url.to_owned());
    config.capture_poll = CAPTURE_POLL;
    config
}

// ---- the change feed

async fn feed(hub: &TestHub, token: &str, cursor: Option<&str>) -> (u16, Value) {
    let cursor = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
    let resp = reqwest::Client::new()
        .get(hub.http_url(&format!(
            "/realtime/v1/api/changes?tables=public.items&wait=0{cursor}"
        )))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("GET feed");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The feed page at `cursor`, waiting out the hub's pool coming back after the crash.
async fn feed_ok(hub: &TestHub, token: &str, cursor: Option<&str>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = feed(hub, token, cursor).await;
        if status == 200 {
            return body;
        }
        assert!(Instant::now() < deadline, "feed answered {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn feed_ids(body: &Value) -> Vec<i64> {
    body["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no changes: {body}"))
        .iter()
        .map(|c| c["record"]["id"].as_i64().unwrap())
        .collect()
}

fn feed_cursor(body: &Value) -> String {
    body["next_cursor"].as_str().unwrap().to_owned()
}

fn feed_ahead(cursor: &str, keep_origin: bool) -> String {
    let mark = FeedCursor::decode(cursor).unwrap();
    FeedCursor::encode(&Mark {
        position: ahead(&mark.position, keep_origin),
        partial: Vec::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_cursor_from_before_a_crash_reads_the_ids_handed_out_again() {
    let (cluster, url) = database().await;
    let hub = TestHub::start(hub_config(&url)).await;
    let token = hub.token("service_role", "sync-job", 3600);
    let sql = connect(&url).await;
    let start = feed_cursor(&feed_ok(&hub, &token, None).await);
    insert(&sql, 1).await;
    let page = feed_ok(&hub, &token, Some(&start)).await;
    assert_eq!(feed_ids(&page), [1]);
    let cursor = feed_cursor(&page);
    let (stamped, old_format) = (feed_ahead(&cursor, true), feed_ahead(&cursor, false));

    let sql = crash_and_restart(&cluster, &url).await;
    insert(&sql, 2).await;
    assert_eq!(
        feed_ids(&feed_ok(&hub, &token, Some(&stamped)).await),
        [2],
        "the row written after the crash is read, row 1 is not read again"
    );
    assert_eq!(
        feed_ids(&feed_ok(&hub, &token, Some(&cursor)).await),
        [2],
        "the real cursor reads on as before"
    );
    // A cursor in the old format (no origin) is still accepted and read as before, with
    // no correction: it misses the row, as every cursor did before origins were kept.
    assert_eq!(
        feed_ids(&feed_ok(&hub, &token, Some(&old_format)).await),
        Vec::<i64>::new()
    );
}

// ---- webhooks

async fn stored_webhook_position(sql: &Client) -> String {
    sql.query_one(
        "select position from realtime.webhook_endpoints where name = 'crm'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

fn webhook_ids(rx: &Receiver) -> Vec<i64> {
    rx.processed_events()
        .iter()
        .map(|e| e["record"]["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_cursor_stored_before_a_crash_delivers_the_ids_handed_out_again() {
    let (cluster, url) = database().await;
    let rx = Receiver::start(Mode::Ok).await;
    let sql = connect(&url).await;
    sql.execute(
        "select realtime.create_webhook('crm', $1, '{public.items}')",
        &[&rx.url],
    )
    .await
    .expect("create_webhook");
    let mut config = hub_config(&url);
    config.consumers.batch_wait = Duration::from_millis(100);
    let hub = TestHub::start(config.clone()).await;
    insert(&sql, 1).await;
    rx.wait_until(Duration::from_secs(20), "row 1", |r| !r.is_empty())
        .await;
    // The cursor is stored once the endpoint answered.
    let deadline = Instant::now() + RECV_TIMEOUT;
    let stored = loop {
        let delivered: i64 = sql
            .query_one(
                "select delivered from realtime.webhook_endpoints where name = 'crm'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if delivered == 1 {
            break stored_webhook_position(&sql).await;
        }
        assert!(Instant::now() < deadline, "row 1 never marked delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    hub.stop().await.expect("hub stops");
    let mark = Mark::parse(&stored).unwrap();
    assert!(mark.position.origin.is_some(), "{stored}");
    let moved = Mark {
        position: ahead(&mark.position, true),
        partial: Vec::new(),
    };
    sql.execute(
        "update realtime.webhook_endpoints set position = $1 where name = 'crm'",
        &[&moved.to_string()],
    )
    .await
    .unwrap();

    let sql = crash_and_restart(&cluster, &url).await;
    insert(&sql, 2).await;
    insert(&sql, 3).await;
    let _hub = TestHub::start(config).await;
    rx.wait_processed(Duration::from_secs(20), 3).await;
    assert_eq!(webhook_ids(&rx), [1, 2, 3], "nothing missed, nothing twice");
}

// ---- resume

fn entries() -> Value {
    json!([{"event": "INSERT", "schema": "public", "table": "items"}])
}

async fn resumable(hub: &TestHub, key: &str) -> WsClient {
    let url = format!(
        "{}&resume={key}",
        hub.ws_url(Some("2.0.0"), Some(&hub.anon()))
    );
    WsClient::connect(&url).await
}

async fn wait_capture_connected(hub: &TestHub) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = hub.get_admin("/api/status").await;
        if code == 200 {
            let status: Value = serde_json::from_str(&body).unwrap();
            if status["capture"]["connected"] == true {
                return;
            }
        }
        assert!(Instant::now() < deadline, "capture not connected: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn parked_position(sql: &Client) -> Option<String> {
    sql.query_opt(
        "select detail->>'position' from realtime.log_holds \
         where kind = 'resume' and (detail->>'parked')::boolean",
        &[],
    )
    .await
    .unwrap()
    .and_then(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_parked_before_a_crash_replays_the_ids_handed_out_again() {
    let (cluster, url) = database().await;
    let hub = TestHub::start(hub_config(&url)).await;
    wait_capture_connected(&hub).await;
    let sql = connect(&url).await;
    // A plain subscriber: once it has a row, the hub has dispatched it.
    let mut observer = hub.connect_v2().await;
    subscribe(&mut observer, "realtime:observer", entries(), None).await;

    let mut c = resumable(&hub, "k1").await;
    subscribe(&mut c, "realtime:items", entries(), None).await;
    assert_eq!(next_system(&mut c).await["recovered"], false);
    insert(&sql, 1).await;
    expect_row(&mut c, "INSERT", "items", 1).await;
    expect_row(&mut observer, "INSERT", "items", 1).await;
    // Reads for a while so the hub's pings get their pongs, then leaves: parked.
    c.expect_no_frame(Duration::from_millis(400)).await;
    drop(c);
    let deadline = Instant::now() + RECV_TIMEOUT;
    let parked = loop {
        if let Some(p) = parked_position(&sql).await {
            break p;
        }
        assert!(Instant::now() < deadline, "never parked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let position = Position::parse(&parked).unwrap();
    assert!(position.origin.is_some(), "{parked}");
    sql.execute(
        "update realtime.log_holds \
         set detail = jsonb_set(detail, '{position}', to_jsonb($1::text)) \
         where kind = 'resume'",
        &[&ahead(&position, true).to_string()],
    )
    .await
    .unwrap();

    let sql = crash_and_restart(&cluster, &url).await;
    insert(&sql, 2).await;
    expect_row(&mut observer, "INSERT", "items", 2).await;
    let mut c = resumable(&hub, "k1").await;
    subscribe(&mut c, "realtime:items", entries(), None).await;
    expect_row(&mut c, "INSERT", "items", 2).await;
    let sys = next_system(&mut c).await;
    assert_eq!(
        (&sys["recovered"], &sys["count"]),
        (&json!(true), &json!(1)),
        "{sys}"
    );
    insert(&sql, 3).await;
    expect_row(&mut c, "INSERT", "items", 3).await;
}

/// A hub restart storm after a Postgres crash: channels parked at two positions before
/// the crash resume on a new hub. Their positions are of the crashed server's lifetime,
/// which the one shared read of the log (`resume::restart`) cannot vouch for, so each
/// resume reads its own gap, corrected: each gets exactly the rows it had not read, those
/// written before the crash and after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_parked_before_a_crash_resume_on_a_new_hub_with_exactly_their_gaps() {
    let (cluster, url) = database().await;
    let hub = TestHub::start(hub_config(&url)).await;
    wait_capture_connected(&hub).await;
    let sql = connect(&url).await;
    let mut first = resumable(&hub, "k1").await;
    subscribe(&mut first, "realtime:items", entries(), None).await;
    let mut second = resumable(&hub, "k2").await;
    subscribe(&mut second, "realtime:items", entries(), None).await;
    for c in [&mut first, &mut second] {
        assert_eq!(next_system(c).await["recovered"], false);
    }
    insert(&sql, 1).await;
    for c in [&mut first, &mut second] {
        expect_row(c, "INSERT", "items", 1).await;
    }
    park(first, &sql, 1).await;
    insert(&sql, 2).await;
    expect_row(&mut second, "INSERT", "items", 2).await;
    park(second, &sql, 2).await;
    insert(&sql, 3).await;
    drop(hub);

    let sql = crash_and_restart(&cluster, &url).await;
    insert(&sql, 4).await;
    insert(&sql, 5).await;
    let hub = TestHub::start(hub_config(&url)).await;
    wait_capture_connected(&hub).await;
    for (key, missed) in [("k2", &[3, 4, 5][..]), ("k1", &[2, 3, 4, 5][..])] {
        let mut c = resumable(&hub, key).await;
        subscribe(&mut c, "realtime:items", entries(), None).await;
        for id in missed {
            expect_row(&mut c, "INSERT", "items", *id).await;
        }
        let sys = next_system(&mut c).await;
        assert_eq!(
            (&sys["recovered"], &sys["count"]),
            (&json!(true), &json!(missed.len())),
            "{key}: {sys}"
        );
    }
    let (_, body) = hub.get_admin("/api/status").await;
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["resume"]["from_restart_read"], 0, "{status}");
}

/// Leaves `c` after it has read for a while (so the hub's pings get their pongs) and
/// waits until `parked` channels are parked.
async fn park(mut c: WsClient, sql: &Client, parked: i64) {
    c.expect_no_frame(Duration::from_millis(400)).await;
    drop(c);
    common::e2e::wait_parked(sql, parked).await;
}
