//! Row scope against real Postgres: a customer portal (customers, jobs, invoices) with
//! row-level security, judged by `RlsChecker` and compared with what `SELECT` as the same
//! role and claims shows.

mod common;

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use switchboard::changes::{Catalog, Change, Op, RlsChecker, TableInfo, Viewer, Visibility};
use tokio_postgres::Client;

const ALICE: &str = "aaaaaaaa-0000-0000-0000-000000000001";
const BOB: &str = "bbbbbbbb-0000-0000-0000-000000000002";

const PORTAL: &str = r#"
create table public.customers (id uuid primary key, name text not null);
create table public.jobs (
    id bigint primary key,
    customer_id uuid not null references public.customers,
    title text not null,
    status text not null default 'open',
    secret_note text
);
create table public.invoices (
    id bigint primary key,
    job_id bigint not null references public.jobs,
    amount numeric not null,
    paid boolean not null default false
);
create table public.notices (id bigint primary key, body text not null);

alter table public.customers enable row level security;
alter table public.jobs enable row level security;
alter table public.invoices enable row level security;

grant usage on schema public to anon, authenticated, service_role;
grant select on public.customers, public.jobs, public.invoices, public.notices
    to authenticated, service_role;
grant select (id, title, status) on public.jobs to anon;
grant select (amount) on public.invoices to anon;

create policy own_customer on public.customers for select to authenticated
    using (id = auth.uid() or (auth.jwt() ->> 'app_role') = 'staff');
create policy own_jobs on public.jobs for select to authenticated
    using (customer_id = auth.uid());
create policy staff_jobs on public.jobs for all to authenticated
    using ((auth.jwt() ->> 'app_role') = 'staff');
create policy hide_archived on public.jobs as restrictive for select to authenticated
    using (status <> 'archived' or (auth.jwt() ->> 'app_role') = 'staff');
create policy open_jobs_public on public.jobs for select to anon
    using (status = 'open');
create policy invoices_of_visible_jobs on public.invoices for select to authenticated
    using (exists (select 1 from public.jobs j where j.id = invoices.job_id));
create policy invoices_public on public.invoices for select to anon using (true);
"#;

struct Portal {
    client: Client,
    catalog: Catalog,
    rls: RlsChecker,
}

async fn portal() -> Portal {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    switchboard::db::migrate(&client).await.expect("migrate");
    client.batch_execute(PORTAL).await.expect("portal schema");
    client
        .execute(
            "insert into public.customers values ($1::text::uuid, 'Alice'), ($2::text::uuid, 'Bob')",
            &[&ALICE, &BOB],
        )
        .await
        .expect("customers");
    let pool = switchboard::db::pool(&db.url, 2).expect("pool");
    Portal {
        client,
        catalog: Catalog::new(pool.clone()),
        rls: RlsChecker::new(pool),
    }
}

impl Portal {
    async fn table(&self, name: &str) -> Arc<TableInfo> {
        self.catalog
            .table("public", name)
            .await
            .expect("catalog")
            .expect("table exists")
    }

    /// Visibility of one change for each viewer.
    async fn check(&self, change: impl Borrow<Change>, viewers: &[Arc<Viewer>]) -> Vec<Visibility> {
        let change = change.borrow();
        let table = self.table(&change.table).await;
        let mut out = self
            .rls
            .check(&[(change, &table, viewers)])
            .await
            .expect("check");
        out.pop().expect("one item")
    }
}

fn viewer(role: &str, claims: Value) -> Arc<Viewer> {
    raw_viewer(role, &claims.to_string())
}

/// A viewer with claims text as given (`sub` read from it when it is JSON).
fn raw_viewer(role: &str, claims: &str) -> Arc<Viewer> {
    let parsed: Option<Value> = serde_json::from_str(claims).ok();
    let sub = parsed.as_ref().and_then(|c| c["sub"].as_str());
    Arc::new(Viewer::new(role, claims, sub))
}

fn customer(sub: &str) -> Arc<Viewer> {
    viewer(
        "authenticated",
        json!({"sub": sub, "role": "authenticated"}),
    )
}

fn staff() -> Arc<Viewer> {
    viewer(
        "authenticated",
        json!({"sub": "cccccccc-0000-0000-0000-000000000003", "role": "authenticated", "app_role": "staff"}),
    )
}

fn row(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn change(table: &str, op: Op, record: Option<Value>, old_record: Option<Value>) -> Change {
    Change {
        id: 1,
        seq: 0,
        xid: 1,
        schema: "public".into(),
        table: table.into(),
        op,
        record: record.map(row),
        old_record: old_record.map(row),
        commit_time: "2026-01-01T00:00:00Z".parse().unwrap(),
    }
}

fn job(id: i64, customer: &str, status: &str) -> Value {
    json!({"id": id, "customer_id": customer, "title": format!("job {id}"), "status": status, "secret_note": "s"})
}

fn visible(v: &[Visibility]) -> Vec<bool> {
    v.iter().map(|v| v.visible).collect()
}

#[tokio::test]
async fn customer_sees_own_insert_update_delete_and_never_another_customers() {
    let p = portal().await;
    let viewers = [customer(ALICE), customer(BOB)];
    let a = job(1, ALICE, "open");
    let a2 = job(1, ALICE, "closed");

    let insert = p
        .check(change("jobs", Op::Insert, Some(a.clone()), None), &viewers)
        .await;
    assert_eq!(visible(&insert), [true, false]);
    assert!(!insert[0].old_visible);

    let update = change("jobs", Op::Update, Some(a2.clone()), Some(a.clone()));
    let update = p.check(&update, &viewers).await;
    assert_eq!(visible(&update), [true, false]);
    assert!(update[0].old_visible);

    let delete = p
        .check(change("jobs", Op::Delete, None, Some(a2)), &viewers)
        .await;
    assert_eq!(visible(&delete), [true, false]);
    assert!(delete[0].old_visible && !delete[1].old_visible);
    assert_eq!(delete[0].columns, None);
}

#[tokio::test]
async fn update_moving_a_row_between_customers_is_shown_only_to_the_new_owner_without_old_row() {
    let p = portal().await;
    let viewers = [customer(ALICE), customer(BOB)];
    let moved = change(
        "jobs",
        Op::Update,
        Some(job(7, BOB, "open")),
        Some(job(7, ALICE, "open")),
    );
    let v = p.check(&moved, &viewers).await;
    assert!(!v[0].visible, "alice no longer owns the job");
    assert!(v[1].visible, "bob owns it now");
    assert!(
        !v[1].old_visible,
        "bob may not see alice's version of the row"
    );
}

#[tokio::test]
async fn staff_claim_sees_every_job_and_restrictive_policy_hides_archived_from_customers() {
    let p = portal().await;
    let viewers = [customer(ALICE), staff(), customer(BOB)];
    let open = p.check(
        change("jobs", Op::Insert, Some(job(1, ALICE, "open")), None),
        &viewers,
    );
    assert_eq!(visible(&open.await), [true, true, false]);
    let archived = change("jobs", Op::Insert, Some(job(2, ALICE, "archived")), None);
    assert_eq!(
        visible(&p.check(&archived, &viewers).await),
        [false, true, false]
    );
}

#[tokio::test]
async fn invoice_policy_with_a_subquery_follows_the_jobs_the_viewer_can_see() {
    let p = portal().await;
    p.client
        .batch_execute(&format!(
            "insert into public.jobs values (1, '{ALICE}', 'a', 'open', null), \
                                            (2, '{BOB}', 'b', 'open', null)"
        ))
        .await
        .unwrap();
    let viewers = [customer(ALICE), customer(BOB), staff()];
    let alices = json!({"id": 10, "job_id": 1, "amount": 99.5, "paid": false});
    let bobs = json!({"id": 11, "job_id": 2, "amount": 5, "paid": true});
    let v = p.check(change("invoices", Op::Insert, Some(alices), None), &viewers);
    assert_eq!(visible(&v.await), [true, false, true]);
    let v = p.check(change("invoices", Op::Delete, None, Some(bobs)), &viewers);
    assert_eq!(visible(&v.await), [false, true, true]);
}

#[tokio::test]
async fn column_privileges_limit_the_columns_and_a_hidden_primary_key_hides_the_row() {
    let p = portal().await;
    let anon = [viewer("anon", json!({"role": "anon"}))];
    let v = p.check(
        change("jobs", Op::Insert, Some(job(3, BOB, "open")), None),
        &anon,
    );
    let v = &v.await[0];
    assert!(v.visible);
    let expected: Vec<String> = vec!["id".into(), "title".into(), "status".into()];
    assert_eq!(v.columns.as_deref(), Some(&expected[..]));

    let closed = p.check(
        change("jobs", Op::Insert, Some(job(4, BOB, "closed")), None),
        &anon,
    );
    assert!(!closed.await[0].visible, "anon policy shows open jobs only");

    let invoice = json!({"id": 1, "job_id": 3, "amount": 1, "paid": false});
    let v = p.check(change("invoices", Op::Insert, Some(invoice), None), &anon);
    assert!(!v.await[0].visible, "anon may not select the invoice id");
}

#[tokio::test]
async fn service_role_bypasses_rls_and_bad_viewers_are_hidden_without_failing_the_batch() {
    let p = portal().await;
    let viewers = [
        viewer("service_role", json!({"role": "service_role"})),
        viewer("no_such_role", json!({"sub": ALICE})),
        raw_viewer("authenticated", "{not json"),
        raw_viewer(
            "authenticated",
            &format!("{{\"sub\": \"{ALICE}\", \"bad\": \"\\u0000\"}}"),
        ),
        viewer("authenticated", json!({"sub": "not-a-uuid"})),
        customer(ALICE),
    ];
    let v = p.check(
        change("jobs", Op::Insert, Some(job(1, BOB, "archived")), None),
        &viewers,
    );
    assert_eq!(visible(&v.await), [true, false, false, false, false, false]);
    let v = p.check(
        change("jobs", Op::Insert, Some(job(1, ALICE, "open")), None),
        &viewers,
    );
    assert_eq!(visible(&v.await), [true, false, false, false, false, true]);
}

#[tokio::test]
async fn tables_without_rls_follow_the_select_privilege() {
    let p = portal().await;
    let viewers = [customer(ALICE), viewer("anon", json!({}))];
    let notice = json!({"id": 1, "body": "maintenance tonight"});
    let v = p.check(change("notices", Op::Insert, Some(notice), None), &viewers);
    assert_eq!(visible(&v.await), [true, false]);
}

#[tokio::test]
async fn table_owner_sees_every_row_unless_row_security_is_forced() {
    let p = portal().await;
    let owner = format!("sb_owner_{}", rand::random::<u32>());
    p.client
        .batch_execute(&format!(
            "create role {owner} nologin; grant usage on schema public to {owner}; \
             alter table public.jobs owner to {owner}"
        ))
        .await
        .unwrap();
    let viewers = [viewer(&owner, json!({})), customer(ALICE)];
    let bobs = change("jobs", Op::Insert, Some(job(5, BOB, "open")), None);
    assert_eq!(visible(&p.check(&bobs, &viewers).await), [true, false]);
    p.client
        .batch_execute("alter table public.jobs force row level security")
        .await
        .unwrap();
    let forced = p.check(&bobs, &viewers).await;
    p.client
        .batch_execute(&format!(
            "alter table public.jobs owner to current_user; \
             revoke usage on schema public from {owner}; drop role {owner}"
        ))
        .await
        .unwrap();
    assert_eq!(
        visible(&forced),
        [false, false],
        "no policy applies to the owner role"
    );
}

#[tokio::test]
async fn quoted_schema_and_table_names_work_in_correlated_policies() {
    let p = portal().await;
    p.client
        .batch_execute(
            r#"
            create schema "Portal Ops";
            create table "Portal Ops"."Work Orders" (id bigint primary key, "Customer" uuid not null);
            alter table "Portal Ops"."Work Orders" enable row level security;
            grant usage on schema "Portal Ops" to authenticated;
            grant select on "Portal Ops"."Work Orders" to authenticated;
            create policy "own orders" on "Portal Ops"."Work Orders" for select to authenticated
                using (exists (select 1 from public.customers c
                               where c.id = "Work Orders"."Customer" and c.id = auth.uid()));
            "#,
        )
        .await
        .unwrap();
    let table = p
        .catalog
        .table("Portal Ops", "Work Orders")
        .await
        .unwrap()
        .expect("quoted table found");
    assert_eq!(table.primary_key, ["id"]);
    let order = Change {
        schema: "Portal Ops".into(),
        table: "Work Orders".into(),
        ..change(
            "x",
            Op::Insert,
            Some(json!({"id": 1, "Customer": ALICE})),
            None,
        )
    };
    let viewers = [customer(ALICE), customer(BOB)];
    let v = p
        .rls
        .check(&[(&order, &table, &viewers[..])])
        .await
        .unwrap();
    assert_eq!(visible(&v[0]), [true, false]);
}

#[tokio::test]
async fn policy_changes_apply_to_the_next_check() {
    let p = portal().await;
    let viewers = [customer(ALICE)];
    let ins = change("jobs", Op::Insert, Some(job(1, ALICE, "open")), None);
    assert_eq!(visible(&p.check(&ins, &viewers).await), [true]);
    p.client
        .batch_execute("drop policy own_jobs on public.jobs")
        .await
        .unwrap();
    assert_eq!(visible(&p.check(&ins, &viewers).await), [false]);
    p.client
        .batch_execute(
            "create policy own_jobs on public.jobs for select to authenticated \
             using (customer_id = auth.uid())",
        )
        .await
        .unwrap();
    assert_eq!(visible(&p.check(&ins, &viewers).await), [true]);
    p.client
        .batch_execute("alter table public.jobs disable row level security")
        .await
        .unwrap();
    let bobs = change("jobs", Op::Insert, Some(job(2, BOB, "open")), None);
    assert_eq!(visible(&p.check(&bobs, &viewers).await), [true]);
}

#[tokio::test]
async fn catalog_reports_columns_key_rls_and_capture() {
    let p = portal().await;
    p.client
        .batch_execute("select realtime.enable('public.jobs')")
        .await
        .unwrap();
    let jobs = p.table("jobs").await;
    let names: Vec<&str> = jobs.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["id", "customer_id", "title", "status", "secret_note"]
    );
    assert_eq!(jobs.columns[1].type_name, "uuid");
    assert_eq!(jobs.primary_key, ["id"]);
    assert!(jobs.rls_enabled && !jobs.rls_forced && jobs.realtime_enabled);
    assert!(p.catalog.table("public", "JOBS").await.unwrap().is_none());
    let enabled: Vec<String> = p
        .client
        .query(
            "select table_name from realtime.enabled_tables where schema_name = 'public'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(enabled, ["jobs"]);
}

/// Ids of `table` that `SELECT` shows to `viewer`; an error (no such role, no privilege,
/// bad claims) shows nothing.
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

/// Columns of `table` that `viewer`'s role may select.
async fn selectable_columns(client: &mut Client, table: &TableInfo, role: &str) -> Vec<String> {
    let mut cols = Vec::new();
    for col in &table.columns {
        let tx = client.transaction().await.unwrap();
        let ok = match tx
            .query("select set_config('role', $1, true)", &[&role])
            .await
        {
            Ok(_) => {
                let sql = format!("select \"{}\" from public.{} limit 0", col.name, table.name);
                tx.query(&sql, &[]).await.is_ok()
            }
            Err(_) => false,
        };
        tx.rollback().await.unwrap();
        if ok {
            cols.push(col.name.clone());
        }
    }
    cols
}

fn random_viewer(rng: &mut StdRng, customers: &[String]) -> Arc<Viewer> {
    let role = match rng.random_range(0..10) {
        0 => "anon",
        1 => "service_role",
        2 => "no_such_role",
        _ => "authenticated",
    };
    let mut claims = Map::new();
    claims.insert("role".into(), json!(role));
    if rng.random_bool(0.9) {
        let sub = &customers[rng.random_range(0..customers.len())];
        claims.insert("sub".into(), json!(sub));
    }
    if rng.random_bool(0.2) {
        claims.insert("app_role".into(), json!("staff"));
    }
    raw_viewer(role, &Value::Object(claims).to_string())
}

async fn fill_random_portal(client: &Client, rng: &mut StdRng, customers: &[String]) {
    for (i, c) in customers.iter().enumerate().skip(2) {
        client
            .execute(
                "insert into public.customers values ($1::text::uuid, $2)",
                &[c, &format!("customer {i}")],
            )
            .await
            .unwrap();
    }
    for id in 1..=200i64 {
        let customer = &customers[rng.random_range(0..customers.len())];
        let status = ["open", "closed", "archived"][rng.random_range(0..3)];
        client
            .execute(
                "insert into public.jobs values ($1, $2::text::uuid, $3, $4, 'note')",
                &[&id, customer, &format!("job {id}"), &status],
            )
            .await
            .unwrap();
    }
    for id in 1..=150i64 {
        let job_id: i64 = rng.random_range(1..=200);
        let amount = format!(
            "{}.{:02}",
            rng.random_range(1..1000),
            rng.random_range(0..100)
        );
        client
            .execute(
                "insert into public.invoices values ($1, $2, $3::text::numeric, $4)",
                &[&id, &job_id, &amount, &rng.random_bool(0.5)],
            )
            .await
            .unwrap();
        client
            .execute("insert into public.notices values ($1, 'n')", &[&id])
            .await
            .unwrap();
    }
}

/// Current rows of `table` as the capture trigger records them (`to_jsonb`), by id.
async fn rows_by_id(client: &Client, table: &str) -> Vec<(i64, Value)> {
    let sql = format!("select id, to_jsonb(t) from public.{table} t order by id");
    let rows = client.query(&sql, &[]).await.unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test]
async fn random_rows_and_viewers_get_exactly_what_select_would_show() {
    let mut p = portal().await;
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut customers = vec![ALICE.to_owned(), BOB.to_owned()];
    customers.extend((0..4).map(|_| uuid::Uuid::new_v4().to_string()));
    fill_random_portal(&p.client, &mut rng, &customers).await;
    let viewers: Vec<Arc<Viewer>> = (0..10)
        .map(|_| random_viewer(&mut rng, &customers))
        .collect();

    for table_name in ["jobs", "invoices", "notices"] {
        let table = p.table(table_name).await;
        let rows = rows_by_id(&p.client, table_name).await;
        let mut expected_ids = Vec::new();
        let mut expected_cols = HashMap::new();
        for v in &viewers {
            expected_ids.push(selectable_ids(&mut p.client, table_name, v).await);
            if !expected_cols.contains_key(&v.role) {
                let cols = selectable_columns(&mut p.client, &table, &v.role).await;
                expected_cols.insert(v.role.clone(), cols);
            }
        }
        let all_cols: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();

        // Each row becomes an INSERT, an UPDATE from another random row, or a DELETE.
        let mut changes = Vec::new();
        for (i, (id, rec)) in rows.iter().enumerate() {
            let (old_id, old) = rows[rng.random_range(0..rows.len())].clone();
            let c = match i % 3 {
                0 => (
                    change(table_name, Op::Insert, Some(rec.clone()), None),
                    None,
                ),
                1 => (
                    change(table_name, Op::Update, Some(rec.clone()), Some(old)),
                    Some(old_id),
                ),
                _ => (
                    change(table_name, Op::Delete, None, Some(rec.clone())),
                    None,
                ),
            };
            changes.push((*id, c.0, c.1));
        }
        let items: Vec<(&Change, &TableInfo, &[Arc<Viewer>])> = changes
            .iter()
            .map(|(_, c, _)| (c, &*table, &viewers[..]))
            .collect();
        let results = p.rls.check(&items).await.expect("check");

        let mut shown = 0;
        for ((id, c, old_id), result) in changes.iter().zip(&results) {
            for (v_idx, got) in result.iter().enumerate() {
                let sees = |id: &i64| expected_ids[v_idx].contains(id);
                let want_visible = sees(id);
                let want_old = match c.op {
                    Op::Insert => false,
                    Op::Update => want_visible && old_id.as_ref().is_some_and(sees),
                    Op::Delete => want_visible,
                };
                let ctx = format!(
                    "{table_name} {:?} id {id} viewer {:?}",
                    c.op, viewers[v_idx]
                );
                assert_eq!(got.visible, want_visible, "visible: {ctx}");
                assert_eq!(got.old_visible, want_old, "old_visible: {ctx}");
                if got.visible {
                    shown += 1;
                    let cols = got.columns.as_deref().unwrap_or(&all_cols[..]);
                    assert_eq!(cols, &expected_cols[&viewers[v_idx].role][..], "{ctx}");
                }
            }
        }
        println!(
            "{table_name}: {shown} of {} (change, viewer) pairs visible",
            changes.len() * viewers.len()
        );
        assert!(
            shown > 0,
            "the random data should show something to someone"
        );
    }
}

#[tokio::test]
async fn prints_checks_per_second_for_one_batch() {
    let p = portal().await;
    let table = p.table("jobs").await;
    // Distinct claims, so no two viewers share a check; every fourth one is staff.
    let viewers: Vec<Arc<Viewer>> = (0..20)
        .map(|i| {
            let sub = uuid::Uuid::new_v4().to_string();
            let app_role = if i % 4 == 0 { "staff" } else { "customer" };
            viewer("authenticated", json!({"sub": sub, "app_role": app_role}))
        })
        .collect();
    let changes: Vec<Change> = (0..100)
        .map(|i| change("jobs", Op::Insert, Some(job(i, ALICE, "open")), None))
        .collect();
    let items: Vec<(&Change, &TableInfo, &[Arc<Viewer>])> =
        changes.iter().map(|c| (c, &*table, &viewers[..])).collect();
    for round in 0..3 {
        let start = Instant::now();
        let out = p.rls.check(&items).await.expect("check");
        let elapsed = start.elapsed();
        let visible = out.iter().flatten().filter(|v| v.visible).count();
        assert_eq!(visible, 100 * 5, "only the staff viewers see alice's jobs");
        let checks = changes.len() * viewers.len();
        println!(
            "round {round}: {checks} (change, viewer) checks in {elapsed:?}: {:.0} checks/s",
            checks as f64 / elapsed.as_secs_f64()
        );
    }
}

/// The in-process path for the usual portal policy (`owner = auth.uid()`, decided
/// without a query) gives exactly what SELECT gives, odd `sub` claims included.
#[tokio::test]
async fn own_rows_policy_decided_in_process_agrees_with_select() {
    let mut p = portal().await;
    p.client
        .batch_execute(
            "create table public.tickets (id bigint primary key, owner uuid, body text);
             alter table public.tickets enable row level security;
             create policy own_tickets on public.tickets for select to authenticated
                 using (owner = auth.uid());
             grant select on public.tickets to authenticated;
             insert into public.tickets values
                 (1, 'aaaaaaaa-0000-0000-0000-000000000001', 'a'),
                 (2, 'bbbbbbbb-0000-0000-0000-000000000002', 'b'),
                 (3, null, 'nobody');",
        )
        .await
        .unwrap();
    let viewers = [
        customer("aaaaaaaa-0000-0000-0000-000000000001"),
        customer("AAAAAAAA-0000-0000-0000-000000000001"),
        customer("bbbbbbbb-0000-0000-0000-000000000002"),
        customer("not-a-uuid"),
        viewer("authenticated", json!({"role": "authenticated"})),
        viewer(
            "anon",
            json!({"sub": "aaaaaaaa-0000-0000-0000-000000000001", "role": "anon"}),
        ),
    ];
    let table = p.table("tickets").await;
    let rows = [
        json!({"id": 1, "owner": "aaaaaaaa-0000-0000-0000-000000000001", "body": "a"}),
        json!({"id": 2, "owner": "bbbbbbbb-0000-0000-0000-000000000002", "body": "b"}),
        json!({"id": 3, "owner": null, "body": "nobody"}),
    ];
    for v in &viewers {
        let expected = selectable_ids(&mut p.client, "tickets", v).await;
        for r in &rows {
            let id = r["id"].as_i64().unwrap();
            let c = change("tickets", Op::Insert, Some(r.clone()), None);
            let got = p
                .rls
                .check(&[(&c, &table, std::slice::from_ref(v))])
                .await
                .unwrap();
            assert_eq!(
                got[0][0].visible,
                expected.contains(&id),
                "viewer {:?}, row {id}",
                v.claims
            );
        }
    }
}

/// A check runs under a statement name any code in the hub's session can learn (the
/// policy's text is in the catalog) and could prepare itself: a policy function of
/// another table, running during that table's check, that puts `select true, true` under
/// the name of `docs`'s check must not make a `docs` row the policy hides visible.
#[tokio::test]
async fn a_check_prepared_under_another_checks_name_is_never_run_in_its_place() {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    switchboard::db::migrate(&client).await.expect("migrate");
    client
        .batch_execute(
            "create table public.docs (id bigint primary key, owner uuid);
             alter table public.docs enable row level security;
             create policy own_docs on public.docs for select to authenticated
                 using (owner = auth.uid() and id > 0);
             create table public.evil (id bigint primary key);
             alter table public.evil enable row level security;
             grant select on public.docs, public.evil to authenticated;",
        )
        .await
        .unwrap();
    let docs_check: String = client
        .query_one(
            "select 'switchboard_rlsp_' || md5(check_sql) \
               from realtime.visibility_rule('public.docs'::regclass, 'authenticated')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!(
            "create function public.spoof() returns bool language plpgsql as $f$
             begin
                 begin
                     execute 'deallocate {docs_check}';
                 exception when others then null;
                 end;
                 execute 'prepare {docs_check}(jsonb, jsonb) as select true, true';
                 return true;
             end $f$;
             create policy spoof on public.evil for select to authenticated
                 using (public.spoof() and id > 0);"
        ))
        .await
        .unwrap();
    let claims = json!({"sub": ALICE, "role": "authenticated"}).to_string();
    let hidden = json!({"id": 1, "owner": BOB});
    for round in 0..2 {
        let rows = client
            .query(
                "select check_no, visible, problem from realtime.visible_to( \
                     array['public.evil'::regclass::oid, 'public.docs'::regclass::oid], \
                     array[$1::jsonb, $2::jsonb], array[null::jsonb, null::jsonb], \
                     array[1, 2], array['authenticated', 'authenticated'], array[$3, $3])",
                &[&json!({"id": 1}), &hidden, &claims],
            )
            .await
            .unwrap();
        let seen: Vec<(i32, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            seen,
            [(1, true), (2, false)],
            "round {round}: {:?}",
            rows.iter()
                .map(|r| r.get::<_, Option<String>>(2))
                .collect::<Vec<_>>()
        );
    }
}
