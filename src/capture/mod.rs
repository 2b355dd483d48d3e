//! Change capture: one dedicated Postgres connection that LISTENs for the payload-free
//! wake-up and reads `realtime.changes` gap-free by transaction visibility (DESIGN.md
//! invariant 1), reconnecting with backoff and catching up from the same cursor
//! (invariant 5). Produces `DbEvent` pages for the router; knows nothing of clients.

mod cursor;
mod reader;
mod status;

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;

pub use cursor::{Cursor, CursorError};
pub use reader::prune;
pub use status::{CaptureStatus, CaptureStatusSnapshot};

use crate::changes::DbEvent;
use crate::db::pg_message;
use reader::{ReadEnd, ReadState};

/// The NOTIFY channel the capture trigger and `realtime.send` signal.
pub const WAKE_CHANNEL: &str = "switchboard_changes";
/// `application_name` of the capture connection (visible in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "switchboard-capture";
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub database_url: String,
    /// Read even without a wake-up this often.
    pub poll_interval: Duration,
    /// Rows per page sent to the router.
    pub batch_limit: usize,
    /// Log rows older than this, and already read, are deleted.
    pub retention: Duration,
    pub reconnect_max_backoff: Duration,
}

impl CaptureConfig {
    pub fn new(database_url: impl Into<String>) -> Self {
        CaptureConfig {
            database_url: database_url.into(),
            ..Self::default()
        }
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            database_url: String::new(),
            poll_interval: Duration::from_secs(1),
            batch_limit: 1000,
            retention: Duration::from_secs(3600),
            reconnect_max_backoff: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("bad database url: {0}")]
    BadUrl(String),
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("capture connection closed: {0}")]
    ConnectionClosed(String),
    #[error(transparent)]
    Cursor(#[from] CursorError),
}

/// Runs until `shutdown` (or until `out`'s receiver is dropped). Delivers, in pages,
/// every change that commits after the first successful connection, exactly once.
pub async fn run_capture(
    cfg: CaptureConfig,
    out: mpsc::Sender<Vec<DbEvent>>,
    status: Arc<CaptureStatus>,
    shutdown: CancellationToken,
) {
    let mut state: Option<ReadState> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut connected_before = false;
    loop {
        let mut session = Session {
            cfg: &cfg,
            out: &out,
            status: &status,
            shutdown: &shutdown,
        };
        let result = session
            .run(&mut state, &mut connected_before, &mut backoff)
            .await;
        match result {
            Ok(()) => break,
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(error = %message, retry_in_ms = backoff.as_millis() as u64,
                    "capture connection failed");
                status.set_disconnected(Some(message));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(cfg.reconnect_max_backoff.max(FIRST_BACKOFF));
    }
    status.set_disconnected(None);
    tracing::info!("capture stopped");
}

/// One connection's lifetime.
struct Session<'a> {
    cfg: &'a CaptureConfig,
    out: &'a mpsc::Sender<Vec<DbEvent>>,
    status: &'a CaptureStatus,
    shutdown: &'a CancellationToken,
}

impl Session<'_> {
    /// Ok on shutdown; Err when the connection failed (the caller reconnects).
    async fn run(
        &mut self,
        state: &mut Option<ReadState>,
        connected_before: &mut bool,
        backoff: &mut Duration,
    ) -> Result<(), CaptureError> {
        let (mut client, mut wake, driver) = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(()),
            opened = open(&self.cfg.database_url) => opened?,
        };
        let _abort_driver = AbortOnDrop(driver);
        client
            .batch_execute(&format!("listen {WAKE_CHANNEL}"))
            .await?;
        let state = match state {
            Some(state) => state,
            None => state.insert(ReadState::new(reader::current_cursor(&client).await?)),
        };
        let cursor = state.cursor.to_string();
        if *connected_before {
            self.status.count_reconnect();
            tracing::info!(cursor, "capture reconnected; catching up");
        } else {
            tracing::info!(cursor, "capture connected");
        }
        *connected_before = true;
        *backoff = FIRST_BACKOFF;
        self.status.set_connected(&cursor);

        let mut poll = tokio::time::interval(self.cfg.poll_interval.max(Duration::from_millis(1)));
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut retention = tokio::time::interval(retention_every(self.cfg.retention));
        retention.set_missed_tick_behavior(MissedTickBehavior::Delay);
        retention.reset(); // not at start: first prune after one period
        loop {
            let end = state
                .read_once(
                    &mut client,
                    self.cfg.batch_limit,
                    self.out,
                    self.status,
                    self.shutdown,
                )
                .await?;
            if end == ReadEnd::Stopped {
                return Ok(());
            }
            self.status.set_caught_up();
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                woke = wake.recv() => if woke.is_none() {
                    return Err(CaptureError::ConnectionClosed("connection lost".into()));
                },
                _ = poll.tick() => {}
                _ = retention.tick() => {
                    let deleted = prune(&client, &state.cursor, self.cfg.retention).await?;
                    if deleted > 0 {
                        tracing::info!(deleted, "pruned change log");
                    }
                }
            }
        }
    }
}

/// Opens the capture connection; its messages are driven by a task that turns each
/// notification into a wake-up. The wake-up receiver closes when the connection ends.
async fn open(url: &str) -> Result<(Client, mpsc::Receiver<()>, JoinHandle<()>), CaptureError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| CaptureError::BadUrl(e.to_string()))?;
    config
        .application_name(APPLICATION_NAME)
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    let (client, mut connection) = config.connect(NoTls).await?;
    // Capacity 1: a pending wake-up already covers any later notification.
    let (wake_tx, wake_rx) = mpsc::channel(1);
    let driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    let _ = wake_tx.try_send(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "capture connection error");
                    return;
                }
                None => return,
            }
        }
    });
    Ok((client, wake_rx, driver))
}

/// How often retention runs: a tenth of the retention, between 1 s and 60 s.
fn retention_every(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
