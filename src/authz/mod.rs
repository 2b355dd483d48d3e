//! Private channels: read and write decisions from the project's `realtime.messages`
//! policies, made the way Supabase makes them (PROTOCOL.md §8), and Broadcast Replay of
//! stored messages (`replay.rs`).
//!
//! Each decision runs in one transaction on the hub's pool that is always rolled back:
//! - read: probe rows (one per extension) are inserted (`realtime.insert_probes`), then the settings are
//!   made (`role`, `realtime.topic`, `request.jwt.claims`, `request.jwt.claim.sub`,
//!   `request.jwt.claim.role`, `request.headers`) and the probes selected back as the
//!   subscriber's role: a probe that comes back means read is allowed for its extension;
//! - write: with the same settings, a row is inserted as the subscriber's role inside a
//!   savepoint; success means write is allowed, an RLS refusal (42501) means it is not.
//!
//! A policy that raises (a cast that fails for one user's claims, a role that does not
//! exist) is an error naming the problem, for that decision only. `ChannelAccess`
//! (`access.rs`) keeps one channel's decisions per token; a refreshed token decides again.

mod access;
mod replay;

pub use access::{ChannelAccess, Refused};
pub use replay::{Replay, ReplayRequest, Replayed, Seam, StoredMessage};

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;

use crate::auth::Claims;

/// Inserts the read probes with the migrating role's rights (`sql/040_hub_role.sql`: row
/// level security does not apply to the table's owner, and a non-superuser hub is not it):
/// `$1` topic, `$2` extensions, `$3` ids.
const INSERT_PROBES: &str =
    "select realtime.insert_probes($1::text, $2::text[], $3::text[]::uuid[])";

/// How long one decision may take (its statements, lock waits included). A policy
/// blocked behind a lock on `realtime.messages` or a slow one ends in an error for that
/// decision rather than holding the channel's connection.
const DECISION_TIMEOUT: &str = "set local statement_timeout = '5s'";

/// The subscriber's settings, local to the transaction (Supabase's `set_conn_config`).
const SET_CONFIG: &str = "select pg_catalog.set_config('role', $1::text, true), \
            pg_catalog.set_config('realtime.topic', $2::text, true), \
            pg_catalog.set_config('request.jwt.claims', $3::text, true), \
            pg_catalog.set_config('request.jwt.claim.sub', coalesce($4::text, ''), true), \
            pg_catalog.set_config('request.jwt.claim.role', $1::text, true), \
            pg_catalog.set_config('request.headers', $5::text, true)";

/// The probes the subscriber's role can see.
const SELECT_PROBES: &str =
    "select id::text from realtime.messages where id = any($1::text[]::uuid[])";

/// A write as the subscriber's role, without RETURNING (so SELECT policies play no part).
const WRITE_PROBE: &str =
    "insert into realtime.messages (topic, extension) values ($1::text, $2::text)";

/// What a channel (or a REST call) is asking about: the topic without `realtime:`, the
/// token's role and claims, and the request headers as a JSON object (`x-` headers of a
/// WebSocket upgrade; every header of a REST call).
#[derive(Debug, Clone)]
pub struct Context {
    pub topic: String,
    pub role: Arc<str>,
    pub claims: Arc<str>,
    pub sub: Option<Arc<str>>,
    pub headers: Arc<str>,
}

impl Context {
    pub fn new(topic: &str, claims: &Claims, headers: Arc<str>) -> Context {
        Context {
            topic: topic.to_owned(),
            role: claims.role.clone(),
            claims: claims.json.clone(),
            sub: claims.sub.clone(),
            headers,
        }
    }
}

/// What a private channel's messages are about (`realtime.messages.extension`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Extension {
    Broadcast,
    Presence,
}

impl Extension {
    pub fn as_str(self) -> &'static str {
        match self {
            Extension::Broadcast => "broadcast",
            Extension::Presence => "presence",
        }
    }
}

/// Read permissions of one token on one topic. `presence` is `None` when it was not
/// evaluated (presence was not enabled at join and nothing was tracked since).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAccess {
    pub broadcast: bool,
    pub presence: Option<bool>,
}

impl ReadAccess {
    /// A join needs read on broadcast or presence.
    pub fn any(&self) -> bool {
        self.broadcast || self.presence == Some(true)
    }

    /// Everything: public channels, and private ones without a database for `service_role`.
    pub const ALL: ReadAccess = ReadAccess {
        broadcast: true,
        presence: Some(true),
    };
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    /// A policy, or the settings made for the token (its role may not exist), raised.
    #[error("{0}")]
    Policy(String),
    /// The database could not be reached.
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

impl From<tokio_postgres::Error> for AuthzError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => AuthzError::Policy(db.message().to_owned()),
            None => AuthzError::Unavailable(e.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for AuthzError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        AuthzError::Unavailable(e.to_string())
    }
}

/// Private-channel decisions on the hub's pool; cheap to clone. Without a database only
/// `service_role` (which bypasses row-level security) may read and write.
#[derive(Clone)]
pub struct Authz {
    pool: Option<Pool>,
}

impl Authz {
    pub fn new(pool: Option<Pool>) -> Authz {
        Authz { pool }
    }

    /// Whether this hub has a database to ask.
    pub fn has_database(&self) -> bool {
        self.pool.is_some()
    }

    /// Read permissions: broadcast always, presence too when `with_presence`.
    pub async fn read(&self, ctx: &Context, with_presence: bool) -> Result<ReadAccess, AuthzError> {
        let Some(pool) = &self.pool else {
            let all = &*ctx.role == "service_role";
            return Ok(ReadAccess {
                broadcast: all,
                presence: with_presence.then_some(all),
            });
        };
        let mut extensions = vec![Extension::Broadcast];
        if with_presence {
            extensions.push(Extension::Presence);
        }
        let ids: Vec<String> = extensions
            .iter()
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        let names: Vec<&str> = extensions.iter().map(|e| e.as_str()).collect();
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        let result = async {
            tx.batch_execute(DECISION_TIMEOUT).await?;
            tx.query_one(INSERT_PROBES, &[&ctx.topic, &names, &ids])
                .await?;
            set_config(&tx, ctx).await?;
            let rows = tx.query(SELECT_PROBES, &[&ids]).await?;
            let seen: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let allowed = |i: usize| seen.contains(&ids[i]);
            Ok::<_, AuthzError>(ReadAccess {
                broadcast: allowed(0),
                presence: with_presence.then(|| allowed(1)),
            })
        }
        .await;
        let _ = tx.rollback().await;
        result
    }

    /// Write permission for `extension`.
    pub async fn write(&self, ctx: &Context, extension: Extension) -> Result<bool, AuthzError> {
        let Some(pool) = &self.pool else {
            return Ok(&*ctx.role == "service_role");
        };
        let mut client = pool.get().await?;
        let mut tx = client.transaction().await?;
        let result = async {
            tx.batch_execute(DECISION_TIMEOUT).await?;
            set_config(&tx, ctx).await?;
            let probe = tx.savepoint("switchboard_write_probe").await?;
            let outcome = probe
                .execute(WRITE_PROBE, &[&ctx.topic, &extension.as_str()])
                .await;
            let _ = probe.rollback().await;
            match outcome {
                Ok(_) => Ok(true),
                Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Ok(false),
                Err(e) => Err(AuthzError::from(e)),
            }
        }
        .await;
        let _ = tx.rollback().await;
        result
    }

    /// The stored broadcasts a private channel asked to replay (see `replay.rs`).
    pub async fn replay(
        &self,
        topic: &str,
        request: ReplayRequest,
    ) -> Result<Replayed, AuthzError> {
        match &self.pool {
            Some(pool) => replay::load(pool, topic, request).await,
            None => Err(AuthzError::Unavailable(
                "the hub runs without a database".into(),
            )),
        }
    }
}

async fn set_config(tx: &tokio_postgres::Transaction<'_>, ctx: &Context) -> Result<(), AuthzError> {
    tx.query_one(
        SET_CONFIG,
        &[
            &&*ctx.role,
            &ctx.topic,
            &&*ctx.claims,
            &ctx.sub.as_deref(),
            &&*ctx.headers,
        ],
    )
    .await?;
    Ok(())
}

/// `{"x-client-info": "..."}`: request headers as the JSON object policies read from
/// `request.headers` (the last of duplicate names wins, as in Supabase).
pub fn headers_json<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Arc<str> {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        map.insert(name.to_ascii_lowercase(), serde_json::Value::from(value));
    }
    serde_json::Value::Object(map).to_string().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(role: &str) -> Context {
        Context {
            topic: "room".into(),
            role: role.into(),
            claims: "{}".into(),
            sub: None,
            headers: "{}".into(),
        }
    }

    #[tokio::test]
    async fn without_a_database_only_service_role_reads_and_writes() {
        let authz = Authz::new(None);
        let all = authz.read(&ctx("service_role"), true).await.unwrap();
        assert_eq!(all, ReadAccess::ALL);
        let none = authz.read(&ctx("authenticated"), false).await.unwrap();
        assert_eq!(
            none,
            ReadAccess {
                broadcast: false,
                presence: None
            }
        );
        assert!(!none.any());
        assert!(authz
            .write(&ctx("service_role"), Extension::Presence)
            .await
            .unwrap());
        assert!(!authz
            .write(&ctx("anon"), Extension::Broadcast)
            .await
            .unwrap());
    }

    #[test]
    fn header_names_are_lower_case_and_the_last_duplicate_wins() {
        let h = headers_json([("X-Client", "a"), ("x-client", "b"), ("x-tenant", "t")]);
        assert_eq!(&*h, r#"{"x-client":"b","x-tenant":"t"}"#);
    }
}
