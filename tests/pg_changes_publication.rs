//! Tables enabled the Supabase way: membership of the `supabase_realtime` publication,
//! however it comes about and while the hub runs, is the same as `realtime.enable`; the
//! two ways are tracked apart (`realtime.enabled_tables.enabled_via`), and a table enabled
//! neither way gets an error naming both fixes.

mod common;

use std::time::{Duration, Instant};

use common::e2e::*;
use common::hub::{Vsn, WsClient};
use serde_json::{json, Value};

const SETUP: &str = r#"
create table public.jobs (id bigserial primary key, title text);
create table public.notes (id bigserial primary key, body text);
grant select on public.jobs, public.notes to authenticated;
"#;

const USER: &str = "6a3c0e8e-51c4-4b59-9a43-0c2f3c4a9d10";

fn all_of(table: &str) -> Value {
    json!({"event": "*", "schema": "public", "table": table})
}

/// A v2 client subscribed, as the test user, to every event of `tables` on `topic`.
async fn subscribed(pg: &PgHub, topic: &str, tables: &[&str]) -> WsClient {
    let mut c = pg.connect(Vsn::V2).await;
    let entries: Vec<Value> = tables.iter().map(|t| all_of(t)).collect();
    subscribe(&mut c, topic, Value::Array(entries), Some(&pg.user(USER))).await;
    c
}

/// Joins `table` and returns the first system message (ok: subscribed; error: refused).
async fn try_subscribe(pg: &PgHub, c: &mut WsClient, topic: &str, table: &str) -> Value {
    let (join_ref, reply) = join_changes(
        c,
        topic,
        json!([all_of(table)]),
        Some(&pg.user(USER)),
        json!({}),
    )
    .await;
    joined_from_reply(topic, join_ref, &reply);
    next_system(c).await
}

async fn enabled_via(pg: &PgHub) -> Vec<(String, String)> {
    enabled_tables(pg, "enabled_via").await
}

/// Each enabled table's name and its `column` in `realtime.enabled_tables`, by name.
async fn enabled_tables<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    pg: &PgHub,
    column: &str,
) -> Vec<(String, T)> {
    enabled_tables_in(&pg.sql, column).await
}

/// [`enabled_tables`] in the database `sql` is connected to.
async fn enabled_tables_in<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    sql: &tokio_postgres::Client,
    column: &str,
) -> Vec<(String, T)> {
    sql.query(
        &format!("select table_name, {column} from realtime.enabled_tables order by 1"),
        &[],
    )
    .await
    .expect("realtime.enabled_tables")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Joins every event of `jobs` on `topic` as the test user, then inserts a job and
/// expects its INSERT: the table is captured and delivered.
async fn receives_a_new_job(pg: &PgHub, c: &mut WsClient, topic: &str) {
    subscribe(c, topic, json!([all_of("jobs")]), Some(&pg.user(USER))).await;
    let id = pg
        .id(
            "insert into public.jobs (title) values ('new') returning id",
            &[],
        )
        .await;
    expect_row(c, "INSERT", "jobs", id).await;
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn a_table_added_to_the_publication_while_the_hub_runs_is_captured_at_once() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let refused = try_subscribe(&pg, &mut c, "realtime:before", "jobs").await;
    assert_eq!(refused["status"], "error", "{refused}");
    assert_eq!(
        refused["message"],
        "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: \
         table public.jobs is not enabled for realtime; add it to the publication with: \
         alter publication supabase_realtime add table public.jobs; \
         or enable it with: select realtime.enable('public.jobs')"
    );

    pg.exec("alter publication supabase_realtime add table public.jobs")
        .await;
    // No waiting: the event trigger started capture in the DDL's own transaction, and
    // "not enabled" is never cached.
    receives_a_new_job(&pg, &mut c, "realtime:after").await;
    assert_eq!(enabled_via(&pg).await, pairs(&[("jobs", "publication")]));
}

/// A partitioned table in the publication without `publish_via_partition_root` is
/// captured as its partitions: a join naming it is told so, and how to capture it as
/// itself, rather than to add it to the publication it is in.
#[tokio::test]
async fn a_partitioned_table_published_as_its_partitions_is_refused_with_what_to_do() {
    let pg = PgHub::start(SETUP).await;
    pg.exec(
        "create table public.ev (id int, day date, primary key (id, day)) partition by range (day); \
         create table public.ev_2026 partition of public.ev for values from ('2026-01-01') to ('2027-01-01'); \
         grant select on public.ev, public.ev_2026 to authenticated; \
         alter publication supabase_realtime add table public.ev;",
    )
    .await;
    let mut c = pg.connect(Vsn::V2).await;
    let refused = try_subscribe(&pg, &mut c, "realtime:ev", "ev").await;
    assert_eq!(
        refused["message"],
        "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: \
         table public.ev is partitioned and not captured as itself (publication supabase_realtime publishes its partitions, \
         under their own names, unless publish_via_partition_root is set); subscribe to its partitions, or set: \
         alter publication supabase_realtime set (publish_via_partition_root = true); \
         or enable it with: select realtime.enable('public.ev')"
    );
    subscribed(&pg, "realtime:partition", &["ev_2026"]).await;
}

#[tokio::test]
async fn publication_and_realtime_enable_are_tracked_apart() {
    let pg = PgHub::start(SETUP).await;
    pg.exec(
        "alter publication supabase_realtime add table public.jobs; \
         select realtime.enable('public.jobs'); select realtime.enable('public.notes');",
    )
    .await;
    assert_eq!(
        enabled_via(&pg).await,
        pairs(&[
            ("jobs", "publication, realtime.enable"),
            ("notes", "realtime.enable")
        ])
    );
    // Leaving the publication does not undo realtime.enable ...
    pg.exec("alter publication supabase_realtime drop table public.jobs")
        .await;
    assert_eq!(
        enabled_via(&pg).await,
        pairs(&[("jobs", "realtime.enable"), ("notes", "realtime.enable")])
    );
    // ... and realtime.disable does not undo the publication.
    pg.exec(
        "alter publication supabase_realtime add table public.notes; \
         select realtime.disable('public.notes'); select realtime.disable('public.jobs');",
    )
    .await;
    assert_eq!(enabled_via(&pg).await, pairs(&[("notes", "publication")]));
    let mut c = pg.connect(Vsn::V1).await;
    let refused = try_subscribe(&pg, &mut c, "realtime:a", "jobs").await;
    assert_eq!(refused["status"], "error", "{refused}");
    subscribe(
        &mut c,
        "realtime:b",
        json!([all_of("notes")]),
        Some(&pg.user(USER)),
    )
    .await;
}

#[tokio::test]
async fn a_publication_for_all_tables_captures_tables_created_later_but_never_the_hubs_own() {
    let pg = PgHub::start(SETUP).await;
    pg.exec(
        "drop publication supabase_realtime; \
         create publication supabase_realtime for all tables; \
         create table public.later (id bigserial primary key, v text); \
         grant select on public.later to authenticated;",
    )
    .await;
    let tables: Vec<String> = enabled_via(&pg).await.into_iter().map(|(t, _)| t).collect();
    assert_eq!(tables, ["jobs", "later", "notes"]);
    let mut c = subscribed(&pg, "realtime:room", &["later"]).await;
    let id = pg
        .id(
            "insert into public.later (v) values ('new') returning id",
            &[],
        )
        .await;
    expect_row(&mut c, "INSERT", "later", id).await;

    // Dropping the publication stops capture of every table it enabled.
    pg.exec("drop publication supabase_realtime").await;
    assert_eq!(enabled_via(&pg).await, Vec::new());
}

#[tokio::test]
async fn a_table_moved_into_a_published_schema_is_captured() {
    let pg = PgHub::start(SETUP).await;
    pg.exec(
        "create schema crm; grant usage on schema crm to authenticated; \
         drop publication supabase_realtime; \
         create publication supabase_realtime for tables in schema crm; \
         create table public.deals (id bigserial primary key, v text); \
         grant select on public.deals to authenticated; \
         alter table public.deals set schema crm;",
    )
    .await;
    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!({"event": "*", "schema": "crm", "table": "deals"});
    subscribe(
        &mut c,
        "realtime:room",
        json!([entry]),
        Some(&pg.user(USER)),
    )
    .await;
}

/// One session's long DDL transaction holds up no other session's capture: a table
/// another session creates in a published schema meanwhile is captured in that session's
/// own transaction, and its rows arrive.
#[tokio::test]
async fn a_long_ddl_transaction_holds_up_no_other_sessions_capture() {
    let pg = PgHub::start(&format!(
        "{SETUP} create schema crm; grant usage on schema crm to authenticated; \
         drop publication supabase_realtime; \
         create publication supabase_realtime for tables in schema crm;"
    ))
    .await;
    let long = pg.db.client().await;
    long.batch_execute(
        "begin; create table crm.leads (id bigserial primary key, v text); \
         grant select on crm.leads to authenticated;",
    )
    .await
    .unwrap();
    // Still open: its sync captured crm.leads, not yet committed.
    pg.exec(
        "create table crm.deals (id bigserial primary key, v text); \
         grant select on crm.deals to authenticated;",
    )
    .await;
    let captured: i64 = pg
        .sql
        .query_one(
            "select count(*) from pg_trigger where tgrelid = 'crm.deals'::regclass \
             and tgname like 'switchboard_capture%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(captured, 3, "captured at its own commit");
    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!({"event": "*", "schema": "crm", "table": "deals"});
    subscribe(
        &mut c,
        "realtime:deals",
        json!([entry]),
        Some(&pg.user(USER)),
    )
    .await;
    let id = pg
        .id("insert into crm.deals (v) values ('x') returning id", &[])
        .await;
    expect_row(&mut c, "INSERT", "deals", id).await;
    long.batch_execute("commit").await.unwrap();
    assert_eq!(
        enabled_via(&pg).await,
        pairs(&[("deals", "publication"), ("leads", "publication")])
    );
}

/// Capture triggers on `table` in schema public.
async fn capture_triggers(pg: &PgHub, table: &str) -> i64 {
    pg.sql
        .query_one(
            "select count(*) from pg_trigger where tgrelid = ('public.' || $1)::regclass \
             and tgname like 'switchboard_capture%'",
            &[&table],
        )
        .await
        .unwrap()
        .get(0)
}

/// A second session with `sql` run in a transaction it leaves open.
async fn holding(pg: &PgHub, sql: &str) -> tokio_postgres::Client {
    let session = pg.db.client().await;
    session
        .batch_execute(&format!("begin; {sql}"))
        .await
        .unwrap();
    session
}

/// Waits (up to 30 s) until `table` has `n` capture triggers: the hub's sync runs every
/// 5 s.
async fn wait_capture_triggers(pg: &PgHub, table: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while capture_triggers(pg, table).await != n {
        assert!(
            Instant::now() < deadline,
            "the sync never left {table} with {n} capture triggers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A table that leaves the publication while another session has read it in a
/// transaction still open keeps its triggers (dropping them waits for that session's
/// lock), but from the ALTER's commit its changes reach no subscriber and a join to it is
/// refused; once the reader is gone the hub's sync drops them.
#[tokio::test]
async fn a_table_that_left_the_publication_while_read_in_an_open_transaction_delivers_nothing() {
    let pg = PgHub::start(SETUP).await;
    pg.exec("alter publication supabase_realtime add table public.jobs, public.notes")
        .await;
    let mut c = subscribed(&pg, "realtime:room", &["jobs", "notes"]).await;
    let reader = holding(&pg, "select count(*) from public.jobs").await;
    pg.exec("alter publication supabase_realtime drop table public.jobs")
        .await;
    assert_eq!(
        capture_triggers(&pg, "jobs").await,
        3,
        "held off by the reader"
    );
    assert_eq!(enabled_via(&pg).await, pairs(&[("notes", "publication")]));

    pg.exec("insert into public.jobs (title) values ('gone')")
        .await;
    let note = pg
        .id(
            "insert into public.notes (body) values ('n') returning id",
            &[],
        )
        .await;
    // No INSERT of the job: the next frame is the note's.
    expect_row(&mut c, "INSERT", "notes", note).await;
    let mut other = pg.connect(Vsn::V2).await;
    let refused = try_subscribe(&pg, &mut other, "realtime:later", "jobs").await;
    assert_eq!(refused["status"], "error", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("table public.jobs is not enabled for realtime")),
        "{refused}"
    );

    reader.batch_execute("commit").await.unwrap();
    wait_capture_triggers(&pg, "jobs", 0).await;
}

/// A table added to the publication while a transaction that wrote to it is still open
/// cannot get its triggers in the ALTER's transaction (the ALTER warns and commits): a
/// join meanwhile is told that capture has not started yet, and why, not that the table
/// is missing from the publication; the hub's sync captures it once the writer is gone.
#[tokio::test]
async fn a_table_added_to_the_publication_while_written_in_an_open_transaction_is_captured_later() {
    let pg = PgHub::start(SETUP).await;
    let writer = holding(&pg, "insert into public.jobs (title) values ('early')").await;
    pg.exec("alter publication supabase_realtime add table public.jobs")
        .await;
    assert_eq!(
        capture_triggers(&pg, "jobs").await,
        0,
        "held off by the writer"
    );
    let mut c = pg.connect(Vsn::V2).await;
    let refused = try_subscribe(&pg, &mut c, "realtime:early", "jobs").await;
    assert_eq!(refused["status"], "error", "{refused}");
    assert_eq!(
        refused["message"],
        "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: \
         table public.jobs is in publication supabase_realtime, but its capture has not started yet: its triggers could not \
         be made (most often a transaction that wrote to the table is still open; the hub's log says so); the hub tries \
         again every 5 seconds, so join again once that transaction has ended"
    );

    writer.batch_execute("commit").await.unwrap();
    wait_capture_triggers(&pg, "jobs", 3).await;
    receives_a_new_job(&pg, &mut c, "realtime:later").await;
}

/// A sync lock a session still holds from a sync that failed where nothing could release
/// it (a lock granted as its wait was cancelled) is released by that session's next sync,
/// so no session's capture waits for it.
#[tokio::test]
async fn a_sync_lock_left_behind_in_a_session_is_released_by_its_next_sync() {
    let pg = PgHub::start(SETUP).await;
    let leaky = pg.db.client().await;
    leaky
        .batch_execute("select pg_advisory_lock(8314037285011469678)")
        .await
        .unwrap();
    leaky
        .batch_execute("alter publication supabase_realtime add table public.jobs")
        .await
        .unwrap();
    pg.exec("alter publication supabase_realtime add table public.notes")
        .await;
    assert_eq!(
        enabled_via(&pg).await,
        pairs(&[("jobs", "publication"), ("notes", "publication")]),
        "both captured in their own DDL's transaction"
    );
}

/// Any role may take any advisory key: a session that holds the sync's and keeps it
/// delays another session's sync by at most 500 ms, which then goes on without the lock
/// (with a warning naming the holder) and captures the table in the DDL's transaction.
#[tokio::test]
async fn a_session_holding_the_sync_lock_does_not_stop_capture() {
    let pg = PgHub::start(SETUP).await;
    let holder = pg.db.client().await;
    holder
        .batch_execute("select pg_advisory_lock(8314037285011469678)")
        .await
        .unwrap();
    pg.exec("alter publication supabase_realtime add table public.notes")
        .await;
    assert_eq!(
        enabled_via(&pg).await,
        pairs(&[("notes", "publication")]),
        "captured in the DDL's own transaction"
    );
    let held: i64 = holder
        .query_one(
            "select count(*) from pg_catalog.pg_locks where locktype = 'advisory' \
             and pid = pg_catalog.pg_backend_pid() and objid = 1853240686 and granted",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 1, "the holder still holds it");
}

#[tokio::test]
async fn without_the_event_trigger_the_hub_reconciles_by_itself() {
    // As on a database where the hub may not create event triggers.
    let pg = PgHub::start(&format!(
        "{SETUP} drop event trigger switchboard_publication_sync;"
    ))
    .await;
    pg.exec("alter publication supabase_realtime add table public.notes")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = pg.connect(Vsn::V2).await;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sys = try_subscribe(&pg, &mut c, &format!("realtime:r{attempt}"), "notes").await;
        if sys["status"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "not captured within 10 s: {sys}");
        // Polling a condition, not hiding a race: the hub reconciles every second.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(enabled_via(&pg).await, pairs(&[("notes", "publication")]));
}

/// The publication's `publish` option (the dashboard's toggles) decides which events a
/// table enabled only through it delivers, as Supabase passes it to its decoder;
/// `realtime.enable` still means every event. A new option holds from the next change
/// committed after it, with no wait.
#[tokio::test]
async fn the_publications_publish_option_decides_which_events_subscribers_receive() {
    let pg = PgHub::start(SETUP).await;
    pg.exec(
        "alter publication supabase_realtime add table public.jobs, public.notes; \
         alter publication supabase_realtime set (publish = 'insert, update'); \
         select realtime.enable('public.notes');",
    )
    .await;
    let all = || ["INSERT", "UPDATE", "DELETE"].map(String::from).to_vec();
    assert_eq!(
        enabled_tables::<Vec<String>>(&pg, "events").await,
        vec![
            (
                "jobs".to_owned(),
                vec!["INSERT".to_owned(), "UPDATE".to_owned()]
            ),
            ("notes".to_owned(), all()),
        ]
    );
    let mut c = subscribed(&pg, "realtime:room", &["jobs", "notes"]).await;
    let job = pg
        .id(
            "insert into public.jobs (title) values ('a') returning id",
            &[],
        )
        .await;
    pg.exec(&format!(
        "update public.jobs set title = 'b' where id = {job}; \
         delete from public.jobs where id = {job};"
    ))
    .await;
    let note = pg
        .id(
            "insert into public.notes (body) values ('n') returning id",
            &[],
        )
        .await;
    pg.exec(&format!("delete from public.notes where id = {note}"))
        .await;
    expect_row(&mut c, "INSERT", "jobs", job).await;
    expect_row(&mut c, "UPDATE", "jobs", job).await;
    // No DELETE of the job: the next frame is the note's.
    expect_row(&mut c, "INSERT", "notes", note).await;
    expect_row(&mut c, "DELETE", "notes", note).await;

    // Deletes published again: the very next delete is delivered; inserts no longer are.
    let second = pg
        .id(
            "insert into public.jobs (title) values ('c') returning id",
            &[],
        )
        .await;
    expect_row(&mut c, "INSERT", "jobs", second).await;
    pg.exec("alter publication supabase_realtime set (publish = 'update, delete')")
        .await;
    let third = pg
        .id(
            "insert into public.jobs (title) values ('d') returning id",
            &[],
        )
        .await;
    pg.exec(&format!(
        "delete from public.jobs where id = {second}; delete from public.jobs where id = {third};"
    ))
    .await;
    expect_row(&mut c, "DELETE", "jobs", second).await;
    expect_row(&mut c, "DELETE", "jobs", third).await;
    // Leaving the publication's care for realtime.enable's: every event again.
    pg.exec("select realtime.enable('public.jobs')").await;
    let fourth = pg
        .id(
            "insert into public.jobs (title) values ('e') returning id",
            &[],
        )
        .await;
    expect_row(&mut c, "INSERT", "jobs", fourth).await;
}

const PARTITIONED: &str = "
create table public.events (id bigint primary key, v text) partition by range (id);
create table public.events_low partition of public.events for values from (0) to (100);
create table public.events_high partition of public.events for values from (100) to (1000);
grant select on public.events, public.events_low, public.events_high to authenticated;
";

/// A partitioned table in the publication (which lists its partitions) delivers the rows
/// written through the parent as well as those written straight into a partition, under
/// the partition's name, as Supabase's decoder names them; a row an UPDATE moves to
/// another partition arrives as a DELETE and an INSERT.
#[tokio::test]
async fn a_partitioned_table_in_the_publication_delivers_rows_written_through_the_parent() {
    let pg = PgHub::start(&format!("{SETUP}{PARTITIONED}")).await;
    pg.exec("alter publication supabase_realtime add table public.events")
        .await;
    let mut c = subscribed(&pg, "realtime:events", &["events_low", "events_high"]).await;
    pg.exec(
        "insert into public.events values (1, 'a'), (150, 'b'); \
         insert into public.events_low values (2, 'c'); \
         update public.events set id = 120 where id = 1; \
         update public.events set v = 'd' where id = 150; \
         delete from public.events where id = 2;",
    )
    .await;
    expect_row(&mut c, "INSERT", "events_low", 1).await;
    expect_row(&mut c, "INSERT", "events_high", 150).await;
    expect_row(&mut c, "INSERT", "events_low", 2).await;
    expect_row(&mut c, "DELETE", "events_low", 1).await;
    expect_row(&mut c, "INSERT", "events_high", 120).await;
    let updated = expect_row(&mut c, "UPDATE", "events_high", 150).await;
    assert_eq!(updated.data["record"]["v"], "d", "{:?}", updated.frame);
    expect_row(&mut c, "DELETE", "events_low", 2).await;
}

/// With `publish_via_partition_root` the publication lists the partitioned table itself:
/// every row written into it arrives under its name, once, whether written through it or
/// straight into a partition at any depth, including a partition created or attached while
/// the hub runs. A detached partition's rows stop arriving at once.
#[tokio::test]
async fn a_table_published_via_its_root_delivers_rows_written_straight_into_its_partitions() {
    let pg = PgHub::start(&format!(
        "{SETUP}{PARTITIONED}
         create table public.events_mid partition of public.events
             for values from (1000) to (2000) partition by range (id);
         create table public.events_mid_a partition of public.events_mid
             for values from (1000) to (1500);"
    ))
    .await;
    pg.exec(
        "alter publication supabase_realtime set (publish_via_partition_root = true); \
         alter publication supabase_realtime add table public.events",
    )
    .await;
    let mut c = subscribed(&pg, "realtime:events", &["events"]).await;
    pg.exec(
        "insert into public.events values (1, 'through the parent'); \
         insert into public.events_low values (2, 'straight in'); \
         insert into public.events_mid values (1001, 'into the middle'); \
         insert into public.events_mid_a values (1002, 'into the leaf below'); \
         create table public.events_top partition of public.events for values from (2000) to (3000); \
         insert into public.events_top values (2001, 'into a new partition'); \
         update public.events_low set v = 'changed' where id = 2; \
         delete from public.events_mid_a where id = 1002;",
    )
    .await;
    for id in [1, 2, 1001, 1002, 2001] {
        expect_row(&mut c, "INSERT", "events", id).await;
    }
    let updated = expect_row(&mut c, "UPDATE", "events", 2).await;
    assert_eq!(
        updated.data["record"]["v"], "changed",
        "{:?}",
        updated.frame
    );
    assert_eq!(updated.data["old_record"]["id"], 2, "{:?}", updated.frame);
    expect_row(&mut c, "DELETE", "events", 1002).await;

    pg.exec(
        "create table public.events_later (like public.events including all); \
         alter table public.events attach partition public.events_later for values from (3000) to (4000); \
         insert into public.events_later values (3001, 'into an attached table'); \
         alter table public.events detach partition public.events_top; \
         insert into public.events_top values (2002, 'detached'); \
         insert into public.events_low values (3, 'after the detach');",
    )
    .await;
    expect_row(&mut c, "INSERT", "events", 3001).await;
    expect_row(&mut c, "INSERT", "events", 3).await;
    // The detached table's triggers go at the hub's next sync (as here).
    pg.exec("select realtime.sync_publication()").await;
    let left = pg
        .sql
        .query_one(
            "select count(*) from pg_catalog.pg_trigger \
             where tgrelid = 'public.events_top'::regclass and tgname like 'switchboard%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        left.get::<_, i64>(0),
        0,
        "the detached table keeps no trigger"
    );
}

/// `realtime.enable` on a partitioned table: a statement straight into a partition is
/// logged in chunks of at most 100 rows, in row order, and nothing from a savepoint that
/// rolled back; `realtime.disable` takes the partitions' triggers away too.
#[tokio::test]
async fn an_enabled_partitioned_table_receives_large_statements_straight_into_a_partition() {
    let pg = PgHub::start(&format!("{SETUP}{PARTITIONED}")).await;
    pg.exec("select realtime.enable('public.events')").await;
    let mut c = subscribed(&pg, "realtime:events", &["events"]).await;
    pg.exec(
        "begin; \
         insert into public.events_high select g, 'bulk' from generate_series(100, 349) g; \
         savepoint s; \
         insert into public.events_low values (5, 'rolled back'); \
         rollback to savepoint s; \
         insert into public.events_low values (6, 'kept'); \
         commit;",
    )
    .await;
    for id in (100..350).chain([6]) {
        expect_row(&mut c, "INSERT", "events", id).await;
    }
    let sizes: Vec<i32> = pg
        .sql
        .query(
            "select json_array_length(rows) from realtime.changes \
             where table_name = 'events' order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sizes, [100, 100, 50, 1]);
    pg.exec("select realtime.disable('public.events')").await;
    let left = pg
        .sql
        .query_one(
            "select count(*) from pg_catalog.pg_trigger t \
             join pg_catalog.pg_class c on c.oid = t.tgrelid \
             where c.relname like 'events%' and t.tgname like 'switchboard%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(left.get::<_, i64>(0), 0);
}

/// A table captured before it became a partition is switched to row capture when it is
/// attached, so rows written through its new parent are not lost.
#[tokio::test]
async fn a_captured_table_attached_as_a_partition_keeps_receiving_rows_written_through_the_parent()
{
    let pg = PgHub::start(SETUP).await;
    pg.exec(
        "create table public.archive (id bigint primary key, v text); \
         grant select on public.archive to authenticated; \
         select realtime.enable('public.archive'); \
         create table public.ledger (id bigint primary key, v text) partition by range (id); \
         alter table public.ledger attach partition public.archive for values from (0) to (100);",
    )
    .await;
    let mut c = subscribed(&pg, "realtime:archive", &["archive"]).await;
    pg.exec(
        "insert into public.ledger values (5, 'through the parent'); \
             insert into public.archive values (6, 'straight in');",
    )
    .await;
    expect_row(&mut c, "INSERT", "archive", 5).await;
    expect_row(&mut c, "INSERT", "archive", 6).await;
}

/// Supabase's `postgres` role owns the project's tables and publication but is not a
/// superuser: its DDL, too, starts and stops capture inside the DDL's own transaction.
#[tokio::test]
async fn ddl_by_a_publication_owner_who_is_not_a_superuser_keeps_capture_in_line_at_once() {
    let pg = PgHub::start(SETUP).await;
    let db = &pg.db.name;
    pg.exec(&format!(
        "do $$ begin create role sb_project_owner login password 'owner' nosuperuser; \
         exception when duplicate_object or unique_violation then null; end $$; \
         grant create on database {db} to sb_project_owner; \
         grant create on schema public to sb_project_owner; \
         alter publication supabase_realtime owner to sb_project_owner;"
    ))
    .await;
    let owner = common::pg::connect(&common::pg::with_user(
        &pg.db.url,
        "sb_project_owner",
        "owner",
    ))
    .await;
    let captured = "select count(*) from pg_trigger \
                    where tgrelid = 'public.tickets'::regclass and tgname like 'switchboard_capture%'";
    owner
        .batch_execute(
            "create table public.tickets (id bigserial primary key, title text); \
             grant select on public.tickets to authenticated; \
             begin; alter publication supabase_realtime add table public.tickets;",
        )
        .await
        .expect("the owner's DDL");
    // Still inside the owner's transaction: nothing else can have started capture yet.
    let triggers: i64 = owner.query_one(captured, &[]).await.unwrap().get(0);
    assert_eq!(triggers, 3, "capture started in the DDL's own transaction");
    owner.batch_execute("commit").await.unwrap();

    let mut c = subscribed(&pg, "realtime:tickets", &["tickets"]).await;
    let row = owner
        .query_one(
            "insert into public.tickets (title) values ('x') returning id",
            &[],
        )
        .await
        .unwrap();
    expect_row(&mut c, "INSERT", "tickets", row.get(0)).await;

    owner
        .batch_execute("begin; alter publication supabase_realtime drop table public.tickets;")
        .await
        .unwrap();
    let triggers: i64 = owner.query_one(captured, &[]).await.unwrap().get(0);
    assert_eq!(triggers, 0, "capture stopped in the DDL's own transaction");
    owner.batch_execute("commit").await.unwrap();
    assert_eq!(enabled_via(&pg).await, pairs(&[]));
}

/// A database dumped and restored (every table gets a new oid) keeps how each table was
/// enabled: one enabled both ways stays captured after it leaves the publication.
#[tokio::test]
async fn a_restored_database_keeps_how_each_table_was_enabled() {
    let from = common::pg::test_db().await;
    let admin = from.client().await;
    switchboard::db::migrate(&admin).await.unwrap();
    admin
        .batch_execute(&format!(
            "{SETUP} alter publication supabase_realtime add table public.jobs; \
             select realtime.enable('public.jobs'); select realtime.enable('public.notes');"
        ))
        .await
        .unwrap();
    let to = common::pg::test_db().await;
    let dump = std::process::Command::new(common::pg::pg_program("pg_dump"))
        .args(["--dbname", &from.url])
        .output()
        .expect("pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let mut psql = std::process::Command::new(common::pg::pg_program("psql"))
        .args(["-v", "ON_ERROR_STOP=1", "--quiet", "--dbname", &to.url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    std::io::Write::write_all(&mut psql.stdin.take().unwrap(), &dump.stdout).unwrap();
    assert!(psql.wait().unwrap().success(), "restore");
    let restored = to.client().await;
    // As the hub does at start, then the table leaves the publication.
    restored
        .batch_execute(
            "select realtime.sync_publication(); \
             alter publication supabase_realtime drop table public.jobs;",
        )
        .await
        .unwrap();
    assert_eq!(
        enabled_tables_in::<String>(&restored, "enabled_via").await,
        pairs(&[("jobs", "realtime.enable"), ("notes", "realtime.enable")])
    );
}
