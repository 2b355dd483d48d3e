//! End-to-end postgres_changes helpers: a migrated throwaway database with a hub running
//! on it (capture connected before a test writes), tokens for users, joining with
//! `postgres_changes` entries, and reading change and system frames strictly in order.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::hub::{test_config, Frame, TestHub, Vsn, WsClient};
use super::pg::{ensure_hub_role, hub_as_authenticator, test_db, TestDb};

/// The hub's log poll interval in these tests (the NOTIFY wake-up is the fast path).
pub const CAPTURE_POLL: Duration = Duration::from_millis(200);
/// How long startup may take to connect the capture listener.
const CAPTURE_CONNECT_DEADLINE: Duration = Duration::from_secs(15);

/// A hub with a database: `sql` is a superuser connection for setup and writes. The hub
/// connects as superuser or as the test authenticator role (`pg::hub_as_authenticator`).
pub struct PgHub {
    pub hub: TestHub,
    pub db: TestDb,
    pub sql: Client,
}

/// Postgres's own message for a failed statement.
pub fn pg_err(e: &tokio_postgres::Error) -> String {
    switchboard::db::pg_message(e)
}

impl PgHub {
    /// A fresh database with the hub's migrations and `setup` applied, and a hub on it
    /// whose change listener is connected (changes committed from now on are delivered).
    pub async fn start(setup: &str) -> PgHub {
        PgHub::start_with(setup, |_| {}).await
    }

    /// [`PgHub::start`] with the hub's config adjusted by `tune` first.
    pub async fn start_with(
        setup: &str,
        tune: impl FnOnce(&mut switchboard::config::Config),
    ) -> PgHub {
        PgHub::start_as(hub_as_authenticator(), setup, tune).await
    }

    /// [`PgHub::start_with`], the hub connected as the test authenticator role or not.
    pub async fn start_as(
        as_authenticator: bool,
        setup: &str,
        tune: impl FnOnce(&mut switchboard::config::Config),
    ) -> PgHub {
        let db = test_db().await;
        let sql = db.client().await;
        switchboard::db::migrate(&sql)
            .await
            .expect("hub migrations apply");
        sql.batch_execute(setup)
            .await
            .unwrap_or_else(|e| panic!("setup SQL failed: {}\n{setup}", pg_err(&e)));
        let mut config = test_config();
        if as_authenticator {
            // As deployed without superuser: the hub migrates (nothing is pending) and
            // grants its rights with the admin URL, then runs as the login role.
            ensure_hub_role(&sql).await;
            config.database_url = Some(db.authenticator_url());
            config.migrate_database_url = Some(db.url.clone());
        } else {
            config.database_url = Some(db.url.clone());
        }
        config.capture_poll = CAPTURE_POLL;
        tune(&mut config);
        let hub = TestHub::start(config).await;
        let pg = PgHub { hub, db, sql };
        pg.wait_capture_connected().await;
        pg
    }

    /// Polls `/api/status` until `capture.connected` is true (startup only).
    async fn wait_capture_connected(&self) {
        let start = Instant::now();
        loop {
            let s = self.status().await;
            if s["capture"]["connected"] == true {
                return;
            }
            assert!(
                start.elapsed() < CAPTURE_CONNECT_DEADLINE,
                "capture not connected within {CAPTURE_CONNECT_DEADLINE:?}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `/api/status` as JSON.
    pub async fn status(&self) -> Value {
        let (code, body) = self.hub.get_admin("/api/status").await;
        assert_eq!(code, 200, "/api/status: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/status not JSON ({e}): {body}"))
    }

    /// A token for `role` with subject `sub`, valid for an hour.
    pub fn token(&self, role: &str, sub: &str) -> String {
        self.hub.token(role, sub, 3600)
    }

    /// An `authenticated` user's token.
    pub fn user(&self, sub: &str) -> String {
        self.token("authenticated", sub)
    }

    /// A client connected with the anon key as `apikey` (as supabase-js does); the user
    /// token goes into the join.
    pub async fn connect(&self, vsn: Vsn) -> WsClient {
        let v = match vsn {
            Vsn::V1 => "1.0.0",
            Vsn::V2 => "2.0.0",
        };
        WsClient::connect(&self.hub.ws_url(Some(v), Some(&self.hub.anon()))).await
    }

    /// Runs statements (no parameters); fails the test with Postgres's message.
    pub async fn exec(&self, sql: &str) {
        self.sql
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("SQL failed: {}\n{sql}", pg_err(&e)));
    }

    /// Runs a statement returning one `bigint` (e.g. `insert ... returning id`).
    pub async fn id(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
        self.sql
            .query_one(sql, params)
            .await
            .unwrap_or_else(|e| panic!("SQL failed: {}\n{sql}", pg_err(&e)))
            .get(0)
    }

    /// Runs a statement with parameters.
    pub async fn run(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) {
        self.sql
            .execute(sql, params)
            .await
            .unwrap_or_else(|e| panic!("SQL failed: {}\n{sql}", pg_err(&e)));
    }
}

/// A joined channel with postgres_changes.
#[derive(Debug, Clone)]
pub struct Joined {
    pub topic: String,
    pub join_ref: String,
    /// The `id`s of the reply's `postgres_changes` entries, in order.
    pub ids: Vec<u64>,
    /// The reply's `response.postgres_changes` array.
    pub entries: Vec<Value>,
}

/// Sends a join with `config.postgres_changes = entries` (plus `extra` config keys merged
/// in) and `access_token`; returns the join_ref and the reply (any status).
pub async fn join_changes(
    c: &mut WsClient,
    topic: &str,
    entries: Value,
    token: Option<&str>,
    extra: Value,
) -> (String, Frame) {
    let mut config = json!({ "postgres_changes": entries });
    if let (Value::Object(cfg), Value::Object(more)) = (&mut config, extra) {
        cfg.extend(more);
    }
    let mut payload = json!({ "config": config });
    if let Some(t) = token {
        payload["access_token"] = json!(t);
    }
    c.join(topic, payload).await
}

/// The reply must be ok; returns the channel with its ids.
pub fn joined_from_reply(topic: &str, join_ref: String, reply: &Frame) -> Joined {
    let p = reply.payload();
    assert_eq!(p["status"], "ok", "join of {topic} failed: {reply:?}");
    let entries = p["response"]["postgres_changes"]
        .as_array()
        .unwrap_or_else(|| panic!("join reply without a postgres_changes array: {reply:?}"))
        .clone();
    let ids = entries
        .iter()
        .map(|e| {
            e["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("entry id is not an integer: {e}"))
        })
        .collect();
    Joined {
        topic: topic.to_owned(),
        join_ref,
        ids,
        entries,
    }
}

/// Joins, requires an ok reply, then requires the next frame to be the `system`
/// `Subscribed to PostgreSQL` for this channel. Changes committed after this return are
/// delivered.
pub async fn subscribe(
    c: &mut WsClient,
    topic: &str,
    entries: Value,
    token: Option<&str>,
) -> Joined {
    subscribe_with(c, topic, entries, token, json!({})).await
}

/// Leaves a joined channel (vsn 2): requires the ok reply, then the `phx_close`.
pub async fn leave(c: &mut WsClient, joined: &Joined) {
    let r = c.next_ref();
    c.send_v2(
        Some(&joined.join_ref),
        Some(&r),
        &joined.topic,
        "phx_leave",
        json!({}),
    )
    .await;
    let reply = c.recv().await;
    assert!(reply.is_reply_to(&r), "{reply:?}");
    let close = c.recv().await;
    assert!(close.is_event("phx_close"), "{close:?}");
}

/// Sends a refreshed access token for a joined channel (vsn 2) and waits until the hub
/// has taken it: it sends no reply, so the reply to a push handled after it is the
/// barrier (`WsClient::send_barrier`; not a heartbeat, which is answered while the token's
/// entries are still checked against the database). Before it may come only the
/// channel's `postgres_changes` system messages (its entries subscribed again with the
/// new claims, as Supabase does on every token): returned, in order.
pub async fn refresh_token(c: &mut WsClient, joined: &Joined, token: &str) -> Vec<Value> {
    let r = c.next_ref();
    let payload = json!({ "access_token": token });
    c.send_v2(
        Some(&joined.join_ref),
        Some(&r),
        &joined.topic,
        "access_token",
        payload,
    )
    .await;
    let barrier = c.send_barrier().await;
    let mut told = Vec::new();
    loop {
        let f = c.recv().await;
        if f.topic() == Some("phoenix") && f.is_reply_to(&barrier) {
            return told;
        }
        assert!(
            f.is_event("system")
                && f.topic() == Some(joined.topic.as_str())
                && f.payload()["extension"] == "postgres_changes",
            "expected only the channel's postgres_changes system messages before the barrier's reply, got {f:?}"
        );
        told.push(f.payload().clone());
    }
}

/// [`subscribe`] with extra `config` keys (e.g. `{"broadcast":{"self":true}}`).
pub async fn subscribe_with(
    c: &mut WsClient,
    topic: &str,
    entries: Value,
    token: Option<&str>,
    extra: Value,
) -> Joined {
    let (join_ref, reply) = join_changes(c, topic, entries, token, extra).await;
    let joined = joined_from_reply(topic, join_ref, &reply);
    let sys = next_system(c).await;
    assert_eq!(
        sys,
        json!({
            "message": "Subscribed to PostgreSQL",
            "status": "ok",
            "extension": "postgres_changes",
            "channel": topic.trim_start_matches("realtime:"),
        }),
        "expected the Subscribed system message on {topic}"
    );
    joined
}

/// The next frame must be a `system` frame; returns its payload.
pub async fn next_system(c: &mut WsClient) -> Value {
    let f = c.recv().await;
    assert!(f.is_event("system"), "expected a system frame, got {f:?}");
    assert_eq!(f.ref_(), None, "system frames carry ref null: {f:?}");
    f.payload().clone()
}

/// One `postgres_changes` frame, taken apart.
#[derive(Debug, Clone)]
pub struct ChangeFrame {
    pub topic: String,
    pub ids: Vec<u64>,
    pub data: Value,
    pub frame: Frame,
}

impl ChangeFrame {
    pub fn kind(&self) -> &str {
        self.data["type"].as_str().unwrap_or("")
    }

    pub fn table(&self) -> &str {
        self.data["table"].as_str().unwrap_or("")
    }

    /// `record.id` (or `old_record.id` for a DELETE).
    pub fn row_id(&self) -> Option<i64> {
        self.data["record"]["id"]
            .as_i64()
            .or_else(|| self.data["old_record"]["id"].as_i64())
    }
}

/// The next frame must be a `postgres_changes` frame (fan-out slots null).
pub async fn next_change(c: &mut WsClient) -> ChangeFrame {
    let f = c.recv().await;
    assert!(
        f.is_event("postgres_changes"),
        "expected a postgres_changes frame, got {f:?}"
    );
    assert_eq!(
        f.ref_(),
        None,
        "postgres_changes frames carry ref null: {f:?}"
    );
    assert_eq!(
        f.join_ref(),
        None,
        "postgres_changes frames carry join_ref null: {f:?}"
    );
    let p = f.payload();
    let ids = p["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("ids is not an array: {f:?}"))
        .iter()
        .map(|v| {
            v.as_u64()
                .unwrap_or_else(|| panic!("id is not an integer: {f:?}"))
        })
        .collect();
    ChangeFrame {
        topic: f.topic().unwrap_or_default().to_owned(),
        ids,
        data: p["data"].clone(),
        frame: f.clone(),
    }
}

/// The next frame must be a change of `table` whose row id is `id`; returns it.
pub async fn expect_row(c: &mut WsClient, kind: &str, table: &str, id: i64) -> ChangeFrame {
    let ch = next_change(c).await;
    assert_eq!(
        (ch.kind(), ch.table(), ch.row_id()),
        (kind, table, Some(id)),
        "expected {kind} of {table} row {id} as the next frame, got {:?}",
        ch.frame
    );
    ch
}

/// Keys of a JSON object, sorted.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn is_commit_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digit_at = |i: &[usize]| i.iter().all(|&i| b[i].is_ascii_digit());
    b.len() == 24
        && digit_at(&[0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22])
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
}

/// Waits until `n` resumable subscriptions are parked (their sockets gone).
pub async fn wait_parked(sql: &Client, n: i64) {
    let deadline = Instant::now() + super::hub::RECV_TIMEOUT;
    loop {
        let parked: i64 = sql
            .query_one(
                "select count(*) from realtime.log_holds \
                 where kind = 'resume' and (detail->>'parked')::boolean",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if parked >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} never parked ({parked} are)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
