//! Reading `realtime.changes` gap-free from a `Position`. The usual read is one statement
//! (one round trip): the rows new to the position under that statement's own snapshot,
//! returned with the snapshot. A backlog larger than a page is read inside one REPEATABLE
//! READ transaction, page by page, so the position stays exact however long it is.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{Client, GenericClient, IsolationLevel, Row, Statement};

use super::cursor::{Cursor, CursorError, Origin, Position};
use super::CaptureError;
use crate::changes::{
    entry_bytes, gap_len, into_events, Change, DbBroadcast, DbEvent, LogEntry, Op, StatementRows,
};

/// The selected columns of a log row, as `to_entry` reads them. `created_at` is
/// `realtime.commit_time(c.xid, c.created_at)` written out: a PL/pgSQL call per row was
/// a third of a resume's read of its gap.
macro_rules! log_columns {
    () => {
        "c.id, c.op, c.schema_name, c.table_name, c.record, c.old_record, c.rows, c.old_rows, \
         c.topic, c.event, c.private, c.message_id::text as message_id, c.binary_payload, \
         c.xid::text as xid, \
         case when pg_catalog.current_setting('track_commit_timestamp') = 'on' \
              then coalesce(pg_catalog.pg_xact_commit_timestamp(pg_catalog.xid(c.xid)), \
                            c.created_at) \
              else c.created_at end as created_at, \
         (extract(epoch from clock_timestamp() - c.created_at) * 1000)::int8 as age_ms"
    };
}

/// Rows new to a position whose bind values (`Position::bind_values`: xmax, xip of its
/// cursor, its page snapshots, the last id of each page, the ids it read ahead) are the
/// five parameters named. Both arms of the OR use the xid index (a BitmapOr), so a read
/// costs what is new, not the whole log. `sql/053_read_page.sql` restates this condition
/// and `log_columns!` for the page read: a change here is a new migration there.
macro_rules! unread_by {
    ($xmax:literal, $xip:literal, $snaps:literal, $ids:literal, $ahead:literal) => {
        unread_by!($xmax, $xip, $snaps, $ids, $ahead; "")
    };
    // `$below`: a condition on `c.xid` put in both arms of the OR, so the xid index
    // scans within it.
    ($xmax:literal, $xip:literal, $snaps:literal, $ids:literal, $ahead:literal; $below:expr) => {
        concat!(
            "(c.xid >= ", $xmax, "::text::xid8", $below,
            " or c.xid = any(", $xip, "::text[]::xid8[])", $below, ") \
             and c.id <> all(", $ahead, "::int8[]) \
             and not exists ( \
                 select 1 from unnest(", $snaps, "::text[], ", $ids, "::int8[]) as p(snap, last_id) \
                 where c.id <= p.last_id and pg_visible_in_snapshot(c.xid, p.snap::pg_snapshot))"
        )
    };
}

/// Rows new to the position bound as $1..$5.
macro_rules! new_rows {
    () => {
        unread_by!("$1", "$2", "$3", "$4", "$5")
    };
}

/// Rows new to the position bound as $1..$5 of transactions below xid `$below`: the
/// bound is in both arms, so the xid index scans no row at or above it.
macro_rules! new_rows_below {
    ($below:literal) => {
        unread_by!("$1", "$2", "$3", "$4", "$5"; concat!(" and c.xid < ", $below, "::text::xid8"))
    };
}

/// The server lifetime and the server clock after `snap.s` was taken, as an `Origin`
/// (microseconds since the epoch; `snap` must be materialized before `stamp`).
macro_rules! stamp {
    () => {
        "stamp as materialized (select snap.*, \
             (extract(epoch from pg_postmaster_start_time()) * 1000000)::int8 as server, \
             (extract(epoch from clock_timestamp()) * 1000000)::int8 as at from snap)"
    };
}

/// One page ($6 rows at most) in one statement, with the statement's snapshot: the rows
/// it returns are exactly those new to the position (bound as `new_rows!` binds them)
/// and visible in that snapshot. Always returns at least one row (columns null when
/// nothing is new) to carry the snapshot, its origin, and the rules version row scope's
/// cache follows. `sql/053_read_page.sql` holds the statement, so its plan is kept
/// across calls instead of planned again for each.
const READ_PAGE: &str = "select * from realtime.read_page($1::text, $2::text[], $3::text[], \
     $4::int8[], $5::int8[], $6::int8)";

/// `READ_PAGE` for a reader of a few tables (`sql/076_read_page_of.sql`): the same rows
/// under the same snapshot, but only the changes of the tables ($7, as `LogTables::keys`
/// spells them) and kinds ($8) it wants come with their data. The others are passed over
/// as one event each, without being read from Postgres's storage or sent.
const READ_PAGE_OF: &str = "select * from realtime.read_page_of($1::text, $2::text[], \
     $3::text[], $4::int8[], $5::int8[], $6::int8, $7::text[], $8::text[])";

/// Every row new to the position, in id order, for paging through a backlog inside a
/// REPEATABLE READ transaction.
const READ_BACKLOG: &str = concat!(
    "select ",
    log_columns!(),
    " from realtime.changes c where ",
    new_rows!(),
    " order by c.id"
);

/// Rows a reader at position A ($1..$5) has not read but one at position B ($6..$10) has,
/// in id order, $11 at most: a fixed set (everything B has read is committed). $12 is
/// `Position::read_below` of B: B has read no row at or above it, so the xid index scan
/// stops there instead of running on through everything committed since B. $13..$15 are
/// a `LogTables` (`LogTables::keys` for its tables: on a 5,000-row read, a subquery over
/// the pairs for each row cost ~12 % of the read, these keys ~7 %): only broadcasts and
/// the changes of those tables are read.
const READ_RANGE: &str = concat!(
    "select ",
    log_columns!(),
    " from realtime.changes c where ",
    new_rows_below!("$12"),
    " and not (",
    unread_by!("$6", "$7", "$8", "$9", "$10"),
    ") and (c.op = 'BROADCAST' or $13::bool or c.schema_name = any($14::text[]) \
          or length(c.schema_name) || ':' || c.schema_name || '.' || c.table_name \
             = any($15::text[])) \
     order by c.id limit $11"
);

/// Which tables' changes a range read returns (`entries_between`); broadcasts are
/// always returned.
#[derive(Debug, Clone, Default)]
pub struct LogTables {
    /// Every table's.
    pub all: bool,
    /// Every table of these schemas.
    pub schemas: Vec<String>,
    /// These tables, (schema, table).
    pub tables: Vec<(String, String)>,
}

impl LogTables {
    /// Every table's changes.
    pub fn all() -> LogTables {
        LogTables {
            all: true,
            ..LogTables::default()
        }
    }

    /// Its tables as `READ_RANGE` and `READ_PAGE_OF` match them: `<characters in the
    /// schema name>:<schema>.<table>`, which no other pair spells alike.
    fn keys(&self) -> Vec<String> {
        let key = |(s, t): &(String, String)| format!("{}:{s}.{t}", s.chars().count());
        self.tables.iter().map(key).collect()
    }

    /// Whether changes of `schema.table` are read.
    pub fn has(&self, schema: &str, table: &str) -> bool {
        self.all
            || self.schemas.iter().any(|s| s == schema)
            || self.tables.iter().any(|(s, t)| s == schema && t == table)
    }
}

/// The range read, for readers that prepare it on their own (pooled) connections.
pub const READ_RANGE_SQL: &str = READ_RANGE;

/// The planner settings `realtime.read_page` has (`sql/053_read_page.sql`), for the
/// other reads of what is new to a position, set for one transaction: the xid index
/// finds those rows whatever the log's statistics. Without statistics (a log never
/// analyzed) Postgres scanned the whole log for them (`tests/capture_read_plan.rs`).
const NEW_ROWS_PLAN: &str =
    "set local enable_seqscan = off; set local enable_indexscan = off; set local jit = off";

const CURRENT_SNAPSHOT: &str = concat!(
    "with snap as materialized (select pg_current_snapshot() as s), ",
    stamp!(),
    " select s::text, server, at from stamp"
);
const BACKLOG_START: &str = concat!(
    "with snap as materialized (select pg_current_snapshot() as s, \
                                       realtime.rules_version() as rv), ",
    stamp!(),
    " select s::text, rv, server, at from stamp"
);

/// Corrects a position ($1..$5 as in `new_rows!`, $6 and $7 its origin) read back in
/// another server lifetime. Returns the current lifetime and clock, and, when the
/// lifetime differs, the id to forget from: the least of the oldest transaction running
/// now (every transaction from now on gets an id at least this high) and the oldest
/// transaction of a log row created after the position's origin that the position counts
/// as read. Within one lifetime no such row exists (a transaction still running or not yet
/// started when the position's snapshots were taken is new to it), so each of them got
/// an id the restarted server handed out again. Every id a lifetime hands out is above
/// every id that committed in the lifetimes before it, so nothing the position really
/// read is read again.
const CORRECT: &str = concat!(
    "with snap as materialized (select pg_current_snapshot() as s), ",
    stamp!(),
    " select snap.server, snap.at, case when snap.server <> $6 then least( \
         pg_snapshot_xmin(snap.s), \
         (select min(c.xid) from realtime.changes c \
           where c.created_at > 'epoch'::timestamptz + $7::int8 * interval '1 microsecond' \
             and not (",
    new_rows!(),
    "))) end::text as forget_from from stamp snap"
);
/// The page read, for readers that prepare it on their own (pooled) connections.
pub const READ_PAGE_SQL: &str = READ_PAGE;
/// The page read of a reader of a few tables (`Statements::of_tables`).
pub const READ_PAGE_OF_SQL: &str = READ_PAGE_OF;

/// Statements prepared once per connection.
pub struct Statements {
    page: Statement,
    /// For `READ_PAGE_OF`: its table keys and kinds of change.
    only: Option<(Vec<String>, Vec<&'static str>)>,
}

impl Statements {
    pub async fn prepare(client: &Client) -> Result<Statements, CaptureError> {
        Ok(Statements {
            page: client.prepare(READ_PAGE).await?,
            only: None,
        })
    }

    /// `READ_PAGE_SQL` prepared by the caller (e.g. a pool's statement cache).
    pub fn from_page(page: Statement) -> Statements {
        Statements { page, only: None }
    }

    /// `READ_PAGE_OF_SQL` prepared by the caller, reading the data of the changes of
    /// `tables` (its `tables` only: `all` and `schemas` are not used) of the kinds in
    /// `ops`. Every other log row of a page reads as a change without rows
    /// (`LogEntry::Event` with neither record), so it still counts as one event read.
    pub fn of_tables(page_of: Statement, tables: &LogTables, ops: &[Op]) -> Statements {
        Statements {
            page: page_of,
            only: Some((tables.keys(), ops.iter().map(|o| o.as_str()).collect())),
        }
    }
}

/// The next events after `position` (at most `limit` log rows, so a statement's rows are
/// never split), advancing it: what every reader of the log other than the live capture
/// uses (resumed subscriptions, webhooks, the change feed). An empty result means the
/// reader is caught up.
pub async fn next_events(
    client: &Client,
    stmts: &Statements,
    position: &mut Position,
    limit: usize,
) -> Result<Vec<DbEvent>, CaptureError> {
    let page = read_page(client, stmts, position, limit).await?;
    advance(position, &page, limit);
    Ok(into_events(page.entries))
}

/// One page read by `next_page`.
pub struct PageRead {
    /// The page's log rows; a statement's rows not parsed yet (`LogEntry::into_events`).
    pub entries: Vec<LogEntry>,
    /// The position the page was read from: the one passed in, corrected if the server
    /// crashed since it was taken (`correct`).
    pub from: Position,
    /// The snapshot the page was read under, and when it was taken.
    pub snapshot: Cursor,
    pub origin: Origin,
    /// The page held `limit` log rows: more may follow at once.
    pub full: bool,
    /// The id of the page's last log row.
    pub last_id: Option<i64>,
}

/// `next_events`, also telling the page's snapshot and whether it was full: for readers
/// that hand out positions inside a page (webhooks, the change feed), which need the
/// snapshot to say "rows up to this id were read".
pub async fn next_page(
    client: &Client,
    stmts: &Statements,
    position: &mut Position,
    limit: usize,
) -> Result<PageRead, CaptureError> {
    let page = read_page(client, stmts, position, limit).await?;
    let from = position.clone();
    advance(position, &page, limit);
    Ok(PageRead {
        full: page.last_id.is_some() && page.rows >= limit.max(1),
        last_id: page.last_id,
        from,
        snapshot: page.snapshot,
        origin: page.origin,
        entries: page.entries,
    })
}

/// What one page read found.
pub(crate) struct Page {
    /// The snapshot the page was read under, and when it was taken.
    pub snapshot: Cursor,
    pub origin: Origin,
    /// Its log rows, a statement's rows not parsed yet.
    pub entries: Vec<LogEntry>,
    /// Rows read (including any that could not be mapped).
    pub rows: usize,
    pub last_id: Option<i64>,
    /// Age in ms of the newest row when it was read.
    pub age_ms: Option<i64>,
    /// `realtime.rules_version()` at the read.
    pub rules_version: Option<i64>,
}

impl Page {
    fn from_rows(
        snapshot: Cursor,
        origin: Origin,
        rules_version: Option<i64>,
        rows: &[Row],
    ) -> Page {
        let rows: Vec<&Row> = rows
            .iter()
            .filter(|r| r.get::<_, Option<i64>>("id").is_some())
            .collect();
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            to_entry(row, &mut entries);
        }
        Page {
            snapshot,
            origin,
            entries,
            rows: rows.len(),
            last_id: rows.last().map(|r| r.get("id")),
            age_ms: rows.last().map(|r| r.get("age_ms")),
            rules_version,
        }
    }
}

/// Reads the next page after `position`, in one round trip unless the server crashed
/// since the position was taken: then the position is corrected first (`correct`) and
/// the page read again. The caller moves the position with `advance`.
pub(crate) async fn read_page(
    client: &Client,
    stmts: &Statements,
    position: &mut Position,
    limit: usize,
) -> Result<Page, CaptureError> {
    let page = read_page_once(client, stmts, position, limit).await?;
    match position.origin {
        Some(o) if o.server != page.origin.server => {
            correct(client, position).await?;
            read_page_once(client, stmts, position, limit).await
        }
        _ => Ok(page),
    }
}

async fn read_page_once(
    client: &Client,
    stmts: &Statements,
    position: &Position,
    limit: usize,
) -> Result<Page, CaptureError> {
    let (xmax, xip, snaps, ids, ahead) = position.bind_values();
    let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
    let rows = match &stmts.only {
        None => {
            client
                .query(&stmts.page, &[&xmax, &xip, &snaps, &ids, &ahead, &limit])
                .await?
        }
        Some((tables, ops)) => {
            let params: [&(dyn ToSql + Sync); 8] =
                [&xmax, &xip, &snaps, &ids, &ahead, &limit, tables, ops];
            client.query(&stmts.page, &params).await?
        }
    };
    let first = rows
        .first()
        .ok_or_else(|| CaptureError::ConnectionClosed("read returned no snapshot".into()))?;
    let snapshot: String = first.get("snapshot");
    let version: Option<i64> = first.get("rules_version");
    let origin = Origin {
        server: first.get("origin_server"),
        at: first.get("origin_at"),
    };
    Ok(Page::from_rows(
        Cursor::from_pg_snapshot(&snapshot)?,
        origin,
        version,
        &rows,
    ))
}

/// Corrects a position taken in an earlier server lifetime (see `Origin`): after a
/// crash Postgres can hand out again the ids of transactions that rolled back after its
/// last WAL write, ids the position may already count as read. Every transaction that
/// got such an id is read again (`Position::forget_from`, see `CORRECT`), and nothing the
/// position had read. The corrected position is stamped with the current lifetime. A
/// position without an origin is left as it is; so is one of the current lifetime. True
/// when the position changed.
pub async fn correct(
    client: &impl GenericClient,
    position: &mut Position,
) -> Result<bool, CaptureError> {
    let Some(origin) = position.origin else {
        return Ok(false);
    };
    let (xmax, xip, snaps, ids, ahead) = position.bind_values();
    let row = client
        .query_one(
            CORRECT,
            &[
                &xmax,
                &xip,
                &snaps,
                &ids,
                &ahead,
                &origin.server,
                &origin.at,
            ],
        )
        .await?;
    let Some(from) = row.get::<_, Option<String>>(2) else {
        return Ok(false);
    };
    let from: u64 = from
        .parse()
        .map_err(|_| CaptureError::Cursor(CursorError(from.clone())))?;
    let changed = position.forget_from(from);
    position.origin = Some(Origin {
        server: row.get(0),
        at: row.get(1),
    });
    Ok(changed)
}

/// Moves `position` past a page read with `limit`: a short page means everything new was
/// read (the position collapses to the page's snapshot); a full page is remembered.
pub(crate) fn advance(position: &mut Position, page: &Page, limit: usize) {
    match page.last_id {
        Some(last) if page.rows >= limit.max(1) => {
            position.read_through(&page.snapshot, last, Some(page.origin))
        }
        _ => *position = position.caught_up(page.snapshot.clone(), page.origin),
    }
}

/// Prepares the backlog read (`read_backlog`) once per connection. Preparing it takes
/// `realtime.changes`' lock, so it also waits until the log can be read (the page read is
/// a function call, which does not).
pub(crate) async fn prepare_backlog(client: &Client) -> Result<Statement, CaptureError> {
    Ok(client.prepare(READ_BACKLOG).await?)
}

/// Reads a backlog: every row new to `position` under one REPEATABLE READ snapshot, handed
/// to `each` page by page with the position after it (`each` returns false to stop). The
/// position advances page by page, so a failure part-way loses nothing and repeats
/// nothing; at the end it is the transaction's snapshot.
pub(crate) async fn read_backlog<F, Fut>(
    client: &mut Client,
    statement: &Statement,
    position: &mut Position,
    limit: usize,
    mut each: F,
) -> Result<bool, CaptureError>
where
    F: FnMut(Page, String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let start = tx.query_one(BACKLOG_START, &[]).await?;
    let snapshot = Cursor::from_pg_snapshot(&start.get::<_, String>(0))?;
    let version: Option<i64> = start.get(1);
    let origin = Origin {
        server: start.get(2),
        at: start.get(3),
    };
    if position.origin.is_some_and(|o| o.server != origin.server) {
        correct(&tx, position).await?;
    }
    let (xmax, xip, snaps, ids, ahead) = position.bind_values();
    let portal = tx
        .bind(statement, &[&xmax, &xip, &snaps, &ids, &ahead])
        .await?;
    let page_size = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
    loop {
        let rows = tx.query_portal(&portal, page_size).await?;
        let page = Page::from_rows(snapshot.clone(), origin, version, &rows);
        let done = rows.len() < page_size as usize;
        if let Some(last) = page.last_id {
            // Recorded before handing the page on: if the read fails later, these rows
            // count as read.
            position.read_through(&snapshot, last, Some(origin));
            let at = if done {
                position.caught_up(snapshot.clone(), origin)
            } else {
                position.clone()
            };
            if !each(page, at.to_string()).await {
                tx.commit().await?;
                return Ok(false);
            }
        }
        if done {
            break;
        }
    }
    tx.commit().await?;
    *position = position.caught_up(snapshot, origin);
    Ok(true)
}

/// What a range read (`entries_between`) took in.
pub struct RangeRead {
    /// The range's log rows, a statement's rows not parsed yet; when `over`, those read
    /// before it stopped.
    pub entries: Vec<LogEntry>,
    /// Each entry's log row: (transaction id, log id), as `Position::has_read` takes them.
    pub rows: Vec<(u64, i64)>,
    /// The range holds more than `max_events` events: reading stopped there.
    pub over: bool,
}

/// The log rows a reader at `from` has not read and one at `until` has (a resumed
/// subscription's gap), of broadcasts and the changes of `tables` (a statement's rows
/// not parsed yet). The rows are read as they arrive, and reading stops once they hold
/// more than `max_events` events (as `changes::gap_len` counts them, each log row one at
/// least, so never past `max_events` + 1 log rows): a gap too large to replay is never
/// held whole. `stmt` is `READ_RANGE_SQL` prepared.
pub async fn entries_between(
    client: &mut Client,
    stmt: &Statement,
    from: &Position,
    until: &Position,
    tables: &LogTables,
    max_events: usize,
) -> Result<RangeRead, CaptureError> {
    let (xmax, xip, snaps, ids, ahead) = from.bind_values();
    let (uxmax, uxip, usnaps, uids, uahead) = until.bind_values();
    let below = until.read_below().to_string();
    let limit = i64::try_from(max_events.saturating_add(1)).unwrap_or(i64::MAX);
    let keys = tables.keys();
    let tx = client.transaction().await?;
    tx.batch_execute(NEW_ROWS_PLAN).await?;
    let params: [&(dyn ToSql + Sync); 15] = [
        &xmax,
        &xip,
        &snaps,
        &ids,
        &ahead,
        &uxmax,
        &uxip,
        &usnaps,
        &uids,
        &uahead,
        &limit,
        &below,
        &tables.all,
        &tables.schemas,
        &keys,
    ];
    let rows = tx
        .query_raw(stmt, params.iter().map(|p| *p as &dyn ToSql))
        .await?;
    let mut rows = std::pin::pin!(rows);
    let mut read = RangeRead {
        entries: Vec::new(),
        rows: Vec::new(),
        over: false,
    };
    let mut events = 0usize;
    while let Some(row) = rows.try_next().await? {
        let before = read.entries.len();
        to_entry(&row, &mut read.entries);
        if read.entries.len() > before {
            // (Never unknown; if it were, as new to every position: sent twice, not lost.)
            let xid = row
                .get::<_, Option<&str>>("xid")
                .and_then(|x| x.parse().ok());
            read.rows.push((xid.unwrap_or(u64::MAX), row.get("id")));
        }
        // (A log row counts one even when it maps to no entry.)
        events = events.saturating_add(gap_len(&read.entries[before..]).max(1));
        if events > max_events {
            // (The transaction is rolled back as it is dropped; nothing was written.)
            read.over = true;
            return Ok(read);
        }
    }
    tx.commit().await?;
    Ok(read)
}

/// About how many log rows transactions from `xmin` on have written: the ids handed out
/// since the row of the least such transaction (two index probes, however long the log).
const ROWS_SINCE: &str = "select coalesce(max(c.id) + 1 - (select f.id from realtime.changes f \
     where f.xid >= $1::text::xid8 order by f.xid limit 1), 0)::int8 from realtime.changes c";

/// How many log rows transactions from `xmin` on have written, estimated without reading
/// them: to tell a read that is surely too large before making it. It counts ids that
/// rolled-back transactions took as well, and a transaction's id orders its rows only
/// roughly, so it is never a bound to rely on.
pub async fn log_rows_since(client: &Client, xmin: u64) -> Result<i64, tokio_postgres::Error> {
    let row = client.query_one(ROWS_SINCE, &[&xmin.to_string()]).await?;
    Ok(row.get(0))
}

/// Takes the current snapshot as a starting cursor.
pub async fn current_cursor(client: &Client) -> Result<Cursor, CaptureError> {
    Ok(current_position(client).await?.cursor)
}

/// The current snapshot as a starting position, with its origin.
pub async fn current_position(client: &Client) -> Result<Position, CaptureError> {
    let row = client.query_one(CURRENT_SNAPSHOT, &[]).await?;
    let snapshot: String = row.get(0);
    let origin = Origin {
        server: row.get(1),
        at: row.get(2),
    };
    Ok(Position::taken(
        Cursor::from_pg_snapshot(&snapshot)?,
        origin,
    ))
}

/// Maps a log row to what it holds: a captured statement's rows (`rows` and `old_rows`,
/// aligned by position, left as JSON text), a single-row entry (`record`/`old_record`)
/// or a broadcast. A row that cannot be mapped is logged and skipped.
fn to_entry(row: &Row, out: &mut Vec<LogEntry>) {
    let id: i64 = row.get("id");
    let op: String = row.get("op");
    let xid = row
        .get::<_, Option<&str>>("xid")
        .and_then(|x| x.parse::<u64>().ok());
    let (Ok(record), Ok(old_record)) = (json_column(row, "record"), json_column(row, "old_record"))
    else {
        return;
    };
    if op == "BROADCAST" {
        let binary = row
            .get::<_, Option<Vec<u8>>>("binary_payload")
            .map(bytes::Bytes::from);
        let payload = match (&binary, record) {
            (Some(_), _) => Value::Null,
            (None, record) => record.unwrap_or(Value::Object(Map::new())),
        };
        out.push(LogEntry::Event(DbEvent::Broadcast(DbBroadcast {
            log_id: id,
            // Rows logged before realtime.messages existed have no message id.
            id: row
                .get::<_, Option<String>>("message_id")
                .unwrap_or_else(|| id.to_string()),
            topic: row.get::<_, Option<String>>("topic").unwrap_or_default(),
            event: row.get::<_, Option<String>>("event").unwrap_or_default(),
            payload,
            binary,
            private: row.get::<_, Option<bool>>("private").unwrap_or(true),
            xid: xid.unwrap_or(0),
        })));
        return;
    }
    let Some(op) = Op::parse(&op) else {
        tracing::warn!(id, op, "skipping log row with unknown op");
        return;
    };
    let rows = |column: &str| match row.try_get::<_, Option<Json<RawRows>>>(column) {
        Ok(rows) => Ok(rows.map(|Json(r)| r)),
        Err(e) => {
            tracing::warn!(id, column, error = %e, "skipping log row whose rows are not a JSON array");
            Err(())
        }
    };
    let (Ok(rows), Ok(old_rows)) = (rows("rows"), rows("old_rows")) else {
        return;
    };
    out.push(
        Logged {
            id,
            xid: xid.unwrap_or(u64::MAX),
            op,
            schema: row
                .get::<_, Option<String>>("schema_name")
                .unwrap_or_default(),
            table: row
                .get::<_, Option<String>>("table_name")
                .unwrap_or_default(),
            commit_time: row.get::<_, DateTime<Utc>>("created_at"),
            record,
            old_record,
            rows,
            old_rows,
        }
        .into_entry(),
    );
}

/// A `jsonb` column of a log row (a single-row change's `record`/`old_record`, a
/// broadcast's payload). It is read as text first: tokio-postgres would panic on JSON
/// nested past serde_json's 128 levels, which Postgres holds (10,000), and any role that
/// may broadcast can write one. Such a value is logged and `Err`: its row is not
/// delivered, and everything after it is.
pub(crate) fn json_column(row: &Row, column: &str) -> Result<Option<Value>, ()> {
    let raw = match row.try_get::<_, Option<Json<Box<RawValue>>>>(column) {
        Ok(raw) => raw,
        Err(e) => {
            tracing::warn!(column, error = %e, "a log row's JSON could not be read; it is not delivered");
            return Err(());
        }
    };
    let Some(Json(raw)) = raw else {
        return Ok(None);
    };
    serde_json::from_str(raw.get()).map(Some).map_err(|e| {
        tracing::warn!(column, error = %e, "a log row's JSON could not be read (nested too deep?); it is not delivered");
    })
}

/// A statement's rows as the log holds them: one JSON text per row.
pub(super) type RawRows = Vec<Box<RawValue>>;

/// One captured log row: a statement's rows (`rows`, `old_rows`, aligned by position) or
/// a single-row entry (`record`/`old_record`).
pub(super) struct Logged {
    pub id: i64,
    /// The writing transaction (`u64::MAX` when unknown, see `Change::xid`).
    pub xid: u64,
    pub op: Op,
    pub schema: String,
    pub table: String,
    pub commit_time: DateTime<Utc>,
    pub record: Option<Value>,
    pub old_record: Option<Value>,
    pub rows: Option<RawRows>,
    pub old_rows: Option<RawRows>,
}

impl Logged {
    /// A statement's rows (parsed when needed, see `LogEntry`), or a single-row entry's
    /// change.
    pub(super) fn into_entry(self) -> LogEntry {
        let Logged {
            id,
            xid,
            op,
            schema,
            table,
            commit_time,
            record,
            old_record,
            rows,
            old_rows,
        } = self;
        if rows.is_none() && old_rows.is_none() {
            return LogEntry::Event(DbEvent::Change(Change {
                id,
                seq: 0,
                xid,
                schema,
                table,
                op,
                record: record.and_then(into_object),
                old_record: old_record.and_then(into_object),
                commit_time,
            }));
        }
        LogEntry::Statement(StatementRows {
            id,
            xid,
            op,
            schema,
            table,
            commit_time,
            rows: rows.unwrap_or_default().into(),
            old_rows: old_rows.unwrap_or_default().into(),
        })
    }
}

fn into_object(v: Value) -> Option<Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A log row this large makes the connection that read it close instead of being read
/// over again: a connection's read buffer keeps the size of the largest message it ever
/// received (bytes' `BytesMut` reuses its allocation), so it would hold the largest
/// statement it read for good.
pub const LARGE_ROW_BYTES: usize = 4 << 20;

/// Whether `entries` hold a log row of `LARGE_ROW_BYTES` or more.
pub fn holds_large_row(entries: &[LogEntry]) -> bool {
    entries.iter().any(|e| entry_bytes(e) >= LARGE_ROW_BYTES)
}

/// Gives a pooled connection back after log reads, or closes it when they carried a
/// large row (`holds_large_row`).
pub fn release(client: deadpool_postgres::Object, large: bool) {
    if large {
        drop(deadpool_postgres::Object::take(client));
    }
}
