//! postgres_changes against a hostile subscriber (issue 15): a filter may not read a
//! column the role may not select; a join cannot tell an apikey holder which tables
//! exist; entries per join and per connection are bounded; a join during a database
//! outage gets a clean text.

mod common;

use common::e2e::*;
use common::hub::Vsn;
use serde_json::{json, Value};

const SETUP: &str = r#"
create table public.orders (id bigserial primary key, customer_id int4, title text, ssn text);
grant select (id, customer_id, title) on public.orders to authenticated;
select realtime.enable('public.orders');
create table public.secret (id bigserial primary key);
select realtime.enable('public.secret');
create table public.draft (id bigserial primary key);
create table public.shared_draft (id bigserial primary key);
grant select on public.shared_draft to authenticated, service_role;
"#;

/// Joins `[entry]` as `token` and returns the one `postgres_changes` error message.
async fn entry_error(pg: &PgHub, token: &str, entry: Value) -> String {
    let mut c = pg.connect(Vsn::V2).await;
    let (join_ref, reply) = join_changes(
        &mut c,
        "realtime:room",
        json!([entry]),
        Some(token),
        json!({}),
    )
    .await;
    joined_from_reply("realtime:room", join_ref, &reply);
    let sys = next_system(&mut c).await;
    assert_eq!(
        (&sys["status"], &sys["extension"]),
        (&json!("error"), &json!("postgres_changes")),
        "{sys}"
    );
    sys["message"].as_str().unwrap_or_default().to_owned()
}

fn orders(filter: &str) -> Value {
    json!({"event": "*", "schema": "public", "table": "orders", "filter": filter})
}

#[tokio::test]
async fn a_filter_on_a_column_the_role_may_not_select_is_refused() {
    let pg = PgHub::start(SETUP).await;
    let user = pg.user("8a1f6a0e-39a4-4c55-9d3e-2f1d1b7c0a11");
    // The probe: `ssn=like.9%` delivered exactly the rows whose hidden ssn starts with 9.
    for filter in [
        "ssn=like.9%",
        "ssn=lt.5",
        "ssn=eq.123-45-6789",
        "ssn=in.(1,2)",
    ] {
        assert_eq!(
            entry_error(&pg, &user, orders(filter)).await,
            "invalid column for filter ssn: role authenticated may not select it",
            "{filter}"
        );
    }
    // A hidden column's type is not told either (no type error before the refusal).
    let mut c = pg.connect(Vsn::V2).await;
    let entries = json!([orders("customer_id=eq.7"), orders("title=like.a%")]);
    let joined = join_changes(&mut c, "realtime:ok", entries, Some(&user), json!({})).await;
    joined_from_reply("realtime:ok", joined.0, &joined.1);
    assert_eq!(
        next_system(&mut c).await["message"],
        "Subscribed to PostgreSQL"
    );
    let id = pg
        .id(
            "insert into public.orders (customer_id, title, ssn) values (7, 'x', '999') returning id",
            &[],
        )
        .await;
    let ch = expect_row(&mut c, "INSERT", "orders", id).await;
    assert_eq!(ch.data["record"].get("ssn"), None, "{:?}", ch.frame);
}

/// A token of another role on a subscribed channel: its entries are judged again for
/// that role, as Supabase subscribes them again on every token. A filter on a column the
/// new role may not select stops, with the join's error (which rows match would tell the
/// column's values), and starts again with a token whose role may.
#[tokio::test]
async fn a_filter_the_new_role_may_not_read_stops_at_its_token() {
    let pg = PgHub::start(&format!(
        "{SETUP} grant select on public.orders to service_role;
         create table public.marks (id bigserial primary key);
         grant select on public.marks to service_role;
         select realtime.enable('public.marks');"
    ))
    .await;
    let service = pg.token("service_role", "ops");
    let user = pg.user("8a1f6a0e-39a4-4c55-9d3e-2f1d1b7c0a11");
    // Dispatch is in commit order: once a mark written after a row arrives here, that
    // row was matched (or not) already.
    let mut marks = pg.connect(Vsn::V2).await;
    let entry = json!([{"event": "INSERT", "schema": "public", "table": "marks"}]);
    subscribe(&mut marks, "realtime:marks", entry, Some(&service)).await;
    let mut c = pg.connect(Vsn::V2).await;
    let joined = subscribe(
        &mut c,
        "realtime:room",
        json!([orders("ssn=eq.1")]),
        Some(&service),
    )
    .await;
    let insert = |ssn: &'static str| {
        let pg = &pg;
        async move {
            pg.id(
                "insert into public.orders (customer_id, ssn) values (1, $1) returning id",
                &[&ssn],
            )
            .await
        }
    };
    let seen = insert("1").await;
    expect_row(&mut c, "INSERT", "orders", seen).await;

    let told = refresh_token(&mut c, &joined, &user).await;
    let messages: Vec<&Value> = told.iter().map(|t| &t["message"]).collect();
    assert_eq!(
        messages,
        [&json!(
            "invalid column for filter ssn: role authenticated may not select it"
        )],
        "{told:?}"
    );
    assert_eq!(told[0]["status"], "error");
    let hidden = insert("1").await;
    let mark = pg
        .id("insert into public.marks default values returning id", &[])
        .await;
    expect_row(&mut marks, "INSERT", "marks", mark).await;

    let told = refresh_token(&mut c, &joined, &service).await;
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["message"], "Subscribed to PostgreSQL");
    let shown = insert("1").await;
    // The row written while the filter was stopped never comes: the next one does.
    let next = expect_row(&mut c, "INSERT", "orders", shown).await;
    assert_ne!(next.row_id(), Some(hidden));
}

#[tokio::test]
async fn a_role_learns_nothing_about_tables_it_may_not_select() {
    let pg = PgHub::start(SETUP).await;
    let user = pg.user("2b7c61f1-6f0f-4f3b-8b5e-6f0c7e8d9a10");
    let answer = |table: &str| {
        format!(
            "Unable to subscribe to changes with given parameters: table public.{table} does not \
             exist or role authenticated may not select from it"
        )
    };
    let entry = |table: &str| json!({"event": "*", "schema": "public", "table": table});
    // Missing, enabled but not granted, and neither enabled nor granted: one answer.
    for table in ["nope", "secret", "draft"] {
        assert_eq!(entry_error(&pg, &user, entry(table)).await, answer(table));
    }
    // With the anon key alone too.
    let anon = pg.hub.anon();
    let anon_answer = entry_error(&pg, &anon, entry("draft")).await;
    assert_eq!(
        anon_answer,
        answer("draft").replace("authenticated", "anon")
    );
    assert_eq!(
        entry_error(&pg, &anon, entry("nope")).await,
        answer("nope").replace("authenticated", "anon")
    );
    // A role that may select the table is told how to enable it.
    let hint =
        "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: \
         table public.shared_draft is not enabled for realtime; add it to the publication with:";
    let granted = entry_error(&pg, &user, entry("shared_draft")).await;
    assert!(granted.starts_with(hint), "{granted}");
    let service = pg.token("service_role", "ops");
    let granted = entry_error(&pg, &service, entry("shared_draft")).await;
    assert!(granted.starts_with(hint), "{granted}");
    // Granted the table but not its schema: Postgres refuses the read, so is the join
    // (it used to subscribe and then deliver nothing).
    pg.exec(
        "create schema hidden; create table hidden.t (id bigserial primary key); \
         grant select on hidden.t to authenticated; select realtime.enable('hidden.t');",
    )
    .await;
    let hidden = json!({"event": "*", "schema": "hidden", "table": "t"});
    assert_eq!(
        entry_error(&pg, &user, hidden).await,
        answer("t").replace("public.t", "hidden.t")
    );
}

fn entries(n: usize) -> Value {
    Value::Array(vec![orders(""); n])
}

/// The error reply's reason (the join must have been refused).
fn refusal(reply: &common::hub::Frame) -> &str {
    assert_eq!(reply.payload()["status"], "error", "{reply:?}");
    reply.payload()["response"]["reason"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_join_with_more_entries_than_allowed_is_refused_before_any_is_looked_at() {
    // The probe: 10 joins × 50,000 entries added 425 MB and delayed everyone by 9.4 s.
    let pg = PgHub::start(SETUP).await;
    let user = pg.user("5c3d2e1f-0a9b-4c8d-8e7f-6a5b4c3d2e1f");
    let mut c = pg.connect(Vsn::V2).await;
    for i in 0..3 {
        let topic = format!("realtime:flood{i}");
        let (_, reply) =
            join_changes(&mut c, &topic, entries(50_000), Some(&user), json!({})).await;
        assert_eq!(
            refusal(&reply),
            "ChannelRateLimitReached: Too many postgres_changes entries in one join (at most 100)"
        );
    }
    // The connection still works, and a join at the limit is served.
    let (join_ref, reply) = join_changes(
        &mut c,
        "realtime:fine",
        entries(100),
        Some(&user),
        json!({}),
    )
    .await;
    let joined = joined_from_reply("realtime:fine", join_ref, &reply);
    assert_eq!(joined.ids.len(), 100);
}

#[tokio::test]
async fn a_connection_holds_at_most_its_entries_over_all_its_channels() {
    let pg = PgHub::start_with(SETUP, |c| {
        c.limits.max_changes_per_join = 3;
        c.limits.max_changes_per_connection = 5;
    })
    .await;
    let user = pg.user("0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0");
    let mut c = pg.connect(Vsn::V2).await;
    let (_, reply) = join_changes(&mut c, "realtime:a", entries(4), Some(&user), json!({})).await;
    assert_eq!(
        refusal(&reply),
        "ChannelRateLimitReached: Too many postgres_changes entries in one join (at most 3)"
    );
    let (_, reply) = join_changes(&mut c, "realtime:a", entries(3), Some(&user), json!({})).await;
    joined_from_reply("realtime:a", String::new(), &reply);
    let (b_ref, reply) =
        join_changes(&mut c, "realtime:b", entries(2), Some(&user), json!({})).await;
    joined_from_reply("realtime:b", String::new(), &reply);
    let (_, reply) = join_changes(&mut c, "realtime:c", entries(1), Some(&user), json!({})).await;
    assert_eq!(
        refusal(&reply),
        "ChannelRateLimitReached: Too many postgres_changes entries on this connection (at most 5)"
    );
    // A rejoin replaces the topic's entries rather than adding to them.
    let (_, reply) = join_changes(&mut c, "realtime:a", entries(3), Some(&user), json!({})).await;
    joined_from_reply("realtime:a", String::new(), &reply);
    // Leaving gives the entries back.
    let r = c.next_ref();
    c.send(Some(&b_ref), Some(&r), "realtime:b", "phx_leave", json!({}))
        .await;
    c.recv_until(|f| f.is_reply_to(&r)).await;
    let (_, reply) = join_changes(&mut c, "realtime:c", entries(2), Some(&user), json!({})).await;
    joined_from_reply("realtime:c", String::new(), &reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_during_a_database_outage_gets_a_clean_text_and_subscribes_once_it_is_back() {
    let cluster = common::pg::dedicated_cluster().await;
    let mut config = common::hub::test_config();
    let db = cluster.create_db().await;
    config.database_url = Some(db.clone());
    let hub = common::hub::TestHub::start(config).await;
    let url = hub.ws_url(Some("2.0.0"), Some(&hub.anon()));
    let mut c = common::hub::WsClient::connect(&url).await;
    tokio::task::block_in_place(|| cluster.stop());
    let entry = json!([{"event": "*", "schema": "public", "table": "orders"}]);
    let (join_ref, reply) = join_changes(&mut c, "realtime:room", entry, None, json!({})).await;
    joined_from_reply("realtime:room", join_ref, &reply);
    let sys = next_system(&mut c).await;
    assert_eq!(
        sys["message"],
        "Unable to subscribe to changes with given parameters: Realtime was unable to connect to \
         the project database",
        "{sys}"
    );
    tokio::task::block_in_place(|| cluster.start());
    // Back: the hub tries the entry again (every 5 to 10 s, as Supabase does), with no new
    // join, and it receives from then on.
    let sql = common::pg::connect(&db).await;
    sql.batch_execute(
        "create table public.orders (id bigint primary key);
         grant select on public.orders to anon;
         select realtime.enable('public.orders');",
    )
    .await
    .expect("setup after the outage");
    let sys = c.recv_within(std::time::Duration::from_secs(15)).await;
    assert!(sys.is_event("system"), "{sys:?}");
    assert_eq!(
        (&sys.payload()["status"], &sys.payload()["message"]),
        (&json!("ok"), &json!("Subscribed to PostgreSQL")),
        "{sys:?}"
    );
    sql.batch_execute("insert into public.orders values (7)")
        .await
        .unwrap();
    expect_row(&mut c, "INSERT", "orders", 7).await;
}
