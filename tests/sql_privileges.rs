//! The hub's SQL runs inside other roles' sessions: its event triggers on anyone's DDL,
//! its capture triggers on anyone's writes, both with the rights of the role that ran
//! the migrations (a superuser). Nothing a role sets up in its own session (a search path,
//! temporary types, operators in a schema of its own) may run with those rights, and a
//! role without rights in schema `realtime` still runs its DDL.

mod common;

use common::pg::{connect, test_db, with_user, TestDb};
use tokio_postgres::Client;

/// A migrated database and a new login role of its own with `grants` (`{role}` stands
/// for its name); returns the admin connection, one as the role, and the role's name.
async fn as_new_role(grants: &str) -> (TestDb, Client, Client, String) {
    let db = test_db().await;
    let admin = db.client().await;
    switchboard::db::migrate(&admin).await.expect("migrate");
    // Roles are cluster-wide: a name of this database's own.
    let role = format!("{}_intruder", db.name);
    admin
        .batch_execute(&format!(
            "create role {role} login password 'x' nosuperuser; {}",
            grants.replace("{role}", &role)
        ))
        .await
        .expect("the role");
    let own = connect(&with_user(&db.url, &role, "x")).await;
    (db, admin, own, role)
}

async fn is_superuser(admin: &Client, role: &str) -> bool {
    admin
        .query_one("select rolsuper from pg_roles where rolname = $1", &[&role])
        .await
        .unwrap()
        .get(0)
}

/// Makes the session's role a superuser when it runs with other rights than its own.
const ESCALATE: &str = "if current_user <> session_user then \
     execute pg_catalog.format('alter role %I superuser', session_user); end if;";

/// A temporary type named like one the event trigger's functions declare (`oid`), whose
/// check runs whatever the session defined: creating a temporary table fires the event
/// triggers, which must neither run it with their rights nor fail the DDL.
#[tokio::test]
async fn temporary_types_never_run_with_the_event_triggers_rights() {
    let (db, admin, own, role) = as_new_role("").await;
    own.batch_execute(&format!(
        "create function pg_temp.pwn(x pg_catalog.oid) returns boolean language plpgsql as $$ \
             begin {ESCALATE} return true; end $$; \
         create domain pg_temp.oid as pg_catalog.oid check (pg_temp.pwn(value)); \
         create domain pg_temp.text as pg_catalog.text check (pg_temp.pwn(0)); \
         create domain pg_temp.int8 as pg_catalog.int8 check (pg_temp.pwn(0)); \
         create temp table t (a int);"
    ))
    .await
    .expect("a temporary table, with the event triggers firing");
    assert!(
        !is_superuser(&admin, &role).await,
        "{role} became superuser"
    );
    drop(db);
}

/// Operators in a schema of the writer's own, first on its search path: writing to a
/// captured table runs the capture trigger, which must use the catalog's operators.
#[tokio::test]
async fn a_writers_operators_never_run_with_the_capture_triggers_rights() {
    let (db, admin, own, role) = as_new_role(
        "create table public.jobs (id bigserial primary key, title text); \
         select realtime.enable('public.jobs'); \
         grant insert, update, delete, select on public.jobs to {role}; \
         grant usage on sequence public.jobs_id_seq to {role}; \
         create schema evil authorization {role};",
    )
    .await;
    let mut ops = String::new();
    for (op, left, right) in [
        (">=", "bigint", "integer"),
        ("<=", "bigint", "integer"),
        ("-", "bigint", "integer"),
        (">", "bigint", "bigint"),
        ("<>", "text", "text"),
        ("=", "text", "text"),
    ] {
        let f = format!("f{}", ops.len());
        ops.push_str(&format!(
            "create function evil.{f}(a {left}, b {right}) returns boolean language plpgsql \
                 as $$ begin {ESCALATE} return true; end $$; \
             create operator evil.{op} (leftarg = {left}, rightarg = {right}, function = evil.{f}); "
        ));
    }
    own.batch_execute(&ops)
        .await
        .expect("the writer's operators");
    own.batch_execute(
        "set search_path = evil, pg_catalog, public; \
         insert into public.jobs (title) values ('a'); \
         insert into public.jobs (title) select 'b' from generate_series(1, 150); \
         update public.jobs set title = 'c' where id = 1; \
         delete from public.jobs where id = 2;",
    )
    .await
    .expect("the writes");
    assert!(
        !is_superuser(&admin, &role).await,
        "{role} became superuser"
    );
    let logged: i64 = admin
        .query_one(
            "select coalesce(sum(json_array_length(coalesce(rows, old_rows))), 0)::int8 \
             from realtime.changes where table_name = 'jobs'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 1 + 150 + 1 + 1, "every row written is logged");
    drop(db);
}

/// Every function of the hub's that runs with its owner's rights, and every one with a
/// search path of its own, searches the catalog first and temporary objects last (an
/// empty search path still searches temporary types and tables first).
#[tokio::test]
async fn the_hubs_functions_search_the_catalog_first_and_temporary_objects_last() {
    let db = test_db().await;
    let admin = db.client().await;
    switchboard::db::migrate(&admin).await.expect("migrate");
    let wrong: Vec<String> = admin
        .query(
            "select p.oid::regprocedure::text from pg_proc p \
             where p.pronamespace = 'realtime'::regnamespace \
               and (p.prosecdef or exists (select 1 from unnest(p.proconfig) c \
                                           where c like 'search\\_path=%')) \
               and not coalesce(p.proconfig @> array['search_path=pg_catalog, pg_temp'], false) \
             order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// DDL by a role without rights in schema `realtime` works and moves the rules version
/// (the hub's cached rules are dropped), except DDL on the session's temporary objects.
#[tokio::test]
async fn any_roles_ddl_moves_the_rules_version_but_temporary_objects_do_not() {
    let (db, admin, own, _role) = as_new_role("grant create on schema public to {role};").await;
    let version = || async {
        admin
            .query_one("select realtime.rules_version()", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let v0 = version().await;
    own.batch_execute("create temp table t (a int); create index on t (a);")
        .await
        .expect("temporary DDL");
    assert_eq!(version().await, v0, "temporary objects are no rule's");
    own.batch_execute("create table public.mine (a int); grant select on public.mine to public;")
        .await
        .expect("the role's DDL");
    assert!(
        version().await > v0,
        "the role's DDL moved the rules version"
    );
    drop(db);
}

/// A cast to json of a type the writer owns would run inside the capture triggers, with
/// their rights: a role that is not a superuser may not create one; a superuser may.
#[tokio::test]
async fn only_a_superuser_may_create_a_cast_to_json() {
    let (db, admin, own, role) = as_new_role(
        "create schema app authorization {role}; \
         alter publication supabase_realtime owner to {role};",
    )
    .await;
    let cast = |schema: &str| {
        format!(
            "create type {schema}.mood as enum ('ok', 'meh'); \
             create function {schema}.mood_json(m {schema}.mood) returns json language plpgsql \
                 as $$ begin {ESCALATE} return pg_catalog.to_json(m::text); end $$; \
             create cast ({schema}.mood as json) with function {schema}.mood_json({schema}.mood);"
        )
    };
    let err = own
        .batch_execute(&cast("app"))
        .await
        .expect_err("a cast to json by a plain role");
    assert_eq!(
        common::e2e::pg_err(&err),
        "switchboard: only a superuser may create a cast to json or jsonb, not cast \
         (app.mood AS pg_catalog.json): captured rows are turned into JSON with the rights \
         of the role that ran the migrations"
    );
    // Without it, the role's captured rows of its own type run nothing of its own.
    own.batch_execute(
        "create type app.mood as enum ('ok', 'meh'); \
         create table app.notes (id bigserial primary key, m app.mood); \
         alter publication supabase_realtime add table app.notes; \
         insert into app.notes (m) values ('meh');",
    )
    .await
    .expect("the role's own table, published and written");
    assert!(
        !is_superuser(&admin, &role).await,
        "{role} became superuser"
    );
    admin
        .batch_execute(&cast("public"))
        .await
        .expect("a superuser's cast");
    drop(db);
}

/// The wake-up channel's name is the secret that keeps forged wake-ups out: a role with
/// usage on schema `realtime` and a captured table of its own (whose writes the capture
/// functions turn into wake-ups) still cannot read it.
#[tokio::test]
async fn no_other_role_can_read_the_wake_up_channels_name() {
    let (db, _admin, own, _role) = as_new_role(
        "grant usage on schema realtime to {role}; create schema app authorization {role}; \
         alter publication supabase_realtime owner to {role};",
    )
    .await;
    own.batch_execute(
        "create table app.jobs (id bigserial primary key); \
         alter publication supabase_realtime add table app.jobs; \
         insert into app.jobs default values;",
    )
    .await
    .expect("the role's own table, published and written");
    let err = own
        .query("select name from realtime.wake_channel", &[])
        .await
        .expect_err("the channel's name, read by a plain role");
    assert_eq!(
        common::e2e::pg_err(&err),
        "permission denied for table wake_channel"
    );
    drop(db);
}

/// A wake-up anyone sends on the channel the capture triggers once used, carrying a
/// made-up change (and naming a transaction still to come, whose real changes the hub
/// would then skip as already read), is never delivered: the hub listens on a channel
/// whose name only the triggers and the hub can read, and the real changes arrive.
#[tokio::test]
async fn a_forged_wake_up_is_never_delivered_and_hides_no_real_change() {
    use common::e2e::*;
    use common::hub::Vsn;
    use serde_json::json;
    let pg = PgHub::start(
        "create table public.jobs (id bigserial primary key, title text); \
         grant select on public.jobs to authenticated; select realtime.enable('public.jobs');",
    )
    .await;
    let user = "6a3c0e8e-51c4-4b59-9a43-0c2f3c4a9d10";
    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!({"event": "*", "schema": "public", "table": "jobs"});
    subscribe(
        &mut c,
        "realtime:jobs",
        json!([entry]),
        Some(&pg.user(user)),
    )
    .await;
    let forged = "select pg_notify(channel, json_build_object( \
            'id', 1, 'xid', (pg_current_xact_id()::text::int8 + n)::text, \
            'at', (extract(epoch from now()) * 1000000)::int8, 'rv', null, \
            's', 'public', 't', 'jobs', 'op', 'INSERT', \
            'rows', json_build_array(json_build_object('id', 424242, 'title', 'forged')), \
            'old_rows', null)::text) \
        from (values ('switchboard_changes')) c (channel), generate_series(1, 3) n";
    pg.exec(forged).await;
    let id = pg
        .id(
            "insert into public.jobs (title) values ('real') returning id",
            &[],
        )
        .await;
    expect_row(&mut c, "INSERT", "jobs", id).await;
    for _ in 0..3 {
        let id = pg
            .id(
                "insert into public.jobs (title) values ('next') returning id",
                &[],
            )
            .await;
        expect_row(&mut c, "INSERT", "jobs", id).await;
    }
}
