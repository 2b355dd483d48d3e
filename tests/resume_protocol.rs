//! Resumable subscriptions at the frame level: a client that reconnects with the same
//! `resume=` key gets, after its join reply, exactly the changes it missed, then a
//! `recovered` system message, then live changes; and `recovered: false` with the reason
//! whenever the gap cannot be covered.

mod common;

use std::time::{Duration, Instant};

use common::e2e::*;
use common::hub::{WsClient, RECV_TIMEOUT};
use serde_json::{json, Value};

const SETUP: &str = "
create table public.items (id bigserial primary key, owner uuid not null, n int4 not null default 0);
grant select on public.items to authenticated, service_role;
alter table public.items enable row level security;
create policy own on public.items for select to authenticated using (owner = auth.uid());
select realtime.enable('public.items');
";

const ALICE: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const BOB: &str = "bbbbbbbb-0000-4000-8000-000000000002";

fn entries() -> Value {
    json!([{"event": "INSERT", "schema": "public", "table": "items"}])
}

/// A client on `key`, v2, anon apikey.
async fn connect(pg: &PgHub, key: &str) -> WsClient {
    let url = format!(
        "{}&resume={key}",
        pg.hub.ws_url(Some("2.0.0"), Some(&pg.hub.anon()))
    );
    WsClient::connect(&url).await
}

async fn insert(pg: &PgHub, owner: &str) -> i64 {
    pg.id(
        "insert into public.items (owner) values ($1::text::uuid) returning id",
        &[&owner],
    )
    .await
}

/// Waits until the hub has parked `n` subscriptions (the clients' sockets are gone).
async fn wait_parked(pg: &PgHub, n: i64) {
    common::e2e::wait_parked(&pg.sql, n).await;
}

/// Subscribes a client on `key` as `token`, lets its acks land, and drops it: the hub
/// parks the subscription.
async fn park(pg: &PgHub, key: &str, token: &str) {
    let mut c = connect(pg, key).await;
    subscribe(&mut c, "realtime:items", entries(), Some(token)).await;
    resume_message(&mut c).await;
    c.acknowledge().await;
    drop(c);
    wait_parked(pg, 1).await;
}

/// Inserts `n` rows of `owner`, returning their ids.
async fn insert_n(pg: &PgHub, owner: &str, n: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(insert(pg, owner).await);
    }
    ids
}

/// Expects exactly these inserted rows, in order.
async fn expect_rows(c: &mut WsClient, ids: &[i64]) {
    for id in ids {
        expect_row(c, "INSERT", "items", *id).await;
    }
}

/// The resume message says `count` changes were recovered.
fn assert_recovered(sys: &Value, count: i64) {
    assert_eq!(
        (&sys["recovered"], &sys["count"]),
        (&json!(true), &json!(count)),
        "{sys}"
    );
}

/// The resume message says to refetch: no earlier subscription under the key.
fn assert_no_earlier_subscription(sys: &Value) {
    assert_eq!(sys["recovered"], false, "{sys}");
    assert!(
        sys["message"]
            .as_str()
            .unwrap()
            .contains("no earlier subscription"),
        "{sys}"
    );
}

/// Joins `topic` on a resuming connection and expects exactly `missed` replayed, then the
/// message saying they were recovered.
async fn expect_resumed(c: &mut WsClient, topic: &str, token: &str, missed: &[i64]) {
    subscribe(c, topic, entries(), Some(token)).await;
    expect_rows(c, missed).await;
    assert_recovered(&resume_message(c).await, missed.len() as i64);
}

/// A second client (without a resume key) that sees every row: once it has received a
/// row, the hub has dispatched it, so a reconnect after that finds it in the gap.
struct Observer(WsClient);

impl Observer {
    async fn start(pg: &PgHub) -> Observer {
        let mut c = pg.connect(common::hub::Vsn::V1).await;
        let entries = json!([{"event": "*", "schema": "public", "table": "items"}]);
        let token = pg.token("service_role", "observer");
        subscribe(&mut c, "realtime:observer", entries, Some(&token)).await;
        c.join_ok("realtime:news", json!({})).await;
        Observer(c)
    }

    /// Waits until the row `id` has been dispatched.
    async fn saw(&mut self, id: i64) {
        self.0
            .recv_until(|f| {
                f.is_event("postgres_changes") && f.payload()["data"]["record"]["id"] == id
            })
            .await;
    }

    /// Waits until a database broadcast has been dispatched.
    async fn saw_broadcast(&mut self) {
        self.0.recv_until(|f| f.is_event("broadcast")).await;
    }
}

/// The system message about the resume, skipping nothing else.
async fn resume_message(c: &mut WsClient) -> Value {
    let sys = next_system(c).await;
    assert!(
        sys.get("recovered").is_some(),
        "expected the resume message, got {sys}"
    );
    sys
}

/// How many resumed gaps the hub replayed from the batches it kept, not the log.
async fn replayed_from_memory(hub: &common::hub::TestHub) -> i64 {
    let (_, body) = hub.get_admin("/api/status").await;
    let status: Value = serde_json::from_str(&body).unwrap();
    status["resume"]["from_memory"]
        .as_i64()
        .expect("resume.from_memory")
}

/// `n` resumes on the hub that delivered the gap, as this target replays them: from
/// memory, or (`*_from_log` targets) from the log.
fn on_this_hub(n: i64) -> i64 {
    if common::hub::resumes_read_the_log() {
        0
    } else {
        n
    }
}

#[tokio::test]
async fn a_reconnect_replays_exactly_what_was_missed_then_goes_live() {
    let pg = PgHub::start(SETUP).await;
    let mut observer = Observer::start(&pg).await;
    let token = pg.user(ALICE);
    let mut c = connect(&pg, "client-1").await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    let first = resume_message(&mut c).await;
    assert_eq!(
        (&first["recovered"], &first["count"]),
        (&json!(false), &json!(0)),
        "a first join has nothing to recover: {first}"
    );
    for _ in 0..3 {
        let id = insert(&pg, ALICE).await;
        expect_row(&mut c, "INSERT", "items", id).await;
    }
    c.acknowledge().await;
    drop(c);
    wait_parked(&pg, 1).await;

    let mut missed = Vec::new();
    for _ in 0..4 {
        missed.push(insert(&pg, ALICE).await);
        let bobs = insert(&pg, BOB).await; // never Alice's to see
        observer.saw(bobs).await;
    }
    let mut c = connect(&pg, "client-1").await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    expect_rows(&mut c, &missed).await;
    let sys = resume_message(&mut c).await;
    assert_eq!(
        sys,
        json!({"extension": "postgres_changes", "status": "ok", "recovered": true, "count": 4,
               "message": "Resumed: 4 missed changes replayed", "channel": "items"})
    );
    assert_eq!(replayed_from_memory(&pg.hub).await, on_this_hub(1));
    let live = insert(&pg, ALICE).await;
    expect_row(&mut c, "INSERT", "items", live).await;
}

/// A browser answers pings below the page (Chromium even while the page is offline, its
/// frames held back), so a pong does not prove the app read them; realtime-js says so
/// when it closes with `heartbeat timeout`. Such a connection resumes from what its
/// heartbeats prove instead: the changes its pongs confirmed but the app never read are
/// replayed.
#[tokio::test]
async fn a_connection_closed_for_a_heartbeat_timeout_resumes_from_what_its_heartbeats_prove() {
    let pg = PgHub::start(SETUP).await;
    let token = pg.user(ALICE);
    let mut c = connect(&pg, "offline-tab").await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    resume_message(&mut c).await;
    let read = insert(&pg, ALICE).await;
    expect_row(&mut c, "INSERT", "items", read).await;
    c.acknowledge().await; // a ping written after `read`
    c.heartbeat().await; // its reply written after that ping
    c.heartbeat().await; // the app read that reply, so `read` too
                         // Offline: the browser still reads the frames and answers the pings, the app does not.
    let unread = insert_n(&pg, ALICE, 2).await;
    expect_rows(&mut c, &unread).await;
    c.acknowledge().await;
    c.close_with_reason("heartbeat timeout").await;
    wait_parked(&pg, 1).await;

    let mut c = connect(&pg, "offline-tab").await;
    expect_resumed(&mut c, "realtime:items", &token, &unread).await;
}

#[tokio::test]
async fn a_resume_replays_exactly_the_rows_of_multi_row_statements_that_filter_and_row_scope_pass()
{
    let pg = PgHub::start(SETUP).await;
    let mut observer = Observer::start(&pg).await;
    let token = pg.user(ALICE);
    let entries = json!([{"event": "*", "schema": "public", "table": "items",
                          "filter": "n=gte.10"}]);
    let mut c = connect(&pg, "client-m").await;
    subscribe(&mut c, "realtime:items", entries.clone(), Some(&token)).await;
    resume_message(&mut c).await;
    c.acknowledge().await;
    drop(c);
    wait_parked(&pg, 1).await;

    // Alice owns the even n. One statement of 20 rows, then one updating n <= 6 (their
    // new rows pass the filter) and one deleting n 12-14 (judged by the old rows).
    let rows = pg
        .sql
        .query(
            "insert into public.items (owner, n) \
             select (case when g % 2 = 0 then $1::text else $2::text end)::uuid, g \
             from generate_series(1, 20) g returning id, n",
            &[&ALICE, &BOB],
        )
        .await
        .unwrap();
    let id_of = |n: i32| -> i64 {
        let row = rows.iter().find(|r| r.get::<_, i32>(1) == n).unwrap();
        row.get(0)
    };
    let updates = "update public.items set n = n + 100 where n <= 6";
    pg.sql.execute(updates, &[]).await.unwrap();
    let deletes = "delete from public.items where n in (12, 13, 14)";
    pg.sql.execute(deletes, &[]).await.unwrap();
    let marker = insert(&pg, BOB).await;
    observer.saw(marker).await;

    let mut expected: Vec<(&str, i64)> = Vec::new();
    expected.extend([10, 12, 14, 16, 18, 20].map(|n| ("INSERT", id_of(n))));
    expected.extend([2, 4, 6].map(|n| ("UPDATE", id_of(n))));
    expected.extend([12, 14].map(|n| ("DELETE", id_of(n))));
    let mut c = connect(&pg, "client-m").await;
    subscribe(&mut c, "realtime:items", entries, Some(&token)).await;
    for (kind, id) in &expected {
        expect_row(&mut c, kind, "items", *id).await;
    }
    let sys = resume_message(&mut c).await;
    assert_recovered(&sys, expected.len() as i64);
    assert_eq!(replayed_from_memory(&pg.hub).await, on_this_hub(1));
}

#[tokio::test]
async fn rows_the_new_token_may_not_see_are_not_replayed() {
    let pg = PgHub::start(SETUP).await;
    let mut observer = Observer::start(&pg).await;
    park(&pg, "client-2", &pg.user(ALICE)).await;
    let alices = insert(&pg, ALICE).await;
    let bobs = insert(&pg, BOB).await;
    observer.saw(bobs).await;
    // The client comes back as Bob (say, another user on the same device).
    let mut c = connect(&pg, "client-2").await;
    subscribe(&mut c, "realtime:items", entries(), Some(&pg.user(BOB))).await;
    expect_row(&mut c, "INSERT", "items", bobs).await;
    let sys = resume_message(&mut c).await;
    assert_eq!(
        (&sys["recovered"], &sys["count"]),
        (&json!(true), &json!(1)),
        "{sys}; Alice's row {alices} must not be replayed"
    );
}

#[tokio::test]
async fn a_channel_left_on_purpose_is_not_resumed() {
    let pg = PgHub::start(SETUP).await;
    let token = pg.user(ALICE);
    let mut c = connect(&pg, "client-3").await;
    let joined = subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    resume_message(&mut c).await;
    let r = c.next_ref();
    c.send(
        Some(&joined.join_ref),
        Some(&r),
        "realtime:items",
        "phx_leave",
        json!({}),
    )
    .await;
    c.recv_until(|f| f.is_event("phx_close")).await;
    insert(&pg, ALICE).await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    assert_no_earlier_subscription(&resume_message(&mut c).await);
}

/// Found by a black-box run: realtime-js, after failed connection attempts, joins a
/// channel twice on its first connection and drops the first join's frames (they carry
/// the old join_ref), so it never read that first join's "refetch". The second join
/// found the first still live, resumed from where it started and said `recovered: true,
/// count: 0`: the app skipped its refetch and never had the rows written before. Now
/// the second join is told to refetch as well, and so is a join after a socket dropped
/// before any pong showed the refetch was read. Once a pong shows it, a resume is
/// recovered as before.
#[tokio::test]
async fn a_refetch_the_client_may_not_have_read_is_told_again() {
    let pg = PgHub::start(SETUP).await;
    let mut observer = Observer::start(&pg).await;
    let token = pg.user(ALICE);
    let refetch = assert_no_earlier_subscription;
    // Joined twice on one connection, no pong in between.
    let mut c = connect(&pg, "client-twice").await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    refetch(&resume_message(&mut c).await);
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    refetch(&resume_message(&mut c).await);
    // The socket drops before a pong: the next connection is told to refetch too.
    drop(c);
    let mut c = connect(&pg, "client-twice").await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    refetch(&resume_message(&mut c).await);
    // A pong shows it was read: from then on the channel resumes.
    let id = insert(&pg, ALICE).await;
    expect_row(&mut c, "INSERT", "items", id).await;
    c.acknowledge().await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    assert_recovered(&resume_message(&mut c).await, 0);
    c.acknowledge().await;
    drop(c);
    wait_parked(&pg, 1).await;
    let missed = insert_n(&pg, ALICE, 2).await;
    // Dispatched before the rejoin, so they are in its gap rather than live after it.
    observer.saw(*missed.last().unwrap()).await;
    let mut c = connect(&pg, "client-twice").await;
    expect_resumed(&mut c, "realtime:items", &token, &missed).await;
}

#[tokio::test]
async fn a_resume_after_the_grace_says_it_expired() {
    let pg = PgHub::start_with(SETUP, |c| c.resume_grace = Duration::from_secs(1)).await;
    let token = pg.user(ALICE);
    park(&pg, "client-4", &token).await;
    insert(&pg, ALICE).await;
    // Past the grace: the parked row has expired (expiry is Postgres's clock).
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let expired: bool = pg
            .sql
            .query_one(
                "select bool_and(expires_at < now()) from realtime.log_holds where kind = 'resume'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if expired {
            break;
        }
        assert!(Instant::now() < deadline, "the parked row never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = connect(&pg, "client-4").await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    let sys = resume_message(&mut c).await;
    assert_eq!(sys["recovered"], false, "{sys}");
    assert!(sys["message"].as_str().unwrap().contains("grace"), "{sys}");
}

/// A table renamed while the channel was parked: its entry (by the old name) is refused
/// on resume, so the changes it missed are not replayed, and the resume says so.
#[tokio::test]
async fn a_table_renamed_while_parked_is_not_said_to_be_recovered() {
    let pg = PgHub::start(SETUP).await;
    let token = pg.user(ALICE);
    park(&pg, "client-r", &token).await;
    insert(&pg, ALICE).await;
    pg.exec("alter table public.items rename to things").await;
    // The hub's catalog reads the rename within its version check: a join without a
    // resume key tells when.
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let mut probe = pg.connect(common::hub::Vsn::V2).await;
        let (join_ref, reply) = join_changes(
            &mut probe,
            "realtime:probe",
            entries(),
            Some(&token),
            json!({}),
        )
        .await;
        joined_from_reply("realtime:probe", join_ref, &reply);
        if next_system(&mut probe).await["status"] == "error" {
            break;
        }
        assert!(Instant::now() < deadline, "the rename was never seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = connect(&pg, "client-r").await;
    let (join_ref, reply) =
        join_changes(&mut c, "realtime:items", entries(), Some(&token), json!({})).await;
    joined_from_reply("realtime:items", join_ref, &reply);
    let refused = next_system(&mut c).await;
    assert_eq!(refused["status"], "error", "{refused}");
    let sys = resume_message(&mut c).await;
    assert_eq!(sys["recovered"], false, "{sys}");
    let message = sys["message"].as_str().unwrap();
    assert!(message.contains("could not be subscribed again"), "{sys}");
}

#[tokio::test]
async fn a_gap_larger_than_the_replay_limit_asks_the_app_to_refetch() {
    let pg = PgHub::start_with(SETUP, |c| c.resume_max_replay = 5).await;
    let mut observer = Observer::start(&pg).await;
    let token = pg.user(ALICE);
    park(&pg, "client-5", &token).await;
    pg.exec(&format!(
        "insert into public.items (owner) select '{ALICE}' from generate_series(1, 10)"
    ))
    .await;
    let last = insert(&pg, BOB).await;
    observer.saw(last).await;
    let mut c = connect(&pg, "client-5").await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    let sys = resume_message(&mut c).await;
    assert_eq!(sys["recovered"], false, "{sys}");
    assert!(
        sys["message"].as_str().unwrap().contains("more than 5"),
        "{sys}"
    );
    let live = insert(&pg, ALICE).await;
    expect_row(&mut c, "INSERT", "items", live).await;
}

/// Changes to tables the channel does not subscribe to are no gap for it: they neither
/// count toward the replay limit nor are read for it.
#[tokio::test]
async fn changes_to_other_tables_do_not_count_toward_the_replay_limit() {
    let pg = PgHub::start_with(SETUP, |c| c.resume_max_replay = 5).await;
    pg.exec(
        "create table public.notes (id bigserial primary key, owner uuid not null); \
         grant select on public.notes to authenticated; \
         select realtime.enable('public.notes')",
    )
    .await;
    let mut observer = Observer::start(&pg).await;
    let token = pg.user(ALICE);
    park(&pg, "client-other", &token).await;
    pg.exec(&format!(
        "insert into public.notes (owner) select '{ALICE}' from generate_series(1, 10)"
    ))
    .await;
    let missed = insert_n(&pg, ALICE, 2).await;
    observer.saw(*missed.last().unwrap()).await;
    let mut c = connect(&pg, "client-other").await;
    expect_resumed(&mut c, "realtime:items", &token, &missed).await;
}

/// Ids of the rows after `after`, in order.
async fn ids_after(pg: &PgHub, after: i64) -> Vec<i64> {
    let rows = pg
        .sql
        .query(
            "select id from public.items where id > $1 order by id",
            &[&after],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// A gap of more changes than the replay judges and pushes at a time (500) is replayed
/// whole, in order; one past the limit is refused before anything is sent.
#[tokio::test]
async fn a_gap_of_several_pages_is_replayed_whole_and_one_past_the_limit_is_refused() {
    let pg = PgHub::start_with(SETUP, |c| c.resume_max_replay = 1_200).await;
    let mut observer = Observer::start(&pg).await;
    let token = pg.user(ALICE);
    // One transaction of `n` single-row statements: `n` log rows.
    let statements = |n: usize| {
        format!(
            "do $$ begin for i in 1..{n} loop \
             insert into public.items (owner) values ('{ALICE}'); end loop; end $$"
        )
    };

    park(&pg, "client-pages", &token).await;
    pg.exec(&statements(1_100)).await;
    let missed = ids_after(&pg, 0).await;
    observer.saw(*missed.last().unwrap()).await;
    let mut c = connect(&pg, "client-pages").await;
    expect_resumed(&mut c, "realtime:items", &token, &missed).await;

    c.acknowledge().await;
    drop(c);
    wait_parked(&pg, 1).await;
    pg.exec(&statements(1_201)).await;
    let last = *ids_after(&pg, *missed.last().unwrap())
        .await
        .last()
        .unwrap();
    observer.saw(last).await;
    let mut c = connect(&pg, "client-pages").await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    let sys = resume_message(&mut c).await;
    assert_eq!(sys["recovered"], false, "{sys}");
    assert!(
        sys["message"].as_str().unwrap().contains("more than 1200"),
        "{sys}"
    );
}

/// Found by the chaos run: a replay held its pooled connection while row scope waited for
/// another, so as many resumes as the pool has connections stalled the hub for everyone.
/// With a pool of one, a single resume did.
#[tokio::test]
async fn a_resume_does_not_hold_a_pooled_connection_while_row_scope_needs_one() {
    let pg = PgHub::start_with(SETUP, |c| c.db_pool_size = 1).await;
    let mut observer = Observer::start(&pg).await;
    let token = pg.user(ALICE);
    park(&pg, "client-pool", &token).await;
    let missed = insert_n(&pg, ALICE, 3).await;
    observer.saw(*missed.last().unwrap()).await;
    let mut c = connect(&pg, "client-pool").await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    expect_rows(&mut c, &missed).await;
    let sys = resume_message(&mut c).await;
    assert_recovered(&sys, 3);
    let live = insert(&pg, BOB).await;
    observer.saw(live).await;
    let mine = insert(&pg, ALICE).await;
    expect_row(&mut c, "INSERT", "items", mine).await;
}

/// Found by the chaos run: a resume whose replay met a database error (its pooled
/// connection killed, Postgres restarting) told the client to refetch at once, though
/// the database was back a moment later. The replay now waits the error out. Here the
/// replay's first query is held on a lock, its backend terminated, then the lock freed.
/// The hub keeps no batches in memory, so that the replay reads the log.
#[tokio::test]
async fn a_replay_waits_out_a_killed_connection() {
    let pg = PgHub::start_with(SETUP, |c| c.resume_memory = Duration::ZERO).await;
    let mut observer = Observer::start(&pg).await;
    let token = pg.user(ALICE);
    park(&pg, "client-killed", &token).await;
    let missed = insert_n(&pg, ALICE, 3).await;
    observer.saw(*missed.last().unwrap()).await;

    let locker = pg.db.client().await;
    locker
        .batch_execute("begin; lock table realtime.changes in access exclusive mode")
        .await
        .unwrap();
    let mut c = connect(&pg, "client-killed").await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    // The replay's first query: correcting its positions (`capture::correct`).
    kill_waiting(
        &pg,
        "with snap as materialized (select pg_current_snapshot() as s), stamp%",
    )
    .await;
    locker.batch_execute("rollback").await.unwrap();
    expect_rows(&mut c, &missed).await;
    let sys = resume_message(&mut c).await;
    assert_recovered(&sys, 3);
    let live = insert(&pg, ALICE).await;
    expect_row(&mut c, "INSERT", "items", live).await;
}

/// Terminates the hub's backend waiting on a lock in a statement starting like `query`
/// (a `like` pattern), once there is one.
async fn kill_waiting(pg: &PgHub, query: &str) {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let killed: i64 = pg
            .sql
            .query_one(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                 where datname = current_database() and wait_event_type = 'Lock' \
                 and query like $1",
                &[&query],
            )
            .await
            .unwrap()
            .get(0);
        if killed > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing waited on the lock: {query}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Found by the chaos run: a resuming join whose parked row could not be read (Postgres
/// restarting) went live with `recovered: false`, though the row was there a moment later.
/// Now the join is refused (the client's rejoin comes back for the gap). Here the read of
/// the row is held on a row lock and its backend terminated.
#[tokio::test]
async fn a_join_that_cannot_read_its_parked_row_is_refused_and_the_rejoin_resumes() {
    let pg = PgHub::start(SETUP).await;
    let mut observer = Observer::start(&pg).await;
    let token = pg.user(ALICE);
    park(&pg, "client-unread", &token).await;
    let missed = insert_n(&pg, ALICE, 3).await;
    observer.saw(*missed.last().unwrap()).await;

    let locker = pg.db.client().await;
    locker
        .batch_execute("begin; select 1 from realtime.log_holds where kind = 'resume' for update")
        .await
        .unwrap();
    let mut c = connect(&pg, "client-unread").await;
    let ((_, reply), ()) = tokio::join!(
        join_changes(&mut c, "realtime:items", entries(), Some(&token), json!({})),
        kill_waiting(&pg, "with old as%"),
    );
    assert_unavailable(&reply);
    locker.batch_execute("rollback").await.unwrap();
    rejoin_recovers(&mut c, &token, &missed).await;
}

/// Found by the chaos run: a resuming join on a hub just started, whose capture had no
/// position yet (Postgres still coming back), answered `recovered: false`. Now it is
/// refused until the capture is up. Here the second hub's capture is held on a lock.
#[tokio::test]
async fn a_resuming_join_before_the_capture_is_up_is_refused_and_the_rejoin_resumes() {
    let pg = PgHub::start(SETUP).await;
    let token = pg.user(ALICE);
    park(&pg, "client-early", &token).await;
    let missed = insert_n(&pg, ALICE, 3).await;

    let locker = pg.db.client().await;
    locker
        .batch_execute("begin; lock table realtime.changes in access exclusive mode")
        .await
        .unwrap();
    let second = second_hub(&pg).await;
    let mut c = connect_to(&second, "client-early").await;
    let (_, reply) =
        join_changes(&mut c, "realtime:items", entries(), Some(&token), json!({})).await;
    assert_unavailable(&reply);
    locker.batch_execute("rollback").await.unwrap();
    wait_capture(&second).await;
    rejoin_recovers(&mut c, &token, &missed).await;
}

/// Found by the chaos run under load: a resuming join whose table lookup failed (Postgres
/// restarting) while its parked row could be read went live with `recovered: true` but
/// without that subscription; its position then moved past changes it never got, and
/// its next resume skipped them. Now the join is refused until the lookup works. Here a
/// second hub (its catalog cache empty) has its lookup held on a lock and terminated.
#[tokio::test]
async fn a_resuming_join_whose_table_lookup_fails_is_refused_and_the_rejoin_resumes() {
    let pg = PgHub::start(SETUP).await;
    let token = pg.user(ALICE);
    park(&pg, "client-lookup", &token).await;
    let missed = insert_n(&pg, ALICE, 3).await;
    let second = second_hub(&pg).await;
    wait_capture(&second).await;

    let locker = pg.db.client().await;
    locker
        .batch_execute("begin; lock table pg_catalog.pg_trigger in access exclusive mode")
        .await
        .unwrap();
    let mut c = connect_to(&second, "client-lookup").await;
    let ((_, reply), ()) = tokio::join!(
        join_changes(&mut c, "realtime:items", entries(), Some(&token), json!({})),
        kill_waiting(&pg, "select n.nspname%"),
    );
    assert_unavailable(&reply);
    locker.batch_execute("rollback").await.unwrap();
    rejoin_recovers(&mut c, &token, &missed).await;
    let later = insert(&pg, ALICE).await;
    expect_row(&mut c, "INSERT", "items", later).await;
}

/// Found by the chaos run: a park whose write failed (Postgres restarting) was dropped, so
/// the channel's row kept its position from the join (or, for a channel that dropped
/// before its first write landed, there was no row and its resume said "no earlier
/// subscription"). Now a failed write is kept and written as soon as Postgres takes it.
/// Here the resume table is renamed away while the client drops.
#[tokio::test]
async fn a_park_written_while_the_database_is_out_lands_once_it_is_back() {
    let pg = PgHub::start(SETUP).await;
    let mut observer = Observer::start(&pg).await;
    let token = pg.user(ALICE);
    let mut c = connect(&pg, "client-outage").await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    resume_message(&mut c).await;
    c.acknowledge().await;
    pg.sql
        .batch_execute("alter table realtime.log_holds rename to log_holds_away")
        .await
        .unwrap();
    drop(c);
    let deadline = Instant::now() + RECV_TIMEOUT;
    while pg.hub.metric("switchboard_resume_unwritten").await < Some(1.0) {
        assert!(Instant::now() < deadline, "the failed park was not kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let missed = insert_n(&pg, ALICE, 3).await;
    observer.saw(*missed.last().unwrap()).await;
    pg.sql
        .batch_execute("alter table realtime.log_holds_away rename to log_holds")
        .await
        .unwrap();
    wait_parked(&pg, 1).await;
    assert_eq!(
        pg.hub.metric("switchboard_resume_unwritten").await,
        Some(0.0)
    );
    let mut c = connect(&pg, "client-outage").await;
    rejoin_recovers(&mut c, &token, &missed).await;
}

/// The refused client joins again: it gets the rows it missed, then `recovered: true`.
async fn rejoin_recovers(c: &mut WsClient, token: &str, missed: &[i64]) {
    subscribe(c, "realtime:items", entries(), Some(token)).await;
    expect_rows(c, missed).await;
    let sys = resume_message(c).await;
    assert_recovered(&sys, missed.len() as i64);
}

/// A hub restart storm in small: channels parked at three positions resume on a hub
/// that delivered none of their gaps. The first resume reads the log once for all three
/// (`resume::restart`); each gets exactly the rows its own position had not read. The
/// first to resume is the one parked last, and the parks are aged past the memory window
/// (the hub was down a minute and a half): the read still starts at the oldest.
#[tokio::test]
async fn channels_parked_at_different_positions_resume_on_a_new_hub_from_one_read() {
    let pg = PgHub::start(SETUP).await;
    let token = pg.user(ALICE);
    let keys = ["storm-1", "storm-2", "storm-3"];
    let mut live = Vec::new();
    for key in keys {
        let mut c = connect(&pg, key).await;
        subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
        resume_message(&mut c).await;
        live.push(c);
    }
    // One more of Alice's rows reaches each channel before it parks than the one before
    // it; Bob's rows are never hers to see.
    let mut rows = Vec::new();
    let mut seen = Vec::new();
    for parked in 1..=keys.len() {
        let id = insert(&pg, ALICE).await;
        insert(&pg, BOB).await;
        rows.push(id);
        for c in &mut live {
            expect_row(c, "INSERT", "items", id).await;
        }
        let mut c = live.remove(0);
        c.acknowledge().await;
        drop(c);
        wait_parked(&pg, parked as i64).await;
        seen.push(rows.len());
    }
    rows.extend(insert_n(&pg, ALICE, 2).await);

    pg.sql
        .execute(
            "update realtime.log_holds set updated_at = updated_at - interval '90 seconds' \
             where kind = 'resume'",
            &[],
        )
        .await
        .unwrap();

    let second = second_hub(&pg).await;
    wait_capture(&second).await;
    for (key, seen) in keys.iter().zip(seen).rev() {
        let mut c = connect_to(&second, key).await;
        rejoin_recovers(&mut c, &token, &rows[seen..]).await;
    }
    let (_, body) = second.get_admin("/api/status").await;
    let status: Value = serde_json::from_str(&body).unwrap();
    let expected = if common::hub::resumes_read_the_log() {
        0
    } else {
        3
    };
    assert_eq!(status["resume"]["from_restart_read"], expected, "{status}");
}

/// A restart storm whose one read of the log would hold more than its bound (4 ×
/// `resume_max_replay` changes of every table): the log is busy with a table the channel
/// does not watch. The read is not kept (nor, estimated from the log's ids, made), and the
/// resume reads its own gap, which holds only its own table's rows.
#[tokio::test]
async fn a_restart_read_too_large_leaves_each_resume_its_own_read() {
    let pg = PgHub::start_with(SETUP, |c| c.resume_max_replay = 5).await;
    pg.sql
        .batch_execute(
            "create table public.notes (id bigserial primary key, body text);
             select realtime.enable('public.notes');",
        )
        .await
        .unwrap();
    let token = pg.user(ALICE);
    let mut c = connect(&pg, "busy-log").await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    resume_message(&mut c).await;
    let seen = insert(&pg, ALICE).await;
    expect_row(&mut c, "INSERT", "items", seen).await;
    c.acknowledge().await;
    drop(c);
    wait_parked(&pg, 1).await;

    let mut missed = vec![insert(&pg, ALICE).await];
    for _ in 0..60 {
        pg.sql
            .execute("insert into public.notes (body) values ('staff')", &[])
            .await
            .unwrap();
    }
    missed.push(insert(&pg, ALICE).await);

    let second = second_hub_with(&pg, |c| c.resume_max_replay = 5).await;
    wait_capture(&second).await;
    let mut c = connect_to(&second, "busy-log").await;
    rejoin_recovers(&mut c, &token, &missed).await;
    let (_, body) = second.get_admin("/api/status").await;
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["resume"]["from_restart_read"], 0, "{status}");
}

/// Another hub on the same database (its caches empty, its capture starting).
async fn second_hub(pg: &PgHub) -> common::hub::TestHub {
    second_hub_with(pg, |_| {}).await
}

/// `second_hub`, its config changed by `f`.
async fn second_hub_with(
    pg: &PgHub,
    f: impl FnOnce(&mut switchboard::config::Config),
) -> common::hub::TestHub {
    let mut config = common::hub::test_config();
    config.database_url = Some(pg.db.url.clone());
    config.capture_poll = CAPTURE_POLL;
    f(&mut config);
    common::hub::TestHub::start(config).await
}

/// A v2 client of `hub` on resume key `key`.
async fn connect_to(hub: &common::hub::TestHub, key: &str) -> WsClient {
    let url = format!(
        "{}&resume={key}",
        hub.ws_url(Some("2.0.0"), Some(&hub.anon()))
    );
    WsClient::connect(&url).await
}

/// Waits until `hub`'s capture is connected.
async fn wait_capture(hub: &common::hub::TestHub) {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let (_, body) = hub.get_admin("/api/status").await;
        let status: Value = serde_json::from_str(&body).unwrap();
        if status["capture"]["connected"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "capture not connected: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The join was refused as the database being unreachable.
fn assert_unavailable(reply: &common::hub::Frame) {
    assert_eq!(
        (
            &reply.payload()["status"],
            &reply.payload()["response"]["reason"]
        ),
        (
            &json!("error"),
            &json!(
                "UnableToConnectToProject: Realtime was unable to connect to the project database"
            )
        ),
        "{reply:?}"
    );
}

#[tokio::test]
async fn database_broadcasts_are_resumed_too() {
    let pg = PgHub::start(SETUP).await;
    let mut observer = Observer::start(&pg).await;
    let mut c = connect(&pg, "client-6").await;
    c.join_ok("realtime:news", json!({})).await;
    let sys = resume_message(&mut c).await;
    assert_eq!(sys["recovered"], false);
    c.acknowledge().await;
    drop(c);
    wait_parked(&pg, 1).await;
    pg.exec("select realtime.send('{\"n\": 1}'::jsonb, 'ev', 'news', false)")
        .await;
    observer.saw_broadcast().await;
    let mut c = connect(&pg, "client-6").await;
    c.join_ok("realtime:news", json!({})).await;
    // Database broadcasts reach v2 sockets as binary kind-4 frames.
    let b = common::hub::kind4(&c.recv().await);
    assert_eq!(
        (b.topic.as_str(), b.event.as_str()),
        ("realtime:news", "ev")
    );
    // realtime.send adds the message id to the payload, as Supabase's does.
    let payload: Value = serde_json::from_slice(&b.payload).unwrap();
    let meta: Value = serde_json::from_slice(&b.meta).unwrap();
    assert_eq!(payload["n"], 1, "{payload}");
    assert_eq!(payload["id"], meta["id"], "{payload} {meta}");
    assert_eq!(meta["replayed"], true, "{meta}");
    let sys = resume_message(&mut c).await;
    assert_recovered(&sys, 1);
}

#[tokio::test]
async fn an_invalid_resume_key_is_refused_at_connect() {
    let pg = PgHub::start(SETUP).await;
    let url = format!(
        "{}&resume=has%20space",
        pg.hub.ws_url(Some("2.0.0"), Some(&pg.hub.anon()))
    );
    let rejected = WsClient::try_connect(&url).await.err().expect("refused");
    assert_eq!(rejected.status, 400);
}

/// A channel with a long topic parks and resumes like any other, and does not hold up the
/// others: a row's key names a long topic by its digest (Postgres refuses btree keys over
/// about 2.7 kB, and one refused row failed everyone's park and checkpoint write).
#[tokio::test]
async fn a_channel_with_a_long_topic_parks_with_the_others_and_both_resume() {
    let pg = PgHub::start(SETUP).await;
    let mut observer = Observer::start(&pg).await;
    let token = pg.user(ALICE);
    // Random hex does not compress below Postgres's index entry limit.
    let long: String = (0..150)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let long_topic = format!("realtime:{long}");
    let mut c = connect(&pg, "long-topic").await;
    subscribe(&mut c, "realtime:items", entries(), Some(&token)).await;
    resume_message(&mut c).await;
    subscribe(&mut c, &long_topic, entries(), Some(&token)).await;
    resume_message(&mut c).await;
    c.acknowledge().await;
    drop(c);
    wait_parked(&pg, 2).await;

    let missed = insert_n(&pg, ALICE, 2).await;
    observer.saw(*missed.last().unwrap()).await;
    let mut c = connect(&pg, "long-topic").await;
    for topic in ["realtime:items", long_topic.as_str()] {
        expect_resumed(&mut c, topic, &token, &missed).await;
    }
}

/// A row Postgres refuses (here a trigger refuses one channel's, as it would refuse data
/// it cannot hold) costs only that channel its resume: the other channel on the same
/// connection still parks and resumes.
#[tokio::test]
async fn a_row_postgres_refuses_does_not_stop_the_others_from_parking() {
    let pg = PgHub::start(SETUP).await;
    pg.exec(
        "create function public.refuse_poison() returns trigger language plpgsql as $$ \
         begin if new.holder like '%|realtime:poison|%' then \
           raise exception 'refused for the test' using errcode = '22023'; end if; \
         return new; end $$; \
         create trigger refuse_poison before insert or update on realtime.log_holds \
         for each row execute function public.refuse_poison();",
    )
    .await;
    let mut observer = Observer::start(&pg).await;
    let token = pg.user(ALICE);
    let mut c = connect(&pg, "poisoned").await;
    // Five channels parked in one write; halving it finds the refused row.
    let topics = [
        "realtime:a",
        "realtime:b",
        "realtime:poison",
        "realtime:c",
        "realtime:items",
    ];
    for topic in topics {
        subscribe(&mut c, topic, entries(), Some(&token)).await;
        resume_message(&mut c).await;
    }
    c.acknowledge().await;
    drop(c);
    wait_parked(&pg, 4).await;
    // All were in one write: what is parked now is all that will be.
    let parked: Vec<String> = pg
        .sql
        .query(
            "select detail->>'topic' from realtime.log_holds \
             where kind = 'resume' and (detail->>'parked')::boolean order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        parked,
        ["realtime:a", "realtime:b", "realtime:c", "realtime:items"]
    );

    let missed = insert_n(&pg, ALICE, 2).await;
    observer.saw(*missed.last().unwrap()).await;
    let mut c = connect(&pg, "poisoned").await;
    expect_resumed(&mut c, "realtime:items", &token, &missed).await;
    // The refused channel has nothing to resume from, and says so.
    subscribe(&mut c, "realtime:poison", entries(), Some(&token)).await;
    let sys = resume_message(&mut c).await;
    assert_eq!(sys["recovered"], json!(false), "{sys}");
}

/// A resume replays only the events the table's publication publishes, as live dispatch
/// delivers them (`publish = 'insert, delete'`: the UPDATE in the gap is not replayed).
#[tokio::test]
async fn a_resume_replays_only_the_events_the_publication_publishes() {
    let pg = PgHub::start(SETUP).await;
    pg.exec(
        "select realtime.disable('public.items'); \
         alter publication supabase_realtime add table public.items; \
         alter publication supabase_realtime set (publish = 'insert, delete');",
    )
    .await;
    let mut observer = Observer::start(&pg).await;
    let every = json!([{"event": "*", "schema": "public", "table": "items"}]);
    let token = pg.user(ALICE);
    let mut c = connect(&pg, "client-pub").await;
    subscribe(&mut c, "realtime:items", every.clone(), Some(&token)).await;
    resume_message(&mut c).await;
    c.acknowledge().await;
    drop(c);
    wait_parked(&pg, 1).await;

    let id = insert(&pg, ALICE).await;
    pg.exec(&format!(
        "update public.items set n = 1 where id = {id}; delete from public.items where id = {id};"
    ))
    .await;
    let fence = insert(&pg, BOB).await;
    observer.saw(fence).await;
    let mut c = connect(&pg, "client-pub").await;
    subscribe(&mut c, "realtime:items", every, Some(&token)).await;
    expect_row(&mut c, "INSERT", "items", id).await;
    expect_row(&mut c, "DELETE", "items", id).await;
    assert_recovered(&resume_message(&mut c).await, 2);
}

/// The channels of a client that moves to a hub whose reader is behind their position
/// (here: another subscriber's row-scope check there waits on a lock, so that hub's
/// dispatch stands still) are answered and registered at once, however long that hub
/// stays behind: each gets exactly what it missed, and none of what it had read on the
/// first hub again, when that hub reads on.
#[tokio::test]
async fn channels_resuming_on_a_hub_behind_them_get_no_change_twice() {
    let pg = PgHub::start(SETUP).await;
    pg.sql
        .batch_execute(
            "create function public.gate() returns boolean language plpgsql volatile as $$
             begin perform pg_advisory_xact_lock_shared(4242); return true; end $$;
             create table public.gated (id bigserial primary key);
             grant select on public.gated to authenticated;
             alter table public.gated enable row level security;
             create policy through_the_gate on public.gated for select to authenticated
               using (public.gate());
             select realtime.enable('public.gated');",
        )
        .await
        .unwrap();
    let second = second_hub(&pg).await;
    wait_capture(&second).await;
    let mut blocker = connect_to(&second, "blocker").await;
    let gated = json!([{"event": "INSERT", "schema": "public", "table": "gated"}]);
    subscribe(&mut blocker, "realtime:gated", gated, Some(&pg.user(BOB))).await;
    resume_message(&mut blocker).await;

    let token = pg.user(ALICE);
    let topics = ["realtime:items", "realtime:items-too"];
    let mut c = connect(&pg, "behind").await;
    for topic in topics {
        subscribe(&mut c, topic, entries(), Some(&token)).await;
        resume_message(&mut c).await;
    }

    // The second hub's dispatch stops at this row while the lock is held.
    let lock = pg.db.client().await;
    lock.execute("select pg_advisory_lock(4242)", &[])
        .await
        .unwrap();
    pg.exec("insert into public.gated default values").await;
    // Rows the client reads on the first hub, one transaction at a time, each read before
    // the next is written: the second hub's capture takes each as a batch of its own, and
    // its dispatch matches only a few batches ahead of the stalled one (its pipeline), so
    // its cut stays behind them.
    for _ in 0..12 {
        let id = insert(&pg, ALICE).await;
        for _ in topics {
            loop {
                let f = c.recv().await;
                if f.is_event("postgres_changes") {
                    assert_eq!(f.payload()["data"]["record"]["id"], id, "{f:?}");
                    break;
                }
            }
        }
    }
    c.acknowledge().await;
    drop(c);
    wait_parked(&pg, 2).await;
    let missed = insert_n(&pg, ALICE, 1).await;

    let mut c = connect_to(&second, "behind").await;
    let (_, reply) = join_changes(&mut c, topics[0], entries(), Some(&token), json!({})).await;
    assert_eq!(
        reply.payload()["status"],
        "ok",
        "answered while behind: {reply:?}"
    );
    let payload = json!({"config": {"postgres_changes": entries()}, "access_token": token});
    c.send(Some("90"), Some("90"), topics[1], "phx_join", payload)
        .await;
    // Both are answered and told they resumed while that hub still stands still, however
    // long that is (nothing to replay: it has read less than they had).
    let mut rows: std::collections::HashMap<String, Vec<i64>> = Default::default();
    let mut resumed = Vec::new();
    while resumed.len() < topics.len() {
        let f = c.recv().await;
        let topic = f.topic().unwrap_or_default().to_owned();
        if f.is_event("postgres_changes") {
            let id = f.payload()["data"]["record"]["id"].as_i64().unwrap();
            rows.entry(topic).or_default().push(id);
        } else if f.is_event("system") && f.payload().get("recovered").is_some() {
            assert_eq!(f.payload()["recovered"], true, "{f:?}");
            resumed.push(topic);
        } else if f.is_event("phx_reply") {
            assert_eq!(f.payload()["status"], "ok", "{f:?}");
        }
    }
    lock.execute("select pg_advisory_unlock(4242)", &[])
        .await
        .unwrap();
    let live = insert(&pg, ALICE).await;
    // Each channel: the row it missed, then the live row; never a row read on the first
    // hub, which that hub reads again first.
    while topics
        .iter()
        .any(|t| rows.get(*t).is_none_or(|r| r.last() != Some(&live)))
    {
        let f = c.recv().await;
        if f.is_event("postgres_changes") {
            let id = f.payload()["data"]["record"]["id"].as_i64().unwrap();
            let topic = f.topic().unwrap_or_default().to_owned();
            rows.entry(topic).or_default().push(id);
        }
    }
    for topic in topics {
        assert_eq!(rows[topic], [missed[0], live], "{topic}: {rows:?}");
    }
    expect_row(&mut blocker, "INSERT", "gated", 1).await;
}
