//! Tables in schema `realtime` are never captured: `realtime.enable` and create_webhook /
//! alter_webhook refuse them, changing nothing (capture on `realtime.changes` would make
//! every captured write fail), and neither a join, the change feed nor the Inspector
//! offers to enable one. Postgres's own tables and temporary tables are refused too.

mod common;

use std::time::{Duration, Instant};

use common::e2e::*;
use common::hub::Vsn;
use serde_json::{json, Value};

const SETUP: &str = r#"
create table public.deals (id bigserial primary key, title text);
grant select on public.deals to authenticated;
select realtime.enable('public.deals');
create table realtime.extra (id bigserial primary key);
grant usage on schema realtime to authenticated;
grant select on realtime.extra to authenticated;
"#;

const REFUSED: &str = "tables in schema realtime cannot be captured";

async fn refused(pg: &PgHub, sql: &str) {
    let e = pg.sql.batch_execute(sql).await.expect_err(sql);
    assert!(pg_err(&e).contains(REFUSED), "{sql}: {}", pg_err(&e));
}

async fn captured_tables(pg: &PgHub) -> Vec<String> {
    let rows = pg
        .sql
        .query(
            "select schema_name || '.' || table_name from realtime.enabled_tables order by 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn enabling_or_hooking_a_realtime_table_is_refused_and_writes_keep_working() {
    let pg = PgHub::start(SETUP).await;
    refused(&pg, "select realtime.enable('realtime.changes')").await;
    refused(&pg, "select realtime.enable('realtime.extra')").await;
    refused(
        &pg,
        "select realtime.create_webhook('w', 'http://127.0.0.1:9/x', '{public.deals,realtime.changes}')",
    )
    .await;
    pg.exec("select realtime.create_webhook('w', 'http://127.0.0.1:9/x', '{public.deals}')")
        .await;
    refused(
        &pg,
        "select realtime.alter_webhook('w', tables => '{realtime.changes}')",
    )
    .await;
    assert_eq!(captured_tables(&pg).await, ["public.deals"]);
    let tables: Vec<String> = pg
        .sql
        .query_one("select tables::text[] from realtime.webhooks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, ["public.deals"]);
    pg.exec("insert into public.deals (title) values ('still works')")
        .await;

    let e = switchboard::db::enable(&pg.sql, "realtime.changes")
        .await
        .expect_err("switchboard enable realtime.changes");
    assert!(e.to_string().contains(REFUSED), "{e}");
}

/// Postgres's own tables and a session's temporary tables cannot be captured either (a
/// publication refuses them too): each is refused by name, changing nothing, where a
/// system catalog got Postgres's trigger error and the others were listed as captured.
#[tokio::test]
async fn enabling_or_hooking_a_system_or_temporary_table_is_refused() {
    let pg = PgHub::start(SETUP).await;
    for (sql, problem) in [
        (
            "select realtime.enable('pg_catalog.pg_class')",
            "tables in schema pg_catalog cannot be captured (got pg_class)",
        ),
        (
            "select realtime.enable('information_schema.sql_features')",
            "tables in schema information_schema cannot be captured (got information_schema.sql_features)",
        ),
        (
            "select realtime.create_webhook('w', 'http://127.0.0.1:9/x', '{public.deals,pg_catalog.pg_class}')",
            "tables in schema pg_catalog cannot be captured (got pg_class)",
        ),
        (
            "create temporary table scratch (id int primary key); select realtime.enable('scratch')",
            "temporary tables cannot be captured (got scratch)",
        ),
    ] {
        let e = pg.sql.batch_execute(sql).await.expect_err(sql);
        assert_eq!(pg_err(&e), problem, "{sql}");
    }
    assert_eq!(captured_tables(&pg).await, ["public.deals"]);
    let endpoints: i64 = pg
        .sql
        .query_one("select count(*) from realtime.webhook_endpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(endpoints, 0);
    let e = switchboard::db::enable(&pg.sql, "pg_catalog.pg_class")
        .await
        .expect_err("switchboard enable pg_catalog.pg_class");
    assert!(
        e.to_string()
            .contains("tables in schema pg_catalog cannot be captured"),
        "{e}"
    );
}

#[tokio::test]
async fn a_join_the_feed_and_the_inspector_never_suggest_enabling_a_realtime_table() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!([{"event": "*", "schema": "realtime", "table": "extra"}]);
    let user = pg.user("5b0c2a1e-3d4f-4a5b-8c6d-7e8f9a0b1c2d");
    let (_, reply) = join_changes(&mut c, "realtime:room", entry, Some(&user), json!({})).await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    let sys = next_system(&mut c).await;
    assert_eq!(sys["status"], "error", "{sys}");
    assert_eq!(
        sys["message"],
        "Unable to subscribe to changes with given parameters: table realtime.extra \
         cannot be captured: tables in schema realtime are never captured"
    );

    let service = pg.token("service_role", "ops");
    let resp = reqwest::Client::new()
        .get(
            pg.hub
                .http_url("/realtime/v1/api/changes?tables=realtime.changes"),
        )
        .bearer_auth(&service)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["message"],
        "table realtime.changes cannot be captured: tables in schema realtime are never captured"
    );

    // A refusal of a table that can be enabled shows up; the realtime one never does.
    let deals_off = json!([{"event": "*", "schema": "public", "table": "nope_off"}]);
    pg.exec("create table public.nope_off (id bigserial primary key); grant select on public.nope_off to authenticated")
        .await;
    join_changes(&mut c, "realtime:other", deals_off, Some(&user), json!({})).await;
    next_system(&mut c).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snap: Value = reqwest::Client::new()
            .get(pg.hub.http_url("/inspector/api/snapshot"))
            .bearer_auth(&service)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let listed = &snap["tables"]["not_enabled"];
        if listed.as_array().is_some_and(|l| !l.is_empty()) {
            let tables: Vec<&Value> = listed
                .as_array()
                .unwrap()
                .iter()
                .map(|r| &r["table"])
                .collect();
            assert_eq!(tables, [&json!("nope_off")], "{listed}");
            break;
        }
        assert!(Instant::now() < deadline, "no refusal listed: {snap}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
