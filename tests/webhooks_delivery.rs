//! Webhook endpoints end to end against a real receiver: created in SQL, they receive
//! committed changes of their tables (never rolled-back ones) as signed JSON batches;
//! `events` and `filter` select; pause and resume lose nothing; a run of failures pauses
//! an endpoint and `retry` delivers what it missed; the SQL API and the REST API answer
//! clearly; status and metrics show each endpoint.

mod common;

use std::time::Duration;

use common::e2e::PgHub;
use common::hub::{test_config, TestHub};
use common::receiver::{verify_signatures, Mode, Receiver};
use common::webhooks::{db_now, ids, quick_settings};
use serde_json::{json, Value};

const SETUP: &str = "
    create table contacts (id bigint primary key, name text not null, status text not null default 'open');
    grant select on contacts to service_role;
";

/// A hub tuned for quick webhook tests.
async fn hub() -> PgHub {
    PgHub::start_with(SETUP, |c| c.consumers = quick_settings()).await
}

/// Another hub, tuned as `hub`'s, on the database at `url`.
async fn hub_on(url: &str) -> TestHub {
    let mut config = test_config();
    config.database_url = Some(url.to_owned());
    config.capture_poll = Duration::from_millis(200);
    config.consumers = quick_settings();
    TestHub::start(config).await
}

async fn create(pg: &PgHub, name: &str, url: &str, extra: &str) -> String {
    pg.sql
        .query_one(
            &format!("select realtime.create_webhook($1, $2, '{{public.contacts}}'{extra})"),
            &[&name, &url],
        )
        .await
        .unwrap_or_else(|e| panic!("create_webhook: {}", common::e2e::pg_err(&e)))
        .get(0)
}

/// The endpoint in `/api/status`, once it is listed. A status whose webhook part timed
/// out (`{"error": "the database did not answer in time"}`, a busy machine) is "not yet".
async fn webhook_status(pg: &PgHub, name: &str) -> Option<Value> {
    let status = pg.status().await;
    if status["webhooks"]["error"].is_string() {
        return None;
    }
    status["webhooks"]
        .as_array()
        .unwrap_or_else(|| panic!("no webhooks in status: {status}"))
        .iter()
        .find(|w| w["name"] == name)
        .cloned()
}

/// Polls `/api/status` until the endpoint's entry satisfies `ok`.
async fn wait_status(pg: &PgHub, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = webhook_status(pg, name).await;
        if let Some(s) = s.as_ref().filter(|s| ok(s)) {
            return s.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(pg: &PgHub, path: &str, token: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(pg.hub.http_url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `POST .../webhooks/crm/replay` with `body`, as an admin.
async fn replay(pg: &PgHub, body: Value) -> (u16, Value) {
    let admin = pg.token("service_role", "ops");
    post(pg, "/realtime/v1/api/webhooks/crm/replay", &admin, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_arrive_signed_in_order_and_rolled_back_ones_never() {
    let pg = hub().await;
    let rx = Receiver::start(Mode::Ok).await;
    let secret = create(&pg, "crm", &rx.url, "").await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    pg.exec(
        "begin; insert into contacts (id, name) values (1, 'Ada'), (2, 'Bob'); commit;
         begin; insert into contacts (id, name) values (3, 'Never'); rollback;
         begin; update contacts set name = 'Ada L.' where id = 1;
                savepoint s; delete from contacts where id = 2; rollback to savepoint s;
         commit;
         delete from contacts where id = 2;",
    )
    .await;
    rx.wait_received(Duration::from_secs(20), 4).await;
    let events = rx.processed_events();
    assert_eq!(ids(&events), vec![1, 2, 1, 2], "{events:#?}");
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["INSERT", "INSERT", "UPDATE", "DELETE"]);
    let update = &events[2];
    assert_eq!(update["schema"], "public");
    assert_eq!(update["table"], "contacts");
    assert_eq!(update["record"]["name"], "Ada L.");
    assert_eq!(
        update["old_record"],
        json!({"id": 1}),
        "the primary key by default"
    );
    assert!(update["commit_timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(events[3]["record"], Value::Null);
    let mut seen = std::collections::HashSet::new();
    assert!(events
        .iter()
        .all(|e| seen.insert(e["id"].as_str().unwrap().to_owned())));
    // Standard Webhooks signatures, checked by the standardwebhooks npm package.
    let requests = rx.requests();
    for r in &requests {
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("webhook-id").unwrap().starts_with("msg_"));
    }
    verify_signatures(&requests, &secret);
    let s = wait_status(&pg, "crm", "caught up", |s| s["lag_events"] == 0).await;
    assert_eq!(s["state"], "active", "{s}");
    assert_eq!(s["delivered"], 4, "{s}");
    assert_eq!(s["data_lost"], false, "{s}");
    assert!(s["last_success_at"].is_string(), "{s}");
    let metrics = pg.hub.get("/metrics").await.1;
    assert!(
        metrics.contains("switchboard_webhook_delivered_events{endpoint=\"crm\"} 4"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_record_shows_what_the_replica_identity_shows_while_filters_judge_the_whole_row() {
    let pg = PgHub::start_with(
        &format!(
            "{SETUP}
             create table notes (id bigint primary key, body text not null, status text not null);
             alter table notes replica identity full;
             grant select on notes to service_role;"
        ),
        |c| c.consumers = quick_settings(),
    )
    .await;
    let rx = Receiver::start(Mode::Ok).await;
    pg.run(
        "select realtime.create_webhook('crm', $1, '{public.contacts,public.notes}', \
         '{UPDATE,DELETE}', 'status=eq.open')",
        &[&rx.url],
    )
    .await;
    pg.exec(
        "insert into contacts values (1, 'Ada', 'open'), (2, 'Bob', 'closed');
         insert into notes values (1, 'hi', 'open');
         update contacts set name = 'Ada L.' where id = 1;
         delete from contacts where id = 2;
         delete from contacts where id = 1;
         update notes set body = 'hello' where id = 1;
         delete from notes where id = 1;",
    )
    .await;
    rx.wait_received(Duration::from_secs(20), 4).await;
    let events = rx.processed_events();
    let old: Vec<(&str, &str, &Value)> = events
        .iter()
        .map(|e| {
            let (table, kind) = (e["table"].as_str().unwrap(), e["type"].as_str().unwrap());
            (table, kind, &e["old_record"])
        })
        .collect();
    // The delete of Bob ('closed') is filtered out by its whole old row; the bodies show
    // only the key of a default-identity table, the whole old row of a FULL one.
    assert_eq!(
        old,
        [
            ("contacts", "UPDATE", &json!({"id": 1})),
            ("contacts", "DELETE", &json!({"id": 1})),
            (
                "notes",
                "UPDATE",
                &json!({"id": 1, "body": "hi", "status": "open"})
            ),
            (
                "notes",
                "DELETE",
                &json!({"id": 1, "body": "hello", "status": "open"})
            ),
        ],
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_filter_choose_what_an_endpoint_receives() {
    let pg = hub().await;
    let rx = Receiver::start(Mode::Ok).await;
    create(
        &pg,
        "open-inserts",
        &rx.url,
        ", '{INSERT}', 'status=eq.open'",
    )
    .await;
    pg.exec(
        "insert into contacts values (1, 'Closed', 'closed');
         insert into contacts values (2, 'Open', 'open');
         update contacts set name = 'Still open' where id = 2;
         delete from contacts where id = 1;
         insert into contacts values (3, 'Last', 'open');",
    )
    .await;
    // Row 3 commits last: once it is in, anything else selected would be in before it.
    rx.wait_until(Duration::from_secs(20), "row 3", |r| {
        r.iter()
            .flat_map(|r| r.events())
            .any(|e| e["record"]["id"] == 3)
    })
    .await;
    assert_eq!(ids(&rx.processed_events()), vec![2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_endpoint_that_resumes_gets_everything_it_missed() {
    let pg = hub().await;
    let rx = Receiver::start(Mode::Ok).await;
    create(&pg, "crm", &rx.url, "").await;
    let admin = pg.token("service_role", "ops");
    pg.exec("insert into contacts (id, name) values (1, 'before')")
        .await;
    rx.wait_until(Duration::from_secs(20), "row 1", |r| !r.is_empty())
        .await;

    let (code, body) = post(
        &pg,
        "/realtime/v1/api/webhooks/crm/pause",
        &pg.user("u1"),
        json!({}),
    )
    .await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = post(
        &pg,
        "/realtime/v1/api/webhooks/crm/pause",
        &admin,
        json!({}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["webhook"]["state"], "paused", "{body}");
    for id in 2..=31 {
        pg.exec(&format!(
            "insert into contacts (id, name) values ({id}, 'while paused')"
        ))
        .await;
    }
    let s = wait_status(&pg, "crm", "30 events waiting", |s| s["lag_events"] == 30).await;
    assert_eq!(s["state"], "paused", "{s}");
    assert_eq!(rx.requests().len(), 1, "a paused endpoint got a request");

    let (code, body) = post(
        &pg,
        "/realtime/v1/api/webhooks/crm/resume",
        &admin,
        json!({}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    rx.wait_received(Duration::from_secs(20), 31).await;
    assert_eq!(ids(&rx.processed_events()), (1..=31).collect::<Vec<_>>());
    wait_status(&pg, "crm", "caught up", |s| {
        s["lag_events"] == 0 && s["state"] == "active"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_failures_pauses_the_endpoint_and_retry_delivers_what_it_missed() {
    let pg = hub().await;
    let rx = Receiver::start(Mode::Fail).await;
    create(&pg, "crm", &rx.url, "").await;
    pg.exec("insert into contacts (id, name) values (1, 'a'), (2, 'b')")
        .await;
    let s = wait_status(&pg, "crm", "paused after 3 failures", |s| {
        s["state"] == "paused"
    })
    .await;
    assert_eq!(s["failures"], 3, "{s}");
    assert_eq!(s["last_status"], 500, "{s}");
    assert!(
        s["last_error"].as_str().unwrap().contains("HTTP 500"),
        "{s}"
    );
    assert!(
        s["paused_reason"]
            .as_str()
            .unwrap()
            .contains("3 failed attempts"),
        "{s}"
    );
    let metrics = pg.hub.get("/metrics").await.1;
    assert!(
        metrics.contains("switchboard_webhook_paused{endpoint=\"crm\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchboard_webhook_last_error_status{endpoint=\"crm\"} 500"),
        "{metrics}"
    );
    // The three failed attempts carried the same batch under the same webhook-id.
    let requests = rx.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests
        .iter()
        .all(|r| r.header("webhook-id") == requests[0].header("webhook-id")));

    pg.exec("insert into contacts (id, name) values (3, 'c')")
        .await;
    rx.set_mode(Mode::Ok);
    let admin = pg.token("service_role", "ops");
    let (code, body) = post(&pg, "/api/webhooks/crm/retry", &admin, json!({})).await;
    assert_eq!(code, 200, "{body}");
    rx.wait_processed(Duration::from_secs(20), 3).await;
    assert_eq!(ids(&rx.processed_events()), vec![1, 2, 3]);
    let s = wait_status(&pg, "crm", "active again", |s| {
        s["state"] == "active" && s["lag_events"] == 0
    })
    .await;
    assert_eq!(s["failures"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_again_from_a_time_with_the_same_event_ids() {
    let pg = hub().await;
    let rx = Receiver::start(Mode::Ok).await;
    create(&pg, "crm", &rx.url, "").await;
    pg.exec("insert into contacts (id, name) values (1, 'old')")
        .await;
    rx.wait_until(Duration::from_secs(20), "row 1", |r| !r.is_empty())
        .await;
    let from = db_now(&pg).await;
    pg.exec("insert into contacts (id, name) values (2, 'new')")
        .await;
    rx.wait_until(Duration::from_secs(20), "row 2", |r| r.len() >= 2)
        .await;
    let first_ids: Vec<String> = rx
        .processed_events()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();

    let (code, body) = replay(&pg, json!({"from": "yesterday"})).await;
    assert_eq!(code, 422, "{body}");
    let (code, body) = replay(&pg, json!({"from": from.to_rfc3339()})).await;
    assert_eq!(code, 200, "{body}");
    assert!(body["replay_from_position"].is_string(), "{body}");
    rx.wait_until(Duration::from_secs(20), "row 2 again", |r| r.len() >= 3)
        .await;
    let events = rx.processed_events();
    assert_eq!(
        ids(&events),
        vec![1, 2, 2],
        "only changes from `from` on come again"
    );
    assert_eq!(
        events[2]["id"],
        first_ids[1].as_str(),
        "a replayed change keeps its id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_the_future_is_refused_and_skips_nothing() {
    let pg = hub().await;
    create(&pg, "crm", "http://127.0.0.1:9/down", "").await;
    pg.exec("insert into contacts (id, name) values (1, 'a'), (2, 'b')")
        .await;
    let before = wait_status(&pg, "crm", "two events waiting", |s| s["lag_events"] == 2).await;

    let (code, body) = replay(&pg, json!({"from": "2099-01-01T00:00:00Z"})).await;
    assert_eq!(code, 422, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("replay from must not be in the future"),
        "{body}"
    );
    let e = pg
        .sql
        .execute(
            "select realtime.replay_webhook('crm', '2099-01-01T00:00:00Z')",
            &[],
        )
        .await
        .expect_err("a direct SQL replay from the future");
    assert!(
        common::e2e::pg_err(&e).starts_with("replay from must not be in the future"),
        "{e}"
    );
    let after = webhook_status(&pg, "crm").await.expect("listed");
    assert_eq!(after["cursor"], before["cursor"], "{after}");
    assert_eq!(after["lag_events"], 2, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_while_a_batch_is_in_flight_is_not_written_over() {
    let pg = hub().await;
    // Every answer is a 200 that comes 700 ms late (the hub's timeout is 1 s).
    let late = Mode::Chaos {
        p500: 0.0,
        pslow: 1.0,
        preset: 0.0,
        slow: Duration::from_millis(700),
    };
    let rx = Receiver::start(late).await;
    create(&pg, "crm", &rx.url, "").await;
    let from = db_now(&pg).await;
    pg.exec("insert into contacts (id, name) values (1, 'in flight')")
        .await;
    assert!(
        rx.wait_for_request(Duration::from_secs(20), |_| true).await,
        "row 1 posted"
    );
    rx.set_mode(Mode::Ok);
    // The replay lands while row 1's answer is on its way. The cursor write after that
    // 200 used to move the cursor past row 1 again, over the replay.
    let (code, body) = replay(&pg, json!({"from": from.to_rfc3339()})).await;
    assert_eq!(code, 200, "{body}");
    rx.wait_until(Duration::from_secs(20), "row 1 again", |r| {
        r.iter().filter(|q| q.processed()).count() >= 2
    })
    .await;
    assert_eq!(ids(&rx.processed_events()), vec![1, 1]);
}

#[tokio::test]
async fn the_sql_api_creates_alters_lists_and_drops_endpoints_with_clear_errors() {
    let pg = hub().await;
    let secret = create(
        &pg,
        "crm",
        "https://crm.example/hook",
        ", '{insert,UPDATE}'",
    )
    .await;
    let err = |sql: &str| {
        let sql = sql.to_owned();
        let client = &pg.sql;
        async move { common::e2e::pg_err(&client.batch_execute(&sql).await.expect_err(&sql)) }
    };
    assert!(
        err("select realtime.create_webhook('crm', 'https://x', '{public.contacts}')")
            .await
            .contains("already exists")
    );
    assert!(err(
        "select realtime.create_webhook('x', 'https://x', '{public.contacts}', secret => 'nope')"
    )
    .await
    .contains("whsec_"));
    assert!(err("select realtime.pause_webhook('nope')")
        .await
        .contains("no webhook named"));

    let row = pg
        .sql
        .query_one(
            "select tables, events, state, filter from realtime.webhooks where name = 'crm'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Vec<String>>(0),
        vec!["public.contacts".to_owned()]
    );
    assert_eq!(
        row.get::<_, Vec<String>>(1),
        vec!["INSERT".to_owned(), "UPDATE".to_owned()]
    );
    assert_eq!(row.get::<_, String>(2), "active");
    pg.exec(
        "select realtime.alter_webhook('crm', filter => 'status=eq.open', events => '{DELETE}')",
    )
    .await;
    let row = pg
        .sql
        .query_one(
            "select events, filter from realtime.webhooks where name = 'crm'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<String>>(0), vec!["DELETE".to_owned()]);
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("status=eq.open")
    );
    pg.exec("select realtime.alter_webhook('crm', filter => '')")
        .await;
    let stored: String = pg
        .sql
        .query_one(
            "select secret from realtime.webhook_endpoints where name = 'crm'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, secret);
    let holds: i64 = pg
        .sql
        .query_one(
            "select count(*) from realtime.log_holds where kind = 'webhook'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(holds, 1, "an endpoint holds the log");
    let dropped: bool = pg
        .sql
        .query_one("select realtime.drop_webhook('crm')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(dropped);
    let left: i64 = pg
        .sql
        .query_one(
            "select (select count(*) from realtime.webhooks) + \
             (select count(*) from realtime.log_holds where kind = 'webhook')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhook_arguments_are_named_with_their_rule_and_no_secret_is_shown() {
    let pg = hub().await;
    create(&pg, "crm", "https://crm.example/hook", "").await;
    let (name, url) = (
        "webhook name must be 1 to 63 letters",
        "webhook url must start with http:// or https://",
    );
    let (tables, events) = (
        "webhook tables must name at least one table",
        "webhook events must be one or more of INSERT, UPDATE, DELETE",
    );
    let secret = "secret => 'whsec_c3dpdGNoYm9hcmQtdGVzdC1zZWNyZXQ='";
    let cases = [
        (
            format!("create_webhook('bad name', 'http://x/y', '{{public.contacts}}', {secret})"),
            name,
        ),
        (
            "create_webhook(null, 'http://x/y', '{public.contacts}')".into(),
            name,
        ),
        (
            "create_webhook('y', 'ftp://x/y', '{public.contacts}')".into(),
            url,
        ),
        (
            format!("create_webhook('y', 'http://x y', '{{public.contacts}}', {secret})"),
            url,
        ),
        ("create_webhook('y', null, '{public.contacts}')".into(), url),
        ("create_webhook('y', 'http://x/y', '{}')".into(), tables),
        (
            "create_webhook('y', 'http://x/y', '{public.contacts}', '{TRUNCATE}')".into(),
            events,
        ),
        (
            "create_webhook('y', 'http://x/y', '{public.contacts}', '{}')".into(),
            events,
        ),
        (
            "create_webhook('y', 'http://x/y', '{public.contacts}', '{INSERT,NULL}')".into(),
            events,
        ),
        ("alter_webhook('crm', url => 'ftp://x/y')".into(), url),
        ("alter_webhook('crm', tables => '{}')".into(), tables),
        (
            "alter_webhook('crm', events => '{insert,truncate}')".into(),
            events,
        ),
    ];
    for (call, rule) in cases {
        let sql = format!("select realtime.{call}");
        let e = pg.sql.batch_execute(&sql).await.expect_err(&sql);
        let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert!(db.message().starts_with(rule), "{sql}: {db:?}");
        assert!(!format!("{db:?}").contains("whsec_"), "{sql}: {db:?}");
    }
    let left: i64 = pg
        .sql
        .query_one("select count(*) from realtime.webhook_endpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1, "only the good endpoint exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_hubs_one_delivers_and_the_other_takes_over_when_it_stops() {
    let pg = hub().await;
    let other = hub_on(&pg.db.url).await;
    let rx = Receiver::start(Mode::Ok).await;
    create(&pg, "crm", &rx.url, "").await;
    for id in 1..=20 {
        pg.exec(&format!(
            "insert into contacts (id, name) values ({id}, 'x')"
        ))
        .await;
    }
    rx.wait_received(Duration::from_secs(20), 20).await;
    // One hub delivered: each change once, in order.
    assert_eq!(ids(&rx.processed_events()), (1..=20).collect::<Vec<_>>());
    let node = |body: Value| body["node_id"].as_str().unwrap().to_owned();
    let first = node(pg.status().await);
    let second = node(serde_json::from_str(&other.get_admin("/api/status").await.1).unwrap());
    let s = wait_status(&pg, "crm", "leased", |s| s["lease_owner"].is_string()).await;
    let owner = s["lease_owner"].as_str().unwrap().to_owned();
    assert!(owner == first || owner == second, "{owner} is neither hub");

    // Stop whichever delivers; the other takes over and nothing is lost.
    let PgHub { hub, db: _db, sql } = pg;
    let (survivor, successor) = if owner == first {
        hub.stop().await.unwrap();
        (other, second)
    } else {
        other.stop().await.unwrap();
        (hub, first)
    };
    for id in 21..=30 {
        sql.batch_execute(&format!(
            "insert into contacts (id, name) values ({id}, 'y')"
        ))
        .await
        .unwrap();
    }
    rx.wait_received(Duration::from_secs(20), 30).await;
    assert_eq!(ids(&rx.processed_events()), (1..=30).collect::<Vec<_>>());
    // (Status is cached for a second: poll.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status: Value =
            serde_json::from_str(&survivor.get_admin("/api/status").await.1).unwrap();
        if status["webhooks"][0]["lease_owner"] == successor.as_str() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_lists_endpoints_and_its_buttons_pause_and_resume_them() {
    let pg = PgHub::start_with(SETUP, |c| {
        c.consumers = quick_settings();
        c.admin_secret = Some("webhooks-inspector-admin-secret".into());
    })
    .await;
    let rx = Receiver::start(Mode::Ok).await;
    create(&pg, "crm", &rx.url, "").await;
    let client = reqwest::Client::new();
    let admin = "Bearer webhooks-inspector-admin-secret";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let snap = loop {
        let snap: Value = client
            .get(pg.hub.http_url("/inspector/api/snapshot"))
            .header("authorization", admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if snap["webhooks"]["endpoints"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
        {
            break snap;
        }
        assert!(tokio::time::Instant::now() < deadline, "{snap}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let crm = &snap["webhooks"]["endpoints"][0];
    assert_eq!(
        (crm["name"].as_str(), crm["state"].as_str()),
        (Some("crm"), Some("active"))
    );

    let action = |path: &'static str, origin: Option<&'static str>| {
        let mut req = client
            .post(pg.hub.http_url(path))
            .header("authorization", admin)
            .body("{}");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (code, body) = action(
        "/inspector/api/webhooks/crm/pause",
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = action("/inspector/api/webhooks/crm/pause", None).await;
    assert_eq!(
        (code, body["webhook"]["state"].as_str()),
        (200, Some("paused")),
        "{body}"
    );
    let (code, body) = action("/inspector/api/webhooks/nope/pause", None).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = action("/inspector/api/webhooks/crm/explode", None).await;
    assert_eq!(code, 404, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("pause, resume, retry"),
        "{body}"
    );
    let (code, body) = action("/inspector/api/webhooks/crm/resume", None).await;
    assert_eq!(
        (code, body["webhook"]["state"].as_str()),
        (200, Some("active")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_the_log_was_pruned_past_says_it_lost_data_until_a_replay() {
    let pg = PgHub::start_with(SETUP, |c| {
        c.consumers = quick_settings();
        c.retention = Duration::from_secs(1);
        c.retention_max = Duration::from_secs(1);
    })
    .await;
    let rx = Receiver::start(Mode::Ok).await;
    create(&pg, "crm", &rx.url, "").await;
    pg.exec("select realtime.pause_webhook('crm')").await;
    pg.exec("insert into contacts (id, name) values (1, 'kept only a second')")
        .await;
    let s = wait_status(&pg, "crm", "marked as having lost data", |s| {
        s["data_lost"] == true
    })
    .await;
    assert!(s["data_lost_at"].is_string(), "{s}");
    let metrics = pg.hub.get("/metrics").await.1;
    assert!(
        metrics.contains("switchboard_webhook_lost_data{endpoint=\"crm\"} 1"),
        "{metrics}"
    );
    assert!(rx.requests().is_empty());
    let from = chrono::Utc::now().to_rfc3339();
    pg.exec(&format!("select realtime.replay_webhook('crm', '{from}')"))
        .await;
    wait_status(&pg, "crm", "lost-data mark cleared", |s| {
        s["data_lost"] == false
    })
    .await;
}

/// A hub delivering endpoint `crm` (table `contacts`) to a receiver that got its first
/// row (id 1), and the hub has stored that it did: a hub stopped between the receiver's
/// answer and that write sends the row again (at least once), which a test stopping the
/// hub must not count as a duplicate.
async fn one_contact_delivered() -> (PgHub, Receiver) {
    let pg = hub().await;
    let rx = Receiver::start(Mode::Ok).await;
    create(&pg, "crm", &rx.url, "").await;
    pg.exec("insert into contacts (id, name) values (1, 'Ada')")
        .await;
    rx.wait_processed(Duration::from_secs(20), 1).await;
    wait_status(&pg, "crm", "row 1 stored as delivered", |s| {
        !s["last_success_at"].is_null()
    })
    .await;
    (pg, rx)
}

/// A table renamed under an endpoint keeps being delivered: the endpoint reloads with
/// the new name and still takes the rows logged under the old one. It used to match
/// only the old name and move its cursor past the new name's rows, losing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_renamed_under_an_endpoint_loses_none_of_its_changes() {
    let (pg, rx) = one_contact_delivered().await;
    pg.exec(
        "begin; insert into contacts (id, name) values (2, 'Bob');
         alter table contacts rename to people; commit;
         insert into people (id, name) values (3, 'Cy');",
    )
    .await;
    rx.wait_received(Duration::from_secs(30), 3).await;
    let events = rx.processed_events();
    assert_eq!(ids(&events), vec![1, 2, 3], "{events:#?}");
    assert_eq!(events[2]["table"], "people", "{events:#?}");
}

/// A table renamed while no hub runs: the hub started after it still delivers the rows
/// logged under the old name before the rename. It used to know old names only from its
/// own earlier load, so it passed over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_renamed_while_no_hub_runs_loses_none_of_its_changes() {
    let (pg, rx) = one_contact_delivered().await;
    let PgHub { hub, db, sql } = pg;
    hub.stop().await.unwrap();
    sql.batch_execute(
        "insert into contacts (id, name) values (2, 'Bob');
         alter table contacts rename to people;
         insert into people (id, name) values (3, 'Cy');",
    )
    .await
    .unwrap();
    let _hub = hub_on(&db.url).await;
    rx.wait_received(Duration::from_secs(30), 3).await;
    let events = rx.processed_events();
    assert_eq!(ids(&events), vec![1, 2, 3], "{events:#?}");
    assert_eq!(events[1]["table"], "contacts", "{events:#?}");
}

/// An endpoint dropped and created again under the same name, between two of the
/// hub's looks, is delivered afresh: to its new url with its new secret, never to the
/// old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_dropped_and_created_again_delivers_to_its_new_url_only() {
    let pg = hub().await;
    let old = Receiver::start(Mode::Ok).await;
    let new = Receiver::start(Mode::Ok).await;
    create(&pg, "crm", &old.url, "").await;
    pg.exec("insert into contacts (id, name) values (1, 'Ada')")
        .await;
    old.wait_processed(Duration::from_secs(20), 1).await;
    for round in 0..4 {
        // An operator's change first: the old row's version passes the new row's 1.
        pg.sql
            .execute(
                "select realtime.alter_webhook('crm', events => '{INSERT,UPDATE,DELETE}')",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("alter: {}", common::e2e::pg_err(&e)));
        // Long enough for the hub's supervisor to pass the new version on (a tick).
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let secret: String = pg
            .sql
            .query_one(
                "select realtime.drop_webhook('crm'), \
                        realtime.create_webhook('crm', $1, '{public.contacts}')",
                &[&new.url],
            )
            .await
            .map(|r| r.get(1))
            .unwrap_or_else(|e| panic!("recreate: {}", common::e2e::pg_err(&e)));
        let id = 10 + round;
        pg.exec(&format!(
            "insert into contacts (id, name) values ({id}, 'x')"
        ))
        .await;
        new.wait_until(Duration::from_secs(20), "the row", |r| {
            r.iter()
                .flat_map(|r| r.events())
                .any(|e| e["record"]["id"] == id)
        })
        .await;
        verify_signatures(&new.requests()[round as usize..], &secret);
    }
    assert_eq!(old.processed_events().len(), 1, "the old url got more");
}

/// `realtime.disable` of a table an endpoint delivers leaves it captured, and says why:
/// it used to take the capture off while the endpoint went on "active", so the table's
/// changes were never logged and never delivered. Once the endpoint is dropped, the
/// table may be disabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_table_an_endpoint_delivers_keeps_it_captured() {
    let pg = hub().await;
    let rx = Receiver::start(Mode::Ok).await;
    create(&pg, "crm", &rx.url, "").await;
    pg.exec("select realtime.disable('public.contacts')").await;
    assert_eq!(captured(&pg).await, 1, "still captured");
    pg.exec("insert into contacts (id, name) values (1, 'Ada')")
        .await;
    rx.wait_processed(Duration::from_secs(20), 1).await;
    assert_eq!(ids(&rx.processed_events()), vec![1]);

    pg.exec("select realtime.drop_webhook('crm'); select realtime.disable('public.contacts')")
        .await;
    assert_eq!(captured(&pg).await, 0, "disabled once no endpoint needs it");
}

/// Whether `contacts` is captured (1) or not (0).
async fn captured(pg: &PgHub) -> i64 {
    let sql = "select count(*) from realtime.enabled_tables where table_name = 'contacts'";
    pg.sql.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stops_at_its_byte_cap_and_a_change_larger_than_the_cap_goes_alone() {
    const CAP: usize = 20_000;
    let pg = PgHub::start_with(SETUP, |c| {
        c.consumers = quick_settings();
        c.consumers.batch_bytes = CAP;
    })
    .await;
    let rx = Receiver::start(Mode::Ok).await;
    create(&pg, "crm", &rx.url, "").await;
    // One statement: six rows of 6 kB (36 kB together) and one of 50 kB, read at once.
    pg.exec(
        "insert into contacts (id, name)
         select g, repeat('x', case when g = 4 then 50000 else 6000 end)
         from generate_series(1, 7) g",
    )
    .await;
    rx.wait_processed(Duration::from_secs(20), 7).await;
    let events = rx.processed_events();
    assert_eq!(ids(&events), [1, 2, 3, 4, 5, 6, 7]);
    let requests = rx.requests();
    for r in &requests {
        let n = r.events().len();
        assert!(
            r.body.len() <= CAP || n == 1,
            "a body of {} bytes holds {n} events",
            r.body.len()
        );
    }
    let alone = requests
        .iter()
        .find(|r| r.events().iter().any(|e| e["record"]["id"] == 4))
        .unwrap();
    assert_eq!(alone.events().len(), 1, "the 50 kB row goes alone");
    assert!(requests.len() >= 3, "{} requests", requests.len());
}

/// A change after a quiet spell is sent as soon as it is read: with a batch window of ten
/// minutes it still arrives at once (before, a batch waited the whole window to fill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_after_a_quiet_spell_does_not_wait_for_the_batch_window() {
    let pg = PgHub::start_with(SETUP, |c| {
        c.consumers = quick_settings();
        c.consumers.batch_wait = Duration::from_secs(600);
    })
    .await;
    let rx = Receiver::start(Mode::Ok).await;
    create(&pg, "crm", &rx.url, "").await;
    pg.exec("insert into contacts (id, name) values (1, 'Ada')")
        .await;
    rx.wait_received(Duration::from_secs(20), 1).await;
    assert_eq!(ids(&rx.processed_events()), vec![1]);
}

/// The end of a backlog goes as soon as the full batches before it have. With a window of
/// ten minutes and batches of ten events, 245 rows written at once (more log rows than a
/// read of the log takes) arrive whole at once (before, the last five waited the window behind
/// the full batches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_backlog_does_not_wait_for_the_batch_window() {
    let pg = PgHub::start_with(SETUP, |c| {
        c.consumers = quick_settings();
        c.consumers.batch_wait = Duration::from_secs(600);
        c.consumers.batch_events = 10;
    })
    .await;
    let rx = Receiver::start(Mode::Ok).await;
    create(&pg, "crm", &rx.url, "").await;
    // One transaction of 245 single-row statements: 245 log rows, more than one read of
    // the log takes (100).
    pg.exec(
        "do $$ begin for g in 1..245 loop \
         insert into contacts (id, name) values (g, 'c' || g); end loop; end $$",
    )
    .await;
    rx.wait_processed(Duration::from_secs(20), 245).await;
    assert_eq!(ids(&rx.processed_events()), (1..=245).collect::<Vec<i64>>());
    let sizes: Vec<usize> = rx.requests().iter().map(|r| r.events().len()).collect();
    assert_eq!(sizes.iter().filter(|&&n| n == 10).count(), 24, "{sizes:?}");
    assert_eq!(sizes.last(), Some(&5), "{sizes:?}");
}
