//! Claim-keyed row scope against real Postgres: which policies `realtime.row_keys`
//! recognises as `<column> = <claim>` (and which it leaves to Postgres), and that
//! `RlsChecker`'s in-process decision for them equals what `SELECT` as the same role and
//! claims shows, odd claims included.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use switchboard::changes::{Catalog, Change, Op, RlsChecker, Viewer};
use tokio_postgres::Client;

const TABLES: &str = r#"
grant usage on schema public to authenticated;
create table public.by_uid (id bigint primary key, owner uuid);
create policy p on public.by_uid for select to authenticated using (owner = auth.uid());
create table public.by_uid_rev (id bigint primary key, owner uuid);
create policy p on public.by_uid_rev for select using (auth.uid() = owner);
create table public.by_uid_select (id bigint primary key, owner uuid);
create policy p on public.by_uid_select for select to authenticated
    using (owner = (select auth.uid()));
create table public.by_org (id bigint primary key, org int4);
create policy p on public.by_org for select to authenticated
    using (org = (auth.jwt() ->> 'org_id')::bigint);
create table public.by_tenant (id bigint primary key, tenant uuid);
create policy p on public.by_tenant for all to authenticated
    using (tenant = (auth.jwt() ->> 'tenant')::uuid);
create table public.by_team (id bigint primary key, team text);
create policy p on public.by_team for select to authenticated
    using (team = (auth.jwt() ->> 'team'));
create table public.two (id bigint primary key, owner uuid, team text);
create policy mine on public.two for select to authenticated using (owner = auth.uid());
create policy team on public.two for select to authenticated
    using (team = (auth.jwt() ->> 'team'));
create table public.restricted (id bigint primary key, owner uuid, hidden boolean);
create policy mine on public.restricted for select to authenticated using (owner = auth.uid());
create policy r on public.restricted as restrictive for select to authenticated
    using (not hidden);
create table public.extra (id bigint primary key, owner uuid, hidden boolean);
create policy p on public.extra for select to authenticated
    using (owner = auth.uid() and not hidden);
create table public.mixed (id bigint primary key, owner uuid, open boolean);
create policy mine on public.mixed for select to authenticated using (owner = auth.uid());
create policy open on public.mixed for select to authenticated using (open);
create table public.text_as_uuid (id bigint primary key, owner text);
create policy p on public.text_as_uuid for select to authenticated
    using (owner = (auth.jwt() ->> 'sub'));
create table public.num (id bigint primary key, org numeric);
create policy p on public.num for select to authenticated
    using (org = (auth.jwt() ->> 'org_id')::bigint);
create table public.other_role (id bigint primary key, owner uuid);
create policy p on public.other_role for select to anon using (owner = auth.uid());
"#;

async fn row_keys(client: &Client, table: &str) -> Option<Value> {
    client
        .query_one(
            "select realtime.row_keys(to_regclass($1)::oid, 'authenticated')",
            &[&format!("public.{table}")],
        )
        .await
        .unwrap_or_else(|e| panic!("row_keys({table}): {e}"))
        .get::<_, Option<tokio_postgres::types::Json<Value>>>(0)
        .map(|j| j.0)
}

fn key(column: &str, claim: Option<&str>, ty: &str) -> Value {
    json!({"column": column, "claim": claim, "type": ty})
}

#[tokio::test]
async fn row_keys_recognises_column_equals_claim_policies_and_nothing_else() {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    switchboard::db::migrate(&client).await.expect("migrate");
    client.batch_execute(TABLES).await.expect("tables");
    let uid = json!([key("owner", None, "uuid")]);
    for table in ["by_uid", "by_uid_rev", "by_uid_select"] {
        assert_eq!(row_keys(&client, table).await, Some(uid.clone()), "{table}");
    }
    assert_eq!(
        row_keys(&client, "by_org").await,
        Some(json!([key("org", Some("org_id"), "int8")]))
    );
    assert_eq!(
        row_keys(&client, "by_tenant").await,
        Some(json!([key("tenant", Some("tenant"), "uuid")]))
    );
    assert_eq!(
        row_keys(&client, "by_team").await,
        Some(json!([key("team", Some("team"), "text")]))
    );
    let two = row_keys(&client, "two").await.expect("two keyed policies");
    let mut two: Vec<Value> = two.as_array().expect("array").clone();
    two.sort_by_key(|k| k["column"].to_string());
    assert_eq!(
        two,
        vec![
            key("owner", None, "uuid"),
            key("team", Some("team"), "text")
        ]
    );
    // A restrictive policy, an extra condition, another permissive policy of another
    // shape, a column type compared differently, or no applicable policy: Postgres judges.
    for table in ["restricted", "extra", "mixed", "num", "other_role"] {
        assert_eq!(row_keys(&client, table).await, None, "{table}");
    }
    // text = text compares byte for byte: keyed (the claim is the `sub` string).
    assert_eq!(
        row_keys(&client, "text_as_uuid").await,
        Some(json!([key("owner", Some("sub"), "text")]))
    );
}

async fn selectable_ids(client: &mut Client, table: &str, viewer: &Viewer) -> BTreeSet<i64> {
    let tx = client.transaction().await.unwrap();
    let set = tx
        .query(
            "select set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
            &[&&*viewer.role, &&*viewer.claims],
        )
        .await;
    let rows = match set {
        Ok(_) => tx
            .query(&format!("select id from public.{table}"), &[])
            .await
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    tx.rollback().await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

fn object(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("object")
}

/// Every viewer against every row of `table`, as INSERT, DELETE and UPDATE (from each
/// other row), compared with SELECT.
async fn agrees_with_select(
    client: &mut Client,
    checker: &RlsChecker,
    catalog: &Catalog,
    table: &str,
    viewers: &[Arc<Viewer>],
) {
    let info = catalog
        .table("public", table)
        .await
        .expect("catalog")
        .expect("table");
    let rows: Vec<Value> = client
        .query(
            &format!("select to_jsonb(t) from public.{table} t order by id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, tokio_postgres::types::Json<Value>>(0).0)
        .collect();
    let change = |op: Op, record: Option<&Value>, old: Option<&Value>| Change {
        id: 1,
        seq: 0,
        xid: 1,
        schema: "public".into(),
        table: table.into(),
        op,
        record: record.cloned().map(object),
        old_record: old.cloned().map(object),
        commit_time: "2026-01-01T00:00:00Z".parse().unwrap(),
    };
    let mut changes = Vec::new();
    for r in &rows {
        changes.push(change(Op::Insert, Some(r), None));
        changes.push(change(Op::Delete, None, Some(r)));
        for old in &rows {
            changes.push(change(Op::Update, Some(r), Some(old)));
        }
    }
    let items: Vec<_> = changes.iter().map(|c| (c, &*info, viewers)).collect();
    // Twice: the first learns the rules, the second decides from the cache.
    for round in 0..2 {
        let got = checker.check(&items).await.expect("check");
        for (v, viewer) in viewers.iter().enumerate() {
            let seen = selectable_ids(client, table, viewer).await;
            for (c, vis) in changes.iter().zip(&got) {
                let id =
                    |r: &Option<Map<String, Value>>| r.as_ref().map(|r| r["id"].as_i64().unwrap());
                let judged = match c.op {
                    Op::Delete => id(&c.old_record),
                    _ => id(&c.record),
                };
                let expected = judged.is_some_and(|i| seen.contains(&i));
                assert_eq!(
                    vis[v].visible, expected,
                    "round {round}, {table}, viewer {}, {:?} of {:?} (old {:?})",
                    viewer.claims, c.op, c.record, c.old_record
                );
                if c.op == Op::Update && expected {
                    let old_seen = id(&c.old_record).is_some_and(|i| seen.contains(&i));
                    assert_eq!(
                        vis[v].old_visible, old_seen,
                        "old row, viewer {}",
                        viewer.claims
                    );
                }
            }
        }
    }
}

fn viewer(claims: Value) -> Arc<Viewer> {
    let sub = claims["sub"].as_str().map(str::to_owned);
    Arc::new(Viewer::new(
        "authenticated",
        &claims.to_string(),
        sub.as_deref(),
    ))
}

const A: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
const B: &str = "bbbbbbbb-0000-4000-8000-00000000000b";

#[tokio::test]
async fn keyed_policies_decided_in_process_agree_with_select_for_odd_claims_too() {
    let db = common::pg::test_db().await;
    let mut client = db.client().await;
    switchboard::db::migrate(&client).await.expect("migrate");
    client.batch_execute(TABLES).await.expect("tables");
    client
        .batch_execute(&format!(
            "alter table public.by_org enable row level security;
             alter table public.by_tenant enable row level security;
             alter table public.two enable row level security;
             grant select on public.by_org, public.by_tenant, public.two to authenticated;
             insert into public.by_org values (1, 7), (2, 8), (3, null), (4, -2147483648);
             insert into public.by_tenant values (1, '{A}'), (2, '{B}'), (3, null);
             insert into public.two values (1, '{A}', 'red'), (2, '{B}', 'Red'),
                                          (3, null, 'red '), (4, '{B}', null);"
        ))
        .await
        .expect("rows");
    let pool = switchboard::db::pool(&db.url, 2).expect("pool");
    let checker = RlsChecker::new(pool.clone());
    let catalog = Catalog::new(pool);
    let org = |v: Value| viewer(json!({"role": "authenticated", "org_id": v}));
    let by_org = [
        org(json!("7")),
        org(json!(8)),
        org(json!("-2147483648")),
        org(json!(" 7")),
        org(json!("07")),
        org(json!("+8")),
        org(json!(7.0)),
        org(json!(Value::Null)),
        viewer(json!({"role": "authenticated"})),
    ];
    agrees_with_select(&mut client, &checker, &catalog, "by_org", &by_org).await;
    let tenant = |v: Value| viewer(json!({"role": "authenticated", "tenant": v}));
    let by_tenant = [
        tenant(json!(A)),
        tenant(json!(B.to_uppercase())),
        tenant(json!(A.replace('-', ""))),
        tenant(json!("{aaaaaaaa-0000-4000-8000-00000000000a}")),
        viewer(json!({"role": "authenticated"})),
    ];
    agrees_with_select(&mut client, &checker, &catalog, "by_tenant", &by_tenant).await;
    let two = [
        viewer(json!({"role": "authenticated", "sub": A, "team": "red"})),
        viewer(json!({"role": "authenticated", "sub": B})),
        viewer(json!({"role": "authenticated", "team": "red "})),
        viewer(json!({"role": "authenticated", "team": "Red"})),
    ];
    agrees_with_select(&mut client, &checker, &catalog, "two", &two).await;
}

/// Keys are read from the token only under the standard auth helpers: a project's own
/// `auth.uid()` / `auth.jwt()` that reads the claims and then changes the answer (here a
/// ban list, a membership lookup) leaves its tables' policies to Postgres. The standard
/// texts are recognised however they are cased and spaced.
#[tokio::test]
async fn row_keys_are_used_only_under_the_standard_auth_helpers() {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    switchboard::db::migrate(&client).await.expect("migrate");
    client.batch_execute(TABLES).await.expect("tables");
    let uid = Some(json!([key("owner", None, "uuid")]));
    let org = Some(json!([key("org", Some("org_id"), "int8")]));
    let set_uid = |body: &str| {
        format!("create or replace function auth.uid() returns uuid language sql stable as $f${body}$f$")
    };
    let set_jwt = |body: &str| {
        format!("create or replace function auth.jwt() returns jsonb language sql stable as $f${body}$f$")
    };
    let cases = [
        // Supabase's older helper, upper case and spread over lines.
        (
            set_uid("\n  SELECT NULLIF(current_setting('request.jwt.claim.sub', true), '')::UUID;\n"),
            "by_uid",
            uid.clone(),
        ),
        // The current one, with a ban list.
        (
            set_uid(
                "select s.id from (select coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''), \
                 (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid as id) s \
                 where s.id <> 'aaaaaaaa-0000-4000-8000-000000000001'",
            ),
            "by_uid",
            None,
        ),
        // A space inside a literal changes the setting read: not the standard text.
        (
            set_uid("select nullif(current_setting('request.jwt.claim. sub', true), '')::uuid"),
            "by_uid",
            None,
        ),
        (
            set_uid("select nullif(current_setting('request.jwt.claim.sub', true), '')::uuid"),
            "by_uid",
            uid,
        ),
        (
            set_jwt(
                "select coalesce(nullif(current_setting('request.jwt.claims', true), '')::jsonb \
                 || jsonb_build_object('org_id', 7), '{}')",
            ),
            "by_org",
            None,
        ),
        (
            set_jwt(
                "SELECT COALESCE(\n NULLIF(current_setting('request.jwt.claim', true), ''),\n \
                 NULLIF(current_setting('request.jwt.claims', true), '')\n)::JSONB",
            ),
            "by_org",
            org,
        ),
    ];
    for (sql, table, expected) in cases {
        client.batch_execute(&sql).await.expect("helper");
        assert_eq!(row_keys(&client, table).await, expected, "{sql}");
    }
}
