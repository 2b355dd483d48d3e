//! The webhook endpoints' rows in Postgres (`sql/030_webhooks.sql`): what the delivering
//! hub loads, the lease it holds, and every write about delivery, each fenced by that
//! lease. SQL here only calls the functions that migration defines.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::ConsumersError;

const LOAD: &str = "\
select e.url, e.events, e.filter, e.secret, e.paused, e.version, e.position, e.failures, \
       e.table_names, \
       case when e.secret_rotated_at + make_interval(secs => $3) > now() \
            then e.previous_secret end as previous_secret, \
       e.secret_rotated_at + make_interval(secs => $3) as previous_until, \
       (extract(epoch from e.created_at) * 1000000)::int8::text || ' ' || e.tables::text as shape, \
       array(select n.nspname::text from unnest(e.tables) with ordinality as t(rel, i) \
              join pg_catalog.pg_class c on c.oid = t.rel \
              join pg_catalog.pg_namespace n on n.oid = c.relnamespace order by t.i) as schemas, \
       array(select c.relname::text from unnest(e.tables) with ordinality as t(rel, i) \
              join pg_catalog.pg_class c on c.oid = t.rel order by t.i) as names, \
       array(select c.oid from unnest(e.tables) with ordinality as t(rel, i) \
              join pg_catalog.pg_class c on c.oid = t.rel order by t.i) as oids \
from realtime.webhook_endpoints e where e.name = $1 and e.lease_owner = $2";

const CLAIM: &str = "select name, version from realtime.claim_webhooks($1, $2)";
const RELEASE: &str = "select realtime.release_webhooks($1)";
const HELD: &str = "select name, version, lease_owner is not distinct from $1 \
     from realtime.webhook_endpoints \
     where lease_owner = $1 or lease_owner is null or lease_expires_at < now()";
const STATE: &str = "select version, \
       (extract(epoch from created_at) * 1000000)::int8::text || ' ' || tables::text \
     from realtime.webhook_endpoints where name = $1 and lease_owner = $2";
const DELIVERED: &str = "select realtime.webhook_delivered($1, $2, $3, $4, $5)";
const FAILED: &str = "select held, paused from realtime.webhook_failed($1, $2, $3, $4, $5)";
const MARK_LOST: &str = "select realtime.mark_lost_webhooks()";
const SAVE_NAMES: &str = "update realtime.webhook_endpoints set table_names = $3 \
     where name = $1 and lease_owner = $2";

/// An endpoint as its delivering hub reads it.
#[derive(Debug, Clone)]
pub struct EndpointDef {
    pub url: String,
    /// (schema, table) of each table that still exists.
    pub tables: Vec<(String, String)>,
    /// Their oids, in the same order.
    pub oids: Vec<u32>,
    pub events: Vec<String>,
    pub filter: Option<String>,
    pub secret: String,
    /// The secret `secret` replaced, while it still signs (until `previous_until`).
    pub previous_secret: Option<String>,
    pub previous_until: Option<DateTime<Utc>>,
    pub paused: bool,
    pub version: i64,
    /// Which endpoint row this is (dropped and created again under the same name, it is
    /// another) and its tables' names as they are now (a rename changes it).
    pub shape: String,
    pub position: String,
    /// Failed attempts in a row so far.
    pub failures: i32,
    /// The names its tables had, as the delivering hub last wrote them (`None` before
    /// any hub loaded it).
    pub table_names: Option<serde_json::Value>,
}

impl EndpointDef {
    /// The secrets a request sent at `now` is signed with: the current one, then the one
    /// it replaced while that still signs.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_until) {
            if now < until && *previous != self.secret {
                secrets.push(previous);
            }
        }
        secrets
    }
}

/// The endpoint if `owner` holds its lease; a secret it replaced signs beside the new
/// one for `overlap` after the rotation.
pub async fn load(
    client: &Client,
    name: &str,
    owner: &str,
    overlap: std::time::Duration,
) -> Result<Option<EndpointDef>, ConsumersError> {
    let overlap = overlap.as_secs_f64();
    let Some(row) = client.query_opt(LOAD, &[&name, &owner, &overlap]).await? else {
        return Ok(None);
    };
    let schemas: Vec<String> = row.get("schemas");
    let names: Vec<String> = row.get("names");
    Ok(Some(EndpointDef {
        url: row.get("url"),
        tables: schemas.into_iter().zip(names).collect(),
        oids: row.get("oids"),
        events: row.get("events"),
        filter: row.get("filter"),
        secret: row.get("secret"),
        previous_secret: row.get("previous_secret"),
        previous_until: row.get("previous_until"),
        paused: row.get("paused"),
        version: row.get("version"),
        shape: row.get("shape"),
        position: row.get("position"),
        failures: row.get("failures"),
        table_names: row
            .get::<_, Option<tokio_postgres::types::Json<serde_json::Value>>>("table_names")
            .map(|j| j.0),
    }))
}

/// Records the names the endpoint's tables had (`webhook::Renamed`) if `owner` still
/// holds its lease.
pub async fn save_table_names(
    client: &Client,
    name: &str,
    owner: &str,
    names: &serde_json::Value,
) -> Result<(), ConsumersError> {
    let names = tokio_postgres::types::Json(names);
    client.execute(SAVE_NAMES, &[&name, &owner, &names]).await?;
    Ok(())
}

/// Renews `owner`'s leases and takes free ones: every (endpoint, version) it now holds.
pub async fn claim(
    client: &Client,
    owner: &str,
    lease_secs: f64,
) -> Result<Vec<(String, i64)>, ConsumersError> {
    let rows = client.query(CLAIM, &[&owner, &lease_secs]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Without renewing anything: the endpoints `owner` holds and those free to claim, as
/// (endpoint, version, held by `owner`).
pub async fn held(
    client: &Client,
    owner: &str,
) -> Result<Vec<(String, i64, bool)>, ConsumersError> {
    let rows = client.query(HELD, &[&owner]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

pub async fn release(client: &Client, owner: &str) -> Result<(), ConsumersError> {
    client.execute(RELEASE, &[&owner]).await?;
    Ok(())
}

/// The endpoint's version and shape (`EndpointDef::shape`) if `owner` still holds it.
pub async fn version(
    client: &Client,
    name: &str,
    owner: &str,
) -> Result<Option<(i64, String)>, ConsumersError> {
    Ok(client
        .query_opt(STATE, &[&name, &owner])
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// What recording a 2xx (or an idle cursor move) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorWrite {
    Stored,
    /// The cursor is not the one expected (an operator's replay moved it): nothing was
    /// written.
    Moved,
    /// `owner` no longer holds the lease.
    Lost,
}

/// Records a 2xx for `events` events (0: only the cursor moves) by moving the cursor
/// from `expected` (the one the loop loaded or wrote last) to `position`; an operator's
/// replay that moved it meanwhile is not written over.
pub async fn delivered(
    client: &Client,
    name: &str,
    owner: &str,
    position: &str,
    events: i32,
    expected: &str,
) -> Result<CursorWrite, ConsumersError> {
    let row = client
        .query_one(DELIVERED, &[&name, &owner, &position, &events, &expected])
        .await?;
    Ok(match row.get::<_, &str>(0) {
        "stored" => CursorWrite::Stored,
        "moved" => CursorWrite::Moved,
        _ => CursorWrite::Lost,
    })
}

/// What recording a failed attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    pub held: bool,
    pub paused: bool,
}

pub async fn failed(
    client: &Client,
    name: &str,
    owner: &str,
    error: &str,
    status: Option<i32>,
    pause_after: i32,
) -> Result<Failed, ConsumersError> {
    let row = client
        .query_one(FAILED, &[&name, &owner, &error, &status, &pause_after])
        .await?;
    Ok(Failed {
        held: row.get(0),
        paused: row.get(1),
    })
}

/// Endpoints newly marked as having lost data.
pub async fn mark_lost(client: &Client) -> Result<Vec<String>, ConsumersError> {
    let rows = client.query(MARK_LOST, &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
