//! postgres_changes `filter` strings through the running hub (PROTOCOL.md §4 "Filter
//! syntax"): each operator gets a change that matches and changes that do not. The
//! non-matching rows are written first; the matching row written after them must be
//! the next frame, which proves the others were not delivered. Filter values are data:
//! quotes, semicolons and unicode never reach SQL as code.

mod common;

use common::e2e::*;
use common::hub::{Vsn, WsClient};
use serde_json::json;

const SETUP: &str = r#"
create table public.items (
    id    bigserial primary key,
    n     int4,
    title text,
    note  text,
    tag   text,
    at    timestamptz,
    who   uuid
);
grant select on public.items to authenticated;
-- Deletes are filtered on the whole captured old row whatever the identity; FULL makes
-- old_record show it too.
alter table public.items replica identity full;
select realtime.enable('public.items');
create table public.sentinel (id bigserial primary key);
"#;

const USER: &str = "1f0c8d2e-3b4a-4c5d-8e9f-a0b1c2d3e4f5";

/// One row of `items` (NULL where `None`).
#[derive(Clone, Copy, Default)]
struct Row<'a> {
    n: Option<i32>,
    title: Option<&'a str>,
    note: Option<&'a str>,
    tag: Option<&'a str>,
}

fn n(v: i32) -> Row<'static> {
    Row {
        n: Some(v),
        ..Row::default()
    }
}

fn title(v: &str) -> Row<'_> {
    Row {
        title: Some(v),
        ..Row::default()
    }
}

fn tag(v: &str) -> Row<'_> {
    Row {
        tag: Some(v),
        ..Row::default()
    }
}

fn note(v: Option<&str>) -> Row<'_> {
    Row {
        note: v,
        ..Row::default()
    }
}

async fn insert(pg: &PgHub, r: Row<'_>) -> i64 {
    pg.id(
        "insert into public.items (n, title, note, tag) values ($1, $2, $3, $4) returning id",
        &[&r.n, &r.title, &r.note, &r.tag],
    )
    .await
}

/// Subscribes with `filter` on a fresh socket, writes every `misses` row and then `hit`;
/// the first frame must be `hit`'s INSERT.
async fn assert_filter(pg: &PgHub, filter: &str, hit: Row<'_>, misses: &[Row<'_>]) {
    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!({"event": "INSERT", "schema": "public", "table": "items", "filter": filter});
    let sub = subscribe(&mut c, "realtime:f", json!([entry]), Some(&pg.user(USER))).await;
    assert_eq!(sub.entries[0]["filter"], filter, "filter echoed verbatim");
    for m in misses {
        insert(pg, *m).await;
    }
    let id = insert(pg, hit).await;
    let ch = next_change(&mut c).await;
    assert_eq!(
        ch.row_id(),
        Some(id),
        "filter {filter:?}: expected only the matching row {id}, got {:?}",
        ch.frame
    );
    assert_eq!(ch.ids, sub.ids, "filter {filter:?}");
    c.close().await;
}

#[tokio::test]
async fn comparison_filters_deliver_only_matching_changes() {
    let pg = PgHub::start(SETUP).await;
    assert_filter(&pg, "n=eq.5", n(5), &[n(6), n(4), Row::default()]).await;
    assert_filter(&pg, "n=neq.5", n(6), &[n(5)]).await;
    assert_filter(&pg, "n=lt.5", n(4), &[n(5), n(6)]).await;
    assert_filter(&pg, "n=lte.5", n(5), &[n(6)]).await;
    assert_filter(&pg, "n=gt.5", n(6), &[n(5), n(4)]).await;
    assert_filter(&pg, "n=gte.5", n(5), &[n(4)]).await;
    assert_filter(&pg, "n=gt.-3", n(-2), &[n(-3), n(-4)]).await;
    assert_filter(
        &pg,
        "title=eq.hello",
        title("hello"),
        &[title("Hello"), title("hello ")],
    )
    .await;
}

#[tokio::test]
async fn a_null_value_never_matches_a_comparison_not_even_neq() {
    let pg = PgHub::start(SETUP).await;
    assert_filter(&pg, "n=neq.5", n(1), &[Row::default()]).await;
    assert_filter(
        &pg,
        "tag=neq.red",
        tag("blue"),
        &[Row::default(), tag("red")],
    )
    .await;
    assert_filter(&pg, "n=lt.5", n(1), &[Row::default()]).await;
}

#[tokio::test]
async fn in_like_ilike_and_is_null_filters_deliver_only_matching_changes() {
    let pg = PgHub::start(SETUP).await;
    assert_filter(
        &pg,
        "tag=in.(red,blue)",
        tag("blue"),
        &[tag("green"), tag("re"), Row::default()],
    )
    .await;
    assert_filter(&pg, "n=in.(1,2,3)", n(2), &[n(4), n(0)]).await;
    assert_filter(
        &pg,
        "title=like.%ring%",
        title("a ring here"),
        &[title("a Ring here"), title("rang")],
    )
    .await;
    assert_filter(
        &pg,
        "title=ilike.%RING%",
        title("a Ring"),
        &[title("rang"), Row::default()],
    )
    .await;
    assert_filter(
        &pg,
        "note=is.null",
        note(None),
        &[note(Some("x")), note(Some(""))],
    )
    .await;
}

#[tokio::test]
async fn match_and_imatch_filters_deliver_only_matching_changes() {
    let pg = PgHub::start(SETUP).await;
    // As realtime-js's `postgresChangesFilter().match(...)` writes them: verbatim, or
    // quoted with `\` escaped when the pattern holds `,()"\`.
    assert_filter(
        &pg,
        "title=match.^post-[0-9]{2}$",
        title("post-42"),
        &[title("Post-42"), title("post-420"), title("a post-42")],
    )
    .await;
    assert_filter(
        &pg,
        r#"title=imatch."^(ring|bell)\\y""#,
        title("RING the bell"),
        &[title("ringing"), title("a ring"), Row::default()],
    )
    .await;
    assert_filter(
        &pg,
        "tag=not.match.^re",
        tag("blue"),
        &[tag("red"), tag("re"), Row::default()],
    )
    .await;
}

#[tokio::test]
async fn not_and_comma_and_filters_deliver_only_matching_changes() {
    let pg = PgHub::start(SETUP).await;
    assert_filter(&pg, "tag=not.eq.red", tag("blue"), &[tag("red")]).await;
    assert_filter(
        &pg,
        "tag=not.in.(red,green)",
        tag("blue"),
        &[tag("red"), tag("green")],
    )
    .await;
    assert_filter(&pg, "n=gt.1,n=lt.5", n(3), &[n(7), n(1), n(5)]).await;
    let both = Row {
        n: Some(2),
        tag: Some("red"),
        ..Row::default()
    };
    let wrong_tag = Row {
        n: Some(2),
        tag: Some("blue"),
        ..Row::default()
    };
    assert_filter(
        &pg,
        "n=eq.2,tag=eq.red",
        both,
        &[wrong_tag, n(2), tag("red")],
    )
    .await;
}

#[tokio::test]
async fn filter_values_with_quotes_semicolons_and_unicode_are_data() {
    let pg = PgHub::start(SETUP).await;
    let evil = "O'Brien; drop table items;--";
    assert_filter(
        &pg,
        &format!("title=eq.{evil}"),
        title(evil),
        &[title("O'Brien")],
    )
    .await;
    assert_filter(
        &pg,
        "title=eq.\"a,b\"",
        title("a,b"),
        &[title("a"), title("\"a,b\"")],
    )
    .await;
    assert_filter(
        &pg,
        "title=eq.✓ café",
        title("✓ café"),
        &[title("cafe"), title("✓ cafe")],
    )
    .await;
    assert_filter(&pg, "title=eq.a.b=c", title("a.b=c"), &[title("a")]).await;
    assert_filter(
        &pg,
        "title=in.(\"x,y\",z)",
        title("x,y"),
        &[title("x"), title("y")],
    )
    .await;
    assert_filter(
        &pg,
        "title=eq.'); select pg_sleep(10); --",
        title("'); select pg_sleep(10); --"),
        &[],
    )
    .await;
    // The tables are all still there.
    pg.exec("select 1 from public.items; select 1 from public.sentinel")
        .await;
}

#[tokio::test]
async fn an_update_is_filtered_on_its_new_row_and_a_delete_on_its_old_row() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!({"event": "*", "schema": "public", "table": "items", "filter": "tag=eq.red"});
    subscribe(&mut c, "realtime:f", json!([entry]), Some(&pg.user(USER))).await;
    let id = insert(&pg, tag("blue")).await;
    pg.run("update public.items set tag = 'red' where id = $1", &[&id])
        .await;
    let up = expect_row(&mut c, "UPDATE", "items", id).await;
    assert_eq!(up.data["old_record"]["tag"], "blue", "{:?}", up.frame);
    pg.run(
        "update public.items set tag = 'green' where id = $1",
        &[&id],
    )
    .await;
    pg.run("delete from public.items where id = $1", &[&id])
        .await;
    let red = insert(&pg, tag("red")).await;
    pg.run("delete from public.items where id = $1", &[&red])
        .await;
    expect_row(&mut c, "INSERT", "items", red).await;
    let del = expect_row(&mut c, "DELETE", "items", red).await;
    assert_eq!(del.data["old_record"]["tag"], "red");
}

/// Subscribes to INSERTs of `public.<table>` with `filter` on a fresh socket.
async fn watch(pg: &PgHub, table: &str, filter: &str) -> WsClient {
    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!({"event": "INSERT", "schema": "public", "table": table, "filter": filter});
    subscribe(&mut c, "realtime:t", json!([entry]), Some(&pg.user(USER))).await;
    c
}

/// The next frame must be the INSERT of row `id`, written after the rows `filter` must
/// not match; returns it.
async fn expect_first(c: &mut WsClient, id: i64, filter: &str) -> ChangeFrame {
    let ch = next_change(c).await;
    assert_eq!(ch.row_id(), Some(id), "{filter}: {:?}", ch.frame);
    ch
}

/// Joins with `entry`, which must be refused: the `system` error's message.
async fn refused(pg: &PgHub, entry: serde_json::Value) -> String {
    let mut c = pg.connect(Vsn::V2).await;
    let (join_ref, reply) = join_changes(
        &mut c,
        "realtime:bad",
        json!([entry]),
        Some(&pg.user(USER)),
        json!({}),
    )
    .await;
    joined_from_reply("realtime:bad", join_ref, &reply);
    let sys = next_system(&mut c).await;
    assert_eq!(sys["status"], "error", "{sys}");
    sys["message"].as_str().unwrap_or_default().to_owned()
}

/// A domain's values compare as its base type's (under every domain it stacks), as in
/// Postgres: `05` equals 5 on a domain over int8, which orders numerically, and a domain
/// over text takes `like`.
#[tokio::test]
async fn a_domain_column_is_filtered_as_its_base_type() {
    let pg = PgHub::start(
        r#"
        create domain public.qty as int8 check (value >= 0);
        create domain public.small_qty as public.qty check (value < 1000);
        create domain public.label as text;
        create table public.stock (id bigserial primary key, q public.small_qty, l public.label);
        grant select on public.stock to authenticated;
        select realtime.enable('public.stock');
        "#,
    )
    .await;
    for (filter, hit, misses) in [
        ("q=eq.05", (5, "a"), vec![(50, "a"), (6, "a")]),
        ("q=gt.9", (10, "a"), vec![(9, "a"), (2, "a")]),
        ("l=like.s%", (1, "sold"), vec![(1, "kept"), (1, "Sold")]),
    ] {
        let mut c = watch(&pg, "stock", filter).await;
        let insert = |(q, l): (i64, &'static str)| {
            let pg = &pg;
            async move {
                pg.id(
                    "insert into public.stock (q, l) values ($1::int8, $2::text) returning id",
                    &[&q, &l],
                )
                .await
            }
        };
        for m in misses {
            insert(m).await;
        }
        let ch = expect_first(&mut c, insert(hit).await, filter).await;
        assert_eq!(ch.data["columns"][1]["type"], "small_qty", "{:?}", ch.frame);
        c.close().await;
    }
}

/// An enum's values are its labels, ordered as the type declares them (as Postgres
/// compares them): `gt`/`lte` follow that order, also through a domain over the enum, and
/// a label the type does not have is refused at join, as Postgres refuses the cast.
#[tokio::test]
async fn an_enum_column_is_filtered_by_its_labels_in_their_order() {
    let pg = PgHub::start(
        r#"
        create type public.stage as enum ('lead', 'qualified', 'won', 'lost');
        create domain public.deal_stage as public.stage;
        create table public.deals (id bigserial primary key, s public.stage, d public.deal_stage);
        grant select on public.deals to authenticated;
        select realtime.enable('public.deals');
        "#,
    )
    .await;
    for (filter, hit, misses) in [
        ("s=gt.qualified", "won", vec!["lead", "qualified"]),
        ("s=lte.qualified", "lead", vec!["lost", "won"]),
        ("d=gte.won", "lost", vec!["qualified", "lead"]),
        ("s=eq.won", "won", vec!["lost", "qualified"]),
        ("s=in.(lead,lost)", "lost", vec!["won", "qualified"]),
    ] {
        let mut c = watch(&pg, "deals", filter).await;
        let insert = |stage: &'static str| {
            let pg = &pg;
            async move {
                pg.id(
                    "insert into public.deals (s, d) values ($1::text::public.stage, $1::text::public.deal_stage) returning id",
                    &[&stage],
                )
                .await
            }
        };
        for m in misses {
            insert(m).await;
        }
        expect_first(&mut c, insert(hit).await, filter).await;
        c.close().await;
    }
    let entry = json!({"event": "*", "schema": "public", "table": "deals", "filter": "s=eq.Won"});
    assert_eq!(
        refused(&pg, entry).await,
        "Unable to subscribe to changes with given parameters. An exception happened so \
         please check your connect parameters: [event: *, schema: public, table: deals, \
         filters: [{\"s\", \"eq\", \"Won\", false}], select: nil]. Exception: ERROR 22P02 \
         (invalid_text_representation) invalid input value for enum stage: \"Won\""
    );
}

/// The order of an enum's labels changed while subscribed (a label added between two,
/// the column retyped to an enum ordered otherwise): the changes written after it are
/// compared in the new order, as Postgres compares them then.
#[tokio::test]
async fn an_enum_filter_follows_labels_added_and_reordered_while_subscribed() {
    let pg = PgHub::start(
        r#"
        create type public.stage as enum ('lead', 'qualified', 'won');
        create table public.deals (id bigserial primary key, s public.stage);
        grant select on public.deals to authenticated;
        select realtime.enable('public.deals');
        "#,
    )
    .await;
    let insert = |stage: &'static str| {
        let pg = &pg;
        async move {
            pg.id(
                "insert into public.deals (s) values ($1::text::public.stage) returning id",
                &[&stage],
            )
            .await
        }
    };
    let (above, below) = ("s=gt.qualified", "s=lt.qualified");
    let mut after = watch(&pg, "deals", above).await;
    let mut before = watch(&pg, "deals", below).await;
    // lead < qualified < proposal < won
    pg.exec("alter type public.stage add value 'proposal' after 'qualified'")
        .await;
    let lead = insert("lead").await;
    let proposal = insert("proposal").await;
    let won = insert("won").await;
    expect_first(&mut after, proposal, above).await;
    expect_first(&mut after, won, above).await;
    expect_first(&mut before, lead, below).await;

    // won < proposal < qualified < lead
    pg.exec(
        "alter table public.deals alter column s type text; drop type public.stage; \
         create type public.stage as enum ('won', 'proposal', 'qualified', 'lead'); \
         alter table public.deals alter column s type public.stage using s::public.stage;",
    )
    .await;
    let lead = insert("lead").await;
    insert("qualified").await;
    let won = insert("won").await;
    expect_first(&mut after, lead, above).await;
    expect_first(&mut before, won, below).await;
}

/// A column a filter compares retyped while subscribed (`ALTER COLUMN … TYPE`): the
/// changes written after it are compared as the new type, as Supabase compares them
/// (`code=gt.9` on text turned integer: 10 now passes; `n=gt.5` on an integer turned
/// text: '10' no longer does).
#[tokio::test]
async fn a_filter_compares_as_its_column_retyped_while_subscribed() {
    let pg = PgHub::start(
        r#"
        create table public.ft (id bigserial primary key, code text, n int4);
        grant select on public.ft to authenticated;
        select realtime.enable('public.ft');
        "#,
    )
    .await;
    let insert = |code: &'static str, n: &'static str| {
        let pg = &pg;
        async move {
            pg.id(
                "insert into public.ft (code, n) values ($1, $2::text::int4) returning id",
                &[&code, &n],
            )
            .await
        }
    };
    let (by_code, by_n) = ("code=gt.9", "n=gt.5");
    let mut code = watch(&pg, "ft", by_code).await;
    let mut n = watch(&pg, "ft", by_n).await;
    // As bound at join: '10' < '9' as text, 10 > 5.
    insert("10", "3").await;
    let both = insert("95", "10").await;
    expect_first(&mut code, both, by_code).await;
    expect_first(&mut n, both, by_n).await;

    pg.exec(
        "alter table public.ft alter column code type int4 using code::int4, \
         alter column n type text using n::text",
    )
    .await;
    // As the new types compare: 5 < 9, and '10' < '5' as text.
    pg.run("insert into public.ft (code, n) values (5, '10')", &[])
        .await;
    let both = pg
        .id(
            "insert into public.ft (code, n) values (10, '6') returning id",
            &[],
        )
        .await;
    expect_first(&mut code, both, by_code).await;
    expect_first(&mut n, both, by_n).await;
}

/// A value the hub does not read as its column's type itself is read by Postgres, as
/// Supabase has Postgres cast every value: what Postgres accepts subscribes and matches,
/// and what it refuses is refused at join in Supabase's words, Postgres's message included.
#[tokio::test]
async fn values_the_hub_does_not_read_itself_are_read_by_postgres() {
    let pg = PgHub::start(
        r#"
        create domain public.code as text not null;
        create table public.visits (
            id bigserial primary key, day date, ok bool, tags text[], n int4, j jsonb,
            -- a domain that refuses NULL: each value is read as its own column's type only
            c public.code default 'x'
        );
        grant select on public.visits to authenticated;
        select realtime.enable('public.visits');
        "#,
    )
    .await;
    let insert = |day: &'static str, ok: bool, tags: &'static str| {
        let pg = &pg;
        async move {
            pg.id(
                "insert into public.visits (day, ok, tags, n) \
                 values ($1::text::date, $2, $3::text::text[], 1) returning id",
                &[&day, &ok, &tags],
            )
            .await
        }
    };
    for (filter, hit, misses) in [
        // Unpadded, as `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}` writes it.
        (
            "day=eq.2024-1-2",
            ("2024-01-02", true, "{a}"),
            vec![("2024-01-12", true, "{a}")],
        ),
        (
            "ok=eq.tru",
            ("2024-01-01", true, "{a}"),
            vec![("2024-01-01", false, "{a}")],
        ),
        (
            "tags=eq.{a,b}",
            ("2024-01-01", true, "{a,b}"),
            vec![("2024-01-01", true, "{b,a}")],
        ),
        (
            "day=in.(2024/03/04,2024-5-6)",
            ("2024-05-06", true, "{a}"),
            vec![("2024-05-07", true, "{a}")],
        ),
    ] {
        let mut c = watch(&pg, "visits", filter).await;
        for (day, ok, tags) in misses {
            insert(day, ok, tags).await;
        }
        let (day, ok, tags) = hit;
        expect_first(&mut c, insert(day, ok, tags).await, filter).await;
        c.close().await;
    }
    for (filter, exception) in [
        (
            "n=eq.abc",
            "ERROR 22P02 (invalid_text_representation) invalid input syntax for type integer: \"abc\"",
        ),
        (
            "n=not.in.(1,99999999999)",
            "ERROR 22003 (numeric_value_out_of_range) value \"99999999999\" is out of range for type integer",
        ),
        (
            "j=eq.abc",
            "ERROR 22P02 (invalid_text_representation) invalid input syntax for type json",
        ),
    ] {
        let entry = json!({"event": "insert", "schema": "public", "table": "visits", "filter": filter});
        let column = &filter[..1];
        let message = refused(&pg, entry).await;
        assert!(
            message.starts_with(
                "Unable to subscribe to changes with given parameters. An exception happened \
                 so please check your connect parameters: [event: INSERT, schema: public, \
                 table: visits, filters: [{\""
            ) && message.contains(&format!("filters: [{{\"{column}\", ")),
            "{filter}: {message}"
        );
        assert!(
            message.contains(&format!("select: nil]. Exception: {exception}")),
            "{filter}: {message}"
        );
    }
}
