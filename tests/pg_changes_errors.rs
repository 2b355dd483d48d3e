//! postgres_changes entries the hub cannot serve (PROTOCOL.md §4, DESIGN.md invariant 4):
//! each gets a `system` error with a specific message, the join still succeeds with every
//! entry echoed, the good entries of the same join keep working and the channel still
//! carries broadcast. Also: odd schema and table names can be enabled and subscribed.

mod common;

use common::e2e::*;
use common::hub::{Vsn, WsClient};
use serde_json::{json, Value};

const SETUP: &str = r#"
create table public.items (id bigserial primary key, n int4, title text);
grant select on public.items to authenticated;
select realtime.enable('public.items');
create table public.deals (id bigserial primary key, amount int4);
grant select on public.deals to authenticated;
create schema "we""ird ✓";
grant usage on schema "we""ird ✓" to authenticated;
create table "we""ird ✓"."ta""b le's ✓" (id bigserial primary key, "Wert ✓" text);
grant select on "we""ird ✓"."ta""b le's ✓" to authenticated;
select realtime.enable('"we""ird ✓"."ta""b le''s ✓"');
create table "we""ird ✓"."Off; ✓" (id bigserial primary key);
grant select on "we""ird ✓"."Off; ✓" to authenticated;
create view public.items_view as select id, n from public.items;
grant select on public.items_view to authenticated;
create materialized view public.items_totals as select count(*) as n from public.items;
create view public.hidden_view as select id from public.items;
"#;

const USER: &str = "9d8c7b6a-5f4e-4d3c-8b2a-190817263544";

fn good() -> Value {
    json!({"event": "INSERT", "schema": "public", "table": "items"})
}

/// Joins with `[bad, good]` (broadcast self on), and checks: the reply is ok with both
/// entries echoed plus integer ids; the good entry subscribes; exactly one postgres_changes
/// error arrives whose message satisfies `check`; changes still flow for the good entry;
/// a broadcast to self still arrives. Returns the error message.
async fn assert_entry_error(pg: &PgHub, bad: Value) -> String {
    let mut c = pg.connect(Vsn::V2).await;
    let topic = "realtime:room";
    let (join_ref, reply) = join_changes(
        &mut c,
        topic,
        json!([bad.clone(), good()]),
        Some(&pg.user(USER)),
        json!({"broadcast": {"self": true}}),
    )
    .await;
    let joined = joined_from_reply(topic, join_ref, &reply);
    for (requested, echoed) in [bad, good()].iter().zip(&joined.entries) {
        let mut without_id = echoed.clone();
        without_id
            .as_object_mut()
            .expect("entry object")
            .remove("id");
        assert_eq!(
            &without_id, requested,
            "entries are echoed verbatim: {reply:?}"
        );
    }

    // One error for the bad entry, then one "Subscribed" for the good one: the refusal
    // first (Supabase refuses the whole join then, so a client waits for it first).
    let mut error = None;
    let mut subscribed = false;
    for _ in 0..2 {
        let sys = next_system(&mut c).await;
        assert_eq!(sys["extension"], "postgres_changes", "{sys}");
        assert_eq!(sys["channel"], "room", "{sys}");
        assert_eq!(
            keys(&sys),
            ["channel", "extension", "message", "status"],
            "{sys}"
        );
        match sys["status"].as_str() {
            Some("ok") => {
                assert_eq!(sys["message"], "Subscribed to PostgreSQL");
                assert!(error.is_some(), "subscribed before the refusal: {sys}");
                subscribed = true;
            }
            Some("error") => {
                assert!(error.is_none(), "a second error: {sys}");
                error = Some(sys["message"].as_str().unwrap_or_default().to_owned());
            }
            _ => panic!("unexpected system status: {sys}"),
        }
    }
    assert!(subscribed, "the good entry was not subscribed");
    let message = error.expect("an error system message");

    let id = pg
        .id("insert into public.items (n) values (1) returning id", &[])
        .await;
    let ch = expect_row(&mut c, "INSERT", "items", id).await;
    assert_eq!(ch.ids, vec![joined.ids[1]], "only the good entry's id");
    assert_broadcast_to_self(&mut c, &joined.join_ref, topic).await;
    message
}

async fn assert_broadcast_to_self(c: &mut WsClient, join_ref: &str, topic: &str) {
    c.broadcast(join_ref, topic, "ping", json!({"still": "open"}))
        .await;
    let f = c.recv().await;
    assert!(
        f.is_event("broadcast"),
        "expected the broadcast back, got {f:?}"
    );
    assert_eq!(f.payload()["event"], "ping", "{f:?}");
    assert_eq!(f.payload()["payload"], json!({"still": "open"}), "{f:?}");
}

#[tokio::test]
async fn a_table_that_does_not_exist_gets_a_system_error() {
    let pg = PgHub::start(SETUP).await;
    let message = assert_entry_error(
        &pg,
        json!({"event": "*", "schema": "public", "table": "nope"}),
    )
    .await;
    assert!(
        message.contains("public.nope") && message.contains("does not exist"),
        "{message}"
    );
}

/// A view (or materialized view) the role may read is named as one: before, it was told
/// the table did not exist or could not be read, though it could. A role that may not
/// read it is told what it is told of a missing table.
#[tokio::test]
async fn a_view_gets_an_error_saying_realtime_captures_tables_only() {
    let pg = PgHub::start(SETUP).await;
    let message = assert_entry_error(
        &pg,
        json!({"event": "*", "schema": "public", "table": "items_view"}),
    )
    .await;
    assert!(
        message.ends_with(
            "public.items_view is a view, and realtime captures tables only; \
             subscribe to the tables it reads from"
        ),
        "{message}"
    );
    pg.exec("grant select on public.items_totals to authenticated")
        .await;
    let message = assert_entry_error(
        &pg,
        json!({"event": "*", "schema": "public", "table": "items_totals"}),
    )
    .await;
    assert!(message.contains("is a materialized view"), "{message}");
    let message = assert_entry_error(
        &pg,
        json!({"event": "*", "schema": "public", "table": "hidden_view"}),
    )
    .await;
    assert!(
        message.contains("public.hidden_view does not exist or role authenticated may not"),
        "{message}"
    );
}

#[tokio::test]
async fn a_table_not_enabled_gets_an_error_naming_the_enable_call() {
    let pg = PgHub::start(SETUP).await;
    let message = assert_entry_error(
        &pg,
        json!({"event": "*", "schema": "public", "table": "deals"}),
    )
    .await;
    assert!(
        message.contains("select realtime.enable('public.deals')"),
        "{message}"
    );
}

#[tokio::test]
async fn a_filter_with_an_unknown_operator_gets_a_parse_error() {
    let pg = PgHub::start(SETUP).await;
    let bad = json!({"event": "*", "schema": "public", "table": "items", "filter": "id=zz.1"});
    let message = assert_entry_error(&pg, bad).await;
    assert_eq!(
        message,
        "Error parsing `filter` params: unknown operator zz"
    );
}

/// An entry whose `schema`, `table` or `filter` is not a string, or that names neither a
/// schema nor a table, gets Supabase's error (with the entry) instead of being read as a
/// wider subscription (`table: ["items"]` as the whole schema).
#[tokio::test]
async fn an_entry_with_a_mistyped_or_missing_name_gets_supabases_params_error() {
    let pg = PgHub::start(SETUP).await;
    for bad in [
        json!({"event": "*", "schema": "public", "table": ["items"]}),
        json!({"event": "*", "schema": 1, "table": "items"}),
        json!({"event": "*", "schema": "public", "table": "items", "filter": 5}),
        json!({"event": "INSERT"}),
    ] {
        let message = assert_entry_error(&pg, bad.clone()).await;
        assert_eq!(
            message,
            format!("No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: {bad}")
        );
    }
}

#[tokio::test]
async fn a_regular_expression_the_hub_cannot_match_as_postgres_does_gets_a_parse_error() {
    let pg = PgHub::start(SETUP).await;
    for (filter, want) in [
        (
            r#"title=match."(a)\\1""#,
            "Error parsing `filter` params: invalid regular expression for match filter: back references and octal escapes are not supported",
        ),
        (
            "title=imatch.a{3,2}",
            "Error parsing `filter` params: invalid regular expression for imatch filter: invalid repetition count(s)",
        ),
        (
            "n=match.^4",
            "Error parsing `filter` params: operator match is not supported for column n of type int4",
        ),
    ] {
        let bad = json!({"event": "*", "schema": "public", "table": "items", "filter": filter});
        let message = assert_entry_error(&pg, bad).await;
        assert_eq!(message, want, "{filter}");
    }
}

#[tokio::test]
async fn a_schema_wide_entry_on_a_missing_or_unusable_schema_gets_one_error() {
    let pg = PgHub::start(SETUP).await;
    pg.exec("create schema hidden").await;
    for schema in ["nosuch", "hidden"] {
        let bad = json!({"event": "*", "schema": schema});
        let message = assert_entry_error(&pg, bad).await;
        assert_eq!(
            message,
            format!(
                "Unable to subscribe to changes with given parameters: schema {schema} \
                 does not exist or role authenticated may not use it"
            )
        );
    }
}

#[tokio::test]
async fn a_filter_on_an_unknown_column_gets_an_invalid_column_error() {
    let pg = PgHub::start(SETUP).await;
    let bad = json!({"event": "*", "schema": "public", "table": "items", "filter": "nope=eq.1"});
    let message = assert_entry_error(&pg, bad).await;
    assert_eq!(message, "invalid column for filter nope");
}

#[tokio::test]
async fn a_filter_value_of_the_wrong_type_gets_postgres_cast_error_in_supabase_words() {
    let pg = PgHub::start(SETUP).await;
    let bad = json!({"event": "*", "schema": "public", "table": "items", "filter": "n=eq.abc"});
    let message = assert_entry_error(&pg, bad).await;
    assert!(
        message.starts_with(
            "Unable to subscribe to changes with given parameters. An exception happened so \
             please check your connect parameters: [event: *, schema: public, table: items, \
             filters: [{\"n\", \"eq\", \"abc\", false}], select: nil]. Exception: ERROR 22P02 \
             (invalid_text_representation) invalid input syntax for type "
        ),
        "{message}"
    );
    assert!(message.ends_with(": \"abc\""), "{message}");
}

#[tokio::test]
async fn an_in_filter_with_more_than_100_values_gets_the_limit_error() {
    let pg = PgHub::start(SETUP).await;
    let values: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let filter = format!("n=in.({})", values.join(","));
    let bad = json!({"event": "*", "schema": "public", "table": "items", "filter": filter});
    let message = assert_entry_error(&pg, bad).await;
    assert_eq!(message, "too many values for `in` filter. Maximum 100");
}

#[tokio::test]
async fn a_join_whose_only_entries_fail_still_joins_and_broadcasts() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V1).await;
    let entries = json!([
        {"event": "*", "schema": "public", "table": "nope"},
        {"event": "*", "schema": "public", "table": "deals"},
        {"event": "*", "schema": "public", "table": "items", "filter": "id=zz.1"},
        {"event": "*", "schema": "public", "table": "items", "filter": "nope=eq.1"}
    ]);
    let (join_ref, reply) = join_changes(
        &mut c,
        "realtime:room",
        entries,
        Some(&pg.user(USER)),
        json!({"broadcast": {"self": true}}),
    )
    .await;
    let joined = joined_from_reply("realtime:room", join_ref, &reply);
    assert_eq!(joined.ids.len(), 4);
    let mut messages = Vec::new();
    for _ in 0..4 {
        let sys = next_system(&mut c).await;
        assert_eq!(sys["status"], "error", "no entry subscribes: {sys}");
        assert_eq!(sys["extension"], "postgres_changes", "{sys}");
        messages.push(sys["message"].as_str().unwrap_or_default().to_owned());
    }
    for needle in [
        "does not exist",
        "select realtime.enable('public.deals')",
        "unknown operator zz",
        "invalid column for filter nope",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(needle)),
            "no message contains {needle:?}: {messages:?}"
        );
    }
    assert_broadcast_to_self(&mut c, &joined.join_ref, "realtime:room").await;
    // Nothing is delivered for the failed entries: a second channel on the same socket
    // subscribed to the same table gets the change as the very next frame.
    let marker = subscribe(
        &mut c,
        "realtime:marker",
        json!([good()]),
        Some(&pg.user(USER)),
    )
    .await;
    let id = pg
        .id("insert into public.items (n) values (1) returning id", &[])
        .await;
    let ch = expect_row(&mut c, "INSERT", "items", id).await;
    assert_eq!(
        (ch.topic.as_str(), &ch.ids),
        ("realtime:marker", &marker.ids)
    );
}

#[tokio::test]
async fn schema_and_table_names_with_quotes_spaces_and_unicode_can_be_subscribed() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let (schema, table) = ("we\"ird ✓", "ta\"b le's ✓");
    let entry = json!({"event": "*", "schema": schema, "table": table});
    let sub = subscribe(
        &mut c,
        "realtime:room",
        json!([entry]),
        Some(&pg.user(USER)),
    )
    .await;
    let id = pg
        .id(
            r#"insert into "we""ird ✓"."ta""b le's ✓" ("Wert ✓") values ('ja') returning id"#,
            &[],
        )
        .await;
    let ch = next_change(&mut c).await;
    assert_eq!(ch.ids, sub.ids);
    assert_eq!(ch.data["schema"], schema, "{:?}", ch.frame);
    assert_eq!(ch.data["table"], table, "{:?}", ch.frame);
    assert_eq!(
        ch.data["record"],
        json!({"id": id, "Wert ✓": "ja"}),
        "{:?}",
        ch.frame
    );
    assert_eq!(
        ch.data["columns"],
        json!([{"name": "id", "type": "int8"}, {"name": "Wert ✓", "type": "text"}])
    );
}

#[tokio::test]
async fn the_enable_call_suggested_for_an_odd_name_enables_that_table() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!({"event": "*", "schema": "we\"ird ✓", "table": "Off; ✓"});
    let (_, reply) = join_changes(
        &mut c,
        "realtime:room",
        json!([entry]),
        Some(&pg.user(USER)),
        json!({}),
    )
    .await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    let sys = next_system(&mut c).await;
    assert_eq!(sys["status"], "error", "{sys}");
    let message = sys["message"].as_str().unwrap_or_default();
    let start = message
        .find("select realtime.enable(")
        .unwrap_or_else(|| panic!("no enable call in {message:?}"));
    let call = &message[start..];
    let end = call.find("')").map(|i| i + 2).unwrap_or(call.len());
    pg.exec(&call[..end]).await;
    let row = pg
        .sql
        .query_one(
            "select count(*) from realtime.enabled_tables where schema_name = $1 and table_name = $2",
            &[&"we\"ird ✓", &"Off; ✓"],
        )
        .await
        .expect("enabled_tables");
    assert_eq!(
        row.get::<_, i64>(0),
        1,
        "{:?} did not enable the table",
        &call[..end]
    );
}

#[tokio::test]
async fn a_table_without_a_primary_key_gets_error_400_frames() {
    let pg = PgHub::start(
        "create table public.logs (msg text); grant select on public.logs to authenticated; \
         select realtime.enable('public.logs');",
    )
    .await;
    let mut c = pg.connect(Vsn::V2).await;
    let entry = json!({"event": "*", "schema": "public", "table": "logs"});
    let sub = subscribe(
        &mut c,
        "realtime:room",
        json!([entry]),
        Some(&pg.user(USER)),
    )
    .await;
    pg.exec("insert into public.logs (msg) values ('hello')")
        .await;
    let ch = next_change(&mut c).await;
    assert_eq!(ch.ids, sub.ids);
    // Supabase's 400 frame (notes/dropin.md §5.3): no row data, but the keys clients
    // require are there, empty (Python rejects a frame without `columns`), and the commit
    // time (Supabase's null makes Python drop the frame, error and all).
    let at = ch.data["commit_timestamp"]
        .as_str()
        .expect("a commit time")
        .to_owned();
    assert!(at.ends_with('Z') && at.len() == 24, "{at}");
    assert_eq!(
        ch.data,
        json!({
            "schema": "public",
            "table": "logs",
            "commit_timestamp": at,
            "type": "INSERT",
            "columns": [],
            "record": {},
            "errors": ["Error 400: Bad Request, no primary key"]
        }),
        "{:?}",
        ch.frame
    );
    pg.exec("update public.logs set msg = 'again'").await;
    let ch = next_change(&mut c).await;
    assert_eq!(ch.data["type"], "UPDATE", "{:?}", ch.frame);
    assert_eq!(ch.data["old_record"], json!({}), "{:?}", ch.frame);
    assert_eq!(ch.data["record"], json!({}), "{:?}", ch.frame);
}

#[tokio::test]
async fn a_role_that_cannot_select_the_primary_key_receives_nothing() {
    // Supabase sends `Error 401: Unauthorized` frames here, which still tells the
    // subscriber that a row changed; Switchboard sends nothing (README, "Row scope").
    let pg = PgHub::start(
        "create table public.notes (id bigserial primary key, body text); \
         grant select (body) on public.notes to authenticated; \
         select realtime.enable('public.notes'); \
         create table public.markers (id bigserial primary key, label text); \
         grant select on public.markers to authenticated; \
         select realtime.enable('public.markers');",
    )
    .await;
    let mut c = pg.connect(Vsn::V2).await;
    let notes = json!({"event": "*", "schema": "public", "table": "notes"});
    let markers = json!({"event": "*", "schema": "public", "table": "markers"});
    subscribe(
        &mut c,
        "realtime:room",
        json!([notes, markers]),
        Some(&pg.user(USER)),
    )
    .await;
    pg.exec("insert into public.notes (body) values ('hello')")
        .await;
    pg.exec("insert into public.markers (label) values ('after')")
        .await;
    let ch = next_change(&mut c).await;
    assert_eq!(ch.data["table"], "markers", "{:?}", ch.frame);
    assert_eq!(ch.data["record"]["label"], "after", "{:?}", ch.frame);
}

/// A channel joined before the user signed in runs with the apikey's role, which may not
/// read the table: that entry fails at join. The user's token, pushed as `access_token`
/// (realtime-js `setAuth`), subscribes it, as Supabase subscribes a channel's entries
/// again on every new token. An entry that still fails stays quiet: its error was told.
#[tokio::test]
async fn a_new_token_subscribes_the_entries_the_join_could_not() {
    let pg = PgHub::start(SETUP).await;
    let mut c = pg.connect(Vsn::V2).await;
    let topic = "realtime:room";
    let nope = json!({"event": "*", "schema": "public", "table": "nope"});
    let (join_ref, reply) =
        join_changes(&mut c, topic, json!([good(), nope]), None, json!({})).await;
    let joined = joined_from_reply(topic, join_ref, &reply);
    let mut errors = Vec::new();
    for _ in 0..2 {
        let sys = next_system(&mut c).await;
        assert_eq!(sys["status"], "error", "{sys}");
        errors.push(sys["message"].as_str().unwrap_or_default().to_owned());
    }
    errors.sort();
    assert!(
        errors[0].contains("public.items does not exist or role anon may not select from it")
            && errors[1].contains("public.nope does not exist"),
        "{errors:?}"
    );

    c.push_access_token(&joined.join_ref, topic, json!(pg.user(USER)))
        .await;
    let sys = next_system(&mut c).await;
    assert_eq!(
        (&sys["status"], &sys["message"]),
        (&json!("ok"), &json!("Subscribed to PostgreSQL")),
        "{sys}"
    );
    let id = pg
        .id("insert into public.items (n) values (2) returning id", &[])
        .await;
    let ch = expect_row(&mut c, "INSERT", "items", id).await;
    assert_eq!(ch.ids, vec![joined.ids[0]], "the entry's id from the reply");
    c.assert_quiet().await;
}
