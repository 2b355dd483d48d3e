//! A NUL character in a name the hub would hand to Postgres (a table, schema, webhook
//! name or private topic) is the client's mistake: each path refuses it with a client
//! error saying so, never a "database unavailable" (Postgres text cannot hold a NUL).

mod common;

use common::e2e::*;
use common::hub::{Vsn, WsClient};
use serde_json::{json, Value};

const SETUP: &str = r#"
create table public.deals (id bigserial primary key, title text);
grant select on public.deals to authenticated;
select realtime.enable('public.deals');
"#;

const USER: &str = "1f2e3d4c-5b6a-4789-8abc-def012345678";

/// (status, body as JSON) of a request as `token`.
async fn call(pg: &PgHub, method: reqwest::Method, path: &str, token: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, pg.hub.http_url(path))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn http_names_with_a_nul_get_a_client_error_naming_it() {
    let pg = PgHub::start(SETUP).await;
    let service = pg.token("service_role", "ops");
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    let (code, body) = call(
        &pg,
        get,
        "/realtime/v1/api/changes?tables=public.de%00als",
        &service,
    )
    .await;
    assert_eq!(
        (code, body),
        (
            400,
            json!({"message": r#"table "public.de\0als" contains a NUL character"#})
        )
    );
    for path in [
        "/realtime/v1/api/webhooks/a%00b/pause",
        "/realtime/v1/api/webhooks/a%00b/replay?from=2020-01-01T00:00:00Z",
    ] {
        let (code, body) = call(&pg, post.clone(), path, &service).await;
        assert_eq!(
            (code, body),
            (
                422,
                json!({"message": r#"webhook name "a\0b" contains a NUL character"#})
            ),
            "{path}"
        );
    }
    let (code, body) = call(
        &pg,
        post.clone(),
        "/realtime/v1/api/broadcast/ro%00om/events/ev?private=true",
        &service,
    )
    .await;
    assert_eq!(
        (code, body),
        (
            422,
            json!({"errors": {"topic": ["must not contain a NUL character"]}})
        )
    );
    let resp = reqwest::Client::new()
        .post(pg.hub.http_url("/realtime/v1/api/broadcast"))
        .bearer_auth(&service)
        .json(&json!({"messages": [{"topic": "ro\u{0}om", "event": "ev", "payload": {}, "private": true}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"errors": {"messages[0].topic": ["must not contain a NUL character"]}})
    );
}

#[tokio::test]
async fn join_entries_and_private_topics_with_a_nul_get_errors_naming_it() {
    let pg = PgHub::start(SETUP).await;
    let user = pg.user(USER);
    let mut c = pg.connect(Vsn::V2).await;
    for (entry, name) in [
        (
            json!({"event": "*", "schema": "public", "table": "de\u{0}als"}),
            r#"table "de\0als""#,
        ),
        (
            json!({"event": "*", "schema": "pub\u{0}lic", "table": "deals"}),
            r#"schema "pub\0lic""#,
        ),
        (
            json!({"event": "*", "schema": "public", "table": "deals", "filter": "title=eq.a\u{0}"}),
            r#"filter "title=eq.a\0""#,
        ),
        (
            json!({"event": "*", "schema": "public", "table": "deals", "note": "\u{0}"}),
            "the entry",
        ),
    ] {
        let (_, reply) =
            join_changes(&mut c, "realtime:n", json!([entry]), Some(&user), json!({})).await;
        assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
        let sys = next_system(&mut c).await;
        assert_eq!(sys["status"], "error", "{sys}");
        assert_eq!(
            sys["message"],
            format!("Unable to subscribe to changes with given parameters: {name} contains a NUL character")
        );
    }

    // A backslash and "u0000" as text is no NUL: that filter is taken.
    let entry =
        json!({"event": "*", "schema": "public", "table": "deals", "filter": "title=eq.\\u0000"});
    let (_, reply) =
        join_changes(&mut c, "realtime:m", json!([entry]), Some(&user), json!({})).await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    let sys = next_system(&mut c).await;
    assert_eq!(sys["status"], "ok", "{sys}");

    let (_, reply) = c
        .join(
            "realtime:pv\u{0}x",
            json!({"access_token": user, "config": {"private": true}}),
        )
        .await;
    assert_eq!(reply.payload()["status"], "error", "{reply:?}");
    assert_eq!(
        reply.payload()["response"]["reason"],
        r#"TopicNameInvalid: topic "pv\0x" contains a NUL character"#
    );

    // A public topic too: a resuming connection's channel is looked up in Postgres.
    let url = format!(
        "{}&resume=nul-key",
        pg.hub.ws_url(Some("2.0.0"), Some(&pg.hub.anon()))
    );
    let mut resuming = WsClient::connect(&url).await;
    let (_, reply) = resuming.join("realtime:pub\u{0}x", json!({})).await;
    assert_eq!(
        reply.payload()["response"]["reason"],
        r#"TopicNameInvalid: topic "pub\0x" contains a NUL character"#,
        "{reply:?}"
    );
}
