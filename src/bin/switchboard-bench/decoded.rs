//! `writeload --decoded`: what capture without a trigger would cost writers, measured beside
//! today's capture in the same invocation (issue 14 item 1). Two more tables:
//!
//! * `wl_decoded`: no trigger. It is in a publication with `REPLICA IDENTITY FULL` (what
//!   a delete's old row needs), and a reader takes its changes from a logical slot
//!   (`pgoutput`). `--decoder stream` (the default): `pg_recvlogical`, a replication
//!   connection that Postgres streams to (a walsender), as a hub capturing by logical
//!   decoding would read; it writes the changes nowhere. `--decoder poll`: SQL reads
//!   (`pg_logical_slot_get_binary_changes`) that write each change into a log table in
//!   the same statement, pausing 10 ms after each read. `--decoder crate`: the same
//!   walsender stream read in this process with the `pgwire-replication` crate (on trial
//!   as the hub's reader), on a thread of its own so its CPU can be told apart. It takes
//!   apart every `pgoutput` row message with the hub's decoder (the crate passes
//!   Relation/Insert/Update/Delete on as raw bytes; it parses only Begin, Commit and
//!   Message), counts row changes and messages, and confirms each transaction's end LSN (and a keepalive's position
//!   between transactions) through the crate's standby status updates, once a second.
//!   With `--reader-log` the hub's own reader runs on that thread instead
//!   (`switchboard::capture::decoding::run`): it writes what it reads into the hub's log
//!   (`realtime.changes` rows with the trigger's JSON, made by `record_in` and
//!   `row_to_json`, and the slot's position, in one statement, up to 100 transactions at
//!   a time and at most 5 ms after a commit was read) and confirms only after that write
//!   commits. It passes logical messages over, so the message table is then neither
//!   counted nor logged (its logged figures, from d247d5c: BENCHMARKS.md).
//! * `wl_message`: a statement trigger that sends the statement's rows as JSON in a
//!   transactional logical message (`pg_logical_emit_message`) instead of inserting a log
//!   row; the same reader takes the messages.
//!
//! The reader runs through every table's writes, so each pays for its WAL being decoded.
//! The cluster runs with `wal_level=logical`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::ValueEnum;
use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationEvent};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use switchboard::capture::decoding;

use crate::pgload::connect;
use crate::BenchError;

/// How the decoded table's changes are read.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Decoder {
    /// A walsender streaming to `pg_recvlogical`.
    Stream,
    /// SQL reads of the slot every 10 ms, written into a log table.
    Poll,
    /// A walsender streaming to this process, read with the `pgwire-replication` crate.
    Crate,
}

impl Decoder {
    pub fn name(self) -> &'static str {
        match self {
            Decoder::Stream => "stream",
            Decoder::Poll => "poll",
            Decoder::Crate => "crate",
        }
    }
}

/// Server options the cluster needs.
pub const SERVER_OPTIONS: &str = " -c wal_level=logical -c max_replication_slots=4";

pub const SCHEMA: &str = r#"
drop table if exists public.wl_plain, public.wl_captured, public.wl_decoded, public.wl_message,
    public.wl_decoded_log;
create table public.wl_plain (id bigserial primary key, body text not null, n int not null);
create table public.wl_captured (like public.wl_plain including all);
create table public.wl_decoded (like public.wl_plain including all);
alter table public.wl_decoded replica identity full;
create table public.wl_message (like public.wl_plain including all);
create or replace function public.wl_message_statement() returns trigger language plpgsql as $$
begin
    perform pg_logical_emit_message(true, 'switchboard', json_build_object(
        's', tg_table_schema, 't', tg_table_name, 'op', 'INSERT',
        'rows', (select json_agg(row_to_json(n.*)) from wl_new n))::text);
    return null;
end $$;
create trigger wl_message after insert on public.wl_message referencing new table as wl_new
    for each statement execute function public.wl_message_statement();
create table public.wl_decoded_log (id bigserial primary key, lsn pg_lsn not null, data bytea not null);
drop publication if exists wl_decoded;
create publication wl_decoded for table public.wl_decoded;
"#;

const SLOT: &str = "wl_decoded";

/// The pause after each read. Each read decodes again from the slot's restart point (the
/// oldest transaction running when it was last confirmed), so reading at once after a
/// busy read cost a core at single-row rates (232 CPU µs per row, writers at 0.64×).
const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// One read: the slot's changes since the last, each written into the log table.
const READ: &str =
    "with c as (select lsn, data from pg_logical_slot_get_binary_changes('wl_decoded', \
     null, 10000, 'proto_version', '1', 'publication_names', 'wl_decoded', 'messages', 'true')) \
     insert into public.wl_decoded_log (lsn, data) select lsn, data from c";

/// The slot, made again (a slot cannot be made in a transaction that wrote).
pub async fn make_slot(url: &str) -> Result<(), BenchError> {
    drop_slot(url).await?;
    connect(url)
        .await?
        .execute(
            "select pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&SLOT],
        )
        .await?;
    Ok(())
}

/// Drops the slot if it is there (so it holds no WAL after the run).
pub async fn drop_slot(url: &str) -> Result<(), BenchError> {
    connect(url)
        .await?
        .execute(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1",
            &[&SLOT],
        )
        .await?;
    Ok(())
}

/// What a reader read, once stopped.
#[derive(Default)]
pub struct Totals {
    /// Rows written into the log table (`poll`).
    pub logged: u64,
    /// Committed transactions, row changes and logical messages decoded (`crate`; with
    /// `--reader-log` only the row changes logged).
    pub transactions: u64,
    pub rows: u64,
    pub messages: u64,
}

/// A running reader.
pub struct Reader {
    /// The Postgres process that decodes: the walsender, or the polling backend.
    pub decoding_pid: u32,
    /// The reader's own process or thread (`/proc/<id>/stat`): `pg_recvlogical`, or the
    /// thread the crate's reader runs on; none when polled.
    pub client_id: Option<u32>,
    /// The end of the last transaction (or keepalive) the reader processed (`crate`).
    position: Option<Arc<decoding::ReaderStats>>,
    pub task: JoinHandle<Result<Totals, BenchError>>,
}

/// The reader, until `stop`.
/// `log`: the crate's reader writes what it read into a log table before it confirms.
pub async fn spawn_reader(
    url: &str,
    decoder: Decoder,
    log: bool,
    stop: CancellationToken,
) -> Result<Reader, BenchError> {
    match decoder {
        Decoder::Poll => spawn_poller(url, stop).await,
        Decoder::Stream => spawn_stream(url, stop).await,
        Decoder::Crate => spawn_crate(url, log, stop).await,
    }
}

/// The pid of the process holding the slot, once it holds it (up to 10 s).
async fn slot_holder(url: &str, what: &str) -> Result<u32, BenchError> {
    let admin = connect(url).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let row = admin
            .query_opt(
                "select active_pid from pg_replication_slots where slot_name = $1 and active",
                &[&SLOT],
            )
            .await?;
        if let Some(row) = row {
            return Ok(row.get::<_, i32>(0) as u32);
        }
        if std::time::Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "{what} did not start streaming in 10 s"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `pg_recvlogical` on the slot, until `stop`.
async fn spawn_stream(url: &str, stop: CancellationToken) -> Result<Reader, BenchError> {
    let bin = switchboard::localpg::find_bin(None).map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut child = tokio::process::Command::new(bin.join("pg_recvlogical"))
        .args([
            "-d",
            url,
            "--slot",
            SLOT,
            "--start",
            "-f",
            "/dev/null",
            "-s",
            "1",
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=wl_decoded",
        ])
        .args(["-o", "messages=true"])
        .kill_on_drop(true)
        .spawn()?;
    let client_id = child.id();
    let pid = slot_holder(url, "pg_recvlogical").await?;
    let task = tokio::spawn(async move {
        stop.cancelled().await;
        child.kill().await?;
        Ok(Totals::default())
    });
    Ok(Reader {
        decoding_pid: pid,
        client_id,
        position: None,
        task,
    })
}

async fn spawn_poller(url: &str, stop: CancellationToken) -> Result<Reader, BenchError> {
    let client = connect(url).await?;
    let pid: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await?
        .get(0);
    let read = client.prepare(READ).await?;
    let task = tokio::spawn(async move {
        let mut totals = Totals::default();
        while !stop.is_cancelled() {
            totals.logged += client.execute(&read, &[]).await?;
            tokio::time::sleep(POLL).await;
        }
        Ok(totals)
    });
    Ok(Reader {
        decoding_pid: pid as u32,
        client_id: None,
        position: None,
        task,
    })
}

/// The `application_name` of the crate's replication connection (how its walsender is
/// found in `pg_stat_replication`).
const CRATE_APP: &str = "switchboard-bench-crate";

/// The crate's reader on a thread of its own with a single-threaded runtime, so the
/// crate's worker task and the decoding below run there and nowhere else: that thread's
/// CPU is the reader's.
async fn spawn_crate(url: &str, log: bool, stop: CancellationToken) -> Result<Reader, BenchError> {
    let app = match log {
        true => decoding::APPLICATION_NAME,
        false => CRATE_APP,
    };
    let stats = Arc::new(decoding::ReaderStats::default());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let thread = {
        let stats = stats.clone();
        let url = url.to_owned();
        std::thread::Builder::new()
            .name("crate-reader".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                match log {
                    true => rt.block_on(log_with_hub_reader(&url, stats, stop, ready_tx)),
                    false => rt.block_on(read_with_crate(&url, stop, stats, ready_tx)),
                }
            })?
    };
    let tid = ready_rx
        .await
        .map_err(|_| BenchError::Setup("the crate reader ended before it started".into()));
    let tid = match tid {
        Ok(tid) => tid,
        Err(e) => {
            // The thread's own error says why.
            return match thread.join() {
                Ok(Err(why)) => Err(why),
                _ => Err(e),
            };
        }
    };
    // Its walsender, by application name, checked against the slot's holder.
    let pid = slot_holder(url, "the crate reader").await?;
    let by_name: Option<i32> = connect(url)
        .await?
        .query_opt(
            "select pid from pg_stat_replication where application_name = $1",
            &[&app],
        )
        .await?
        .map(|r| r.get(0));
    if by_name != Some(pid as i32) {
        return Err(BenchError::Setup(format!(
            "the slot is held by {pid}, the crate's walsender is {by_name:?}"
        )));
    }
    let task = tokio::task::spawn_blocking(move || {
        thread
            .join()
            .map_err(|_| BenchError::Setup("the crate reader panicked".into()))?
    });
    Ok(Reader {
        decoding_pid: pid,
        client_id: Some(tid),
        position: Some(stats),
        task,
    })
}

/// The thread's id, for its CPU (`/proc/<pid>/task/<tid>`).
fn thread_id() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// Reads the slot until `stop`: decodes every change, counts rows and messages, and
/// confirms each transaction's end once it is processed, and a keepalive's position
/// between transactions. Nothing is written.
async fn read_with_crate(
    url: &str,
    stop: CancellationToken,
    stats: Arc<decoding::ReaderStats>,
    ready: tokio::sync::oneshot::Sender<u32>,
) -> Result<Totals, BenchError> {
    let crate_err = |e: PgWireError| BenchError::Setup(format!("pgwire-replication: {e}"));
    let config = decoding::replication_config(url, SLOT, "wl_decoded")
        .map_err(|e| BenchError::Setup(e.to_string()))?
        .with_application_name(CRATE_APP);
    let mut client = ReplicationClient::connect(config)
        .await
        .map_err(crate_err)?;
    client.wait_started().await.map_err(crate_err)?;
    let _ = ready.send(thread_id());
    let mut totals = Totals::default();
    let mut in_transaction = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = client.recv() => event.map_err(crate_err)?,
        };
        let Some(event) = event else { break };
        let applied = match event {
            ReplicationEvent::Begin { .. } => {
                in_transaction = true;
                None
            }
            ReplicationEvent::XLogData { data, .. } => {
                let message =
                    decoding::parse(&data).map_err(|e| BenchError::Failed(e.to_string()))?;
                if matches!(
                    message,
                    decoding::Message::Insert { .. }
                        | decoding::Message::Update { .. }
                        | decoding::Message::Delete { .. }
                ) {
                    totals.rows += 1;
                }
                None
            }
            ReplicationEvent::Message {
                transactional,
                prefix,
                content,
                ..
            } => {
                // The message table's trigger sends transactional messages of JSON.
                if !transactional || prefix != "switchboard" || content.first() != Some(&b'{') {
                    return Err(BenchError::Failed(format!(
                        "unexpected logical message: transactional {transactional}, prefix {prefix:?}"
                    )));
                }
                totals.messages += 1;
                None
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                in_transaction = false;
                totals.transactions += 1;
                Some(end_lsn)
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => (!in_transaction).then_some(wal_end),
            ReplicationEvent::StoppedAt { .. } => break,
        };
        if let Some(lsn) = applied {
            client.update_applied_lsn(lsn);
            stats.applied_lsn.fetch_max(lsn.as_u64(), Ordering::Relaxed);
        }
    }
    client.shutdown().await.map_err(crate_err)?;
    Ok(totals)
}

/// The hub's own reader on the slot until `stop` (`--reader-log`): what a hub capturing
/// by decoding would do, writing into `realtime.changes` and confirming after each write.
async fn log_with_hub_reader(
    url: &str,
    stats: Arc<decoding::ReaderStats>,
    stop: CancellationToken,
    ready: tokio::sync::oneshot::Sender<u32>,
) -> Result<Totals, BenchError> {
    // A position left by an earlier slot of that name.
    connect(url)
        .await?
        .execute(
            "delete from realtime.decoded_position where slot_name = $1",
            &[&SLOT],
        )
        .await?;
    let _ = ready.send(thread_id());
    let config = decoding::ReaderConfig {
        url: url.to_owned(),
        slot: SLOT.into(),
        publication: "wl_decoded".into(),
        write_wait: std::time::Duration::from_millis(5),
        write_batch: 100,
    };
    decoding::run(config, stats.clone(), stop).await;
    Ok(Totals {
        logged: stats.log_rows.load(Ordering::Relaxed),
        rows: stats.changes.load(Ordering::Relaxed),
        ..Totals::default()
    })
}

/// How long after the writers stopped the reader had read all the WAL written until then,
/// up to 60 s: the walsender's `sent_lsn` (`stream`), the slot's confirmed position
/// (`poll`), or the end of the last transaction or keepalive the reader processed
/// (`crate`). For `crate` also when the slot's confirmed position got there (the reader's
/// standby status updates), or `None` if not within 60 s.
pub async fn catch_up(
    url: &str,
    decoder: Decoder,
    reader: &Reader,
) -> Result<(std::time::Duration, Option<std::time::Duration>), BenchError> {
    let c = connect(url).await?;
    let started = std::time::Instant::now();
    let limit = std::time::Duration::from_secs(60);
    let confirmed = "select confirmed_flush_lsn >= $2::text::pg_lsn from pg_replication_slots \
                     where slot_name = $1";
    let sql = match decoder {
        Decoder::Stream => {
            "select coalesce(max(r.sent_lsn) >= $2::text::pg_lsn, false) from pg_stat_replication r \
             join pg_replication_slots s on s.active_pid = r.pid where s.slot_name = $1"
        }
        Decoder::Poll | Decoder::Crate => confirmed,
    };
    let end: String = c
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    if let (Decoder::Crate, Some(position)) = (decoder, &reader.position) {
        let end = Lsn::parse(&end)
            .map_err(|e| BenchError::Setup(format!("{end}: {e}")))?
            .as_u64();
        // A reader that ended (its error is the task's) reads no further.
        while started.elapsed() < limit
            && position.applied_lsn.load(Ordering::Relaxed) < end
            && !reader.task.is_finished()
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let read = started.elapsed();
    while started.elapsed() < limit && !reader.task.is_finished() {
        let done: bool = c.query_one(sql, &[&SLOT, &end]).await?.get(0);
        if done {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(match decoder {
        Decoder::Crate => (read, (started.elapsed() < limit).then(|| started.elapsed())),
        _ => (started.elapsed(), None),
    })
}
