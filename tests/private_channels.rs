//! Private channels decided by a project's own `realtime.messages` policies, written the
//! Supabase way (`realtime.topic()`, `auth.uid()`, a membership table): joins, sends and
//! presence allowed and refused, a token refresh that loses access, private and public
//! rooms kept apart, REST private broadcasts, and a policy that raises for one user.

mod common;

use common::e2e::*;
use common::hub::{kind4, Frame, Vsn, WsClient};
use serde_json::{json, Value};

const SETUP: &str = r#"
create table public.members (
    room          text not null,
    user_id       uuid not null,
    can_write     bool not null default true,
    sees_presence bool not null default true,
    primary key (room, user_id)
);
grant select on public.members to authenticated;

create policy "members read their rooms" on realtime.messages
    for select to authenticated
    using (exists (
        select 1 from public.members m
        where m.room = realtime.topic() and m.user_id = auth.uid()
          and (realtime.messages.extension = 'broadcast' or m.sees_presence)));

create policy "writers send to their rooms" on realtime.messages
    for insert to authenticated
    with check (exists (
        select 1 from public.members m
        where m.room = realtime.topic() and m.user_id = auth.uid() and m.can_write));

-- Team rooms: the team claim must be a uuid; a token with another value makes it raise.
create policy "team rooms" on realtime.messages
    for select to authenticated
    using (realtime.topic() like 'team:%'
           and (auth.jwt() ->> 'team')::uuid::text = substr(realtime.topic(), 6));

insert into public.members (room, user_id, can_write, sees_presence) values
    ('room-1', 'aaaaaaaa-0000-4000-8000-00000000000a', true, true),
    ('room-1', 'bbbbbbbb-0000-4000-8000-00000000000b', false, false);
"#;

const ALICE: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
const BOB: &str = "bbbbbbbb-0000-4000-8000-00000000000b";
const CAROL: &str = "cccccccc-0000-4000-8000-00000000000c";
const ROOM: &str = "realtime:room-1";

/// Joins `topic` privately as `sub` with extra `config`; returns (join_ref, reply).
async fn join_private(
    pg: &PgHub,
    c: &mut WsClient,
    topic: &str,
    sub: &str,
    config: Value,
) -> (String, Frame) {
    let mut cfg = json!({"private": true});
    if let (Value::Object(a), Value::Object(b)) = (&mut cfg, config) {
        a.extend(b);
    }
    c.join(topic, json!({"config": cfg, "access_token": pg.user(sub)}))
        .await
}

async fn joined(pg: &PgHub, c: &mut WsClient, topic: &str, sub: &str, config: Value) -> String {
    let (join_ref, reply) = join_private(pg, c, topic, sub, config).await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    join_ref
}

fn reason(reply: &Frame) -> &str {
    assert_eq!(reply.payload()["status"], "error", "{reply:?}");
    reply.payload()["response"]["reason"]
        .as_str()
        .unwrap_or_default()
}

/// The next frame must be a text broadcast; returns its payload object.
async fn next_broadcast(c: &mut WsClient) -> Value {
    let f = c.recv().await;
    assert!(f.is_event("broadcast"), "expected a broadcast, got {f:?}");
    f.payload().clone()
}

#[tokio::test]
async fn members_join_and_others_are_refused_with_supabases_text() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    joined(&pg, &mut c, ROOM, ALICE, json!({})).await;
    let (_, reply) = join_private(&pg, &mut c, "realtime:room-2", ALICE, json!({})).await;
    assert_eq!(
        reason(&reply),
        "Unauthorized: You do not have permissions to read from this Channel topic: room-2"
    );
    let mut carol = pg.connect(Vsn::V1).await;
    let (_, reply) = join_private(&pg, &mut carol, ROOM, CAROL, json!({})).await;
    assert_eq!(
        reason(&reply),
        "Unauthorized: You do not have permissions to read from this Channel topic: room-1"
    );
}

#[tokio::test]
async fn a_policy_that_raises_for_one_user_fails_only_that_join_and_names_the_problem() {
    let pg = PgHub::start(SETUP).await;
    let team = "dddddddd-0000-4000-8000-00000000000d";
    let good = pg.hub.mint(&json!({"role": "authenticated", "sub": CAROL, "team": team, "exp": common::hub::now() + 600}));
    let bad = pg.hub.mint(&json!({"role": "authenticated", "sub": CAROL, "team": "not-a-uuid", "exp": common::hub::now() + 600}));
    let topic = format!("realtime:team:{team}");
    let mut c = pg.connect(Vsn::V2).await;
    let (_, reply) = c
        .join(
            &topic,
            json!({"config": {"private": true}, "access_token": bad}),
        )
        .await;
    assert_eq!(
        reason(&reply),
        format!("Unauthorized: You do not have permissions to read from this Channel topic: team:{team} \
                 (the realtime.messages policy check failed: invalid input syntax for type uuid: \"not-a-uuid\")")
    );
    let (_, reply) = c
        .join(
            &topic,
            json!({"config": {"private": true}, "access_token": good}),
        )
        .await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
}

#[tokio::test]
async fn sends_need_write_and_refused_ones_are_dropped_without_a_reply() {
    let pg = PgHub::start(SETUP).await;
    let mut alice = pg.connect(Vsn::V2).await;
    let mut bob = pg.connect(Vsn::V2).await;
    let a = joined(
        &pg,
        &mut alice,
        ROOM,
        ALICE,
        json!({"broadcast": {"ack": true}}),
    )
    .await;
    let b = joined(
        &pg,
        &mut bob,
        ROOM,
        BOB,
        json!({"broadcast": {"ack": true}}),
    )
    .await;

    // Bob may read but not write: no ack, nothing reaches Alice.
    bob.broadcast(&b, ROOM, "hello", json!({"from": "bob"}))
        .await;
    bob.assert_quiet().await;
    alice.assert_quiet().await;

    let r = alice
        .broadcast(&a, ROOM, "hello", json!({"from": "alice"}))
        .await;
    let ack = alice.recv().await;
    assert!(ack.is_reply_to(&r), "{ack:?}");
    assert_eq!(
        next_broadcast(&mut bob).await["payload"],
        json!({"from": "alice"})
    );
}

#[tokio::test]
async fn presence_reaches_only_members_who_may_read_it() {
    let pg = PgHub::start(SETUP).await;
    let mut alice = pg.connect(Vsn::V2).await;
    let mut bob = pg.connect(Vsn::V2).await;
    let presence = json!({"presence": {"enabled": true, "key": "k"}});
    let a = joined(&pg, &mut alice, ROOM, ALICE, presence.clone()).await;
    let state = alice.recv().await;
    assert!(state.is_event("presence_state"), "{state:?}");
    // Bob reads broadcast but not presence: joined, but no presence_state.
    joined(&pg, &mut bob, ROOM, BOB, presence).await;
    let r = alice
        .presence(&a, ROOM, "track", json!({"online": true}))
        .await;
    assert!(alice.recv().await.is_reply_to(&r));
    let diff = alice.recv().await;
    assert!(diff.is_event("presence_diff"), "{diff:?}");
    bob.assert_quiet().await;
}

#[tokio::test]
async fn a_refreshed_token_that_loses_read_closes_the_channel() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let join_ref = joined(&pg, &mut c, ROOM, ALICE, json!({})).await;

    // Still a member: the channel stays.
    let token = pg.hub.token("authenticated", ALICE, 7200);
    c.push_access_token(&join_ref, ROOM, json!(token)).await;
    c.assert_quiet_after_pushes().await;

    pg.exec(&format!(
        "delete from public.members where user_id = '{ALICE}'"
    ))
    .await;
    let token = pg.hub.token("authenticated", ALICE, 7300);
    c.push_access_token(&join_ref, ROOM, json!(token)).await;
    let sys = next_system(&mut c).await;
    assert_eq!(
        sys,
        json!({"extension": "system", "status": "error", "channel": "room-1",
               "message": "You do not have permissions to read from this Channel topic: room-1"})
    );
    let close = c.recv().await;
    assert!(close.is_event("phx_close"), "{close:?}");
}

#[tokio::test]
async fn losing_presence_read_on_refresh_says_no_longer() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V1).await;
    let join_ref = joined(
        &pg,
        &mut c,
        ROOM,
        ALICE,
        json!({"presence": {"enabled": true}}),
    )
    .await;
    assert!(c.recv().await.is_event("presence_state"));
    pg.exec(&format!(
        "update public.members set sees_presence = false where user_id = '{ALICE}'"
    ))
    .await;
    let token = pg.hub.token("authenticated", ALICE, 7200);
    c.push_access_token(&join_ref, ROOM, json!(token)).await;
    let sys = next_system(&mut c).await;
    assert_eq!(
        sys["message"],
        "You no longer have permission to read from this Channel topic: room-1"
    );
    assert!(c.recv().await.is_event("phx_close"));
}

#[tokio::test]
async fn private_and_public_rooms_of_one_name_are_different_rooms() {
    let pg = PgHub::start(SETUP).await;
    let mut private = pg.connect(Vsn::V2).await;
    let mut public = pg.connect(Vsn::V2).await;
    let p = joined(&pg, &mut private, ROOM, ALICE, json!({})).await;
    let q = public
        .join_ok(ROOM, json!({"broadcast": {"ack": true}}))
        .await;
    let r = public.broadcast(&q, ROOM, "pub", json!({})).await;
    assert!(public.recv().await.is_reply_to(&r));
    private.assert_quiet().await;
    private.broadcast(&p, ROOM, "priv", json!({})).await;
    private.assert_quiet().await;
    public.assert_quiet().await;

    // From the database too: private=true reaches only the private room.
    pg.exec(
        r#"select realtime.send('{"n":1}', 'db-private', 'room-1', true);
           select realtime.send('{"n":2}', 'db-public', 'room-1', false);"#,
    )
    .await;
    assert_eq!(kind4(&private.recv().await).event, "db-private");
    assert_eq!(kind4(&public.recv().await).event, "db-public");
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
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn rest_private_broadcasts_follow_the_write_policy() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V1).await;
    joined(&pg, &mut c, ROOM, ALICE, json!({})).await;
    let (alice, bob) = (pg.user(ALICE), pg.user(BOB));
    let single = "/realtime/v1/api/broadcast/room-1/events/ping?private=true";

    assert_eq!(
        post(&pg, single, &bob, json!({"n": 1})).await,
        (403, json!({"message": "Unauthorized"}))
    );
    assert_eq!(post(&pg, single, &alice, json!({"n": 2})).await.0, 202);
    assert_eq!(next_broadcast(&mut c).await["payload"], json!({"n": 2}));

    let batch = json!({"messages": [
        {"topic": "room-1", "event": "from-bob", "payload": {}, "private": true},
        {"topic": "room-1", "event": "public", "payload": {}}
    ]});
    assert_eq!(post(&pg, "/api/broadcast", &bob, batch).await.0, 202);
    let batch = json!({"messages": [{"topic": "room-1", "event": "from-alice", "payload": {}, "private": true}]});
    assert_eq!(post(&pg, "/api/broadcast", &alice, batch).await.0, 202);
    assert_eq!(next_broadcast(&mut c).await["event"], "from-alice");
}

/// Runs `sql` as `sub` (role authenticated, its claims set), as PostgREST would.
async fn as_user(pg: &PgHub, sub: &str, sql: &str) {
    pg.exec(&format!(
        "begin; set local role authenticated; \
         select set_config('request.jwt.claims', '{{\"sub\":\"{sub}\",\"role\":\"authenticated\"}}', true); \
         {sql}; commit;"
    ))
    .await;
}

#[tokio::test]
async fn realtime_send_runs_as_the_caller_so_insert_policies_decide() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V1).await;
    joined(&pg, &mut c, ROOM, ALICE, json!({})).await;
    // Bob may not write: a WARNING, his transaction commits, nothing is broadcast.
    as_user(
        &pg,
        BOB,
        r#"select realtime.send('{"from":"bob"}', 'note', 'room-1')"#,
    )
    .await;
    as_user(
        &pg,
        ALICE,
        r#"select realtime.send('{"from":"alice"}', 'note', 'room-1')"#,
    )
    .await;
    let b = next_broadcast(&mut c).await;
    assert_eq!(b["payload"]["from"], "alice", "{b}");
    let id = b["meta"]["id"].as_str().expect("meta.id is a string");
    assert_eq!(
        b["payload"]["id"], id,
        "the payload's id is the message id: {b}"
    );
    assert_eq!(uuid::Uuid::parse_str(id).map(|_| ()), Ok(()), "{b}");
    c.assert_quiet().await;
}

#[tokio::test]
async fn broadcast_changes_from_a_row_trigger_reaches_the_private_room() {
    let pg = PgHub::start(&format!(
        r#"{SETUP}
        create table public.tasks (id bigint primary key, room text, title text);
        create function public.tasks_changed() returns trigger language plpgsql as $$
        begin
            perform realtime.broadcast_changes(
                coalesce(new.room, old.room), tg_op, tg_op, tg_table_name, tg_table_schema,
                new, old);
            return null;
        end $$;
        create trigger tasks_broadcast after insert or update or delete on public.tasks
            for each row execute function public.tasks_changed();
        "#
    ))
    .await;
    let mut c = pg.connect(Vsn::V1).await;
    joined(&pg, &mut c, ROOM, ALICE, json!({})).await;
    pg.exec("insert into public.tasks values (1, 'room-1', 'write tests')")
        .await;
    pg.exec("delete from public.tasks where id = 1").await;
    let ins = next_broadcast(&mut c).await;
    assert_eq!(ins["event"], "INSERT");
    let p = &ins["payload"];
    assert_eq!(
        (&p["operation"], &p["schema"], &p["table"], &p["old_record"]),
        (
            &json!("INSERT"),
            &json!("public"),
            &json!("tasks"),
            &Value::Null
        ),
        "{ins}"
    );
    assert_eq!(
        p["record"],
        json!({"id": 1, "room": "room-1", "title": "write tests"})
    );
    assert_eq!(p["id"], ins["meta"]["id"], "{ins}");
    let del = next_broadcast(&mut c).await;
    assert_eq!(del["event"], "DELETE");
    assert_eq!(del["payload"]["record"], Value::Null);
    assert_eq!(del["payload"]["old_record"]["title"], "write tests");
}

fn send_sql(n: i64) -> String {
    format!(r#"select realtime.send('{{"n":{n}}}', 'ev', 'room-1')"#)
}

/// Without a `limit` a replay sends the newest 10 (PROTOCOL.md §3).
#[tokio::test]
async fn replay_without_a_limit_sends_the_newest_ten() {
    let pg = PgHub::start(SETUP).await;
    for n in 1..=12 {
        pg.exec(&send_sql(n)).await;
    }
    let mut c = pg.connect(Vsn::V2).await;
    let since = chrono::Utc::now().timestamp_millis() - 60_000;
    joined(
        &pg,
        &mut c,
        ROOM,
        ALICE,
        json!({"broadcast": {"replay": {"since": since}}}),
    )
    .await;
    for n in 3..=12 {
        let f = c.recv().await;
        assert_eq!(f.payload()["payload"]["n"], n, "{f:?}");
    }
    let sys = next_system(&mut c).await;
    assert_eq!(
        sys["message"],
        "Replay sent the newest 10 of 12 stored messages; 2 older messages were left out by the limit"
    );
}

#[tokio::test]
async fn replay_sends_the_newest_stored_messages_in_order_then_says_how_many_were_left_out() {
    let pg = PgHub::start(SETUP).await;
    for n in 1..=3 {
        pg.exec(&send_sql(n)).await;
    }
    let mut c = pg.connect(Vsn::V2).await;
    let since = chrono::Utc::now().timestamp_millis() - 60_000;
    let join_ref = joined(
        &pg,
        &mut c,
        ROOM,
        ALICE,
        json!({"broadcast": {"replay": {"since": since, "limit": 2}}}),
    )
    .await;
    for n in [2, 3] {
        let f = c.recv().await;
        // A channel push: join_ref set, ref null; text even on v2.
        assert_eq!(
            (f.join_ref(), f.ref_()),
            (Some(join_ref.as_str()), None),
            "{f:?}"
        );
        let b = f.payload();
        assert_eq!(b["payload"]["n"], n, "{f:?}");
        assert_eq!(b["meta"]["replayed"], true, "{f:?}");
        assert_eq!(b["meta"]["id"], b["payload"]["id"], "{f:?}");
    }
    let sys = next_system(&mut c).await;
    assert_eq!(
        sys,
        json!({"extension": "broadcast", "status": "ok", "channel": "room-1",
               "message": "Replay sent the newest 2 of 3 stored messages; 1 older messages were left out by the limit"})
    );
    pg.exec(&send_sql(4)).await;
    let live = kind4(&c.recv().await);
    let meta: Value = serde_json::from_slice(&live.meta).unwrap();
    assert_eq!(meta.get("replayed"), None, "{meta}");
    c.assert_quiet().await;
}

#[tokio::test]
async fn replay_loses_nothing_and_repeats_nothing_at_the_seam() {
    let pg = PgHub::start(SETUP).await;
    // A sender whose transaction is still open while the replay reads ...
    let open = pg.db.client().await;
    open.batch_execute(&format!("begin; {}", send_sql(100)))
        .await
        .unwrap();
    // ... and a burst committed just before the join, which capture may or may not have
    // dispatched by the time the replay reads.
    for n in 1..=5 {
        pg.exec(&send_sql(n)).await;
    }
    let mut c = pg.connect(Vsn::V1).await;
    joined(
        &pg,
        &mut c,
        ROOM,
        ALICE,
        json!({"broadcast": {"replay": {"since": 0, "limit": 25}}}),
    )
    .await;
    open.batch_execute("commit").await.unwrap();
    pg.exec(&send_sql(6)).await;
    let mut seen = Vec::new();
    while seen.last() != Some(&6) {
        let b = next_broadcast(&mut c).await;
        seen.push(b["payload"]["n"].as_i64().unwrap());
    }
    assert_eq!(
        seen,
        [1, 2, 3, 4, 5, 100, 6],
        "each message exactly once, in order"
    );
    c.assert_quiet().await;
}

#[tokio::test]
async fn replay_parameters_and_public_channels_get_supabases_errors() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let (_, reply) = c
        .join(
            ROOM,
            json!({"config": {"broadcast": {"replay": {"since": 0}}}}),
        )
        .await;
    assert_eq!(
        reason(&reply),
        "UnableToReplayMessages: Replay is not allowed for public channels"
    );
    let (_, reply) = join_private(
        &pg,
        &mut c,
        ROOM,
        ALICE,
        json!({"broadcast": {"replay": {"since": "yesterday"}}}),
    )
    .await;
    assert_eq!(
        reason(&reply),
        "UnableToReplayMessages: Replay params are not valid"
    );
}

#[tokio::test]
async fn messages_capture_reads_after_the_replay_are_not_sent_twice() {
    // A row-scope check that takes a second holds dispatch up, so the messages committed
    // with the row reach the live path only after a replay has already sent them.
    let pg = PgHub::start(&format!(
        "{SETUP}
        create table public.slow (id bigint primary key);
        alter table public.slow enable row level security;
        create policy slow_to_judge on public.slow for select to authenticated
            using (pg_sleep(1) is not null);
        grant select on public.slow to authenticated;
        select realtime.enable('public.slow');"
    ))
    .await;
    let mut watcher = pg.connect(Vsn::V2).await;
    let entry = json!({"event": "INSERT", "schema": "public", "table": "slow"});
    subscribe(
        &mut watcher,
        "realtime:slow",
        json!([entry]),
        Some(&pg.user(CAROL)),
    )
    .await;
    pg.exec(&format!(
        "begin; insert into public.slow values (1); {}; {}; commit;",
        send_sql(1),
        send_sql(2)
    ))
    .await;
    let mut c = pg.connect(Vsn::V1).await;
    joined(
        &pg,
        &mut c,
        ROOM,
        ALICE,
        json!({"broadcast": {"replay": {"since": 0}}}),
    )
    .await;
    for n in [1, 2] {
        let b = next_broadcast(&mut c).await;
        assert_eq!(
            (b["payload"]["n"].as_i64(), &b["meta"]["replayed"]),
            (Some(n), &json!(true))
        );
    }
    // The stalled batch is delivered to the watcher; then a new message, live, once.
    expect_row(&mut watcher, "INSERT", "slow", 1).await;
    pg.exec(&send_sql(3)).await;
    let b = next_broadcast(&mut c).await;
    assert_eq!(
        b["payload"]["n"], 3,
        "messages 1 and 2 must not come again: {b}"
    );
    c.assert_quiet().await;
}

/// A write check that fails (a policy that raises) is not kept as a refusal: a send a
/// second later checks again (Supabase checks again on the next one), so a channel whose
/// first send met a passing problem is not muted until it rejoins.
#[tokio::test]
async fn a_write_check_that_failed_is_made_again_on_the_next_send() {
    let pg = PgHub::start(
        "create table public.flag (x int);
         grant select on public.flag to authenticated;
         create policy \"flaky read\" on realtime.messages for select to authenticated
             using (realtime.topic() like 'flaky:%');
         create policy \"flaky write\" on realtime.messages for insert to authenticated
             with check (realtime.topic() like 'flaky:%'
                         and (select 1 / count(*) from public.flag) = 1);",
    )
    .await;
    let topic = "realtime:flaky:x";
    let mut alice = pg.connect(Vsn::V2).await;
    let mut bob = pg.connect(Vsn::V2).await;
    let a = joined(
        &pg,
        &mut alice,
        topic,
        ALICE,
        json!({"broadcast": {"ack": true}}),
    )
    .await;
    joined(&pg, &mut bob, topic, BOB, json!({})).await;

    // The policy raises (division by zero): no ack, nothing sent.
    alice.broadcast(&a, topic, "first", json!({})).await;
    alice.assert_quiet().await;
    bob.assert_quiet().await;

    pg.exec("insert into public.flag values (1)").await;
    // Sends are refused without a check for a second after the failure; one after that
    // is checked again and goes through (the refused ones reach nobody).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut sent = Vec::new();
    loop {
        assert!(std::time::Instant::now() < deadline, "never checked again");
        sent.push(alice.broadcast(&a, topic, "second", json!({})).await);
        let wait = std::time::Duration::from_millis(250);
        if let Some(ack) = alice.try_recv_within(wait).await {
            // An ack that came late answers an earlier send of the loop.
            assert!(sent.iter().any(|r| ack.is_reply_to(r)), "{ack:?}");
            break;
        }
    }
    assert_eq!(next_broadcast(&mut bob).await["event"], "second");
}

/// While a join waits on the database (here a lock another session holds on
/// `realtime.messages`, as a migration would), the connection still answers heartbeats:
/// the client would otherwise take it for dead and reconnect. The pushes sent behind the
/// join are handled after it, in order.
#[tokio::test]
async fn heartbeats_are_answered_while_a_join_waits_on_the_database() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let lobby = c.join_ok("realtime:lobby", json!({})).await;
    let locker = pg.db.client().await;
    locker
        .batch_execute("begin; lock table realtime.messages in share mode")
        .await
        .unwrap();
    let join_ref = c.next_ref();
    let payload = json!({"config": {"private": true}, "access_token": pg.user(ALICE)});
    c.send(Some(&join_ref), Some(&join_ref), ROOM, "phx_join", payload)
        .await;
    let leave = c.next_ref();
    c.send(
        Some(&lobby),
        Some(&leave),
        "realtime:lobby",
        "phx_leave",
        json!({}),
    )
    .await;
    // The heartbeat is answered while the join waits: its reply comes first.
    c.assert_quiet().await;
    locker.batch_execute("rollback").await.unwrap();
    let join = c.recv().await;
    assert!(join.is_reply_to(&join_ref), "{join:?}");
    assert_eq!(join.payload()["status"], "ok", "{join:?}");
    let left = c.recv_until(|f| f.is_reply_to(&leave)).await;
    assert_eq!(left.payload()["status"], "ok", "{left:?}");
}
