//! Large rows through postgres_changes (PROTOCOL.md §4, §9): records up to 1 MB arrive
//! intact; a bigger record arrives with `errors: ["Error 413: Payload Too Large"]` and
//! its fields over 64 bytes dropped. Large statements: more changes at once than a
//! connection's queue holds reach a subscriber that reads them.

mod common;

use common::e2e::*;
use common::hub::{Vsn, WsClient};
use serde_json::json;

const SETUP: &str = r#"
create table public.blobs (id bigserial primary key, small text, body text);
grant select on public.blobs to authenticated;
-- old_record follows REPLICA IDENTITY: FULL, so an UPDATE's old row is large too.
alter table public.blobs replica identity full;
select realtime.enable('public.blobs');
"#;

const USER: &str = "3c2b1a09-8f7e-4d6c-9b5a-413121110f0e";

/// `len` bytes of varied text (ASCII plus a few multi-byte characters, quotes and
/// backslashes), so truncation or mangling shows.
fn text_of(len: usize) -> String {
    let unit = "abcdefghij0123456789\"\\ café ✓ ";
    let mut s = String::with_capacity(len + unit.len());
    let mut i = 0u64;
    while s.len() < len {
        s.push_str(unit);
        s.push_str(&i.to_string());
        i += 1;
    }
    while s.len() > len {
        s.pop();
    }
    s
}

async fn insert_blob(pg: &PgHub, body: &str) -> i64 {
    pg.id(
        "insert into public.blobs (small, body) values ('tiny', $1) returning id",
        &[&body],
    )
    .await
}

/// A hub on `SETUP` and a subscriber of `event` on `public.blobs`.
async fn watch_blobs(event: &str) -> (PgHub, WsClient) {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!({"event": event, "schema": "public", "table": "blobs"});
    subscribe(
        &mut c,
        "realtime:blobs",
        json!([entry]),
        Some(&pg.user(USER)),
    )
    .await;
    (pg, c)
}

#[tokio::test]
async fn rows_of_100_kb_and_900_kb_arrive_intact() {
    let (pg, mut c) = watch_blobs("*").await;
    for size in [100 * 1024, 900 * 1024] {
        let body = text_of(size);
        let id = insert_blob(&pg, &body).await;
        let ch = expect_row(&mut c, "INSERT", "blobs", id).await;
        assert_eq!(ch.data["errors"], serde_json::Value::Null, "{size} bytes");
        let got = ch.data["record"]["body"].as_str().unwrap_or_default();
        assert_eq!(got.len(), body.len(), "{size} bytes: length");
        assert!(got == body, "{size} bytes: content differs");
    }
}

#[tokio::test]
async fn a_row_over_1_mb_arrives_with_error_413_and_its_large_field_dropped() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!({"event": "*", "schema": "public", "table": "blobs"});
    let sub = subscribe(
        &mut c,
        "realtime:blobs",
        json!([entry]),
        Some(&pg.user(USER)),
    )
    .await;
    let body = text_of(1536 * 1024);
    let id = insert_blob(&pg, &body).await;
    let ch = expect_row(&mut c, "INSERT", "blobs", id).await;
    assert_eq!(ch.ids, sub.ids);
    assert_eq!(ch.data["errors"], json!(["Error 413: Payload Too Large"]));
    assert_eq!(
        ch.data["record"],
        json!({"id": id, "small": "tiny"}),
        "small fields kept, the large one dropped"
    );

    // An UPDATE of the large row: both record and old_record are cut down.
    pg.run(
        "update public.blobs set small = 'still' where id = $1",
        &[&id],
    )
    .await;
    let up = expect_row(&mut c, "UPDATE", "blobs", id).await;
    assert_eq!(up.data["errors"], json!(["Error 413: Payload Too Large"]));
    assert_eq!(up.data["record"], json!({"id": id, "small": "still"}));
    assert_eq!(up.data["old_record"], json!({"id": id, "small": "tiny"}));

    // A small row afterwards is whole again.
    let small = insert_blob(&pg, "short").await;
    let ch = expect_row(&mut c, "INSERT", "blobs", small).await;
    assert_eq!(ch.data["errors"], serde_json::Value::Null);
    assert_eq!(ch.data["record"]["body"], "short");
}

/// The 413 rule weighs the change, not each row: an UPDATE whose new and old rows are
/// each under 1 MB but together over it is cut down, as Supabase weighs the whole change,
/// so no frame passes the 1 MiB message limit of the Python client.
#[tokio::test]
async fn an_update_whose_two_rows_together_pass_1_mb_arrives_with_error_413() {
    let (pg, mut c) = watch_blobs("*").await;
    let body = text_of(700 * 1024);
    let id = insert_blob(&pg, &body).await;
    let ch = expect_row(&mut c, "INSERT", "blobs", id).await;
    assert_eq!(ch.data["errors"], serde_json::Value::Null);
    assert_eq!(
        ch.data["record"]["body"].as_str().map(str::len),
        Some(body.len())
    );
    pg.run(
        "update public.blobs set small = 'moved' where id = $1",
        &[&id],
    )
    .await;
    let up = expect_row(&mut c, "UPDATE", "blobs", id).await;
    assert_eq!(up.data["errors"], json!(["Error 413: Payload Too Large"]));
    assert_eq!(up.data["record"], json!({"id": id, "small": "moved"}));
    assert_eq!(up.data["old_record"], json!({"id": id, "small": "tiny"}));

    // A row just under 1 MiB alone, whose frame (columns, envelope) would pass it.
    let id = insert_blob(&pg, &text_of(1024 * 1024 - 200)).await;
    let ch = expect_row(&mut c, "INSERT", "blobs", id).await;
    assert_eq!(ch.data["errors"], json!(["Error 413: Payload Too Large"]));
}

/// Rows one statement inserts: more than a connection's queue holds (`outbox_frames`,
/// 4,096 by default), fewer than a burst may take it to.
const BULK_ROWS: i64 = 10_000;

#[tokio::test]
async fn a_statement_of_more_changes_than_a_queue_holds_reaches_a_reading_subscriber_whole() {
    let (pg, mut c) = watch_blobs("INSERT").await;
    let first = pg
        .id(
            "with rows as (insert into public.blobs (small) select 'bulk ' || g \
             from generate_series(1, $1::bigint) g returning id) select min(id) from rows",
            &[&BULK_ROWS],
        )
        .await;
    for id in first..first + BULK_ROWS {
        expect_row(&mut c, "INSERT", "blobs", id).await;
    }
    // Still connected: a row after the burst arrives too.
    let after = insert_blob(&pg, "after").await;
    expect_row(&mut c, "INSERT", "blobs", after).await;
}

/// The backend pids of the capture connections to this test's database.
async fn capture_pids(pg: &PgHub) -> Vec<i32> {
    pg.sql
        .query(
            "select pid from pg_stat_activity where application_name = $1 \
             and datname = current_database() order by pid",
            &[&switchboard::capture::APPLICATION_NAME],
        )
        .await
        .unwrap_or_else(|e| panic!("capture backends: {}", pg_err(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_statement_of_8_mb_arrives_whole_and_capture_reads_on_over_a_new_connection() {
    let (pg, mut c) = watch_blobs("INSERT").await;
    let before = capture_pids(&pg).await;
    assert_eq!(before.len(), 1, "one capture connection: {before:?}");
    // Nine rows of 900 KB in one statement: one log row of 8 MB, which the capture
    // connection's read buffer would keep for good.
    let body = text_of(900 * 1024);
    let first = pg
        .id(
            "with rows as (insert into public.blobs (small, body) select 'big ' || g, $1 \
             from generate_series(1, 9) g returning id) select min(id) from rows",
            &[&body],
        )
        .await;
    for id in first..first + 9 {
        let ch = expect_row(&mut c, "INSERT", "blobs", id).await;
        assert!(ch.data["record"]["body"] == body.as_str(), "row {id} whole");
    }
    // Rows after it, committed whichever connection reads them, arrive once each.
    let mut after = Vec::new();
    for i in 0..3 {
        after.push(insert_blob(&pg, &format!("after {i}")).await);
    }
    for id in after {
        expect_row(&mut c, "INSERT", "blobs", id).await;
    }
    // The connection that read it is gone (its backend may take a moment to exit).
    let now = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let pids = capture_pids(&pg).await;
            if pids.len() == 1 && pids != before {
                return pids;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(now.is_ok(), "capture still reads over {before:?}");
    let status = pg.status().await;
    assert_eq!(status["capture"]["connected"], true, "{status}");
    assert_eq!(
        status["capture"]["reconnects"], 0,
        "a reopen is not a lost connection: {status}"
    );
    assert!(
        c.try_recv_within(std::time::Duration::from_millis(300))
            .await
            .is_none(),
        "nothing twice"
    );
}
