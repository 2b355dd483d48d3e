//! Postgres connections, the embedded `sql/` migrations, and enabling change capture
//! on a table. Table names are parsed here and handed to Postgres as bound parameters.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// Every migration, in order. Each file is idempotent on its own.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../sql/001_changes_log.sql")),
    (2, include_str!("../sql/002_capture.sql")),
    (3, include_str!("../sql/003_roles_auth.sql")),
    (4, include_str!("../sql/004_commit_time.sql")),
    (10, include_str!("../sql/010_visibility.sql")),
    (11, include_str!("../sql/011_rule_cache.sql")),
    (12, include_str!("../sql/012_statement_capture.sql")),
    (13, include_str!("../sql/013_log_holds.sql")),
    (14, include_str!("../sql/014_resume.sql")),
    (20, include_str!("../sql/020_publication.sql")),
    (21, include_str!("../sql/021_messages.sql")),
    (22, include_str!("../sql/022_row_scope_problems.sql")),
    (30, include_str!("../sql/030_webhooks.sql")),
    (31, include_str!("../sql/031_log_pruned.sql")),
    (40, include_str!("../sql/040_hub_role.sql")),
    (41, include_str!("../sql/041_row_keys.sql")),
    (51, include_str!("../sql/051_capture_cost.sql")),
    (52, include_str!("../sql/052_wake_payload.sql")),
    (53, include_str!("../sql/053_read_page.sql")),
    (54, include_str!("../sql/054_webhook_delivered_fence.sql")),
    (55, include_str!("../sql/055_webhook_argument_errors.sql")),
    (56, include_str!("../sql/056_refused_arguments.sql")),
    (57, include_str!("../sql/057_publication_events.sql")),
    (58, include_str!("../sql/058_partitions.sql")),
    (59, include_str!("../sql/059_ddl_by_any_role.sql")),
    (60, include_str!("../sql/060_search_path.sql")),
    (61, include_str!("../sql/061_sync_lock.sql")),
    (62, include_str!("../sql/062_capture_sources_by_name.sql")),
    (63, include_str!("../sql/063_json_casts.sql")),
    (64, include_str!("../sql/064_wake_channel.sql")),
    (65, include_str!("../sql/065_partition_roots.sql")),
    (66, include_str!("../sql/066_checks_as_subscriber.sql")),
    (67, include_str!("../sql/067_messages_clock_defaults.sql")),
    (
        68,
        include_str!("../sql/068_webhook_tables_stay_captured.sql"),
    ),
    (69, include_str!("../sql/069_standard_auth_helpers.sql")),
    (70, include_str!("../sql/070_webhook_renames.sql")),
    (71, include_str!("../sql/071_rules_settled.sql")),
    (72, include_str!("../sql/072_inheritance.sql")),
    (73, include_str!("../sql/073_prune_by_horizon.sql")),
    (74, include_str!("../sql/074_checks_per_row_type.sql")),
    (75, include_str!("../sql/075_webhook_replay_rotation.sql")),
    (76, include_str!("../sql/076_read_page_of.sql")),
    (77, include_str!("../sql/077_webhooks_view_redacted.sql")),
    (78, include_str!("../sql/078_left_publication.sql")),
    (79, include_str!("../sql/079_webhook_secret_padding.sql")),
    (80, include_str!("../sql/080_webhook_url_checked.sql")),
    (
        81,
        include_str!("../sql/081_capturable_and_unique_fields.sql"),
    ),
    (82, include_str!("../sql/082_decoded_position.sql")),
    (83, include_str!("../sql/083_lost_by_events.sql")),
];

/// Advisory lock key serialising migrations of one database ("sbmigrat").
const MIGRATION_LOCK: i64 = 0x7362_6d69_6772_6174;

const BOOTSTRAP: &str = "create schema if not exists realtime; \
     create table if not exists realtime.switchboard_migrations ( \
         version int primary key, applied_at timestamptz not null default now())";

/// The migrations already recorded (read-only: a hub user without DDL rights can ask).
const APPLIED: &str =
    "select coalesce(array_agg(version), '{}') from realtime.switchboard_migrations";

/// Who the hub is in Postgres, and which of the token roles it may `set role` to.
const HUB_ACCESS: &str = "select current_user::text, r.rolsuper, r.rolbypassrls, \
       array(select t from unnest($1::text[]) as t \
             where not exists (select 1 from pg_catalog.pg_roles g \
                               where g.rolname = t and pg_catalog.pg_has_role(current_user, g.oid, 'MEMBER'))) \
     from pg_catalog.pg_roles r where r.rolname = current_user";

const RESOLVE_TABLE: &str = "select c.oid from pg_catalog.pg_class c \
     join pg_catalog.pg_namespace n on n.oid = c.relnamespace \
     where n.nspname = $1 and c.relname = $2";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("bad database url: {0}")]
    BadUrl(String),
    #[error("bad table name {name:?}: {reason}")]
    BadTableName { name: String, reason: &'static str },
    #[error("table \"{0}\" does not exist")]
    NoSuchTable(String),
    #[error("the realtime schema is not installed; run `switchboard migrate`")]
    NotMigrated,
    #[error("migration {version} failed: {message}")]
    Migration { version: i32, message: String },
    #[error(
        "migrations are pending and database user {user:?} may not apply them ({message}): \
         run `switchboard migrate` with an admin url (SWITCHBOARD_MIGRATE_DATABASE_URL), \
         see the README, \"Running as a non-superuser\""
    )]
    NeedsAdmin { user: String, message: String },
    #[error("granting the hub's rights to {role:?} failed: {message}")]
    Grant { role: String, message: String },
    #[error("connection pool: {0}")]
    Pool(String),
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
}

/// The server's own message when there is one, else the client error.
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

/// How long opening a connection may take unless the URL says (`connect_timeout`): a
/// database host that drops packets fails a join, a row-scope check or a start-up try in
/// this long rather than after the system's TCP timeout (about two minutes).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection string read, with [`CONNECT_TIMEOUT`] unless it sets its own.
fn parse_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| bad_url(&e))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(config)
}

/// Runs `f` until it succeeds, while `transient` says its failure may pass (logged as
/// `what`), pausing 50 ms, then twice as long each time up to `max`. `Ok(None)` when
/// `shutdown` comes first, `Err` for a failure that will not pass.
pub async fn retry_while<T, E, F, Fut>(
    what: &str,
    max: std::time::Duration,
    shutdown: &tokio_util::sync::CancellationToken,
    transient: impl Fn(&E) -> bool,
    mut f: F,
) -> Result<Option<T>, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        match f().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if transient(&e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "{what} failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
                pause = (pause * 2).min(max);
            }
            Err(e) => return Err(e),
        }
    }
}

/// One connection (no TLS); its connection task is spawned and returned.
pub async fn connect(url: &str) -> Result<(Client, JoinHandle<()>), DbError> {
    let config = parse_url(url)?;
    let (client, connection) = config.connect(NoTls).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection closed with error");
        }
    });
    Ok((client, task))
}

/// A pool of up to `size` connections (no TLS), opened lazily.
pub fn pool(url: &str, size: usize) -> Result<Pool, DbError> {
    let config = parse_url(url)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// Applies every migration not yet recorded in `realtime.switchboard_migrations`, each in
/// its own transaction under an advisory lock; returns the versions applied now. When
/// nothing is pending it only reads, so a hub user without DDL rights passes; one that
/// would have to apply something fails with [`DbError::NeedsAdmin`].
pub async fn migrate(client: &Client) -> Result<Vec<i32>, DbError> {
    if nothing_pending(client).await {
        return Ok(Vec::new());
    }
    let mut applied = Vec::new();
    for &(version, sql) in MIGRATIONS {
        client.batch_execute("begin").await?;
        match apply_one(client, version, sql).await {
            Ok(true) => {
                client.batch_execute("commit").await?;
                tracing::info!(version, "applied migration");
                applied.push(version);
            }
            Ok(false) => client.batch_execute("commit").await?,
            Err(e) => {
                let _ = client.batch_execute("rollback").await;
                return Err(needs_admin(client, e).await);
            }
        }
    }
    Ok(applied)
}

/// Whether every migration is recorded; any error (no schema yet, no right to read it)
/// means "maybe not".
async fn nothing_pending(client: &Client) -> bool {
    let Ok(row) = client.query_one(APPLIED, &[]).await else {
        return false;
    };
    let done: Vec<i32> = row.get(0);
    MIGRATIONS.iter().all(|(v, _)| done.contains(v))
}

/// A migration refused for lack of privileges says who should run it instead.
async fn needs_admin(client: &Client, e: DbError) -> DbError {
    let refused = match &e {
        DbError::Postgres(pg) => pg.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        _ => false,
    };
    if !refused {
        return e;
    }
    let user = match client.query_one("select current_user::text", &[]).await {
        Ok(row) => row.get(0),
        Err(_) => "?".to_owned(),
    };
    let message = match e {
        DbError::Postgres(pg) => pg_message(&pg),
        other => other.to_string(),
    };
    DbError::NeedsAdmin { user, message }
}

/// Migrates with `admin_url`, then grants the hub's runtime rights
/// (`realtime.grant_hub`) to the user of `hub_url` when that is another user.
/// Returns the versions applied now.
pub async fn migrate_for_hub(admin_url: &str, hub_url: &str) -> Result<Vec<i32>, DbError> {
    let (client, conn) = connect(admin_url).await?;
    let result = async {
        let applied = migrate(&client).await?;
        if let Some(hub) = url_user(hub_url)? {
            let admin: String = client
                .query_one("select current_user::text", &[])
                .await?
                .get(0);
            if hub != admin {
                grant_hub(&client, &hub).await?;
            }
        }
        Ok(applied)
    }
    .await;
    drop(client);
    conn.abort();
    result
}

/// Grants `role` what the hub does at runtime (`realtime.grant_hub`, idempotent), under
/// the migration lock: concurrent GRANTs on one object fail in Postgres.
pub async fn grant_hub(client: &Client, role: &str) -> Result<(), DbError> {
    let grant = async {
        client.batch_execute("begin").await?;
        client
            .execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        client
            .execute("select realtime.grant_hub($1)", &[&role])
            .await?;
        client.batch_execute("commit").await
    }
    .await;
    grant.map_err(|e| {
        let message = pg_message(&e);
        DbError::Grant {
            role: role.to_owned(),
            message,
        }
    })?;
    tracing::info!(role, "granted the hub's runtime rights");
    Ok(())
}

/// The user a connection string names, if it names one.
pub fn url_user(url: &str) -> Result<Option<String>, DbError> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| bad_url(&e))?;
    Ok(config.get_user().map(str::to_owned))
}

/// Who the hub is in Postgres: what a token's role can reach through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubAccess {
    pub user: String,
    /// A superuser may `set role` to anything: the token's role is the only limit.
    pub superuser: bool,
    pub bypass_rls: bool,
    /// Of the roles asked about, those the user may not `set role` to (or that do not
    /// exist): tokens naming them are refused.
    pub unavailable: Vec<String>,
}

/// Asks Postgres which of `roles` the connection's user may act as.
pub async fn hub_access(client: &Client, roles: &[String]) -> Result<HubAccess, DbError> {
    let row = client.query_one(HUB_ACCESS, &[&roles]).await?;
    Ok(HubAccess {
        user: row.get(0),
        superuser: row.get(1),
        bypass_rls: row.get(2),
        unavailable: row.get(3),
    })
}

/// Inside an open transaction: applies `sql` unless `version` is recorded already.
async fn apply_one(client: &Client, version: i32, sql: &str) -> Result<bool, DbError> {
    client
        .execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    client.batch_execute(BOOTSTRAP).await?;
    let done = client
        .query_opt(
            "select 1 from realtime.switchboard_migrations where version = $1",
            &[&version],
        )
        .await?
        .is_some();
    if done {
        return Ok(false);
    }
    client.batch_execute(sql).await.map_err(|e| {
        if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            DbError::Postgres(e)
        } else {
            DbError::Migration {
                version,
                message: pg_message(&e),
            }
        }
    })?;
    client
        .execute(
            "insert into realtime.switchboard_migrations (version) values ($1)",
            &[&version],
        )
        .await?;
    Ok(true)
}

/// Adds the capture trigger to `qualified` ("schema.table", "table" means `public`).
pub async fn enable(client: &Client, qualified: &str) -> Result<(), DbError> {
    let oid = resolve(client, qualified).await?;
    call_on_table(client, "select realtime.enable($1::oid::regclass)", oid).await
}

/// Why a table `realtime.disable` was called on is still captured, if it is.
const STILL_CAPTURED: &str = "select case \
       when exists (select 1 from realtime.capture_sources s \
                    where s.relid = $1::oid and s.via = 'publication') \
         then 'it is in publication supabase_realtime (remove it with alter publication \
               supabase_realtime drop table ...)' \
       else coalesce((select 'webhook endpoint ' || e.name || ' delivers its changes \
                             (drop the endpoint or alter its tables first)' \
                      from realtime.webhook_endpoints e where $1::oid::regclass = any(e.tables) \
                      order by e.name limit 1), \
                     'its capture triggers are still there') end \
     from realtime.enabled_tables t where t.relid = $1::oid";

/// Removes the capture trigger from `qualified`; a no-op when it has none. `Some(why)`
/// when the table stays captured all the same (it is in the publication, or a webhook
/// endpoint delivers it: `realtime.disable` only says so in a NOTICE).
pub async fn disable(client: &Client, qualified: &str) -> Result<Option<String>, DbError> {
    let oid = resolve(client, qualified).await?;
    call_on_table(client, "select realtime.disable($1::oid::regclass)", oid).await?;
    let row = client.query_opt(STILL_CAPTURED, &[&oid]).await?;
    Ok(row.map(|r| r.get(0)))
}

async fn resolve(client: &Client, qualified: &str) -> Result<u32, DbError> {
    let (schema, table) = parse_qualified(qualified)?;
    let row = client.query_opt(RESOLVE_TABLE, &[&schema, &table]).await?;
    match row {
        Some(row) => Ok(row.get(0)),
        None => Err(DbError::NoSuchTable(format!("{schema}.{table}"))),
    }
}

async fn call_on_table(client: &Client, sql: &str, oid: u32) -> Result<(), DbError> {
    client.execute(sql, &[&oid]).await.map_err(not_migrated)?;
    Ok(())
}

fn not_migrated(e: tokio_postgres::Error) -> DbError {
    match e.code() {
        Some(c)
            if *c == SqlState::UNDEFINED_FUNCTION
                || *c == SqlState::UNDEFINED_TABLE
                || *c == SqlState::INVALID_SCHEMA_NAME =>
        {
            DbError::NotMigrated
        }
        _ => DbError::Postgres(e),
    }
}

fn bad_url(e: &tokio_postgres::Error) -> DbError {
    DbError::BadUrl(e.to_string())
}

/// Splits `schema.table` the way Postgres reads it: unquoted parts fold to lower case,
/// `"quoted"` parts keep case and may contain dots, with `""` for a quote.
pub fn parse_qualified(input: &str) -> Result<(String, String), DbError> {
    let bad = |reason| DbError::BadTableName {
        name: input.to_string(),
        reason,
    };
    if crate::protocol::refuse_nul("table", input).is_err() {
        return Err(bad("contains a NUL character"));
    }
    let mut parts = Vec::new();
    let mut chars = input.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(bad("unterminated quoted identifier")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' || c == '"' {
                    break;
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
            part = part.trim().to_string();
        }
        if part.is_empty() {
            return Err(bad("empty identifier"));
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return Err(bad("expected '.' between identifiers")),
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, table]) => Ok((schema, table)),
        Err(parts) if parts.len() == 1 => Ok(("public".into(), parts[0].clone())),
        Err(_) => Err(bad("expected schema.table")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_string_gets_a_connect_timeout_unless_it_sets_one() {
        let get = |url: &str| parse_url(url).unwrap().get_connect_timeout().copied();
        assert_eq!(get("postgres://u@h/db"), Some(CONNECT_TIMEOUT));
        assert_eq!(
            get("postgres://u@h/db?connect_timeout=3"),
            Some(std::time::Duration::from_secs(3))
        );
    }

    fn parsed(s: &str) -> (String, String) {
        parse_qualified(s).unwrap()
    }

    #[test]
    fn unquoted_names_fold_to_lower_case() {
        assert_eq!(parsed("Public.Deals"), ("public".into(), "deals".into()));
    }

    #[test]
    fn a_bare_table_name_means_the_public_schema() {
        assert_eq!(parsed("deals"), ("public".into(), "deals".into()));
    }

    #[test]
    fn quoted_names_keep_case_dots_and_doubled_quotes() {
        assert_eq!(
            parsed(r#""My.Schema"."we""ird; tbl ✓""#),
            ("My.Schema".into(), "we\"ird; tbl ✓".into())
        );
    }

    #[test]
    fn malformed_names_are_rejected_with_a_reason() {
        for bad in ["", "a.", ".b", "a.b.c", "\"open", "\"a\"x.b", "de\0als"] {
            assert!(
                matches!(parse_qualified(bad), Err(DbError::BadTableName { .. })),
                "{bad:?} should be rejected"
            );
        }
    }
}
