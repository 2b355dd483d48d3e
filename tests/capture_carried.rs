//! Changes delivered from the wake-up that carries them (`sql/052_wake_payload.sql`,
//! `capture/carried.rs`), before the log read that confirms them: each arrives once, in
//! commit order and in row order, with the content a read gives, and a wake-up that
//! carries nothing holds back every carried change behind it until the read.

mod common;

use common::e2e::*;
use common::hub::Vsn;
use serde_json::{json, Value};

const SETUP: &str = r#"
create table public.jobs (id bigserial primary key, title text, body text);
alter table public.jobs replica identity full;
grant select on public.jobs to authenticated;
select realtime.enable('public.jobs');
"#;

const USER: &str = "0b7c52a4-2d43-4c1e-9b7e-51f0c0a5e6d1";

fn rows_ahead(status: &Value) -> u64 {
    status["capture"]["rows_ahead"]
        .as_u64()
        .unwrap_or_else(|| panic!("rows_ahead is a number: {status}"))
}

/// Waits until the capture has read past every change it delivered ahead (its cursor
/// names none) and waits for the next wake-up.
async fn read_past_ahead(pg: &PgHub) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = pg.status().await;
        let cursor = status["capture"]["cursor"].as_str().unwrap_or_default();
        if !cursor.contains("/a") && status["capture"]["waiting"] == "notify" {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the capture never came to wait for a wake-up with nothing ahead: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn insert_job(pg: &PgHub, title: &str) -> i64 {
    pg.id(
        "insert into public.jobs (title) values ($1) returning id",
        &[&title],
    )
    .await
}

/// Single-row transactions committed one at a time, each while the hub waits for a
/// wake-up, until one arrives ahead of the read (one may meet the hub's poll read);
/// each arrives once, in order.
async fn until_one_arrives_ahead(pg: &PgHub, c: &mut common::hub::WsClient) {
    let before = rows_ahead(&read_past_ahead(pg).await);
    for i in 0..20 {
        let id = insert_job(pg, &format!("job {i}")).await;
        let ch = expect_row(c, "INSERT", "jobs", id).await;
        assert_eq!(ch.data["record"]["title"], format!("job {i}"));
        if rows_ahead(&read_past_ahead(pg).await) > before {
            return;
        }
    }
    panic!("20 single-row commits to an idle hub, none delivered from its wake-up");
}

/// A hub with a subscriber to `event`s of `public.jobs`, once changes go ahead.
async fn carrying(event: &str) -> (PgHub, common::hub::WsClient) {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!({"event": event, "schema": "public", "table": "jobs"});
    subscribe(
        &mut c,
        "realtime:jobs",
        json!([entry]),
        Some(&pg.user(USER)),
    )
    .await;
    until_one_arrives_ahead(&pg, &mut c).await;
    (pg, c)
}

#[tokio::test]
async fn changes_committed_while_the_hub_waits_arrive_from_their_wake_up_once_each() {
    let (pg, mut c) = carrying("*").await;

    // Update and delete carry the old row too, exactly as a read gives it.
    let id = insert_job(&pg, "a").await;
    expect_row(&mut c, "INSERT", "jobs", id).await;
    read_past_ahead(&pg).await;
    pg.run("update public.jobs set title = 'b' where id = $1", &[&id])
        .await;
    let up = expect_row(&mut c, "UPDATE", "jobs", id).await;
    assert_eq!(
        (&up.data["record"]["title"], &up.data["old_record"]["title"]),
        (&json!("b"), &json!("a")),
        "{:?}",
        up.frame
    );
    assert!(
        is_commit_timestamp(up.data["commit_timestamp"].as_str().unwrap_or_default()),
        "{:?}",
        up.frame
    );
    read_past_ahead(&pg).await;
    pg.run("delete from public.jobs where id = $1", &[&id])
        .await;
    let del = expect_row(&mut c, "DELETE", "jobs", id).await;
    assert_eq!(del.data["old_record"]["title"], "b", "{:?}", del.frame);

    // The read that follows skips what was delivered ahead: the next change is the next
    // frame, with no repeat before it.
    let last = insert_job(&pg, "last").await;
    expect_row(&mut c, "INSERT", "jobs", last).await;
    let status = read_past_ahead(&pg).await;
    assert!(
        rows_ahead(&status) >= 2,
        "changes to an idle hub go ahead of the read: {status}"
    );
}

/// The next changes' titles are `titles`, in order.
async fn expect_titles(c: &mut common::hub::WsClient, titles: &[String]) {
    for title in titles {
        let ch = next_change(c).await;
        assert_eq!(ch.data["record"]["title"], *title, "{:?}", ch.frame);
    }
}

/// Commits `sql`, whose changes have `titles` in order, until at least one of them went
/// ahead of the read (a commit that meets the hub's poll read is read instead), at most
/// five times; every time they must arrive in order. How many went ahead, and the status.
async fn commit_until_some_go_ahead(
    pg: &PgHub,
    c: &mut common::hub::WsClient,
    sql: &str,
    titles: &[String],
) -> (u64, Value) {
    for _ in 0..5 {
        let before = rows_ahead(&read_past_ahead(pg).await);
        pg.exec(sql).await;
        expect_titles(c, titles).await;
        let status = read_past_ahead(pg).await;
        let went_ahead = rows_ahead(&status) - before;
        if went_ahead > 0 {
            return (went_ahead, status);
        }
    }
    panic!("five commits of {sql:?}, none with a change delivered from its wake-up");
}

#[tokio::test]
async fn a_wake_up_that_carries_nothing_holds_back_the_carried_changes_behind_it() {
    let (pg, mut c) = carrying("INSERT").await;

    // One transaction: a small row (carried), a row too large for a wake-up (an empty
    // wake-up), a small row (carried, but behind the empty one). All three wake-ups
    // arrive together at commit: only the first may go ahead.
    let titles = ["first", "large", "third"].map(String::from);
    let (went_ahead, status) = commit_until_some_go_ahead(
        &pg,
        &mut c,
        "begin; \
         insert into public.jobs (title) values ('first'); \
         insert into public.jobs (title, body) values ('large', repeat('x', 9000)); \
         insert into public.jobs (title) values ('third'); \
         commit;",
        &titles,
    )
    .await;
    assert_eq!(
        went_ahead, 1,
        "only the change before the empty wake-up goes ahead: {status}"
    );

    // A statement of more than 100 rows (several log rows) wakes without a payload too.
    let bulk: Vec<String> = (1..=150).map(|g| format!("bulk {g}")).collect();
    pg.exec("insert into public.jobs (title) select 'bulk ' || g from generate_series(1, 150) g")
        .await;
    expect_titles(&mut c, &bulk).await;
    let id = insert_job(&pg, "after").await;
    expect_row(&mut c, "INSERT", "jobs", id).await;

    // A transaction carries its first 16 statements; the rest wake without a payload
    // (one wake-up for all of them) and are read, in order after the carried ones.
    let titles: Vec<String> = (1..=20).map(|i| format!("stmt {i}")).collect();
    let inserts: String = titles
        .iter()
        .map(|t| format!("insert into public.jobs (title) values ('{t}'); "))
        .collect();
    let (went_ahead, status) =
        commit_until_some_go_ahead(&pg, &mut c, &format!("begin; {inserts} commit;"), &titles)
            .await;
    assert!(
        went_ahead <= 16,
        "at most 16 statements of a transaction are carried: {status}"
    );
}

/// What a position that read a row ahead means to every reader of the log: the live
/// read skips the row, a resumed channel whose position is older gets it from the range
/// up to that position, and one resuming from that position does not get it again.
#[tokio::test]
async fn a_row_read_ahead_is_read_by_the_position_that_names_it_and_by_no_later_read() {
    use switchboard::capture::{current_position, next_events, Statements, READ_RANGE_SQL};
    use switchboard::changes::{into_events, DbEvent};

    let db = common::pg::test_db().await;
    let sql = db.client().await;
    switchboard::db::migrate(&sql).await.expect("migrate");
    sql.batch_execute(SETUP).await.expect("setup");
    let mut reader = db.hub_client().await;
    let stmts = Statements::prepare(&reader).await.expect("prepare");
    let range = reader.prepare(READ_RANGE_SQL).await.expect("prepare range");

    let before = current_position(&reader).await.expect("position");
    sql.batch_execute(
        "insert into public.jobs (title) values ('ahead'); \
         insert into public.jobs (title) values ('read')",
    )
    .await
    .expect("insert");
    let logged = sql
        .query(
            "select id, xid::text, (extract(epoch from created_at) * 1000000)::int8 \
             from realtime.changes where table_name = 'jobs' order by id",
            &[],
        )
        .await
        .expect("log rows");
    let (ahead_id, ahead_xid, at): (i64, String, i64) =
        (logged[0].get(0), logged[0].get(1), logged[0].get(2));
    let mut ahead = before.clone();
    ahead.read_ahead(ahead_xid.parse().unwrap(), ahead_id, at);
    let parsed = switchboard::capture::Position::parse(&ahead.to_string()).unwrap();
    assert_eq!(parsed, ahead, "{ahead}");

    let titles = |events: &[DbEvent]| -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                DbEvent::Change(c) => c.record.as_ref().unwrap()["title"].as_str().unwrap().into(),
                DbEvent::Broadcast(b) => panic!("a broadcast: {b:?}"),
            })
            .collect()
    };
    let mut live = ahead.clone();
    let read = next_events(&reader, &stmts, &mut live, 100)
        .await
        .expect("read");
    assert_eq!(
        titles(&read),
        ["read"],
        "the live read skips the row read ahead"
    );
    assert!(live.ahead.is_empty(), "its snapshot sees the row: {live}");

    let page = common::pg::range_read(&mut reader, &range, &before, &ahead).await;
    let gap = into_events(page.entries);
    assert_eq!(titles(&gap), ["ahead"], "a resume from before gets the row");
    let page = common::pg::range_read(&mut reader, &range, &ahead, &live).await;
    let rest = into_events(page.entries);
    assert_eq!(
        titles(&rest),
        ["read"],
        "a resume from the position gets the rest only"
    );
    let page = common::pg::range_read(&mut reader, &range, &live, &live).await;
    let none = into_events(page.entries);
    assert!(none.is_empty());
}
