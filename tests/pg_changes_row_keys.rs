//! Row scope through claim-keyed policies (`<col> = (auth.jwt() ->> '<claim>')::<type>`,
//! several permissive ones on a table): the hub finds an unfiltered subscriber by its
//! claim value instead of checking each one, and what reaches each subscriber is still
//! exactly what its policies show — inserts, updates moving a row between keys, deletes,
//! claims Postgres reads its own way, a token refresh changing the claim, and a policy of
//! another shape judged by Postgres. Each client's last frame is a change of `marks`
//! (visible to all), so nothing else arrived in between.

mod common;

use common::e2e::*;
use common::hub::{now, Vsn, WsClient};
use serde_json::{json, Value};

const SETUP: &str = r#"
create table public.tasks (
    id     bigserial primary key,
    org_id bigint,
    team   text,
    title  text
);
alter table public.tasks enable row level security;
create policy tasks_org on public.tasks for select to authenticated
    using (org_id = (auth.jwt() ->> 'org_id')::bigint);
create policy tasks_team on public.tasks for select to authenticated
    using (team = (auth.jwt() ->> 'team'));
grant select on public.tasks to authenticated;
alter table public.tasks replica identity full;
select realtime.enable('public.tasks');
create table public.notes (
    id     bigserial primary key,
    org_id bigint,
    draft  boolean not null default false
);
alter table public.notes enable row level security;
create policy notes_org on public.notes for select to authenticated
    using (org_id = (auth.jwt() ->> 'org_id')::bigint and not draft);
grant select on public.notes to authenticated;
select realtime.enable('public.notes');
create table public.marks (id bigserial primary key, note text);
grant select on public.marks to authenticated;
select realtime.enable('public.marks');
"#;

const SUB: &str = "aaaaaaaa-0000-4000-8000-00000000000a";

/// An `authenticated` token with `extra` claims.
fn token(pg: &PgHub, extra: Value) -> String {
    let mut claims = json!({"role": "authenticated", "sub": SUB, "exp": now() + 3600});
    for (k, v) in extra.as_object().expect("claims object") {
        claims[k] = v.clone();
    }
    pg.hub.mint(&claims)
}

/// Connects and subscribes to every event of `table` (no filter) and to marks.
async fn viewer(pg: &PgHub, table: &str, extra: Value) -> (WsClient, Joined) {
    let mut c = pg.connect(Vsn::V2).await;
    let joined = subscribe(
        &mut c,
        "realtime:scope",
        json!([
            {"event": "*", "schema": "public", "table": table},
            {"event": "INSERT", "schema": "public", "table": "marks"},
        ]),
        Some(&token(pg, extra)),
    )
    .await;
    (c, joined)
}

async fn task(pg: &PgHub, org: Option<i64>, team: Option<&str>) -> i64 {
    pg.id(
        "insert into public.tasks (org_id, team, title) values ($1, $2, 't') returning id",
        &[&org, &team],
    )
    .await
}

async fn mark(pg: &PgHub) -> i64 {
    pg.id(
        "insert into public.marks (note) values ('m') returning id",
        &[],
    )
    .await
}

fn row(id: i64, org: Option<i64>, team: Option<&str>) -> Value {
    json!({"id": id, "org_id": org, "team": team, "title": "t"})
}

#[tokio::test]
async fn claim_keyed_policies_deliver_each_change_to_exactly_the_viewers_they_show_it_to() {
    let pg = PgHub::start(SETUP).await;
    let (mut o7, _) = viewer(&pg, "tasks", json!({"org_id": "7", "team": "red"})).await;
    let (mut o7num, _) = viewer(&pg, "tasks", json!({"org_id": 7})).await;
    // Postgres reads " 7" as 7: the hub must leave this viewer to Postgres.
    let (mut o7space, _) = viewer(&pg, "tasks", json!({"org_id": " 7"})).await;
    let (mut o8, _) = viewer(&pg, "tasks", json!({"org_id": "8", "team": "blue"})).await;
    let (mut blue, _) = viewer(&pg, "tasks", json!({"team": "blue"})).await;
    let (mut o9, _) = viewer(&pg, "tasks", json!({"org_id": "9"})).await;

    // The hub learns the table's rules on its first check: after this change everything
    // below is matched through the claim index.
    let t0 = task(&pg, Some(9), None).await;
    expect_row(&mut o9, "INSERT", "tasks", t0).await;

    let t1 = task(&pg, Some(7), None).await;
    let t2 = task(&pg, Some(8), Some("red")).await;
    // Moves t1 from org 7 to org 8: o7 no longer sees it; o8 did not see the old row.
    pg.run("update public.tasks set org_id = 8 where id = $1", &[&t1])
        .await;
    // Now team blue sees it too, but not its old row.
    pg.run(
        "update public.tasks set team = 'blue' where id = $1",
        &[&t1],
    )
    .await;
    pg.run("delete from public.tasks where id = $1", &[&t2])
        .await;
    let m = mark(&pg).await;

    let ins = expect_row(&mut o7, "INSERT", "tasks", t1).await;
    assert_eq!(ins.data["record"], row(t1, Some(7), None));
    expect_row(&mut o7, "INSERT", "tasks", t2).await;
    let del = expect_row(&mut o7, "DELETE", "tasks", t2).await;
    assert_eq!(del.data["old_record"], row(t2, Some(8), Some("red")));
    expect_row(&mut o7, "INSERT", "marks", m).await;

    for c in [&mut o7num, &mut o7space] {
        expect_row(c, "INSERT", "tasks", t1).await;
        expect_row(c, "INSERT", "marks", m).await;
    }

    expect_row(&mut o8, "INSERT", "tasks", t2).await;
    let moved = expect_row(&mut o8, "UPDATE", "tasks", t1).await;
    assert_eq!(moved.data["record"], row(t1, Some(8), None));
    assert_eq!(
        moved.data["old_record"],
        json!({"id": t1}),
        "old row was org 7's"
    );
    let again = expect_row(&mut o8, "UPDATE", "tasks", t1).await;
    assert_eq!(again.data["old_record"], row(t1, Some(8), None));
    expect_row(&mut o8, "DELETE", "tasks", t2).await;
    expect_row(&mut o8, "INSERT", "marks", m).await;

    let joined = expect_row(&mut blue, "UPDATE", "tasks", t1).await;
    assert_eq!(joined.data["record"], row(t1, Some(8), Some("blue")));
    assert_eq!(joined.data["old_record"], json!({"id": t1}));
    expect_row(&mut blue, "INSERT", "marks", m).await;

    expect_row(&mut o9, "INSERT", "marks", m).await;
}

#[tokio::test]
async fn a_token_refresh_changing_the_claim_moves_the_viewer_to_the_new_key() {
    let pg = PgHub::start(SETUP).await;
    let (mut c, joined) = viewer(&pg, "tasks", json!({"org_id": "7"})).await;
    let before = task(&pg, Some(7), None).await;
    expect_row(&mut c, "INSERT", "tasks", before).await;

    refresh_token(&mut c, &joined, &token(&pg, json!({"org_id": "8"}))).await;

    let old_key = task(&pg, Some(7), None).await;
    let new_key = task(&pg, Some(8), None).await;
    pg.run(
        "update public.tasks set org_id = 8 where id = $1",
        &[&old_key],
    )
    .await;
    let m = mark(&pg).await;
    expect_row(&mut c, "INSERT", "tasks", new_key).await;
    let moved = expect_row(&mut c, "UPDATE", "tasks", old_key).await;
    assert_eq!(moved.data["old_record"], json!({"id": old_key}));
    expect_row(&mut c, "INSERT", "marks", m).await;
}

#[tokio::test]
async fn a_policy_of_another_shape_is_judged_by_postgres() {
    let pg = PgHub::start(SETUP).await;
    let (mut o7, _) = viewer(&pg, "notes", json!({"org_id": "7"})).await;
    let (mut o8, _) = viewer(&pg, "notes", json!({"org_id": "8"})).await;
    let note = |org: i64, draft: bool| {
        let pg = &pg;
        async move {
            pg.id(
                "insert into public.notes (org_id, draft) values ($1, $2) returning id",
                &[&org, &draft],
            )
            .await
        }
    };
    let draft7 = note(7, true).await;
    let final7 = note(7, false).await;
    let final8 = note(8, false).await;
    pg.run(
        "update public.notes set draft = false where id = $1",
        &[&draft7],
    )
    .await;
    let m = mark(&pg).await;

    expect_row(&mut o7, "INSERT", "notes", final7).await;
    expect_row(&mut o7, "UPDATE", "notes", draft7).await;
    expect_row(&mut o7, "INSERT", "marks", m).await;
    expect_row(&mut o8, "INSERT", "notes", final8).await;
    expect_row(&mut o8, "INSERT", "marks", m).await;
}
