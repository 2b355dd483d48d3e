//! One gap-free read of `realtime.changes`: under a fresh REPEATABLE READ snapshot,
//! every row whose transaction the cursor had not seen, in id order, page by page;
//! then the cursor moves to that snapshot. Also the retention delete.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_postgres::{Client, IsolationLevel, Row, Transaction};
use tokio_util::sync::CancellationToken;

use super::cursor::Cursor;
use super::status::CaptureStatus;
use super::CaptureError;
use crate::changes::{format_commit_time, Change, DbBroadcast, DbEvent, Op};

/// Rows new to `cursor` ($1 xmax, $2 xip), minus rows an interrupted read already
/// delivered ($3 its snapshots, $4 the last id it sent under each). Both arms of the OR
/// use the xid index (a BitmapOr), so the read costs what is new, not the whole log.
const READ_NEW_ROWS: &str = "\
select c.id, c.op, c.schema_name, c.table_name, c.record, c.old_record, \
       c.topic, c.event, c.private, realtime.commit_time(c.xid, c.created_at) as created_at, \
       (extract(epoch from clock_timestamp() - c.created_at) * 1000)::int8 as age_ms \
from realtime.changes c \
where (c.xid >= $1::text::xid8 or c.xid = any($2::text[]::xid8[])) \
  and not exists ( \
      select 1 from unnest($3::text[], $4::int8[]) as p(snap, last_id) \
      where c.id <= p.last_id and pg_visible_in_snapshot(c.xid, p.snap::pg_snapshot)) \
order by c.id";

const CURRENT_SNAPSHOT: &str = "select pg_current_snapshot()::text";

/// Rows older than the retention ($3 seconds) that the cursor ($1 xmax, $2 snapshot)
/// has read: their transactions committed before it. Precise even while some
/// unrelated transaction stays open.
const PRUNE: &str = "\
delete from realtime.changes \
where xid < $1::text::xid8 and pg_visible_in_snapshot(xid, $2::text::pg_snapshot) \
  and created_at < clock_timestamp() - make_interval(secs => $3)";

/// Where the reader is: the cursor plus what interrupted reads already delivered.
#[derive(Debug, Clone)]
pub(crate) struct ReadState {
    pub cursor: Cursor,
    /// (snapshot, last id sent) of each read that failed after sending some pages; rows
    /// visible in that snapshot with id <= last id were delivered. Cleared by a full read.
    partials: Vec<(String, i64)>,
}

/// How a read ended when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// Caught up; the cursor moved (or nothing was new).
    CaughtUp,
    /// Shutdown was requested or the receiver of events is gone.
    Stopped,
}

impl ReadState {
    pub fn new(cursor: Cursor) -> Self {
        ReadState {
            cursor,
            partials: Vec::new(),
        }
    }

    /// Reads everything new, sends it in pages of `batch_limit`, then moves the cursor.
    pub async fn read_once(
        &mut self,
        client: &mut Client,
        batch_limit: usize,
        out: &mpsc::Sender<Vec<DbEvent>>,
        status: &CaptureStatus,
        shutdown: &CancellationToken,
    ) -> Result<ReadEnd, CaptureError> {
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let snapshot: String = tx.query_one(CURRENT_SNAPSHOT, &[]).await?.get(0);
        let next = Cursor::from_pg_snapshot(&snapshot)?;
        if next == self.cursor && self.partials.is_empty() {
            tx.commit().await?;
            status.set_idle();
            return Ok(ReadEnd::CaughtUp);
        }
        let mut sent_upto = None;
        let result = self
            .send_pages(&tx, batch_limit, out, status, shutdown, &mut sent_upto)
            .await;
        let result = match result {
            Ok(ReadEnd::CaughtUp) => tx.commit().await.map_err(CaptureError::from),
            Ok(ReadEnd::Stopped) => return Ok(ReadEnd::Stopped),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            if let Some(last_id) = sent_upto {
                self.partials.push((snapshot, last_id));
            }
            return Err(e);
        }
        self.cursor = next;
        self.partials.clear();
        status.set_cursor(&self.cursor.to_string());
        Ok(ReadEnd::CaughtUp)
    }

    async fn send_pages(
        &self,
        tx: &Transaction<'_>,
        batch_limit: usize,
        out: &mpsc::Sender<Vec<DbEvent>>,
        status: &CaptureStatus,
        shutdown: &CancellationToken,
        sent_upto: &mut Option<i64>,
    ) -> Result<ReadEnd, CaptureError> {
        let (xmax, xip) = self.cursor.bind_texts();
        let snaps: Vec<&str> = self.partials.iter().map(|(s, _)| s.as_str()).collect();
        let last_ids: Vec<i64> = self.partials.iter().map(|(_, id)| *id).collect();
        let statement = tx.prepare(READ_NEW_ROWS).await?;
        let portal = tx
            .bind(&statement, &[&xmax, &xip, &snaps, &last_ids])
            .await?;
        let page_size = i32::try_from(batch_limit.max(1)).unwrap_or(i32::MAX);
        loop {
            let rows = tx.query_portal(&portal, page_size).await?;
            let Some(last) = rows.last() else {
                return Ok(ReadEnd::CaughtUp);
            };
            let last_id: i64 = last.get("id");
            let age_ms: i64 = last.get("age_ms");
            let full_page = rows.len() == page_size as usize;
            let events: Vec<DbEvent> = rows.iter().filter_map(to_event).collect();
            let last_ts = events.iter().rev().find_map(|e| match e {
                DbEvent::Change(c) => Some(format_commit_time(c.commit_time)),
                DbEvent::Broadcast(_) => None,
            });
            let count = rows.len();
            if !events.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(ReadEnd::Stopped),
                    sent = out.send(events) => if sent.is_err() {
                        return Ok(ReadEnd::Stopped);
                    },
                }
            }
            *sent_upto = Some(last_id);
            status.record_batch(count, last_ts.as_deref(), age_ms);
            if !full_page {
                return Ok(ReadEnd::CaughtUp);
            }
        }
    }
}

/// Takes the current snapshot as a starting cursor.
pub(crate) async fn current_cursor(client: &Client) -> Result<Cursor, CaptureError> {
    let snapshot: String = client.query_one(CURRENT_SNAPSHOT, &[]).await?.get(0);
    Ok(Cursor::from_pg_snapshot(&snapshot)?)
}

/// Deletes log rows older than `retention` that `cursor` has already read (their
/// transactions committed before it); unread rows are never touched. Returns the count.
pub async fn prune(
    client: &Client,
    cursor: &Cursor,
    retention: Duration,
) -> Result<u64, CaptureError> {
    let xmax = cursor.xmax.to_string();
    let secs = retention.as_secs_f64();
    let snapshot = cursor.to_pg_snapshot();
    Ok(client.execute(PRUNE, &[&xmax, &snapshot, &secs]).await?)
}

/// Maps a log row; a row that cannot be mapped is logged and skipped.
fn to_event(row: &Row) -> Option<DbEvent> {
    let id: i64 = row.get("id");
    let op: String = row.get("op");
    let record: Option<Value> = row.get("record");
    if op == "BROADCAST" {
        return Some(DbEvent::Broadcast(DbBroadcast {
            id,
            topic: row.get::<_, Option<String>>("topic").unwrap_or_default(),
            event: row.get::<_, Option<String>>("event").unwrap_or_default(),
            payload: record.unwrap_or(Value::Object(Map::new())),
            private: row.get::<_, Option<bool>>("private").unwrap_or(true),
        }));
    }
    let Some(op) = Op::parse(&op) else {
        tracing::warn!(id, op, "skipping log row with unknown op");
        return None;
    };
    let created_at: DateTime<Utc> = row.get("created_at");
    Some(DbEvent::Change(Change {
        id,
        schema: row
            .get::<_, Option<String>>("schema_name")
            .unwrap_or_default(),
        table: row
            .get::<_, Option<String>>("table_name")
            .unwrap_or_default(),
        op,
        record: record.and_then(into_object),
        old_record: row
            .get::<_, Option<Value>>("old_record")
            .and_then(into_object),
        commit_time: created_at,
    }))
}

fn into_object(v: Value) -> Option<Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        _ => None,
    }
}
