//! A slot's reader: streams `pgoutput` changes over a replication connection
//! (`pgwire-replication`), writes them into the log with [`LogRows`], and confirms the
//! slot only after the write that covers them committed. When the stream or the database
//! fails it connects again, with backoff, and goes on from the position recorded with its
//! last write, so nothing is logged twice and nothing committed is skipped.
//!
//! One reader per slot, the slot itself being the lease: Postgres refuses a second
//! connection to an active slot (55006), and a reader refused so stands by, trying
//! again every few seconds, until the one reading stops or fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio::time::Instant;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use super::logrows::{written_position, LogRows};
use super::pgoutput::parse;
use super::DecodeError;

/// The `application_name` of the reader's replication connection.
pub const APPLICATION_NAME: &str = "switchboard-decoding";

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What to read and how often to write.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// The database, as the hub's `database_url` (TCP host or socket directory).
    pub url: String,
    pub slot: String,
    pub publication: String,
    /// Transactions written at most this long after their commit was read…
    pub write_wait: Duration,
    /// …or as soon as this many are waiting.
    pub write_batch: usize,
}

/// What a reader has done, for status and tests.
#[derive(Debug, Default)]
pub struct ReaderStats {
    /// Log rows written, and the row changes in them.
    pub log_rows: AtomicU64,
    pub changes: AtomicU64,
    /// Times it connected (the first included).
    pub sessions: AtomicU64,
    /// The end of the last transaction written (the slot is confirmed up to it).
    pub written_lsn: AtomicU64,
    /// How far the stream has been read with nothing left to write: `written_lsn`, or a
    /// keepalive's position past it.
    pub applied_lsn: AtomicU64,
}

/// Reads until `stop`, connecting again after every failure.
pub async fn run(config: ReaderConfig, stats: Arc<ReaderStats>, stop: CancellationToken) {
    let mut backoff = FIRST_BACKOFF;
    while !stop.is_cancelled() {
        let started = Instant::now();
        match session(&config, &stats, &stop).await {
            Ok(()) => return,
            Err(e) if e.0.contains("SQLSTATE 55006") => {
                tracing::debug!(slot = %config.slot, "the slot is read by another reader; standing by");
            }
            Err(e) => {
                tracing::warn!(slot = %config.slot, error = %e, "logical decoding reader failed; connecting again");
            }
        }
        // A session that ran a while starts the backoff again.
        if started.elapsed() > MAX_BACKOFF {
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's worth of reading: `Ok` when stopped, `Err` when anything failed.
async fn session(
    config: &ReaderConfig,
    stats: &ReaderStats,
    stop: &CancellationToken,
) -> Result<(), DecodeError> {
    let pg_err = |e: tokio_postgres::Error| DecodeError(format!("database: {e}"));
    let wire_err = |e: pgwire_replication::PgWireError| DecodeError(format!("replication: {e}"));
    let (client, connection) = tokio_postgres::connect(&config.url, NoTls)
        .await
        .map_err(pg_err)?;
    let connection = tokio::spawn(connection);
    let written = written_position(&client, &config.slot)
        .await
        .map_err(pg_err)?
        .unwrap_or(0);
    let mut rows = LogRows::resume_after(written);
    // From the slot's confirmed position, which may be behind what was written (a
    // failure between a write and its confirmation): `rows` skips that part.
    let mut replication = replication_config(&config.url, &config.slot, &config.publication)?;
    if written > 0 {
        replication = replication.with_ack_lsn(Lsn::from(written));
    }
    let mut stream = ReplicationClient::connect(replication)
        .await
        .map_err(wire_err)?;
    // Streaming, or refused (the slot read by another reader, say).
    stream.wait_started().await.map_err(wire_err)?;
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    let mut in_transaction = false;
    let mut since: Option<Instant> = None;
    let result = loop {
        let due = since.map(|t| t + config.write_wait);
        let event = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            _ = sleep_until(due), if due.is_some() => None,
            event = stream.recv() => match event {
                Ok(Some(event)) => Some(event),
                Ok(None) => break Err(DecodeError("the replication stream ended".into())),
                Err(e) => break Err(wire_err(e)),
            },
        };
        let write_now = match event {
            None => true,
            Some(ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                ..
            }) => {
                in_transaction = true;
                rows.begin(final_lsn.as_u64(), commit_time_micros);
                false
            }
            Some(ReplicationEvent::XLogData { data, .. }) => {
                if let Err(e) = parse(&data).and_then(|m| rows.apply(m)) {
                    break Err(e);
                }
                false
            }
            Some(ReplicationEvent::Commit { end_lsn, .. }) => {
                in_transaction = false;
                rows.commit(end_lsn.as_u64());
                if !rows.is_empty() {
                    since.get_or_insert_with(Instant::now);
                }
                rows.transactions() >= config.write_batch
            }
            Some(ReplicationEvent::KeepAlive { wal_end, .. }) => {
                // Nothing read is waiting: the slot may move past what others wrote.
                if !in_transaction && rows.is_empty() {
                    stream.update_applied_lsn(wal_end);
                    stats
                        .applied_lsn
                        .fetch_max(wal_end.as_u64(), Ordering::Relaxed);
                }
                false
            }
            Some(ReplicationEvent::Message { .. }) => false,
            Some(ReplicationEvent::StoppedAt { .. }) => {
                break Err(DecodeError("the replication stream stopped".into()))
            }
        };
        if write_now {
            since = None;
            match rows.write(&client, &config.slot).await {
                Ok(w) => {
                    stats.log_rows.fetch_add(w.log_rows, Ordering::Relaxed);
                    stats.changes.fetch_add(w.changes, Ordering::Relaxed);
                    if let Some(end) = w.end_lsn {
                        stream.update_applied_lsn(Lsn::from(end));
                        stats.written_lsn.fetch_max(end, Ordering::Relaxed);
                        stats.applied_lsn.fetch_max(end, Ordering::Relaxed);
                    }
                    if w.dropped > 0 {
                        tracing::warn!(slot = %config.slot, changes = w.dropped, "changes of a table dropped since were not logged");
                    }
                }
                Err(e) => break Err(pg_err(e)),
            }
        }
    };
    let _ = stream.shutdown().await;
    connection.abort();
    result
}

/// A replication connection's settings for `slot` and `publication` on the database of
/// `url` (a TCP host or a socket directory), confirming once a second.
pub fn replication_config(
    url: &str,
    slot: &str,
    publication: &str,
) -> Result<ReplicationConfig, DecodeError> {
    let pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| DecodeError(format!("database URL: {e}")))?;
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(dir)) => dir.display().to_string(),
        None => "localhost".to_owned(),
    };
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let user = pg.get_user().unwrap_or("postgres").to_owned();
    let database = pg.get_dbname().unwrap_or(&user).to_owned();
    Ok(
        ReplicationConfig::new(host, user.clone(), password, database, slot, publication)
            .with_port(pg.get_ports().first().copied().unwrap_or(5432))
            .with_status_interval(Duration::from_secs(1))
            .with_application_name(APPLICATION_NAME),
    )
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
