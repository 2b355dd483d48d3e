//! Resumable subscriptions in Postgres (`realtime.log_holds`, kind `resume`; see
//! `sql/014_resume.sql`): writing live and parked rows, and taking one over on resume.

use std::time::Duration;

use serde_json::Value;
use tokio_postgres::Client;

/// One row to write: its holder key, the cursor snapshot it holds the log from, detail.
#[derive(Clone)]
pub struct Row {
    pub holder: String,
    pub snapshot: String,
    pub detail: Value,
}

/// Writes rows (live checkpoints and parks) in one statement; a row owned by another
/// channel (it was taken over) is left alone.
const UPSERT: &str = "\
insert into realtime.log_holds (kind, holder, snapshot, expires_at, detail) \
select 'resume', u.h, u.s::pg_snapshot, now() + make_interval(secs => $4), u.d \
from unnest($1::text[], $2::text[], $3::jsonb[]) as u(h, s, d) \
on conflict (kind, holder) do update \
set snapshot = excluded.snapshot, expires_at = excluded.expires_at, updated_at = now(), \
    lost_at = case when log_holds.detail->>'position' = excluded.detail->>'position' \
                   then log_holds.lost_at end, \
    detail = excluded.detail \
where log_holds.detail->>'owner' = excluded.detail->>'owner'";

/// A channel left for good: its row goes (if it still owns it).
const RELEASE: &str = "\
delete from realtime.log_holds \
where kind = 'resume' and holder = $1 and detail->>'owner' = $2";

/// Claims a row for a new owner and reports what it held (expired rows are kept a day,
/// so an expired grace can be told from an unknown key).
const TAKE: &str = "\
with old as ( \
    select expires_at > now() as alive, lost_at is not null as lost, detail->>'position' as position \
    from realtime.log_holds where kind = 'resume' and holder = $1 for update), \
claimed as ( \
    update realtime.log_holds set detail = detail || jsonb_build_object('owner', $2::text) \
    where kind = 'resume' and holder = $1) \
select alive, lost, position from old";

const COUNT_PARKED: &str = "\
select count(*) from realtime.log_holds \
where kind = 'resume' and expires_at > now() and (detail->>'parked')::boolean";

pub async fn upsert(
    client: &Client,
    rows: &[Row],
    grace: Duration,
) -> Result<(), tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // One statement may not update a row twice.
    let latest = latest_per_holder(rows.iter());
    // When Postgres refuses something in a batch, the halves are written apart, down to
    // the row it cannot hold: that row costs only its own channel's resume, never
    // everyone's writes, and a few statements per refused row (not one per row).
    let mut pending: Vec<&[&Row]> = vec![&latest];
    while let Some(part) = pending.pop() {
        match write(client, part, grace).await {
            Err(e) if refused(&e) => match part {
                [row] => {
                    let message = e.as_db_error().map(|d| d.message().to_owned());
                    tracing::warn!(holder = %row.holder.chars().take(200).collect::<String>(), error = ?message,
                        "Postgres refused a resumable subscription's row; that channel will not resume");
                }
                _ => {
                    let (first, rest) = part.split_at(part.len() / 2);
                    pending.push(rest);
                    pending.push(first);
                }
            },
            done => done?,
        }
    }
    Ok(())
}

async fn write(
    client: &Client,
    rows: &[&Row],
    grace: Duration,
) -> Result<(), tokio_postgres::Error> {
    let holders: Vec<&str> = rows.iter().map(|r| r.holder.as_str()).collect();
    let snaps: Vec<&str> = rows.iter().map(|r| r.snapshot.as_str()).collect();
    let details: Vec<&Value> = rows.iter().map(|r| &r.detail).collect();
    client
        .execute(UPSERT, &[&holders, &snaps, &details, &grace.as_secs_f64()])
        .await?;
    Ok(())
}

/// Whether Postgres refused the data itself (a data exception or a size limit, SQLSTATE
/// classes 22 and 54), which writing it again will not mend, as opposed to an outage.
fn refused(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("54"))
}

/// One row per holder, the last given (a channel written live, then parked), in the
/// order given.
pub fn latest_per_holder<R: std::borrow::Borrow<Row>>(
    rows: impl DoubleEndedIterator<Item = R>,
) -> Vec<R> {
    let mut seen = std::collections::HashSet::new();
    let mut latest: Vec<R> = rows
        .rev()
        .filter(|r| seen.insert(r.borrow().holder.clone()))
        .collect();
    latest.reverse();
    latest
}

pub async fn release(
    client: &Client,
    holder: &str,
    owner: &str,
) -> Result<(), tokio_postgres::Error> {
    client.execute(RELEASE, &[&holder, &owner]).await?;
    Ok(())
}

/// What a resuming channel found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A position to replay from.
    At(String),
    /// The row is past its grace.
    Expired,
    /// The log was pruned past the position (the retention cap).
    Pruned,
    /// No row for this key, topic and bindings.
    Unknown,
    /// The same channel, still live here (the client joined it again on the same
    /// connection, as realtime-js does after failed connection attempts), was told to
    /// refetch, and no pong shows its client read that: it is told so again.
    ToldRefetch(crate::protocol::NotRecovered),
}

pub async fn take(
    client: &Client,
    holder: &str,
    owner: &str,
) -> Result<Found, tokio_postgres::Error> {
    let row = client.query_opt(TAKE, &[&holder, &owner]).await?;
    Ok(match row {
        None => Found::Unknown,
        Some(r) => {
            let (alive, lost, position): (bool, bool, Option<String>) =
                (r.get(0), r.get(1), r.get(2));
            match (alive, lost, position) {
                (_, true, _) => Found::Pruned,
                (false, _, _) => Found::Expired,
                (true, false, Some(p)) => Found::At(p),
                (true, false, None) => Found::Unknown,
            }
        }
    })
}

/// Positions of rows in their grace written in the last `$1` seconds (parked, or live
/// checkpoints a killed hub left), except those the log was pruned past.
const RECENT_POSITIONS: &str = "\
select detail->>'position' from realtime.log_holds \
where kind = 'resume' and expires_at > now() and lost_at is null \
  and updated_at > now() - make_interval(secs => $1) and detail ? 'position'";

/// The positions of resumable channels written within `within` (see `RECENT_POSITIONS`).
pub async fn recent_positions(
    client: &Client,
    within: Duration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(RECENT_POSITIONS, &[&within.as_secs_f64()])
        .await?;
    Ok(rows.iter().filter_map(|r| r.get(0)).collect())
}

pub async fn count_parked(client: &Client) -> Result<i64, tokio_postgres::Error> {
    Ok(client.query_one(COUNT_PARKED, &[]).await?.get(0))
}
