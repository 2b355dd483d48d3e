//! Log retention and this hub's hold on the log. Each hub checkpoints its capture
//! position as a `node` hold (`realtime.log_holds`) about once a second, so several hubs
//! on one database prune only what all of them have read, and a hub that is gone longer
//! than its expiry stops holding retention back. Pruning also respects the holds of
//! durable readers up to a cap (`sql/013_log_holds.sql`).

use std::time::Duration;

use tokio_postgres::Client;

use super::cursor::Cursor;
use super::CaptureError;

const CHECKPOINT: &str = "\
insert into realtime.log_holds (kind, holder, snapshot, expires_at) \
values ('node', $1, $2::text::pg_snapshot, now() + make_interval(secs => $3)) \
on conflict (kind, holder) do update \
set snapshot = excluded.snapshot, expires_at = excluded.expires_at, updated_at = now()";

const RELEASE: &str = "delete from realtime.log_holds where kind = 'node' and holder = $1";

const PRUNE: &str = "select deleted, lost from realtime.prune_log($1::text::pg_snapshot, $2, $3)";

/// How long the log is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Rows every hold has read are deleted once older than this.
    pub keep: Duration,
    /// Rows are deleted once older than this even if a durable reader has not read them
    /// (that reader is then marked as having lost data). Node holds are never overridden.
    pub cap: Duration,
    /// A hub's own hold lapses this long after its last checkpoint.
    pub node_expiry: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: Duration::from_secs(3600),
            cap: Duration::from_secs(24 * 3600),
            node_expiry: Duration::from_secs(300),
        }
    }
}

/// Records `cursor` as hub `node`'s position.
pub async fn checkpoint(
    client: &Client,
    node: &str,
    cursor: &Cursor,
    retention: &Retention,
) -> Result<(), CaptureError> {
    let secs = retention.node_expiry.as_secs_f64();
    client
        .execute(CHECKPOINT, &[&node, &cursor.to_pg_snapshot(), &secs])
        .await?;
    Ok(())
}

/// Drops hub `node`'s hold (a clean shutdown).
pub async fn release(client: &Client, node: &str) -> Result<(), CaptureError> {
    client.execute(RELEASE, &[&node]).await?;
    Ok(())
}

/// What one prune did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub deleted: i64,
    /// Durable readers newly marked as having lost data.
    pub lost: i64,
}

/// Deletes what every live hold and `cursor` have read and is older than the retention
/// (see `Retention`).
pub async fn prune(
    client: &Client,
    cursor: &Cursor,
    retention: &Retention,
) -> Result<Pruned, CaptureError> {
    let row = client
        .query_one(
            PRUNE,
            &[
                &cursor.to_pg_snapshot(),
                &retention.keep.as_secs_f64(),
                &retention.cap.as_secs_f64(),
            ],
        )
        .await?;
    Ok(Pruned {
        deleted: row.get(0),
        lost: row.get(1),
    })
}
