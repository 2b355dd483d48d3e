//! The hub as a non-superuser (issue 15, item 8): the README's SQL makes a login role the
//! hub runs as; a token naming a role that role is not a member of is refused at connect
//! and at join, and Postgres refuses it too; migrations need the admin URL only when some
//! are pending. (The row-scope, capture, private-channel and resume files run as such a
//! role too: `tests/*_as_authenticator.rs`.)

mod common;

use common::e2e::*;
use common::hub::{Vsn, WsClient};
use common::pg::{ensure_hub_role, test_db, HUB_ROLE};
use serde_json::{json, Value};

const SETUP: &str = r#"
do $$ begin create role staff nologin;
exception when duplicate_object or unique_violation then null; end $$;
create table public.secrets (id bigserial primary key, owner uuid not null, body text);
alter table public.secrets enable row level security;
create policy own on public.secrets for select to authenticated using (owner = auth.uid());
grant select on public.secrets to authenticated, service_role, staff;
select realtime.enable('public.secrets');
create table public.notes (id bigserial primary key, body text);
grant select on public.notes to authenticated, service_role;
select realtime.enable('public.notes');
"#;

const A: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
const B: &str = "bbbbbbbb-0000-4000-8000-00000000000b";

/// The fenced block of `lang` that follows `heading` in the README.
fn readme_block(heading: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = &readme[readme.find(heading).expect("README section")..];
    let fence = format!("```{lang}\n");
    let start = section.find(&fence).expect("fenced block") + fence.len();
    section[start..][..section[start..].find("```").expect("closed block")].to_owned()
}

async fn insert_secret(pg: &PgHub, owner: &str) -> i64 {
    pg.id(
        "insert into public.secrets (owner, body) values ($1::text::uuid, 'x') returning id",
        &[&owner],
    )
    .await
}

#[tokio::test]
async fn the_readme_sql_makes_a_login_role_that_runs_the_hub_with_row_scope_intact() {
    let db = test_db().await;
    let admin = db.client().await;
    switchboard::db::migrate(&admin).await.expect("migrate");
    admin.batch_execute(SETUP).await.expect("setup");
    // Roles are cluster-wide: the README's SQL under a name of this run's own.
    let role = format!("sb_readme_{}", std::process::id());
    let sql = readme_block("## Running as a non-superuser", "sql").replace("authenticator", &role);
    assert!(sql.contains("noinherit"), "{sql}");
    admin.batch_execute(&sql).await.expect("the README's SQL");
    let hub_url = common::pg::with_user(&db.url, &role, "change-me");
    switchboard::db::migrate_for_hub(&db.url, &hub_url)
        .await
        .expect("migrate as admin, grant to the hub's user");

    let attrs = admin
        .query_one(
            "select rolsuper, rolinherit, rolbypassrls, rolcreaterole, \
                    array(select b.rolname::text from pg_auth_members m \
                          join pg_roles b on b.oid = m.roleid \
                          where m.member = r.oid order by 1) \
             from pg_roles r where rolname = $1",
            &[&role],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            attrs.get::<_, bool>(0),
            attrs.get::<_, bool>(1),
            attrs.get::<_, bool>(2),
            attrs.get::<_, bool>(3),
            attrs.get::<_, Vec<String>>(4)
        ),
        (
            false,
            false,
            false,
            false,
            vec!["anon".into(), "authenticated".into(), "service_role".into()]
        )
    );

    let mut config = common::hub::test_config();
    config.database_url = Some(hub_url);
    config.capture_poll = CAPTURE_POLL;
    let hub = common::hub::TestHub::start(config).await;
    let status = loop {
        let (code, body) = hub.get_admin("/api/status").await;
        assert_eq!(code, 200, "{body}");
        let s: Value = serde_json::from_str(&body).unwrap();
        if s["capture"]["connected"] == true {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(status["capture"]["last_error"], Value::Null, "{status}");

    let token = hub.token("authenticated", A, 3600);
    let mut c = WsClient::connect(&hub.ws_url(Some("2.0.0"), Some(&hub.anon()))).await;
    let entries = json!([{"event": "INSERT", "schema": "public", "table": "secrets"}]);
    subscribe(&mut c, "realtime:mine", entries, Some(&token)).await;
    let other = admin
        .query_one(
            "insert into public.secrets (owner, body) values ($1::text::uuid, 'b') returning id",
            &[&B],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    let own = admin
        .query_one(
            "insert into public.secrets (owner, body) values ($1::text::uuid, 'a') returning id",
            &[&A],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert!(other < own);
    expect_row(&mut c, "INSERT", "secrets", own).await;
    c.assert_quiet().await;
}

#[tokio::test]
async fn tokens_naming_roles_the_hub_user_is_not_a_member_of_are_refused_at_connect_and_join() {
    let pg = PgHub::start_as(true, SETUP, |c| {
        c.allowed_roles = ["anon", "authenticated", "service_role", "staff", "postgres"]
            .map(String::from)
            .to_vec();
    })
    .await;
    for role in ["staff", "postgres"] {
        let token = pg.token(role, "attacker");
        let refused = WsClient::try_connect(&pg.hub.ws_url(Some("2.0.0"), Some(&token)))
            .await
            .err()
            .unwrap_or_else(|| panic!("a {role} apikey was accepted"));
        assert_eq!(refused.status, 401);
        let text = format!(
            "Token role \"{role}\" is not available: the hub's database user is not a member of it (checked at start: restart the hub after granting it)"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&refused.body).unwrap(),
            json!({ "error": text })
        );
        let mut c = pg.connect(Vsn::V2).await;
        let entries = json!([{"event": "*", "schema": "public", "table": "secrets"}]);
        let (_, reply) = join_changes(&mut c, "realtime:x", entries, Some(&token), json!({})).await;
        assert_eq!(
            reply.payload()["response"]["reason"],
            format!("InvalidJWTToken: {text}")
        );
    }
    // The roles it is a member of still work.
    let mut c = pg.connect(Vsn::V2).await;
    let entries = json!([{"event": "INSERT", "schema": "public", "table": "secrets"}]);
    subscribe(&mut c, "realtime:a", entries, Some(&pg.user(A))).await;
    insert_secret(&pg, B).await;
    let own = insert_secret(&pg, A).await;
    expect_row(&mut c, "INSERT", "secrets", own).await;
}

#[tokio::test]
async fn postgres_refuses_the_hub_user_every_role_it_is_not_a_member_of() {
    let db = test_db().await;
    let admin = db.client().await;
    switchboard::db::migrate(&admin).await.unwrap();
    admin.batch_execute(SETUP).await.unwrap();
    admin
        .batch_execute("insert into public.secrets (owner, body) values (gen_random_uuid(), 'x')")
        .await
        .unwrap();
    ensure_hub_role(&admin).await;
    let hub = db.hub_client_as_authenticator().await;
    let e = hub
        .batch_execute("select count(*) from public.secrets")
        .await
        .unwrap_err();
    assert_eq!(pg_err(&e), "permission denied for table secrets");
    for role in ["postgres", "pg_read_all_data", "staff"] {
        let e = hub
            .batch_execute(&format!("set role {role}"))
            .await
            .unwrap_err();
        assert_eq!(
            pg_err(&e),
            format!("permission denied to set role \"{role}\"")
        );
    }
    // Row scope decided without a query (a superuser or BYPASSRLS role sees everything,
    // a table without RLS shows every row) answers "nothing" for those roles too.
    let rules = hub
        .query(
            "select r.role_name, (realtime.visibility_rule(t.oid, r.role_name)).mode \
             from unnest(array['postgres', 'pg_read_all_data', 'staff', 'service_role', 'authenticated']) \
                  as r(role_name), \
                  (select 'public.notes'::regclass::oid as oid) t",
            &[],
        )
        .await
        .unwrap();
    let modes: Vec<(String, String)> = rules.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        modes,
        [
            ("postgres", "deny"),
            ("pg_read_all_data", "deny"),
            ("staff", "deny"),
            ("service_role", "all"),
            ("authenticated", "all")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let seen: i64 = hub
        .query_one(
            "select count(*) from realtime.visible_to(array['public.secrets'::regclass::oid], \
               array[jsonb_build_object('id', 1, 'owner', gen_random_uuid(), 'body', 'x')], \
               array[null::jsonb], array[1, 1], array['postgres', 'service_role'], array['{}', '{}']) \
             where visible",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 1, "only service_role sees the row");
}

#[tokio::test]
async fn pending_migrations_as_a_non_superuser_say_to_use_the_admin_url() {
    // The role needs the token roles, which a migrated database has created.
    let migrated = test_db().await;
    let admin = migrated.client().await;
    switchboard::db::migrate(&admin).await.unwrap();
    ensure_hub_role(&admin).await;
    let fresh = test_db().await;
    let (hub, conn) = switchboard::db::connect(&fresh.authenticator_url())
        .await
        .unwrap();
    let err = switchboard::db::migrate(&hub)
        .await
        .unwrap_err()
        .to_string();
    conn.abort();
    assert!(
        err.starts_with(&format!(
            "migrations are pending and database user \"{HUB_ROLE}\" may not apply them (permission denied"
        )) && err.contains("SWITCHBOARD_MIGRATE_DATABASE_URL"),
        "{err}"
    );
    // With the admin URL it migrates, grants, and the hub's own migrate is then a no-op.
    let applied = switchboard::db::migrate_for_hub(&fresh.url, &fresh.authenticator_url())
        .await
        .unwrap();
    assert!(!applied.is_empty());
    let (hub, conn) = switchboard::db::connect(&fresh.authenticator_url())
        .await
        .unwrap();
    assert_eq!(
        switchboard::db::migrate(&hub).await.unwrap(),
        Vec::<i32>::new()
    );
    conn.abort();
}

#[tokio::test]
async fn granting_twice_changes_nothing_and_a_missing_role_is_named() {
    let db = test_db().await;
    let admin = db.client().await;
    switchboard::db::migrate(&admin).await.unwrap();
    ensure_hub_role(&admin).await;
    switchboard::db::grant_hub(&admin, HUB_ROLE).await.unwrap();
    switchboard::db::grant_hub(&admin, HUB_ROLE).await.unwrap();
    let err = switchboard::db::grant_hub(&admin, "no_such_role")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "granting the hub's rights to \"no_such_role\" failed: role \"no_such_role\" does not exist"
    );
}
