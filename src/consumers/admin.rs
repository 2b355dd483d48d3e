//! Operating webhook endpoints: list them with their delivery state and lag, pause,
//! resume, retry, replay from a time, print the secret, and upsert the ones the config
//! file declares. Used by the `switchboard webhooks` command (on a connection of its own)
//! and by the hub's REST API and inspector (on the pool); the delivering hub notices
//! within a second.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::ConsumersError;
use crate::config::WebhookDecl;
use crate::protocol::refuse_nul;

/// Most log rows counted when measuring an endpoint's lag.
pub const LAG_SCAN_ROWS: i32 = 100_000;

const LIST: &str = "\
select w.name, w.url, w.tables, w.events, w.filter, w.source, w.state, w.paused_reason, \
       w.position, w.lease_owner, w.last_success_at, w.last_attempt_at, w.last_error, \
       w.last_error_at, w.last_status, w.failures, w.attempts, w.delivered, w.data_lost_at, \
       b.events as lag_events, b.oldest \
from realtime.webhooks w \
join realtime.webhook_endpoints e on e.name = w.name \
cross join lateral realtime.webhook_backlog(e.position, e.tables, e.events, $1) b \
where $2::text is null or w.name = $2 \
order by w.name";

const SECRET: &str = "select secret from realtime.webhook_endpoints where name = $1";
const DECLARE: &str =
    "select realtime.declare_webhook($1, $2, $3::text[]::regclass[], $4::text[], $5, $6)";

/// One endpoint as `/api/status`, `/metrics`, the inspector and `webhooks list` show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointStatus {
    pub name: String,
    pub url: String,
    pub tables: Vec<String>,
    pub events: Vec<String>,
    pub filter: Option<String>,
    /// `sql` or `config`.
    pub source: String,
    /// `active`, `failing` (retrying after failures) or `paused`.
    pub state: String,
    pub paused_reason: Option<String>,
    /// The stored cursor (a capture position; advanced only after a 2xx).
    pub cursor: String,
    /// The hub delivering it (its lease).
    pub lease_owner: Option<String>,
    /// Events of its tables after the cursor (counting at most `LAG_SCAN_ROWS` log rows).
    pub lag_events: i64,
    /// Seconds since the oldest change not yet acknowledged committed (0 when none).
    pub lag_seconds: f64,
    /// Events read and waiting for a 2xx; known only on the delivering hub.
    pub pending_events: Option<usize>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// HTTP status of the last failed attempt (none when it got no answer).
    pub last_status: Option<i32>,
    /// Failed attempts in a row.
    pub failures: i32,
    pub attempts: i64,
    pub delivered: i64,
    /// The log was pruned past the cursor at the retention cap: changes were lost.
    pub data_lost: bool,
    pub data_lost_at: Option<DateTime<Utc>>,
    /// When the delivering hub tries next after a failure; only on that hub.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Every endpoint (or the one named), by name.
pub async fn list(
    client: &Client,
    only: Option<&str>,
) -> Result<Vec<EndpointStatus>, ConsumersError> {
    let rows = client.query(LIST, &[&LAG_SCAN_ROWS, &only]).await?;
    let now = Utc::now();
    Ok(rows
        .iter()
        .map(|r| {
            let oldest: Option<DateTime<Utc>> = r.get("oldest");
            let data_lost_at: Option<DateTime<Utc>> = r.get("data_lost_at");
            EndpointStatus {
                name: r.get("name"),
                url: redact_url(r.get("url")),
                tables: r.get("tables"),
                events: r.get("events"),
                filter: r.get("filter"),
                source: r.get("source"),
                state: r.get("state"),
                paused_reason: r.get("paused_reason"),
                cursor: r.get("position"),
                lease_owner: r.get("lease_owner"),
                lag_events: r.get("lag_events"),
                lag_seconds: oldest
                    .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0),
                pending_events: None,
                last_success_at: r.get("last_success_at"),
                last_attempt_at: r.get("last_attempt_at"),
                last_error: r.get("last_error"),
                last_error_at: r.get("last_error_at"),
                last_status: r.get("last_status"),
                failures: r.get("failures"),
                attempts: r.get("attempts"),
                delivered: r.get("delivered"),
                data_lost: data_lost_at.is_some(),
                data_lost_at,
                next_attempt_at: None,
            }
        })
        .collect())
}

/// `url` as listings show it: a password in it (`https://user:pw@host/...`) replaced by
/// `***` (the stored URL, which delivery uses, keeps it).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end],
        &authority[..colon],
        &url[scheme_end + at..]
    )
}

/// An operator's action on one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Pause,
    Resume,
    /// Try the pending batch now, skipping the backoff (resumes a paused endpoint).
    Retry,
    /// Deliver again everything committed at or after this time.
    Replay {
        from: DateTime<Utc>,
    },
}

impl Operation {
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Pause => "pause",
            Operation::Resume => "resume",
            Operation::Retry => "retry",
            Operation::Replay { .. } => "replay",
        }
    }
}

/// Applies `op`; for a replay, returns the position delivery starts from.
pub async fn apply(
    client: &Client,
    name: &str,
    op: &Operation,
) -> Result<Option<String>, ConsumersError> {
    check_name(name)?;
    let result = match op {
        Operation::Pause => client
            .execute("select realtime.pause_webhook($1)", &[&name])
            .await
            .map(|_| None),
        Operation::Resume => client
            .execute("select realtime.resume_webhook($1)", &[&name])
            .await
            .map(|_| None),
        Operation::Retry => client
            .execute("select realtime.retry_webhook($1)", &[&name])
            .await
            .map(|_| None),
        Operation::Replay { from } => client
            .query_one("select realtime.replay_webhook($1, $2)", &[&name, from])
            .await
            .map(|r| Some(r.get(0))),
    };
    result.map_err(|e| not_found(e, name))
}

/// The endpoint's signing secret.
pub async fn secret(client: &Client, name: &str) -> Result<String, ConsumersError> {
    check_name(name)?;
    match client.query_opt(SECRET, &[&name]).await? {
        Some(row) => Ok(row.get(0)),
        None => Err(ConsumersError::NoSuchWebhook(name.to_owned())),
    }
}

/// Creates or updates an endpoint the config file declares.
pub async fn declare(client: &Client, w: &WebhookDecl) -> Result<(), ConsumersError> {
    let events: Vec<String> = w
        .events
        .clone()
        .unwrap_or_else(|| vec!["INSERT".into(), "UPDATE".into(), "DELETE".into()])
        .iter()
        .map(|e| e.to_ascii_uppercase())
        .collect();
    client
        .execute(
            DECLARE,
            &[&w.name, &w.url, &w.tables, &events, &w.filter, &w.secret],
        )
        .await?;
    Ok(())
}

/// A name Postgres cannot hold is the caller's mistake, not a database outage.
fn check_name(name: &str) -> Result<(), ConsumersError> {
    refuse_nul("webhook name", name).map_err(ConsumersError::BadArgument)
}

/// An operation's error: no such endpoint, an argument the function refused (or text
/// Postgres cannot hold), or Postgres.
fn not_found(e: tokio_postgres::Error, name: &str) -> ConsumersError {
    match e.code() {
        Some(c) if *c == SqlState::UNDEFINED_OBJECT => {
            ConsumersError::NoSuchWebhook(name.to_owned())
        }
        Some(c)
            if *c == SqlState::INVALID_PARAMETER_VALUE
                || *c == SqlState::CHARACTER_NOT_IN_REPERTOIRE =>
        {
            ConsumersError::BadArgument(crate::db::pg_message(&e))
        }
        _ => ConsumersError::Postgres(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_a_url_is_redacted_and_nothing_else_changes() {
        for (url, shown) in [
            (
                "https://user:pw@crm.example.com/hook",
                "https://user:***@crm.example.com/hook",
            ),
            (
                "http://u:p@ss@h:8080/x?a=b@c",
                "http://u:***@h:8080/x?a=b@c",
            ),
            ("http://:secret@h/", "http://:***@h/"),
            ("https://token@h/hook", "https://token@h/hook"),
            ("https://h/hook?u=a:b@c", "https://h/hook?u=a:b@c"),
            ("https://h:443/hook", "https://h:443/hook"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
