//! The change feed (`GET /realtime/v1/api/changes`): a consumer that follows the cursor
//! gets every committed change exactly once, even across a Postgres restart under
//! concurrent writers with rollbacks; a token scoped by row-level security sees only its
//! rows; a page may end inside one statement's rows and the next starts right after; it
//! long-polls until something commits; a cursor the log was pruned past is refused (410).

mod common;
#[path = "capture/load.rs"]
mod load;

use std::time::{Duration, Instant};

use common::e2e::PgHub;
use common::hub::{test_config, TestHub};
use load::{assert_exactly_committed, run_load, setup, write_marker, LoadOpts};
use serde_json::Value;
use switchboard::changes::{Change, DbEvent, Op};

const MARKER: i64 = 7;

/// GET the feed as `token`: (status, body).
async fn feed(hub: &TestHub, token: &str, query: &str) -> Result<(u16, Value), reqwest::Error> {
    let resp = reqwest::Client::new()
        .get(hub.http_url(&format!("/realtime/v1/api/changes?{query}")))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

async fn feed_ok(hub: &TestHub, token: &str, query: &str) -> Value {
    let (status, body) = feed(hub, token, query).await.expect("GET feed");
    assert_eq!(status, 200, "{query}: {body}");
    body
}

/// A feed change back as the change it describes.
fn to_change(e: &Value) -> Change {
    let (log_id, seq) = e["id"].as_str().unwrap().split_once('-').unwrap();
    let row = |v: &Value| v.as_object().cloned();
    Change {
        id: log_id.parse().unwrap(),
        seq: seq.parse().unwrap(),
        xid: u64::MAX,
        schema: e["schema"].as_str().unwrap().to_owned(),
        table: e["table"].as_str().unwrap().to_owned(),
        op: Op::parse(e["type"].as_str().unwrap()).unwrap(),
        record: row(&e["record"]),
        old_record: row(&e["old_record"]),
        commit_time: chrono::Utc::now(),
    }
}

fn changes(body: &Value) -> Vec<Value> {
    body["changes"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_following_the_cursor_across_a_postgres_restart_gets_exactly_the_committed_changes(
) {
    let cluster = common::pg::dedicated_cluster().await;
    let url = cluster.create_db().await;
    let db = load::connect_retrying(&url, Duration::from_secs(10)).await;
    setup(&db).await;
    // The feed shows `old_record` as Supabase does, by REPLICA IDENTITY (the key by
    // default); the check below compares each UPDATE with the whole previous version.
    for t in load::TABLES {
        db.batch_execute(&format!("alter table {t} replica identity full"))
            .await
            .unwrap();
    }
    drop(db);
    let mut config = test_config();
    config.database_url = Some(url.clone());
    config.capture_poll = Duration::from_millis(200);
    let hub = TestHub::start(config).await;
    let token = hub.token("service_role", "sync-job", 3600);
    let tables = "tables=public.items_a,public.items_b,public.load_marker";

    // No cursor: "now". Changes from here on are the consumer's.
    let first = loop {
        match feed(&hub, &token, &format!("{tables}&wait=0")).await {
            Ok((200, body)) => break body,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(changes(&first).is_empty(), "{first}");
    let mut cursor = first["next_cursor"].as_str().unwrap().to_owned();

    let consumer = {
        let hub_url = hub.http_url("");
        let token = token.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut got: Vec<Value> = Vec::new();
            let (mut pages, mut failures) = (0, 0);
            let deadline = Instant::now() + Duration::from_secs(180);
            loop {
                assert!(
                    Instant::now() < deadline,
                    "the consumer never saw the marker"
                );
                let resp = client
                    .get(format!(
                        "{hub_url}/realtime/v1/api/changes?{tables}&limit=300&wait=2&cursor={cursor}"
                    ))
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(20))
                    .send()
                    .await;
                let body = match resp {
                    Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                    Ok(r) if r.status().as_u16() == 503 => None,
                    Ok(r) => panic!("feed answered {}: {:?}", r.status(), r.text().await),
                    Err(_) => None,
                };
                let Some(body) = body else {
                    // Postgres (or the pool) is down: the same cursor again, shortly.
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                pages += 1;
                let page = changes(&body);
                cursor = body["next_cursor"].as_str().unwrap().to_owned();
                let done = page
                    .iter()
                    .any(|c| c["table"] == "load_marker" && c["record"]["id"] == MARKER);
                got.extend(page);
                if done {
                    return (got, pages, failures);
                }
            }
        })
    };

    // The long transaction commits late, before the restart (it would not survive it).
    let opts = LoadOpts {
        writers: 8,
        duration: Duration::from_secs(7),
        long_tx: Some(Duration::from_secs(2)),
    };
    let first_cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (load, down) = tokio::join!(run_load(&url, &opts), async {
        tokio::time::sleep(Duration::from_millis(3500)).await;
        tokio::task::block_in_place(|| cluster.stop());
        // A request that must read the log while Postgres is down is told to retry.
        let query = format!("{tables}&cursor={first_cursor}");
        let down = feed(&hub, &token, &query).await.map(|(code, _)| code);
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(|| cluster.start());
        down
    });
    assert_eq!(down.ok(), Some(503), "a read while Postgres is down");
    write_marker(&url, MARKER).await;
    let (got, pages, failures) = consumer.await.expect("consumer task");
    println!(
        "{} committed, {} rolled back; the consumer read {} changes in {pages} pages, {failures} failed requests",
        load.committed.len(),
        load.rolled_back_writes,
        got.len()
    );
    assert!(load.committed.len() > 300, "too little load");
    assert!(
        load.failed_txs > 0,
        "Postgres did not restart under the writers"
    );
    // The consumer's own requests may all have been waiting (reading nothing) while
    // Postgres was down: its failures are counted, not required.
    let events: Vec<DbEvent> = got.iter().map(|c| DbEvent::Change(to_change(c))).collect();
    assert_exactly_committed(&load.committed, &events);
    hub.stop().await.expect("hub stops");
}

const NOTES: &str = "
    create table notes (id bigint primary key, owner uuid not null, body text);
    alter table notes enable row level security;
    create policy own_notes on notes for select to authenticated using (owner = auth.uid());
    grant select on notes to authenticated;
    select realtime.enable('public.notes');
    create table bulk (id bigint primary key);
    select realtime.enable('public.bulk');
    create table quiet (id bigint primary key);
";

const ALICE: &str = "00000000-0000-0000-0000-00000000000a";
const BOB: &str = "00000000-0000-0000-0000-00000000000b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_token_scoped_by_row_level_security_sees_only_its_rows() {
    let pg = PgHub::start(NOTES).await;
    let alice = pg.user(ALICE);
    let admin = pg.token("service_role", "ops");
    let start = feed_ok(&pg.hub, &alice, "tables=public.notes").await;
    let cursor = start["next_cursor"].as_str().unwrap().to_owned();
    pg.exec(&format!(
        "insert into notes values (1, '{ALICE}', 'mine'), (2, '{BOB}', 'bob''s');
         update notes set body = 'mine, edited' where id = 1;
         update notes set body = 'bob''s, edited' where id = 2;
         delete from notes where id = 2;
         delete from notes where id = 1;"
    ))
    .await;
    let mut seen = Vec::new();
    let mut c = cursor.clone();
    while seen.len() < 3 {
        let body = feed_ok(
            &pg.hub,
            &alice,
            &format!("tables=public.notes&wait=5&cursor={c}"),
        )
        .await;
        c = body["next_cursor"].as_str().unwrap().to_owned();
        seen.extend(changes(&body));
    }
    let summary: Vec<(String, i64)> = seen
        .iter()
        .map(|e| {
            let row = if e["type"] == "DELETE" {
                &e["old_record"]
            } else {
                &e["record"]
            };
            (
                e["type"].as_str().unwrap().to_owned(),
                row["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("INSERT".into(), 1),
            ("UPDATE".into(), 1),
            ("DELETE".into(), 1)
        ],
        "{seen:#?}"
    );
    // Nothing of Bob's is left after Alice's last change.
    let rest = feed_ok(&pg.hub, &alice, &format!("tables=public.notes&cursor={c}")).await;
    assert!(changes(&rest).is_empty(), "{rest}");
    // service_role sees every row from the same cursor.
    let all = feed_ok(
        &pg.hub,
        &admin,
        &format!("tables=public.notes&cursor={cursor}"),
    )
    .await;
    assert_eq!(changes(&all).len(), 6, "{all}");
    assert_eq!(changes(&all)[1]["record"]["owner"], BOB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_may_end_inside_one_statement_and_the_next_starts_right_after() {
    pages_of_three_get_bulk_1_to_11(
        "insert into bulk select g from generate_series(1, 10) g; insert into bulk values (11)",
    )
    .await;
}

/// Statements of a table the reader does not ask for (passed over without parsing their
/// rows) between and around the ones it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_of_tables_not_asked_for_are_passed_over_wherever_a_page_ends() {
    pages_of_three_get_bulk_1_to_11(&format!(
        "insert into notes select g, '{ALICE}', 'x' from generate_series(1, 5) g;
         insert into bulk select g from generate_series(1, 4) g;
         insert into notes select g, '{BOB}', 'y' from generate_series(6, 12) g;
         insert into bulk select g from generate_series(5, 10) g;
         insert into notes values (13, '{ALICE}', 'z');
         insert into bulk values (11);
         insert into notes select g, '{BOB}', 'w' from generate_series(14, 16) g"
    ))
    .await;
}

/// Runs `sql`, which inserts bulk rows 1 to 11, and reads `public.bulk` 3 at a time.
async fn pages_of_three_get_bulk_1_to_11(sql: &str) {
    let pg = PgHub::start(NOTES).await;
    let token = pg.token("service_role", "ops");
    let mut cursor = feed_ok(&pg.hub, &token, "tables=public.bulk").await["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    pg.exec(sql).await;
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    while ids.len() < 11 {
        let body = feed_ok(
            &pg.hub,
            &token,
            &format!("tables=public.bulk&limit=3&wait=5&cursor={cursor}"),
        )
        .await;
        cursor = body["next_cursor"].as_str().unwrap().to_owned();
        let page = changes(&body);
        sizes.push(page.len());
        ids.extend(page.iter().map(|c| c["record"]["id"].as_i64().unwrap()));
    }
    assert_eq!(ids, (1..=11).collect::<Vec<_>>());
    assert!(sizes.iter().all(|&n| n <= 3), "{sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_as_soon_as_a_change_commits() {
    let pg = PgHub::start(NOTES).await;
    let token = pg.token("service_role", "ops");
    let cursor = feed_ok(&pg.hub, &token, "tables=public.bulk").await["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let query = format!("tables=public.bulk&wait=30&cursor={cursor}");
    let (body, ()) = tokio::join!(feed_ok(&pg.hub, &token, &query), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        pg.exec("insert into bulk values (42)").await;
    });
    assert_eq!(changes(&body)[0]["record"]["id"], 42, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the long poll did not wake: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn bad_requests_get_clear_answers() {
    let pg = PgHub::start(NOTES).await;
    let token = pg.token("service_role", "ops");
    let answer = |q: &'static str, token: Option<String>| {
        let hub = &pg.hub;
        async move {
            let mut req =
                reqwest::Client::new().get(hub.http_url(&format!("/realtime/v1/api/changes?{q}")));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (
                status,
                resp.json::<Value>().await.unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        }
    };
    assert_eq!(
        answer("tables=public.notes", None).await,
        (401, "Unauthorized".to_owned())
    );
    // A refused token is told why, as a WebSocket connect is.
    let (s, m) = answer("tables=public.notes", Some("not-a-token".into())).await;
    assert_eq!(s, 401);
    assert!(
        m.starts_with("Unauthorized: ") && m.len() > "Unauthorized: ".len(),
        "{m}"
    );
    let postgres = pg.token("postgres", "ops");
    let (s, m) = answer("tables=public.notes", Some(postgres)).await;
    assert_eq!(
        (s, m.as_str()),
        (401, "Unauthorized: Token role \"postgres\" is not allowed")
    );
    let (s, m) = answer("tables=public.quiet", Some(token.clone())).await;
    assert_eq!(s, 400);
    assert!(m.contains("select realtime.enable('public.quiet')"), "{m}");
    let (s, m) = answer("tables=public.nope", Some(token.clone())).await;
    assert_eq!((s, m.as_str()), (400, "table public.nope does not exist"));
    pg.exec(
        "create view public.notes_view as select * from public.notes; \
             grant select on public.notes_view to authenticated",
    )
    .await;
    for reader in [pg.user(ALICE), token.clone()] {
        let (s, m) = answer("tables=public.notes_view", Some(reader)).await;
        assert_eq!(
            (s, m.as_str()),
            (400, "public.notes_view is a view, and realtime captures tables only; ask for the tables it reads from")
        );
    }
    // Any other role learns no more than a join tells it: a table it may not read (not
    // enabled, or a catalog table) and one that does not exist get the same answer.
    let alice = pg.user(ALICE);
    for (q, table) in [
        ("tables=public.nope", "public.nope"),
        ("tables=public.quiet", "public.quiet"),
        ("tables=pg_catalog.pg_authid", "pg_catalog.pg_authid"),
    ] {
        let (s, m) = answer(q, Some(alice.clone())).await;
        assert_eq!(
            (s, m),
            (
                400,
                format!(
                    "table {table} does not exist or role authenticated may not select from it"
                )
            )
        );
    }
    assert_eq!(answer("tables=", Some(token.clone())).await.0, 400);
    assert_eq!(
        answer("tables=public.bulk&limit=0", Some(token.clone()))
            .await
            .0,
        400
    );
    assert_eq!(
        answer("tables=public.bulk&wait=3600", Some(token.clone()))
            .await
            .0,
        400
    );
    let (s, m) = answer("tables=public.bulk&cursor=123", Some(token.clone())).await;
    assert_eq!((s, m.contains("cursor")), (400, true), "{m}");
    // A field given twice is a JSON error naming it, not a plain-text one.
    let (s, m) = answer(
        "tables=public.bulk&tables=public.notes",
        Some(token.clone()),
    )
    .await;
    assert_eq!(s, 400);
    assert!(m.contains("duplicate field `tables`"), "{m}");
    // A catalog table is not offered a `realtime.enable` that cannot work.
    let (s, m) = answer("tables=pg_catalog.pg_class", Some(token.clone())).await;
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            "table pg_catalog.pg_class cannot be captured: tables in schema pg_catalog are never captured"
        )
    );
    // A comma inside a quoted name does not split it.
    pg.exec(r#"create table public."a,b" (id int primary key); select realtime.enable('public."a,b"');"#)
        .await;
    feed_ok(&pg.hub, &token, r#"tables=public."a,b",public.bulk"#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_the_log_was_pruned_past_is_refused_not_skipped() {
    let pg = PgHub::start_with(NOTES, |c| {
        c.retention = Duration::from_secs(1);
        c.retention_max = Duration::from_secs(1);
    })
    .await;
    let token = pg.token("service_role", "ops");
    let cursor = feed_ok(&pg.hub, &token, "tables=public.bulk").await["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    pg.exec("insert into bulk values (1)").await;
    // Wait (bounded) until retention has deleted the row the cursor has not read.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = pg
            .sql
            .query_one(
                "select count(*) from realtime.changes where table_name = 'bulk'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the log was never pruned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = feed(
        &pg.hub,
        &token,
        &format!("tables=public.bulk&cursor={cursor}"),
    )
    .await
    .unwrap();
    assert_eq!(status, 410, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("pruned"),
        "{body}"
    );
    // A fresh start works.
    feed_ok(&pg.hub, &token, "tables=public.bulk").await;
}

/// A waiting long-poll reads the log again when the capture has read rows of its tables
/// (not after every batch of every table: `probe_feed_waiters.mjs` measures that), and
/// not only at the next poll interval: with the interval at a minute, writes to another
/// table leave it waiting, and a row of its own table answers it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_poll_wakes_for_a_row_of_its_table_between_poll_intervals() {
    let pg = PgHub::start_with(NOTES, |c| c.capture_poll = Duration::from_secs(60)).await;
    let token = pg.token("service_role", "ops");
    let cursor = feed_ok(&pg.hub, &token, "tables=public.notes").await["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = pg.hub.http_url(&format!(
        "/realtime/v1/api/changes?tables=public.notes&wait=20&cursor={cursor}"
    ));
    let request = reqwest::Client::new().get(url).bearer_auth(&token).send();
    let waiting = tokio::spawn(async move { request.await.expect("GET").json::<Value>().await });
    // Its first read found nothing: it waits (only then is the wake-up what answers it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.hub.metric("switchboard_feed_waiting").await != Some(1.0) {
        assert!(Instant::now() < deadline, "the poll never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Rows of another table: the poll stays open (nothing of its own to answer with).
    for id in 1..=5 {
        pg.exec(&format!("insert into bulk values ({id})")).await;
    }
    pg.exec(&format!(
        "insert into notes values (1, '{ALICE}', 'for the poll')"
    ))
    .await;
    let body = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the poll is answered before its 20 s wait ends")
        .expect("feed task")
        .expect("a JSON body");
    let got: Vec<Value> = changes(&body)
        .iter()
        .map(|e| e["record"]["id"].clone())
        .collect();
    assert_eq!(got, vec![Value::from(1)], "{body}");
    assert_eq!(pg.hub.metric("switchboard_feed_waiting").await, Some(0.0));
}

/// A table renamed between two reads: asked for by its new name with the cursor handed
/// out before, the feed returns the changes logged under the old name too (the cursor
/// names the tables it was handed out for), then those under the new one.
#[tokio::test]
async fn a_cursor_follows_its_table_renamed_between_two_reads() {
    let pg = PgHub::start(
        "create table public.foo (id int primary key);
         select realtime.enable('public.foo');",
    )
    .await;
    let token = pg.token("service_role", "sync-job");
    let cursor = feed_ok(&pg.hub, &token, "tables=public.foo").await["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    // Each in its own transaction, as a migration renames a table between writes.
    pg.exec("insert into public.foo values (1)").await;
    pg.exec("alter table public.foo rename to bar").await;
    pg.exec("insert into public.bar values (2)").await;
    let body = feed_ok(
        &pg.hub,
        &token,
        &format!("tables=public.bar&cursor={cursor}&wait=10"),
    )
    .await;
    let mut seen: Vec<(String, i64)> = changes(&body)
        .iter()
        .map(|c| {
            (
                c["table"].as_str().unwrap().to_owned(),
                c["record"]["id"].as_i64().unwrap(),
            )
        })
        .collect();
    // The rows may come over two pages (the long poll answers as soon as it has some).
    if seen.len() < 2 {
        let next = body["next_cursor"].as_str().unwrap();
        let more = feed_ok(
            &pg.hub,
            &token,
            &format!("tables=public.bar&cursor={next}&wait=10"),
        )
        .await;
        seen.extend(changes(&more).iter().map(|c| {
            (
                c["table"].as_str().unwrap().to_owned(),
                c["record"]["id"].as_i64().unwrap(),
            )
        }));
    }
    assert_eq!(seen, [("foo".to_owned(), 1), ("bar".to_owned(), 2)]);
}
