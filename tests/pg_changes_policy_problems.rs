//! One bad policy hurts one subscriber: a row-scope policy that raises for some
//! subscriber's claims costs only that subscriber, which is told once what went wrong
//! (a `postgres_changes` system message with status "ok", so Python does not rejoin);
//! everyone else keeps receiving and capture never stalls. Also the readiness option
//! `postgres_changes_options: {wait, timeout}`.

mod common;

use common::e2e::*;
use common::hub::Vsn;
use serde_json::json;

const SETUP: &str = r#"
create table public.jobs (id bigserial primary key, team uuid not null, title text);
alter table public.jobs enable row level security;
create policy jobs_by_team on public.jobs for select to authenticated
    using (team = (auth.jwt() ->> 'team')::uuid);
grant select on public.jobs to authenticated;
alter publication supabase_realtime add table public.jobs;
"#;

const TEAM: &str = "11111111-1111-4111-8111-111111111111";

#[tokio::test]
async fn a_policy_that_raises_for_one_subscriber_costs_only_that_subscriber() {
    let pg = PgHub::start(SETUP).await;
    let exp = common::hub::now() + 600;
    let good = pg
        .hub
        .mint(&json!({"role": "authenticated", "sub": "good", "team": TEAM, "exp": exp}));
    let bad = pg
        .hub
        .mint(&json!({"role": "authenticated", "sub": "bad", "team": "not-a-uuid", "exp": exp}));
    let entry = json!([{"event": "INSERT", "schema": "public", "table": "jobs"}]);
    let mut good_c = pg.connect(Vsn::V2).await;
    let mut bad_c = pg.connect(Vsn::V1).await;
    subscribe(&mut good_c, "realtime:jobs", entry.clone(), Some(&good)).await;
    subscribe(&mut bad_c, "realtime:jobs", entry, Some(&bad)).await;

    for n in 0..3 {
        let id = pg
            .id(
                &format!(
                    "insert into public.jobs (team, title) values ('{TEAM}', 'j{n}') returning id"
                ),
                &[],
            )
            .await;
        expect_row(&mut good_c, "INSERT", "jobs", id).await;
    }
    let sys = next_system(&mut bad_c).await;
    assert_eq!(
        sys,
        json!({
            "extension": "postgres_changes",
            "status": "ok",
            "channel": "jobs",
            "message": "Changes of public.jobs are not delivered to this subscriber: its row-level \
                        security check failed: policy jobs_by_team on public.jobs: invalid input \
                        syntax for type uuid: \"not-a-uuid\""
        })
    );
    // Told once, not once per change.
    bad_c.assert_quiet().await;
    good_c.assert_quiet().await;
}

#[tokio::test]
async fn waiting_for_postgres_changes_replies_once_capture_is_live() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let entries = json!([{"event": "*", "schema": "public", "table": "jobs"}]);
    let options = json!({"postgres_changes_options": {"wait": true, "timeout": 5000}});
    let user = pg.user("waiter");
    let joined = subscribe_with(&mut c, "realtime:a", entries, Some(&user), options.clone()).await;
    assert_eq!(joined.ids.len(), 1);

    let missing = json!([{"event": "*", "schema": "public", "table": "nope"}]);
    let (_, reply) = join_changes(&mut c, "realtime:b", missing, Some(&user), options).await;
    assert_eq!(reply.payload()["status"], "error", "{reply:?}");
    assert_eq!(
        reply.payload()["response"]["reason"],
        "RealtimeDisabledForConfiguration: Unable to subscribe to changes with given parameters: \
         table public.nope does not exist or role authenticated may not select from it"
    );
}

#[tokio::test]
async fn waiting_without_a_database_is_refused_as_disabled_for_the_configuration() {
    let hub = common::hub::TestHub::start_default().await;
    let mut c = hub.connect_v2().await;
    let entries = json!([{"event": "*", "schema": "public", "table": "jobs"}]);
    let (_, reply) = join_changes(
        &mut c,
        "realtime:a",
        entries,
        None,
        json!({"postgres_changes_options": {"wait": true, "timeout": 300}}),
    )
    .await;
    assert_eq!(
        reply.payload()["response"]["reason"],
        "RealtimeDisabledForConfiguration: postgres_changes is unavailable: the hub runs \
         without a database (set DATABASE_URL)"
    );
}
