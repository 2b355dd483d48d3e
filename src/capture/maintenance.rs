//! Upkeep beside capture, on the hub's pool (never on the capture connection, so a lock
//! wait here cannot stall reading the log): keeps capture in line with the
//! `supabase_realtime` publication, the safety net for the event trigger that normally
//! does it at the end of each DDL (every second when that trigger is missing, every
//! `SYNC_EVERY` otherwise), and prunes `realtime.messages` past its retention.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the publication is reconciled while the event trigger does it anyway (it
/// skips a reconcile while another DDL transaction's is under way).
const SYNC_EVERY: Duration = Duration::from_secs(5);
/// How often it is reconciled without the event trigger.
const SYNC_EVERY_WITHOUT_TRIGGER: Duration = Duration::from_secs(1);
/// How often old messages are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const SYNC: &str = "select realtime.sync_publication(), realtime.publication_sync_is_automatic()";
const PRUNE_MESSAGES: &str = "select realtime.prune_messages($1)";
/// Tables capture and the publication still disagree on after a sync, by name.
const PENDING: &str = "select table_name, adding from realtime.publication_pending()";

/// What the upkeep keeps.
#[derive(Debug, Clone, Copy)]
pub struct Maintenance {
    /// `realtime.messages` rows older than this are deleted.
    pub messages_retention: Duration,
}

/// Runs until `shutdown`: reconciles at once, then periodically.
pub async fn run_maintenance(pool: Pool, cfg: Maintenance, shutdown: CancellationToken) {
    let mut next_prune = Instant::now();
    let mut pending = Vec::new();
    loop {
        let every = match sync_publication(&pool).await {
            Ok((changed, automatic)) => {
                if changed > 0 {
                    tracing::info!(
                        tables = changed,
                        "capture synced with publication supabase_realtime"
                    );
                }
                match publication_pending(&pool).await {
                    Ok(now) => {
                        report_pending(&pending, &now);
                        pending = now;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "could not read realtime.publication_pending()")
                    }
                }
                if automatic {
                    SYNC_EVERY
                } else {
                    SYNC_EVERY_WITHOUT_TRIGGER
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not sync capture with publication supabase_realtime");
                SYNC_EVERY_WITHOUT_TRIGGER * 5
            }
        };
        if Instant::now() >= next_prune {
            match prune_messages(&pool, cfg.messages_retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "pruned realtime.messages"),
                Err(e) => tracing::warn!(error = %e, "could not prune realtime.messages"),
            }
            next_prune = Instant::now() + PRUNE_EVERY;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum UpkeepError {
    #[error("connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("postgres: {}", crate::db::pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
}

/// (tables started or stopped, whether the event trigger keeps them in line).
async fn sync_publication(pool: &Pool) -> Result<(i32, bool), UpkeepError> {
    let client = pool.get().await?;
    let row = client.query_one(SYNC, &[]).await?;
    Ok((row.get(0), row.get(1)))
}

/// (table, whether it is to be captured) for each table capture and the publication still
/// disagree on.
async fn publication_pending(pool: &Pool) -> Result<Vec<(String, bool)>, UpkeepError> {
    let client = pool.get().await?;
    Ok(client
        .query(PENDING, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Logs each table that has started to disagree since the last sync, once, and says when
/// they all agree again.
fn report_pending(before: &[(String, bool)], now: &[(String, bool)]) {
    for (table, adding) in now.iter().filter(|p| !before.contains(p)) {
        if *adding {
            tracing::warn!(
                table = %table,
                "publication supabase_realtime lists this table, but its capture triggers could not be made \
                 (most often a transaction that wrote to it is still open; a lock timeout); its changes are \
                 not captured and joins to it are refused until a sync succeeds (every 5 s)"
            );
        } else {
            tracing::warn!(
                table = %table,
                "this table left publication supabase_realtime, but its capture triggers could not be dropped \
                 yet (a transaction that read or wrote it is still open); nothing of it is delivered \
                 meanwhile, and a sync drops them once it can (every 5 s)"
            );
        }
    }
    if now.is_empty() && !before.is_empty() {
        tracing::info!("capture agrees with publication supabase_realtime again");
    }
}

async fn prune_messages(pool: &Pool, keep: Duration) -> Result<i64, UpkeepError> {
    let client = pool.get().await?;
    Ok(client
        .query_one(PRUNE_MESSAGES, &[&keep.as_secs_f64()])
        .await?
        .get(0))
}
