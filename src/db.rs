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
    (41, include_str!("../sql/041_row_keys.sql")),
];

/// Advisory lock key serialising migrations of one database ("sbmigrat").
const MIGRATION_LOCK: i64 = 0x7362_6d69_6772_6174;

const BOOTSTRAP: &str = "create schema if not exists realtime; \
     create table if not exists realtime.switchboard_migrations ( \
         version int primary key, applied_at timestamptz not null default now())";

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

/// One connection (no TLS); its connection task is spawned and returned.
pub async fn connect(url: &str) -> Result<(Client, JoinHandle<()>), DbError> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| bad_url(&e))?;
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
    let config: tokio_postgres::Config = url.parse().map_err(|e| bad_url(&e))?;
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
/// its own transaction under an advisory lock; returns the versions applied now.
pub async fn migrate(client: &Client) -> Result<Vec<i32>, DbError> {
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
                return Err(e);
            }
        }
    }
    Ok(applied)
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
    client
        .batch_execute(sql)
        .await
        .map_err(|e| DbError::Migration {
            version,
            message: pg_message(&e),
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

/// Removes the capture trigger from `qualified`; a no-op when it has none.
pub async fn disable(client: &Client, qualified: &str) -> Result<(), DbError> {
    let oid = resolve(client, qualified).await?;
    call_on_table(client, "select realtime.disable($1::oid::regclass)", oid).await
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
        for bad in ["", "a.", ".b", "a.b.c", "\"open", "\"a\"x.b"] {
            assert!(
                matches!(parse_qualified(bad), Err(DbError::BadTableName { .. })),
                "{bad:?} should be rejected"
            );
        }
    }
}
