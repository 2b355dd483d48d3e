//! Row scope of postgres_changes (DESIGN.md invariant 2): a subscriber receives a change
//! only if `SELECT` with its role and JWT claims shows the row (the old row for DELETE),
//! sees only the columns it may select, gets an UPDATE's old row only if it could see
//! that too, and follows a refreshed access token. The randomized test is the judge: what
//! each subscriber receives equals what Postgres's own RLS shows that subscriber.

mod common;

use common::e2e::*;
use common::hub::{Vsn, WsClient};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_postgres::SimpleQueryMessage;

const SETUP: &str = r#"
create table public.jobs (
    id          bigserial primary key,
    customer_id uuid not null,
    title       text,
    status      text,
    priority    int4,
    secret      text
);
alter table public.jobs enable row level security;
create policy jobs_own on public.jobs for select to authenticated
    using (customer_id = auth.uid());
grant select on public.jobs to anon, authenticated, service_role;
-- old_record follows REPLICA IDENTITY: FULL, so old rows are judged and shown whole.
alter table public.jobs replica identity full;
select realtime.enable('public.jobs');
create table public.marks (id bigserial primary key, note text);
grant select on public.marks to anon, authenticated, service_role;
select realtime.enable('public.marks');
"#;

const A: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
const B: &str = "bbbbbbbb-0000-4000-8000-00000000000b";
const C: &str = "cccccccc-0000-4000-8000-00000000000c";

fn jobs_all() -> Value {
    json!({"event": "*", "schema": "public", "table": "jobs"})
}

fn marks() -> Value {
    json!({"event": "INSERT", "schema": "public", "table": "marks"})
}

async fn insert_job(pg: &PgHub, customer: &str, title: &str) -> i64 {
    pg.id(
        "insert into public.jobs (customer_id, title, status, priority, secret) \
         values ($1::text::uuid, $2, 'open', 3, 's3cret') returning id",
        &[&customer, &title],
    )
    .await
}

async fn mark(pg: &PgHub) -> i64 {
    pg.id(
        "insert into public.marks (note) values ('mark') returning id",
        &[],
    )
    .await
}

/// Connects and subscribes to jobs (all events, no filter) and marks as `customer`.
async fn customer(pg: &PgHub, who: &str) -> (WsClient, Joined) {
    let mut c = pg.connect(Vsn::V2).await;
    let joined = subscribe(
        &mut c,
        "realtime:jobs",
        json!([jobs_all(), marks()]),
        Some(&pg.user(who)),
    )
    .await;
    (c, joined)
}

fn full_row(id: i64, customer: &str, title: &str) -> Value {
    json!({"id": id, "customer_id": customer, "title": title, "status": "open", "priority": 3, "secret": "s3cret"})
}

#[tokio::test]
async fn a_customer_receives_its_own_changes_and_never_another_customers() {
    let pg = PgHub::start(SETUP).await;
    let (mut a, _) = customer(&pg, A).await;
    let (mut b, _) = customer(&pg, B).await;
    let b1 = insert_job(&pg, B, "b1").await;
    let a1 = insert_job(&pg, A, "a1").await;
    pg.run(
        "update public.jobs set title = 'b1 v2' where id = $1",
        &[&b1],
    )
    .await;
    pg.run(
        "update public.jobs set title = 'a1 v2' where id = $1",
        &[&a1],
    )
    .await;
    pg.run("delete from public.jobs where id = $1", &[&b1])
        .await;
    let m = mark(&pg).await;

    let ins = expect_row(&mut a, "INSERT", "jobs", a1).await;
    assert_eq!(ins.data["record"], full_row(a1, A, "a1"));
    let upd = expect_row(&mut a, "UPDATE", "jobs", a1).await;
    assert_eq!(upd.data["record"], full_row(a1, A, "a1 v2"));
    assert_eq!(
        upd.data["old_record"],
        full_row(a1, A, "a1"),
        "A saw the old row too"
    );
    expect_row(&mut a, "INSERT", "marks", m).await;

    expect_row(&mut b, "INSERT", "jobs", b1).await;
    expect_row(&mut b, "UPDATE", "jobs", b1).await;
    let del = expect_row(&mut b, "DELETE", "jobs", b1).await;
    assert_eq!(
        del.data["old_record"],
        full_row(b1, B, "b1 v2"),
        "the whole old row"
    );
    expect_row(&mut b, "INSERT", "marks", m).await;
}

#[tokio::test]
async fn an_update_moving_a_row_to_another_customer_reaches_only_the_new_owner_with_the_key_as_old_record(
) {
    let pg = PgHub::start(SETUP).await;
    let (mut a, _) = customer(&pg, A).await;
    let (mut b, _) = customer(&pg, B).await;
    let id = insert_job(&pg, A, "moving").await;
    expect_row(&mut a, "INSERT", "jobs", id).await;
    pg.run(
        "update public.jobs set customer_id = $2::text::uuid where id = $1",
        &[&id, &B],
    )
    .await;
    let m = mark(&pg).await;

    expect_row(&mut a, "INSERT", "marks", m).await;
    let upd = expect_row(&mut b, "UPDATE", "jobs", id).await;
    assert_eq!(upd.data["record"], full_row(id, B, "moving"));
    assert_eq!(
        upd.data["old_record"],
        json!({"id": id}),
        "B could not see the old row: only its primary key"
    );
    expect_row(&mut b, "INSERT", "marks", m).await;
}

#[tokio::test]
async fn a_delete_reaches_the_owner_with_the_whole_old_row_and_nobody_else() {
    let pg = PgHub::start(SETUP).await;
    let (mut a, _) = customer(&pg, A).await;
    let (mut b, _) = customer(&pg, B).await;
    let id = insert_job(&pg, A, "doomed").await;
    pg.run("delete from public.jobs where id = $1", &[&id])
        .await;
    let m = mark(&pg).await;

    expect_row(&mut a, "INSERT", "jobs", id).await;
    let del = expect_row(&mut a, "DELETE", "jobs", id).await;
    assert_eq!(del.data["old_record"], full_row(id, A, "doomed"));
    assert!(del.data.get("record").is_none(), "{:?}", del.frame);
    expect_row(&mut a, "INSERT", "marks", m).await;
    expect_row(&mut b, "INSERT", "marks", m).await;
}

/// A shape the hub does not decide itself: Postgres judges it, as the subscriber. The
/// helper's schema is the owner's alone, as Supabase's docs advise for such helpers:
/// Postgres's own RLS needs no USAGE on it (a policy is parsed when it is created).
const SHARED: &str = r#"
create schema private;
create function private.shared(title text) returns bool
    language sql stable as $$ select title like 'shared%' $$;
create table public.pinned (title text primary key);
grant select on public.pinned to authenticated;
create policy jobs_shared on public.jobs for select to authenticated
    using (customer_id = auth.uid() or private.shared(title)
           or exists (select 1 from public.pinned p where p.title = jobs.title));
"#;

/// A policy judged in Postgres may call `auth.uid()` (a schema a hub connected as
/// `authenticator` may not use) and a function of a schema only the table's owner may
/// use: checks parsed as the hub, or as the subscriber, failed for every subscriber of
/// such a table, who then got nothing.
#[tokio::test]
async fn a_policy_judged_in_postgres_may_use_schemas_the_hub_and_subscriber_may_not() {
    let pg = PgHub::start(&format!("{SETUP}{SHARED}")).await;
    let (mut a, _) = customer(&pg, A).await;
    let (mut b, _) = customer(&pg, B).await;
    let b1 = insert_job(&pg, B, "b1").await;
    let shared = insert_job(&pg, B, "shared by b").await;
    let a1 = insert_job(&pg, A, "a1").await;
    let m = mark(&pg).await;

    expect_row(&mut a, "INSERT", "jobs", shared).await;
    expect_row(&mut a, "INSERT", "jobs", a1).await;
    expect_row(&mut a, "INSERT", "marks", m).await;
    expect_row(&mut b, "INSERT", "jobs", b1).await;
    expect_row(&mut b, "INSERT", "jobs", shared).await;
    expect_row(&mut b, "INSERT", "marks", m).await;

    // A prepared check whose tables changed is parsed again when it next runs, as the
    // subscriber then: it is prepared again as the owner instead.
    pg.exec("alter table public.pinned add column note text")
        .await;
    let again = insert_job(&pg, B, "shared again").await;
    expect_row(&mut a, "INSERT", "jobs", again).await;
    expect_row(&mut b, "INSERT", "jobs", again).await;
}

#[tokio::test]
async fn anon_without_a_policy_receives_nothing_and_service_role_receives_everything() {
    let pg = PgHub::start(SETUP).await;
    let mut anon = pg.connect(Vsn::V2).await;
    subscribe(
        &mut anon,
        "realtime:jobs",
        json!([jobs_all(), marks()]),
        Some(&pg.token("anon", A)),
    )
    .await;
    let mut service = pg.connect(Vsn::V1).await;
    subscribe(
        &mut service,
        "realtime:jobs",
        json!([jobs_all(), marks()]),
        Some(&pg.token("service_role", C)),
    )
    .await;
    let a1 = insert_job(&pg, A, "a").await;
    let b1 = insert_job(&pg, B, "b").await;
    pg.run("delete from public.jobs where id = $1", &[&a1])
        .await;
    let m = mark(&pg).await;
    expect_row(&mut anon, "INSERT", "marks", m).await;
    expect_row(&mut service, "INSERT", "jobs", a1).await;
    expect_row(&mut service, "INSERT", "jobs", b1).await;
    let del = expect_row(&mut service, "DELETE", "jobs", a1).await;
    assert_eq!(del.data["old_record"], full_row(a1, A, "a"));
    expect_row(&mut service, "INSERT", "marks", m).await;
}

#[tokio::test]
async fn column_privileges_limit_record_old_record_and_columns() {
    let setup = format!(
        "{SETUP}\nrevoke select on public.jobs from authenticated;\n\
         grant select (id, customer_id, title) on public.jobs to authenticated;"
    );
    let pg = PgHub::start(&setup).await;
    let (mut a, _) = customer(&pg, A).await;
    let id = insert_job(&pg, A, "t").await;
    pg.run(
        "update public.jobs set title = 'u', secret = 'v' where id = $1",
        &[&id],
    )
    .await;
    pg.run("delete from public.jobs where id = $1", &[&id])
        .await;

    let columns = json!([
        {"name": "id", "type": "int8"},
        {"name": "customer_id", "type": "uuid"},
        {"name": "title", "type": "text"}
    ]);
    let ins = expect_row(&mut a, "INSERT", "jobs", id).await;
    assert_eq!(ins.data["columns"], columns, "{:?}", ins.frame);
    assert_eq!(
        ins.data["record"],
        json!({"id": id, "customer_id": A, "title": "t"})
    );
    let upd = expect_row(&mut a, "UPDATE", "jobs", id).await;
    assert_eq!(upd.data["columns"], columns);
    assert_eq!(
        upd.data["record"],
        json!({"id": id, "customer_id": A, "title": "u"})
    );
    assert_eq!(
        upd.data["old_record"],
        json!({"id": id, "customer_id": A, "title": "t"})
    );
    let del = expect_row(&mut a, "DELETE", "jobs", id).await;
    assert_eq!(del.data["columns"], columns);
    assert_eq!(
        del.data["old_record"],
        json!({"id": id, "customer_id": A, "title": "u"})
    );
}

#[tokio::test]
async fn an_access_token_refresh_moves_row_scope_to_the_new_subject() {
    let pg = PgHub::start(SETUP).await;
    let (mut c, joined) = customer(&pg, A).await;
    let a0 = insert_job(&pg, A, "before").await;
    expect_row(&mut c, "INSERT", "jobs", a0).await;

    refresh_token(&mut c, &joined, &pg.user(B)).await;

    let a1 = insert_job(&pg, A, "after").await;
    let b1 = insert_job(&pg, B, "after").await;
    pg.run(
        "update public.jobs set title = 'later' where id = $1",
        &[&a0],
    )
    .await;
    pg.run(
        "update public.jobs set customer_id = $2::text::uuid where id = $1",
        &[&a1, &B],
    )
    .await;
    let ins = expect_row(&mut c, "INSERT", "jobs", b1).await;
    assert_eq!(ins.data["record"], full_row(b1, B, "after"));
    let moved = expect_row(&mut c, "UPDATE", "jobs", a1).await;
    assert_eq!(
        moved.data["old_record"],
        json!({"id": a1}),
        "A's old row is no longer visible"
    );
}

const NOTES: &str = r#"
create table public.notes (id bigserial primary key, body text);
alter table public.notes enable row level security;
create policy staff_read on public.notes for select to authenticated using (true);
grant select on public.notes to anon, authenticated;
select realtime.enable('public.notes');
create table public.marks (id bigserial primary key, note text);
grant select on public.marks to anon, authenticated, service_role;
select realtime.enable('public.marks');
"#;

fn notes() -> Value {
    json!({"event": "INSERT", "schema": "public", "table": "notes"})
}

async fn insert_notes(pg: &PgHub, n: i64) -> Vec<i64> {
    let rows = pg
        .sql
        .query(
            "insert into public.notes (body) select 'n' from generate_series(1, $1::int8) returning id",
            &[&n],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

async fn expect_notes(c: &mut WsClient, ids: &[i64]) {
    for &id in ids {
        expect_row(c, "INSERT", "notes", id).await;
    }
}

/// An unfiltered table's changes find the same receivers each time, and dispatch reuses
/// them from one change to the next (`dispatch::memo`) until someone joins, leaves or
/// refreshes a token: each of those must show from the next change on. Each step comes
/// after a change that taught row scope every rule it needs, so that the step is the
/// only thing that moved.
#[tokio::test]
async fn an_unfiltered_tables_receivers_follow_joins_leaves_and_token_refreshes() {
    let pg = PgHub::start(NOTES).await;
    let join = |token: String| {
        let pg = &pg;
        async move {
            let mut c = pg.connect(Vsn::V2).await;
            let joined = subscribe(&mut c, "realtime:notes", json!([notes()]), Some(&token)).await;
            (c, joined)
        }
    };
    let (mut a, a_joined) = join(pg.user(A)).await;
    let (mut b, b_joined) = join(pg.user(B)).await;
    // Anon sees no note: the rule for anon is learnt with the first change.
    let (mut d, _) = join(pg.token("anon", C)).await;
    for n in [3, 1] {
        let ids = insert_notes(&pg, n).await;
        expect_notes(&mut a, &ids).await;
        expect_notes(&mut b, &ids).await;
    }

    let (mut c, _) = join(pg.user(C)).await;
    let ids = insert_notes(&pg, 2).await;
    for client in [&mut a, &mut b, &mut c] {
        expect_notes(client, &ids).await;
    }

    // B leaves; then it joins another table's channel: its next frame must be from there.
    // (A left channel's outbox refuses frames too, so this also holds without `memo`.)
    leave(&mut b, &b_joined).await;
    let ids = insert_notes(&pg, 2).await;
    expect_notes(&mut a, &ids).await;
    expect_notes(&mut c, &ids).await;
    subscribe(
        &mut b,
        "realtime:marks",
        json!([marks()]),
        Some(&pg.user(B)),
    )
    .await;
    let m = mark(&pg).await;
    expect_row(&mut b, "INSERT", "marks", m).await;
    let ids = insert_notes(&pg, 1).await;
    expect_notes(&mut a, &ids).await;
    expect_notes(&mut c, &ids).await;

    // A becomes anon.
    refresh_token(&mut a, &a_joined, &pg.token("anon", A)).await;
    let ids = insert_notes(&pg, 2).await;
    expect_notes(&mut c, &ids).await;
    a.assert_quiet().await;
    d.assert_quiet().await;
}

// ---------------------------------------------------------------------------------------
// Randomized: subscribers with random scope, random writes, Postgres RLS as the oracle.

const CUSTOMERS: [&str; 3] = [A, B, C];
const STATUSES: [&str; 3] = ["open", "done", "draft"];
const FILTERS: [Option<&str>; 4] = [
    None,
    Some("status=eq.open"),
    Some("priority=gt.5"),
    Some("status=in.(open,done)"),
];
const EVENTS: [&str; 5] = ["*", "*", "INSERT", "UPDATE", "DELETE"];
const OPS: usize = 200;

struct Subscriber {
    label: String,
    role: &'static str,
    claims: String,
    event: &'static str,
    filter: Option<&'static str>,
    client: WsClient,
    jobs_id: u64,
}

impl Subscriber {
    fn wants(&self, op: &str, row: &Value) -> bool {
        let event_ok = self.event == "*" || self.event == op;
        let status = row["status"].as_str();
        let filter_ok = match self.filter {
            None => true,
            Some("status=eq.open") => status == Some("open"),
            Some("priority=gt.5") => row["priority"].as_i64().is_some_and(|p| p > 5),
            Some("status=in.(open,done)") => matches!(status, Some("open" | "done")),
            Some(other) => panic!("no oracle for filter {other}"),
        };
        event_ok && filter_ok
    }
}

/// The row `id` as `SELECT` shows it to `role` with `claims` (inside the caller's open
/// transaction; role and claims are reset afterwards).
async fn seen_as(pg: &PgHub, role: &str, claims: &str, id: i64) -> Option<Value> {
    let q = format!(
        "set local role {role}; set local request.jwt.claims = '{}'; \
         select to_jsonb(j)::text from public.jobs j where id = {id}; reset role; \
         set local request.jwt.claims = '';",
        claims.replace('\'', "''")
    );
    let msgs = pg
        .sql
        .simple_query(&q)
        .await
        .unwrap_or_else(|e| panic!("oracle query failed: {}\n{q}", pg_err(&e)));
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r
            .get(0)
            .map(|t| serde_json::from_str(t).expect("jsonb text")),
        _ => None,
    })
}

async fn row_now(pg: &PgHub, id: i64) -> Value {
    let r = pg
        .sql
        .query_one(
            "select to_jsonb(j) from public.jobs j where id = $1",
            &[&id],
        )
        .await
        .expect("row exists");
    r.get(0)
}

async fn all_seen(pg: &PgHub, subs: &[Subscriber], id: i64) -> Vec<Option<Value>> {
    let mut out = Vec::with_capacity(subs.len());
    for s in subs {
        out.push(seen_as(pg, s.role, &s.claims, id).await);
    }
    out
}

/// One expected or received event, comparable as JSON.
fn event(kind: &str, record: Option<&Value>, old: Option<&Value>) -> Value {
    json!({"type": kind, "record": record, "old_record": old})
}

#[tokio::test]
async fn randomized_changes_reach_each_subscriber_exactly_as_select_shows_them() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("randomized row-scope test: SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let pg = PgHub::start(SETUP).await;

    let mut subs = Vec::new();
    for i in 0..10 {
        let (role, sub) = match i {
            8 => ("anon", A),
            9 => ("service_role", C),
            _ => ("authenticated", CUSTOMERS[i % 3]),
        };
        let event = EVENTS[rng.random_range(0..EVENTS.len())];
        let filter = FILTERS[rng.random_range(0..FILTERS.len())];
        let mut entry = json!({"event": event, "schema": "public", "table": "jobs"});
        if let Some(f) = filter {
            entry["filter"] = json!(f);
        }
        let token = pg.token(role, sub);
        let claims = json!({"role": role, "sub": sub}).to_string();
        let vsn = if i % 2 == 0 { Vsn::V2 } else { Vsn::V1 };
        let mut client = pg.connect(vsn).await;
        let joined = subscribe(
            &mut client,
            "realtime:r",
            json!([entry, marks()]),
            Some(&token),
        )
        .await;
        subs.push(Subscriber {
            label: format!("#{i} {role} sub={sub} event={event} filter={filter:?} {vsn:?}"),
            role,
            claims,
            event,
            filter,
            client,
            jobs_id: joined.ids[0],
        });
    }

    let mut live: Vec<i64> = Vec::new();
    let mut log: Vec<String> = Vec::new();
    let mut expected: Vec<Vec<(usize, Value)>> = vec![Vec::new(); subs.len()];
    for op_no in 0..OPS {
        let pick = rng.random_range(0..10);
        pg.exec("begin").await;
        if live.is_empty() || pick < 4 {
            let cust = CUSTOMERS[rng.random_range(0..3)];
            let status = STATUSES[rng.random_range(0..3)];
            let prio: i32 = rng.random_range(0..10);
            let id = pg
                .id(
                    "insert into public.jobs (customer_id, title, status, priority, secret) \
                     values ($1::text::uuid, $2, $3, $4, $5) returning id",
                    &[
                        &cust,
                        &format!("t{op_no}"),
                        &status,
                        &prio,
                        &format!("s{op_no}"),
                    ],
                )
                .await;
            live.push(id);
            log.push(format!(
                "op {op_no}: insert id={id} customer={cust} status={status} priority={prio}"
            ));
            let row = row_now(&pg, id).await;
            let after = all_seen(&pg, &subs, id).await;
            for (i, s) in subs.iter().enumerate() {
                if let Some(rec) = &after[i] {
                    if s.wants("INSERT", &row) {
                        expected[i].push((op_no, event("INSERT", Some(rec), None)));
                    }
                }
            }
        } else if pick < 8 {
            let id = live[rng.random_range(0..live.len())];
            let (set, desc) = match rng.random_range(0..4) {
                0 => {
                    let cust = CUSTOMERS[rng.random_range(0..3)];
                    (
                        format!("customer_id = '{cust}'"),
                        format!("customer={cust}"),
                    )
                }
                1 => {
                    let status = STATUSES[rng.random_range(0..3)];
                    (format!("status = '{status}'"), format!("status={status}"))
                }
                2 => {
                    let p = rng.random_range(0..10);
                    (format!("priority = {p}"), format!("priority={p}"))
                }
                _ => (format!("title = 'u{op_no}'"), format!("title=u{op_no}")),
            };
            log.push(format!("op {op_no}: update id={id} set {desc}"));
            let before = all_seen(&pg, &subs, id).await;
            pg.exec(&format!("update public.jobs set {set} where id = {id}"))
                .await;
            let row = row_now(&pg, id).await;
            let after = all_seen(&pg, &subs, id).await;
            for (i, s) in subs.iter().enumerate() {
                if let Some(rec) = &after[i] {
                    if s.wants("UPDATE", &row) {
                        let key_only = json!({"id": id});
                        let old = before[i].as_ref().unwrap_or(&key_only);
                        expected[i].push((op_no, event("UPDATE", Some(rec), Some(old))));
                    }
                }
            }
        } else {
            let id = live.swap_remove(rng.random_range(0..live.len()));
            log.push(format!("op {op_no}: delete id={id}"));
            let row = row_now(&pg, id).await;
            let before = all_seen(&pg, &subs, id).await;
            pg.run("delete from public.jobs where id = $1", &[&id])
                .await;
            for (i, s) in subs.iter().enumerate() {
                if let Some(old) = &before[i] {
                    if s.wants("DELETE", &row) {
                        expected[i].push((op_no, event("DELETE", None, Some(old))));
                    }
                }
            }
        }
        pg.exec("commit").await;
    }
    let m = mark(&pg).await;

    for (i, s) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        loop {
            let ch = next_change(&mut s.client).await;
            if ch.table() == "marks" {
                assert_eq!(ch.row_id(), Some(m), "{}", s.label);
                break;
            }
            assert_eq!(
                ch.ids,
                vec![s.jobs_id],
                "{}: ids of {:?}",
                s.label,
                ch.frame
            );
            assert_eq!(
                ch.data["errors"],
                Value::Null,
                "{}: {:?}",
                s.label,
                ch.frame
            );
            got.push(event(
                ch.kind(),
                ch.data.get("record"),
                ch.data.get("old_record"),
            ));
        }
        let want: Vec<&Value> = expected[i].iter().map(|(_, e)| e).collect();
        let got_refs: Vec<&Value> = got.iter().collect();
        if want != got_refs {
            let at = want
                .iter()
                .zip(&got_refs)
                .position(|(w, g)| w != g)
                .unwrap_or(want.len().min(got_refs.len()));
            let op = expected[i].get(at).map(|(o, _)| log[*o].clone());
            panic!(
                "SEED={seed}: subscriber {} got {} events, SELECT as that subscriber shows {}; \
                 first difference at event {at} (expected from {op:?}):\n  expected: {}\n  received: {}",
                s.label,
                got_refs.len(),
                want.len(),
                want.get(at).map_or("(nothing)".into(), |v| v.to_string()),
                got_refs.get(at).map_or("(nothing)".into(), |v| v.to_string()),
            );
        }
        eprintln!("{}: {} events match", s.label, got.len());
    }
}

/// DDL moves the rules version as it runs, not as it commits: a change judged while a
/// REVOKE is still uncommitted reads the table's rules as they were, and those must not
/// outlive the commit (they once did, until the next DDL anywhere).
#[tokio::test]
async fn a_revoke_committed_while_changes_flow_applies_from_its_commit() {
    let pg = PgHub::start(SETUP).await;
    let (mut a, _) = customer(&pg, A).await;
    let ddl = pg.db.client().await;
    ddl.batch_execute(
        "begin; revoke select on public.jobs from authenticated; \
         grant select (id, customer_id, title) on public.jobs to authenticated;",
    )
    .await
    .unwrap();
    let before = insert_job(&pg, A, "before").await;
    let ins = expect_row(&mut a, "INSERT", "jobs", before).await;
    assert_eq!(
        ins.data["record"],
        full_row(before, A, "before"),
        "judged before the commit"
    );
    ddl.batch_execute("commit").await.unwrap();
    let after = insert_job(&pg, A, "after").await;
    let ins = expect_row(&mut a, "INSERT", "jobs", after).await;
    assert_eq!(
        ins.data["record"],
        json!({"id": after, "customer_id": A, "title": "after"}),
        "judged after it"
    );
}

/// A table dropped and created again while the hub runs (a `supabase db reset`, a
/// migration that recreates it), with a policy Postgres checks: its rows reach its
/// subscribers as before. The check prepared for the dropped table once kept its row type
/// on the hub's pooled sessions, and every check on the new table failed.
#[tokio::test]
async fn a_table_dropped_and_created_again_is_checked_as_the_new_table() {
    const TABLE: &str = "create table public.rc (id bigserial primary key, body text);
        alter table public.rc enable row level security;
        create policy shown on public.rc for select to authenticated using (body <> 'hidden');
        grant select on public.rc to authenticated;
        select realtime.enable('public.rc');";
    let pg = PgHub::start(TABLE).await;
    let entry = json!([{"event": "INSERT", "schema": "public", "table": "rc"}]);
    let insert = || {
        pg.id(
            "insert into public.rc (body) values ('b') returning id",
            &[],
        )
    };
    let mut before = pg.connect(Vsn::V2).await;
    subscribe(&mut before, "realtime:rc", entry.clone(), Some(&pg.user(A))).await;
    for _ in 0..3 {
        let id = insert().await;
        expect_row(&mut before, "INSERT", "rc", id).await;
    }
    pg.exec(&format!("drop table public.rc; {TABLE}")).await;
    let mut after = pg.connect(Vsn::V2).await;
    subscribe(&mut after, "realtime:rc", entry, Some(&pg.user(B))).await;
    for _ in 0..3 {
        let id = insert().await;
        expect_row(&mut before, "INSERT", "rc", id).await;
        expect_row(&mut after, "INSERT", "rc", id).await;
    }
}
