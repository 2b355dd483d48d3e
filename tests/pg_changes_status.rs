//! The capture side as operators see it (DESIGN.md "Configuration surface"):
//! `/api/status` reports the connected listener, its cursor and rows read, `/ready` is 200
//! once it is connected, and `/metrics` exports the capture lag.

mod common;

use common::e2e::*;
use common::hub::Vsn;
use serde_json::json;

const SETUP: &str = r#"
create table public.jobs (id bigserial primary key, title text);
grant select on public.jobs to authenticated;
select realtime.enable('public.jobs');
"#;

const USER: &str = "5e4d3c2b-1a09-4f8e-9d7c-6b5a49382716";

async fn insert_job(pg: &PgHub) -> i64 {
    pg.id(
        "insert into public.jobs (title) values ('x') returning id",
        &[],
    )
    .await
}

#[tokio::test]
async fn status_ready_and_metrics_report_a_connected_capture() {
    let pg = PgHub::start(SETUP).await;
    let before = pg.status().await;
    let capture = &before["capture"];
    assert_eq!(capture["connected"], true, "{before}");
    let cursor = capture["cursor"].as_str().unwrap_or_default();
    assert!(!cursor.is_empty(), "a cursor once connected: {before}");
    let rows_before = capture["rows_read"]
        .as_u64()
        .unwrap_or_else(|| panic!("rows_read is a number: {before}"));

    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!({"event": "*", "schema": "public", "table": "jobs"});
    subscribe(
        &mut c,
        "realtime:jobs",
        json!([entry]),
        Some(&pg.user(USER)),
    )
    .await;
    // The second frame arriving means the first row's read was recorded.
    let first = insert_job(&pg).await;
    expect_row(&mut c, "INSERT", "jobs", first).await;
    let second = insert_job(&pg).await;
    expect_row(&mut c, "INSERT", "jobs", second).await;

    let after = pg.status().await;
    let rows_after = after["capture"]["rows_read"].as_u64().unwrap_or_default();
    assert!(
        rows_after > rows_before,
        "rows_read did not increase: {before} -> {after}"
    );
    assert_eq!(after["capture"]["connected"], true, "{after}");
    assert!(after["capture"]["cursor"].is_string(), "{after}");
    assert_eq!(after["connections"], 1, "{after}");
    assert_eq!(after["channels"], 1, "{after}");

    let (code, body) = pg.hub.get("/ready").await;
    assert_eq!(code, 200, "/ready with a connected capture: {body}");

    let (code, metrics) = pg.hub.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchboard_capture_lag_ms ")),
        "no switchboard_capture_lag_ms sample in:\n{metrics}"
    );
}
