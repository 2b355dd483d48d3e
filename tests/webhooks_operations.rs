//! Operating webhook endpoints without losing or hiding anything: a replay never skips
//! what an endpoint has not received (a null `from` is refused), a batch's `webhook-id`
//! differs whenever its body does, a rotated secret keeps signing beside the new one for
//! a while, an endpoint is marked as having lost data only when rows of its own tables,
//! of the kinds it delivers, were pruned past it, and listings hide a URL's password.

mod common;

use std::time::Duration;

use common::e2e::PgHub;
use common::receiver::{verify_signatures, Mode, Receiver};
use common::webhooks::{db_now, ids, quick_settings};
use serde_json::Value;

const SETUP: &str = "
    create table contacts (id bigint primary key, name text not null, status text not null default 'open');
    create table quiet (id bigint primary key);
    grant select on contacts, quiet to service_role;
";

async fn hub() -> PgHub {
    PgHub::start_with(SETUP, |c| c.consumers = quick_settings()).await
}

async fn create(pg: &PgHub, name: &str, url: &str, tables: &str) -> String {
    pg.sql
        .query_one(
            "select realtime.create_webhook($1, $2, $3::text::regclass[])",
            &[&name, &url, &tables],
        )
        .await
        .unwrap_or_else(|e| panic!("create_webhook: {}", common::e2e::pg_err(&e)))
        .get(0)
}

/// The endpoint's stored cursor.
async fn cursor(pg: &PgHub, name: &str) -> String {
    pg.sql
        .query_one(
            "select position from realtime.webhook_endpoints where name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

/// A replay from null used to move the cursor to now, past every change not yet
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_null_is_refused_and_skips_nothing() {
    let pg = hub().await;
    create(&pg, "crm", "http://127.0.0.1:9/down", "{public.contacts}").await;
    pg.exec("select realtime.pause_webhook('crm')").await;
    pg.exec("insert into contacts (id, name) values (1, 'a')")
        .await;
    let before = cursor(&pg, "crm").await;
    let e = pg
        .sql
        .execute("select realtime.replay_webhook('crm', null)", &[])
        .await
        .expect_err("a replay from null");
    assert_eq!(
        common::e2e::pg_err(&e),
        "replay from must be a time (got null)"
    );
    assert_eq!(cursor(&pg, "crm").await, before);
}

/// With rA waiting, a replay from a time between rA and rB used to move the cursor past
/// rA: only rB was ever delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_after_the_oldest_undelivered_change_still_delivers_it() {
    let pg = hub().await;
    let rx = Receiver::start(Mode::Ok).await;
    create(&pg, "crm", &rx.url, "{public.contacts}").await;
    pg.exec("select realtime.pause_webhook('crm')").await;
    pg.exec("insert into contacts (id, name) values (1, 'rA')")
        .await;
    let from = db_now(&pg).await;
    pg.exec("insert into contacts (id, name) values (2, 'rB')")
        .await;
    pg.sql
        .execute("select realtime.replay_webhook('crm', $1)", &[&from])
        .await
        .unwrap();
    pg.exec("select realtime.resume_webhook('crm')").await;
    rx.wait_until(Duration::from_secs(20), "rB", |r| {
        r.iter()
            .filter(|q| q.processed())
            .any(|q| ids(&q.events()).contains(&2))
    })
    .await;
    assert_eq!(ids(&rx.processed_events()), vec![1, 2]);
}

/// Positions that cannot be ordered (each has read a transaction the other has not) give
/// one that has read neither; of an earlier one, its base (its pages may have read rows
/// the other has not).
#[tokio::test]
async fn the_earlier_of_two_positions_passes_over_nothing_either_has_not_read() {
    let pg = hub().await;
    let earlier = |a: &'static str, b: &'static str| {
        let sql = &pg.sql;
        async move {
            let r: String = sql
                .query_one("select realtime.earlier_position($1, $2)", &[&a, &b])
                .await
                .unwrap()
                .get(0);
            r
        }
    };
    assert_eq!(earlier("100:", "105:").await, "100:");
    assert_eq!(earlier("105:", "100:").await, "100:");
    assert_eq!(earlier("105:101/110:@42+57.3", "106:").await, "105:101");
    assert_eq!(earlier("106:", "105:101+57.3").await, "105:101");
    // 105:101 has read 103 and 104, 103: has not; 103: has read 101, 105:101 has not.
    assert_eq!(earlier("105:101", "103:").await, "103:101");
    assert_eq!(earlier("105:101", "104:102").await, "104:101,102");
    assert_eq!(earlier("110:103,107", "108:101").await, "108:101,103,107");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_with_a_null_reason_gets_the_default_one() {
    let pg = hub().await;
    create(&pg, "crm", "http://127.0.0.1:9/down", "{public.contacts}").await;
    pg.exec("select realtime.pause_webhook('crm', null)").await;
    let reason: Option<String> = pg
        .sql
        .query_one(
            "select paused_reason from realtime.webhooks where name = 'crm'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reason.as_deref(), Some("paused by an operator"));
}

/// Every malformed secret is refused saying what a secret must be, base64 without its
/// padding too (Postgres's own decode error used to come through), and nothing is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_secret_is_refused_saying_what_a_secret_must_be() {
    let pg = hub().await;
    let unpadded = "whsec_MfKQ9r8GKYqrTXacBd9ZJYJ3ZrsIavLlAPAb7mFoc3c";
    for secret in [
        unpadded,
        "whsec_c2hvcnQ=",
        "whsec_!!!!",
        "MfKQ9r8GKYqrTXacBd9ZJYJ3ZrsIavLlAPAb7mFoc3c=",
    ] {
        let e = pg
            .sql
            .query_one(
                "select realtime.create_webhook('crm', 'https://crm.example/h', '{public.contacts}', secret => $1)",
                &[&secret],
            )
            .await
            .unwrap_err();
        assert_eq!(
            common::e2e::pg_err(&e),
            "webhook secret must be whsec_ followed by at least 16 bytes in base64 (with its = padding)",
            "{secret}"
        );
    }
    let made: i64 = pg
        .sql
        .query_one("select count(*) from realtime.webhook_endpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(made, 0);
    create(&pg, "crm", "https://crm.example/h", "{public.contacts}").await;
    pg.exec(&format!(
        "select realtime.alter_webhook('crm', secret => '{unpadded}=')"
    ))
    .await;
}

/// After `alter_webhook(filter => …)` and a replay, a batch with the same first and last
/// event but more between them used to carry the same `webhook-id`, so a receiver that
/// dedupes by it (as Standard Webhooks says) dropped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_other_events_gets_another_webhook_id() {
    let pg = hub().await;
    let rx = Receiver::start(Mode::Ok).await;
    create(&pg, "crm", &rx.url, "{public.contacts}").await;
    pg.exec("select realtime.alter_webhook('crm', filter => 'status=neq.draft')")
        .await;
    let from = db_now(&pg).await;
    pg.exec(
        "insert into contacts (id, name, status) values (1, 'a', 'open'), (2, 'b', 'draft'), (3, 'c', 'open')",
    )
    .await;
    rx.wait_processed(Duration::from_secs(20), 2).await;
    pg.exec("select realtime.alter_webhook('crm', filter => '')")
        .await;
    pg.sql
        .execute("select realtime.replay_webhook('crm', $1)", &[&from])
        .await
        .unwrap();
    rx.wait_processed(Duration::from_secs(20), 5).await;
    let requests: Vec<_> = rx
        .requests()
        .into_iter()
        .filter(|r| r.processed())
        .collect();
    assert_eq!(requests.len(), 2, "one batch each time");
    assert_eq!(ids(&requests[0].events()), vec![1, 3]);
    assert_eq!(ids(&requests[1].events()), vec![1, 2, 3]);
    let (a, b) = (
        requests[0].header("webhook-id").unwrap(),
        requests[1].header("webhook-id").unwrap(),
    );
    assert!(a.starts_with("msg_") && b.starts_with("msg_"), "{a} {b}");
    assert_ne!(a, b, "different bodies, different webhook-ids");
}

/// `alter_webhook(secret => new)` switched at once: a receiver still holding the old
/// secret failed every request until redeployed. Now both sign (new first) for
/// `webhook_secret_overlap_secs`, then the new one alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_new_one_during_the_overlap() {
    let pg = hub().await;
    let rx = Receiver::start(Mode::Ok).await;
    let old = create(&pg, "crm", &rx.url, "{public.contacts}").await;
    let new: String = pg
        .sql
        .query_one("select realtime.new_webhook_secret()", &[])
        .await
        .unwrap()
        .get(0);
    // Given twice: giving the secret it has rotates nothing (a declared endpoint's, at
    // every start), so the old one still signs beside it.
    for _ in 0..2 {
        pg.sql
            .execute(
                "select realtime.alter_webhook('crm', secret => $1)",
                &[&new],
            )
            .await
            .unwrap();
    }
    pg.exec("insert into contacts (id, name) values (1, 'a')")
        .await;
    rx.wait_processed(Duration::from_secs(20), 1).await;
    let requests = rx.requests();
    let r = &requests[0];
    let (id, ts) = (
        r.header("webhook-id").unwrap(),
        r.header("webhook-timestamp").unwrap().parse().unwrap(),
    );
    let signatures: Vec<&str> = r.header("webhook-signature").unwrap().split(' ').collect();
    let sign = |secret: &str| switchboard::consumers::sign(secret, id, ts, &r.body).unwrap();
    assert_eq!(
        signatures,
        [sign(&new), sign(&old)],
        "the new secret's first"
    );
    // A receiver holding either secret verifies with the standardwebhooks library.
    verify_signatures(&requests, &old);
    verify_signatures(&requests, &new);

    // Once the overlap is over, the new secret alone.
    pg.exec(
        "update realtime.webhook_endpoints set secret_rotated_at = now() - interval '25 hours', \
         version = version + 1 where name = 'crm'",
    )
    .await;
    pg.exec("insert into contacts (id, name) values (2, 'b')")
        .await;
    rx.wait_processed(Duration::from_secs(20), 2).await;
    let requests = rx.requests();
    let r = requests.last().unwrap();
    let (id, ts) = (
        r.header("webhook-id").unwrap(),
        r.header("webhook-timestamp").unwrap().parse().unwrap(),
    );
    assert_eq!(
        r.header("webhook-signature").unwrap(),
        switchboard::consumers::sign(&new, id, ts, &r.body).unwrap()
    );
}

/// A paused endpoint whose table had no changes was marked as having lost data once
/// other tables' rows were pruned at the cap past its hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_rows_of_its_own_tables_pruned_past_it_mark_an_endpoint_lost() {
    let pg = PgHub::start_with(SETUP, |c| {
        c.consumers = quick_settings();
        c.retention = Duration::from_secs(1);
        c.retention_max = Duration::from_secs(1);
    })
    .await;
    create(&pg, "crm", "http://127.0.0.1:9/down", "{public.contacts}").await;
    create(&pg, "still", "http://127.0.0.1:9/down", "{public.quiet}").await;
    pg.exec("select realtime.pause_webhook('crm'); select realtime.pause_webhook('still')")
        .await;
    pg.exec("insert into contacts (id, name) values (1, 'kept only a second')")
        .await;
    // The prune that passes both holds marks crm's (its table's row went) in the same
    // statement as it would still's.
    wait_marked_lost(&pg, "crm", Some("still")).await;
    let metrics = pg.hub.get("/metrics").await.1;
    assert!(
        metrics.contains("switchboard_webhook_lost_data{endpoint=\"still\"} 0"),
        "{metrics}"
    );
}

/// A paused endpoint of INSERTs alone was marked as having lost data when only DELETEs of
/// its table were pruned past it: changes it would never have sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_kinds_of_change_it_delivers_pruned_past_it_mark_an_endpoint_lost() {
    let pg = PgHub::start_with(SETUP, |c| {
        c.consumers = quick_settings();
        c.retention = Duration::from_secs(1);
        c.retention_max = Duration::from_secs(1);
    })
    .await;
    // The row is there before the endpoints: only its DELETE is after their holds.
    pg.exec("insert into contacts (id, name) values (1, 'gone soon')")
        .await;
    pg.exec(
        "select realtime.create_webhook('inserts', 'http://127.0.0.1:9/down', \
                                        '{public.contacts}', events => '{INSERT}'); \
         select realtime.create_webhook('all', 'http://127.0.0.1:9/down', '{public.contacts}'); \
         select realtime.pause_webhook('inserts'); select realtime.pause_webhook('all')",
    )
    .await;
    pg.exec("delete from contacts where id = 1").await;
    // The prune that passes both holds marks all's (it delivers DELETEs) in the same
    // statement as it would mark inserts'.
    wait_marked_lost(&pg, "all", Some("inserts")).await;
    // An INSERT pruned past it does mark it.
    pg.exec("insert into contacts (id, name) values (2, 'kept only a second')")
        .await;
    wait_marked_lost(&pg, "inserts", None).await;
}

/// Waits until endpoint `lost` is marked as having lost data (its row or its hold), while
/// `kept` (all the while) is not; fails after 20 s.
async fn wait_marked_lost(pg: &PgHub, lost: &str, kept: Option<&str>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let row = pg
            .sql
            .query_one(
                "select coalesce(bool_or(e.data_lost_at is not null or h.lost_at is not null) \
                                 filter (where e.name = $1), false), \
                        coalesce(bool_or(e.data_lost_at is not null or h.lost_at is not null) \
                                 filter (where e.name = $2), false) \
                 from realtime.webhook_endpoints e \
                 join realtime.log_holds h on h.kind = 'webhook' and h.holder = e.name",
                &[&lost, &kept.unwrap_or("")],
            )
            .await
            .unwrap();
        let (is_lost, kept_lost): (bool, bool) = (row.get(0), row.get(1));
        assert!(
            !kept_lost,
            "{kept:?} is marked lost, though nothing it delivers was pruned"
        );
        if is_lost {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{lost} never marked lost"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A URL's password used to be shown in `GET /api/webhooks`, `/api/status`,
/// `webhooks list` and the `realtime.webhooks` view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_show_a_url_without_its_password() {
    let pg = hub().await;
    let url = "http://user:s3cret@127.0.0.1:9/hook";
    create(&pg, "crm", url, "{public.contacts}").await;
    let admin = pg.token("service_role", "ops");
    // Status is reused for a second: poll until the endpoint is listed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let listed: Value = reqwest::Client::new()
            .get(pg.hub.http_url("/realtime/v1/api/webhooks"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if listed["webhooks"].as_array().is_some_and(|a| !a.is_empty()) {
            break listed;
        }
        assert!(tokio::time::Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = listed.to_string();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("http://user:***@127.0.0.1:9/hook"), "{text}");
    let stored: String = pg
        .sql
        .query_one(
            "select url from realtime.webhook_endpoints where name = 'crm'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, url, "delivery still uses the credentials");
    // The view too (before 077 it showed the password), with an `@` in the password.
    pg.sql
        .batch_execute(
            "update realtime.webhook_endpoints set url = 'http://user:s3c@ret@127.0.0.1:9/hook?a=b@c' \
             where name = 'crm'",
        )
        .await
        .unwrap();
    let viewed: String = pg
        .sql
        .query_one("select url from realtime.webhooks where name = 'crm'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(viewed, "http://user:***@127.0.0.1:9/hook?a=b@c");
}

/// An endpoint of the config file naming a table that does not exist (yet) holds up none
/// declared after it: they are set up at once, and it is once its table is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_endpoint_on_a_missing_table_holds_up_no_other() {
    let decl = |name: &str, table: &str| switchboard::config::WebhookDecl {
        name: name.into(),
        url: "https://crm.example/hook".into(),
        tables: vec![table.into()],
        events: None,
        filter: None,
        secret: None,
    };
    let pg = PgHub::start_with(SETUP, |c| {
        c.consumers = quick_settings();
        c.webhooks = vec![
            decl("early", "public.later"),
            decl("crm", "public.contacts"),
        ];
    })
    .await;
    let names = || async {
        pg.sql
            .query(
                "select name from realtime.webhook_endpoints order by name",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while names().await != ["crm"] {
        assert!(std::time::Instant::now() < deadline, "{:?}", names().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.exec("create table public.later (id bigint primary key)")
        .await;
    while names().await != ["crm", "early"] {
        assert!(std::time::Instant::now() < deadline, "{:?}", names().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A URL delivery could never use is refused when the endpoint is made or altered, with
/// what is wrong and without repeating the URL (it may hold a password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_without_a_host_or_with_a_bad_port_is_refused() {
    let pg = hub().await;
    let long = format!("https://crm.example/{}", "a".repeat(2100));
    for (url, problem) in [
        (
            "http:///path",
            "webhook url must name a host, as in https://hooks.example.com/path",
        ),
        (
            "https://user:pw@/x",
            "webhook url must name a host, as in https://hooks.example.com/path",
        ),
        (
            "http://127.0.0.1:99999/h",
            "webhook url port must be a number from 1 to 65535",
        ),
        (
            "http://127.0.0.1:0/h",
            "webhook url port must be a number from 1 to 65535",
        ),
        (
            "http://host:8o/h",
            "webhook url port must be a number from 1 to 65535",
        ),
        (long.as_str(), "webhook url must be at most 2048 characters"),
    ] {
        let e = pg
            .sql
            .query_one(
                "select realtime.create_webhook('crm', $1, '{public.contacts}')",
                &[&url],
            )
            .await
            .unwrap_err();
        assert_eq!(common::e2e::pg_err(&e), problem, "{url}");
    }
    for url in [
        "https://user:pw@crm.example:8443/hook?a=1",
        "http://[::1]:8080/h",
        "http://localhost/h",
    ] {
        create(&pg, "ok", url, "{public.contacts}").await;
        pg.exec("select realtime.drop_webhook('ok')").await;
    }
    create(&pg, "crm", "https://crm.example/h", "{public.contacts}").await;
    let e = pg
        .sql
        .execute(
            "select realtime.alter_webhook('crm', url => 'http://:80/x')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        common::e2e::pg_err(&e),
        "webhook url must name a host, as in https://hooks.example.com/path"
    );
}

/// Tables and events named twice are kept once each, in the order first given, by
/// create_webhook and alter_webhook alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_and_events_named_twice_are_kept_once() {
    async fn listed(pg: &PgHub) -> (Vec<String>, Vec<String>) {
        let row = pg
            .sql
            .query_one(
                "select tables::text[], events from realtime.webhooks where name = 'crm'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let pg = hub().await;
    pg.exec(
        "select realtime.create_webhook('crm', 'https://crm.example/h', \
         '{public.quiet,public.contacts,public.quiet}', '{update,INSERT,UPDATE}')",
    )
    .await;
    assert_eq!(
        listed(&pg).await,
        (
            strings(&["public.quiet", "public.contacts"]),
            strings(&["UPDATE", "INSERT"])
        )
    );
    pg.exec(
        "select realtime.alter_webhook('crm', tables => '{public.contacts,public.contacts}', \
         events => '{DELETE,DELETE,INSERT}')",
    )
    .await;
    assert_eq!(
        listed(&pg).await,
        (
            strings(&["public.contacts"]),
            strings(&["DELETE", "INSERT"])
        )
    );
}
