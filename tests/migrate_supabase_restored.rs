//! `switchboard migrate` on a database restored from Supabase: its day-partitioned
//! `realtime.messages`, from a version before binary payloads or after, gets a default
//! partition, the `binary_payload` column and its exclusivity check (once), timestamps
//! that default to the clock, and `realtime.send` and `realtime.send_binary` reach the
//! change log.

mod common;

use tokio_postgres::Client;

/// Supabase's realtime schema of a project dumped before `binary_payload` existed.
const RESTORED: &str = include_str!("fixtures/supabase_restored.sql");

/// What Supabase itself later added to that table.
const SUPABASE_BINARY_PAYLOAD: &str = "
    alter table realtime.messages add column if not exists binary_payload bytea;
    alter table realtime.messages add constraint messages_payload_exclusive
        check (payload is null or binary_payload is null) not valid;";

async fn restored(extra: &str) -> (common::pg::TestDb, Client) {
    let db = common::pg::test_db().await;
    let client = db.client().await;
    client
        .batch_execute(&format!("{RESTORED}{extra}"))
        .await
        .unwrap_or_else(|e| panic!("fixture: {}", common::e2e::pg_err(&e)));
    (db, client)
}

async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", common::e2e::pg_err(&e)))
        .get(0)
}

#[tokio::test]
async fn a_restored_messages_table_with_or_without_binary_payload_migrates_and_carries_sends() {
    for (extra, what) in [
        ("", "before binary payloads"),
        (
            "alter table realtime.messages add column binary_payload bytea;",
            "with the column but not its check",
        ),
        (SUPABASE_BINARY_PAYLOAD, "with binary payloads"),
    ] {
        let (_db, client) = restored(extra).await;
        switchboard::db::migrate(&client)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let checks = count(
            &client,
            "select count(*) from pg_constraint \
             where conrelid = 'realtime.messages'::regclass \
               and conname = 'messages_payload_exclusive'",
        )
        .await;
        assert_eq!(checks, 1, "{what}: one exclusivity check");
        let defaults = count(
            &client,
            "select count(*) from pg_partitioned_table \
             where partrelid = 'realtime.messages'::regclass and partdefid <> 0",
        )
        .await;
        assert_eq!(defaults, 1, "{what}: a default partition");
        client
            .batch_execute(
                "select realtime.send('{\"n\": 1}', 'ping', 'room-1', false);
                 select realtime.send_binary('\\x0102', 'blob', 'room-1', false);",
            )
            .await
            .unwrap();
        let logged = count(
            &client,
            "select count(*) from realtime.changes where op = 'BROADCAST' and ( \
                 (event = 'ping' and record ->> 'n' = '1' and binary_payload is null) \
              or (event = 'blob' and binary_payload = '\\x0102'::bytea and record is null))",
        )
        .await;
        assert_eq!(logged, 2, "{what}: both sends logged");
        let both = client
            .batch_execute(
                "insert into realtime.messages (topic, extension, payload, binary_payload) \
                 values ('room-1', 'broadcast', '{}', '\\x01')",
            )
            .await
            .expect_err("a message with both payloads");
        assert!(
            common::e2e::pg_err(&both).contains("messages_payload_exclusive"),
            "{what}: {both}"
        );
        let kept = count(&client, "select count(*) from realtime.messages_2020_01_01").await;
        assert_eq!(kept, 1, "{what}: the restored message is kept");
        // Supabase's `now()` defaults gave every message of one transaction the same
        // time, and replay (ordered by it) any order: now they keep the order sent.
        client
            .batch_execute(
                "begin; \
                 select realtime.send(jsonb_build_object('n', n), 'seq', 'room-2', false) \
                   from generate_series(1, 8) n; \
                 commit;",
            )
            .await
            .unwrap();
        let order = client
            .query_one(
                "select array_agg((payload ->> 'n')::int order by inserted_at), \
                        count(distinct inserted_at), count(distinct updated_at) \
                   from realtime.messages where topic = 'room-2'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            (
                order.get::<_, Vec<i32>>(0),
                order.get::<_, i64>(1),
                order.get::<_, i64>(2)
            ),
            ((1..=8).collect(), 8, 8),
            "{what}: one transaction's messages in the order sent"
        );
    }
}
