//! Broadcasts sent from SQL (`realtime.send`, PROTOCOL.md §8) travel through the change
//! log and reach the members of `realtime:<topic>`: a binary kind-4 frame on v2 sockets,
//! the text broadcast object on v1; public and private topics stay apart.

mod common;

use common::e2e::*;
use common::hub::{kind4, Vsn};
use serde_json::{json, Value};

#[tokio::test]
async fn realtime_send_reaches_members_of_the_topic_as_a_broadcast() {
    let pg = PgHub::start("").await;
    let mut v2 = pg.connect(Vsn::V2).await;
    let mut v1 = pg.connect(Vsn::V1).await;
    let mut elsewhere = pg.connect(Vsn::V2).await;
    v2.join_ok("realtime:room", json!({})).await;
    v1.join_ok("realtime:room", json!({})).await;
    elsewhere.join_ok("realtime:other", json!({})).await;

    pg.exec(r#"select realtime.send('{"a":1}'::jsonb, 'ev', 'room', false)"#)
        .await;
    pg.exec(r#"select realtime.send('{"b":2}'::jsonb, 'ev2', 'other', false)"#)
        .await;

    let k = kind4(&v2.recv().await);
    assert_eq!(
        (k.topic.as_str(), k.event.as_str(), k.encoding),
        ("realtime:room", "ev", 1)
    );
    let payload: Value = serde_json::from_slice(&k.payload).expect("JSON payload");
    assert_eq!(payload["a"], 1, "{payload}");

    let f = v1.recv().await;
    assert_eq!(f.topic(), Some("realtime:room"), "{f:?}");
    assert!(f.is_event("broadcast"), "{f:?}");
    assert_eq!(f.ref_(), None, "{f:?}");
    let p = f.payload();
    assert_eq!(p["type"], "broadcast", "{f:?}");
    assert_eq!(p["event"], "ev", "{f:?}");
    assert_eq!(p["payload"]["a"], 1, "{f:?}");

    // The member of another topic gets only its own message.
    let k = kind4(&elsewhere.recv().await);
    assert_eq!(
        (k.topic.as_str(), k.event.as_str()),
        ("realtime:other", "ev2")
    );
}

#[tokio::test]
async fn a_private_realtime_send_does_not_reach_the_public_topic() {
    let pg = PgHub::start("").await;
    let mut c = pg.connect(Vsn::V2).await;
    c.join_ok("realtime:room", json!({"private": false})).await;
    pg.exec(r#"select realtime.send('{"secret":true}'::jsonb, 'hidden', 'room', true)"#)
        .await;
    pg.exec(r#"select realtime.send('{"a":1}'::jsonb, 'shown', 'room', false)"#)
        .await;
    let k = kind4(&c.recv().await);
    assert_eq!(
        k.event, "shown",
        "the private message must not reach a public member"
    );
}

#[tokio::test]
async fn realtime_send_in_a_rolled_back_transaction_is_never_delivered() {
    let pg = PgHub::start("").await;
    let mut c = pg.connect(Vsn::V2).await;
    c.join_ok("realtime:room", json!({})).await;
    pg.exec(r#"begin; select realtime.send('{"n":1}'::jsonb, 'rolled', 'room', false); rollback"#)
        .await;
    pg.exec(r#"select realtime.send('{"n":2}'::jsonb, 'kept', 'room', false)"#)
        .await;
    let k = kind4(&c.recv().await);
    assert_eq!(k.event, "kept");
}

#[tokio::test]
async fn send_binary_reaches_v2_sockets_as_binary_with_the_message_id() {
    let pg = PgHub::start("").await;
    let mut v2 = pg.connect(Vsn::V2).await;
    let mut v1 = pg.connect(Vsn::V1).await;
    v2.join_ok("realtime:room", json!({})).await;
    v1.join_ok("realtime:room", json!({})).await;
    pg.exec(r"select realtime.send_binary('\xdeadbeef'::bytea, 'bin', 'room', false)")
        .await;
    pg.exec(r#"select realtime.send('{"after":true}'::jsonb, 'json', 'room', false)"#)
        .await;
    let k = kind4(&v2.recv().await);
    assert_eq!((k.event.as_str(), k.encoding), ("bin", 0));
    assert_eq!(k.payload, [0xde, 0xad, 0xbe, 0xef]);
    let meta: Value = serde_json::from_slice(&k.meta).expect("metadata JSON");
    assert!(meta["id"].is_string(), "{meta}");
    // v1 sockets cannot carry binary payloads: the next message is the JSON one.
    let f = v1.recv().await;
    assert_eq!(f.payload()["event"], "json", "{f:?}");
}

#[tokio::test]
async fn messages_older_than_their_retention_are_pruned() {
    let pg = PgHub::start_with(
        "insert into realtime.messages (topic, extension, event, payload, private, inserted_at) \
         values ('room', 'broadcast', 'old', '{}', true, now() at time zone 'utc' - interval '2 hours'), \
                ('room', 'broadcast', 'new', '{}', true, now() at time zone 'utc');",
        |c| c.messages_retention = std::time::Duration::from_secs(3600),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let events: Vec<String> = pg
            .sql
            .query("select event from realtime.messages order by event", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if events == ["new"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not pruned: {events:?}"
        );
        // Polling a condition: the hub prunes at start, on its own task.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// JSON nested past serde_json's 128 levels, which Postgres holds and anyone who may
/// broadcast can send, is not delivered (it is logged): everything after it is, live and
/// through the change feed that reads the same log. It used to panic the capture task,
/// after which nothing reached anyone and the feed failed at that row for good.
#[tokio::test]
async fn a_broadcast_nested_too_deep_is_skipped_and_everything_after_it_delivered() {
    let pg = PgHub::start(
        "create table public.notes (id serial primary key, body text);
         select realtime.enable('public.notes');",
    )
    .await;
    let service = pg.token("service_role", "sync-job");
    let feed = |cursor: Option<String>| {
        let url = pg.hub.http_url(&format!(
            "/realtime/v1/api/changes?tables=public.notes{}",
            cursor.map(|c| format!("&cursor={c}")).unwrap_or_default()
        ));
        let service = service.clone();
        async move {
            let resp = reqwest::Client::new()
                .get(url)
                .bearer_auth(service)
                .send()
                .await
                .expect("GET feed");
            assert_eq!(resp.status().as_u16(), 200);
            resp.json::<Value>().await.expect("feed JSON")
        }
    };
    let cursor = feed(None).await["next_cursor"].as_str().unwrap().to_owned();
    let mut c = pg.connect(Vsn::V2).await;
    c.join_ok("realtime:room", json!({})).await;

    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    pg.exec(&format!(
        r#"select realtime.send('{{"d":{deep}}}'::jsonb, 'deep', 'room', false)"#
    ))
    .await;
    pg.exec(r#"select realtime.send('{"n":2}'::jsonb, 'kept', 'room', false)"#)
        .await;
    pg.exec("insert into public.notes (body) values ('after')")
        .await;

    let k = kind4(&c.recv().await);
    assert_eq!(k.event, "kept");
    let page = feed(Some(cursor)).await;
    let changes = page["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{page}");
    assert_eq!(changes[0]["record"]["body"], "after", "{page}");
}
