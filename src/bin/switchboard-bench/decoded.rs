//! `writeload --decoded`: what capture without a trigger would cost writers, measured beside
//! today's capture in the same invocation (issue 14 item 1). Two more tables:
//!
//! * `wl_decoded`: no trigger. It is in a publication with `REPLICA IDENTITY FULL` (what
//!   a delete's old row needs), and a reader takes its changes from a logical slot
//!   (`pgoutput`). `--decoder stream` (the default): `pg_recvlogical`, a replication
//!   connection that Postgres streams to (a walsender), as a hub capturing by logical
//!   decoding would read; it writes the changes nowhere. `--decoder poll`: SQL reads
//!   (`pg_logical_slot_get_binary_changes`) that write each change into a log table in
//!   the same statement, pausing 10 ms after each read.
//! * `wl_message`: a statement trigger that sends the statement's rows as JSON in a
//!   transactional logical message (`pg_logical_emit_message`) instead of inserting a log
//!   row; the same reader takes the messages.
//!
//! The reader runs through every table's writes, so each pays for its WAL being decoded.
//! The cluster runs with `wal_level=logical`.

use clap::ValueEnum;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::pgload::connect;
use crate::BenchError;

/// How the decoded table's changes are read.
#[derive(Clone, Copy, ValueEnum)]
pub enum Decoder {
    /// A walsender streaming to `pg_recvlogical`.
    Stream,
    /// SQL reads of the slot every 10 ms, written into a log table.
    Poll,
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

/// The reader, until `stop`: the pid of the Postgres process that decodes, and the task
/// (which returns the number of decoded rows it logged; 0 when streamed).
pub async fn spawn_reader(
    url: &str,
    decoder: Decoder,
    stop: CancellationToken,
) -> Result<(u32, JoinHandle<Result<u64, BenchError>>), BenchError> {
    match decoder {
        Decoder::Poll => spawn_poller(url, stop).await,
        Decoder::Stream => spawn_stream(url, stop).await,
    }
}

/// `pg_recvlogical` on the slot, until `stop`; the pid of its walsender.
async fn spawn_stream(
    url: &str,
    stop: CancellationToken,
) -> Result<(u32, JoinHandle<Result<u64, BenchError>>), BenchError> {
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
    let admin = connect(url).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let pid = loop {
        let row = admin
            .query_opt(
                "select active_pid from pg_replication_slots where slot_name = $1 and active",
                &[&SLOT],
            )
            .await?;
        if let Some(row) = row {
            break row.get::<_, i32>(0) as u32;
        }
        if std::time::Instant::now() > deadline {
            return Err(BenchError::Setup(
                "pg_recvlogical did not start streaming in 10 s".into(),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let task = tokio::spawn(async move {
        stop.cancelled().await;
        child.kill().await?;
        Ok(0)
    });
    Ok((pid, task))
}

async fn spawn_poller(
    url: &str,
    stop: CancellationToken,
) -> Result<(u32, JoinHandle<Result<u64, BenchError>>), BenchError> {
    let client = connect(url).await?;
    let pid: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await?
        .get(0);
    let read = client.prepare(READ).await?;
    let task = tokio::spawn(async move {
        let mut logged = 0u64;
        while !stop.is_cancelled() {
            logged += client.execute(&read, &[]).await?;
            tokio::time::sleep(POLL).await;
        }
        Ok(logged)
    });
    Ok((pid as u32, task))
}

/// How long after the writers stopped the reader had read all the WAL written until then
/// (the walsender's `sent_lsn`, or the slot's confirmed position when polled), up to 60 s.
pub async fn catch_up(url: &str, decoder: Decoder) -> Result<std::time::Duration, BenchError> {
    let c = connect(url).await?;
    let started = std::time::Instant::now();
    let sql = match decoder {
        Decoder::Stream => {
            "select coalesce(max(r.sent_lsn) >= $2::text::pg_lsn, false) from pg_stat_replication r \
             join pg_replication_slots s on s.active_pid = r.pid where s.slot_name = $1"
        }
        Decoder::Poll => {
            "select confirmed_flush_lsn >= $2::text::pg_lsn from pg_replication_slots \
             where slot_name = $1"
        }
    };
    let end: String = c
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    while started.elapsed() < std::time::Duration::from_secs(60) {
        let done: bool = c.query_one(sql, &[&SLOT, &end]).await?.get(0);
        if done {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(started.elapsed())
}
