//! One WebSocket connection, written against `Sink`/`Stream` so tests can drive it with
//! channel pairs: a reader loop (decode, hand to the session, idle timeout, token expiry,
//! `replication_ready` checks, shutdown) and the socket's sending half handed to one of
//! the hub's writer tasks (`writer.rs`), which drains the bounded outbox to it. One
//! cleanup path: whatever ends the loop, the session is dropped (members leave) and the
//! writer sends a close frame with the reason.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use futures_util::{Sink, Stream, StreamExt};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

use super::writer::{Pinger, WriterHandle, CLOSE_FLUSH_TIMEOUT};
use super::Hub;
use crate::auth::Claims;
use crate::channel::{answer_heartbeat, is_heartbeat, ConnResume, Session};
use crate::protocol::{self, Close, Vsn};
use crate::resume::ConnAcks;
use crate::router::outbox::{outbox_bursting, OutboxTx};
use crate::telemetry::{next_id, Metrics};

/// How long a connection that stopped reading mid-frame keeps its socket after the close
/// frame was flushed, so that the client reads the close frame before the reset.
const UNREAD_LINGER: Duration = CLOSE_FLUSH_TIMEOUT;

/// How often channels waiting for `replication_ready` are looked at (as Supabase does).
const REPLICATION_CHECK: Duration = Duration::from_millis(500);

/// A closing connection reads what the client still sends until it is quiet this long.
const DRAIN_QUIET: Duration = Duration::from_millis(100);

/// How a connection whose read failed is closed: a message over the configured size, or a
/// text frame that is not UTF-8, is named to the client; anything else is a socket gone.
fn read_failure(e: axum::Error) -> Close {
    match e.into_inner().downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Close::FrameTooLarge,
        Some(tungstenite::Error::Utf8(_)) => Close::InvalidUtf8,
        _ => Close::Gone,
    }
}

/// Runs a connection to completion: `sink` and `stream` are the two halves of the socket;
/// `resume` is the connection's `resume=` key, if it opted in; `request_headers` are the
/// upgrade's `x-` headers as JSON (private channel policies read them).
///
/// The setup runs here; the returned future is the connection's life. It is what every
/// open connection's task holds, so it keeps each value once: an `async fn` would keep
/// its arguments a second time beside what it builds from them (rustc reserves an async
/// fn's arguments for the whole call), about 160 bytes of every idle connection.
pub fn run_connection<W, R>(
    hub: Arc<Hub>,
    sink: W,
    stream: R,
    vsn: Vsn,
    claims: Claims,
    resume: Option<Arc<str>>,
    request_headers: Arc<str>,
) -> impl Future<Output = ()>
where
    W: Sink<Message> + Unpin + Send + 'static,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let conn_id = next_id();
    // Fused: after the loop it is read again until it ends (see the drain below).
    let mut stream = stream.fuse();
    let limits = &hub.services.limits;
    let (tx, rx) = outbox_bursting(
        limits.outbox_frames,
        limits.outbox_bytes,
        limits.outbox_grace,
    );
    let resume = resume
        .filter(|_| hub.services.resume.is_some())
        .map(|key| ConnResume {
            key,
            acks: Arc::new(ConnAcks::default()),
        });
    let pinger = resume.as_ref().map(|r| Pinger {
        acks: r.acks.clone(),
        delivered: hub.services.changes.progress().delivered(),
    });
    let acks = resume.as_ref().map(|r| r.acks.clone());
    let writer = hub.writers.attach(sink, rx, pinger);
    let metrics = hub.services.metrics.clone();
    metrics.connections.inc();
    tracing::debug!(conn_id, ?vsn, "connection open");

    let closed = tx.close_token();
    let mut session = Session::new(
        hub.services.clone(),
        conn_id,
        vsn,
        tx.clone(),
        claims,
        resume,
    )
    .with_request_headers(request_headers);
    let idle = limits.idle_timeout;
    async move {
        let mut idle_deadline = Instant::now() + idle;
        // When channels waiting for `replication_ready` are looked at next.
        let mut replication_check = Instant::now();
        // Set when reading stopped with the client's input unread (a frame over the limit).
        let mut unread_input = false;
        // Frames read while a push waited on the database, handled next, in order.
        let mut backlog = Backlog::new();
        loop {
            let retry = session.next_retry();
            let expiry = session.next_expiry().map(|exp| {
                let secs = (exp - chrono::Utc::now().timestamp()).max(0) as u64;
                Instant::now() + Duration::from_secs(secs)
            });
            tokio::select! {
                _ = closed.cancelled() => break,
                _ = hub.shutdown.cancelled() => {
                    session.notify_shutdown();
                    tx.close(Close::Shutdown);
                    break;
                }
                _ = sleep_until(idle_deadline) => {
                    tx.close(Close::IdleTimeout);
                    break;
                }
                _ = sleep_until(expiry.unwrap_or(idle_deadline)), if expiry.is_some() => {
                    session.expire_tokens(chrono::Utc::now().timestamp());
                }
                _ = sleep_until(retry.unwrap_or(idle_deadline)), if retry.is_some() => {
                    Box::pin(session.retry_unavailable(Instant::now())).await;
                }
                _ = sleep_until(replication_check), if session.awaits_replication() => {
                    session.check_replication(Instant::now());
                    replication_check = Instant::now() + REPLICATION_CHECK;
                }
                msg = backlog.next(&mut stream) => {
                    let msg = match msg {
                        Some(Ok(msg)) => msg,
                        Some(Err(e)) => {
                            tracing::debug!(conn_id, error = %e, "socket read failed");
                            let reason = read_failure(e);
                            unread_input = reason != Close::Gone;
                            if reason == Close::FrameTooLarge {
                                metrics.limit_hit(conn_id, "frame_too_large");
                            }
                            tx.close(reason);
                            break;
                        }
                        None => {
                            tx.close(Close::Gone);
                            break;
                        }
                    };
                    idle_deadline = Instant::now() + idle;
                    let decoded = match &msg {
                        Message::Text(text) => protocol::decode_text(vsn, text.as_str()),
                        Message::Binary(bytes) => protocol::decode_binary(bytes),
                        Message::Close(frame) => {
                            // realtime-js found a heartbeat reply missing: it drops what it
                            // had not read, whatever its pongs said (`resume::ack`).
                            let timed_out = frame.as_ref().is_some_and(|f| heartbeat_timed_out(&f.reason));
                            if let (Some(acks), true) = (&acks, timed_out) {
                                acks.distrust_pongs();
                            }
                            tx.close(Close::Gone);
                            break;
                        }
                        Message::Pong(data) => {
                            if let (Some(acks), Ok(id)) = (&acks, <[u8; 8]>::try_from(&data[..])) {
                                acks.pong(u64::from_be_bytes(id));
                            }
                            continue;
                        }
                        Message::Ping(_) => continue,
                    };
                    match decoded {
                        // Boxed: a join awaits database lookups whose large state would otherwise be
                        // reserved inside every idle connection's task.
                        Ok(inbound) => {
                            drop(msg);
                            if let (Some(acks), true) = (&acks, is_heartbeat(&inbound)) {
                                acks.heartbeat();
                            }
                            let handling = Box::pin(session.handle(inbound));
                            // Boxed too: its state would otherwise be reserved inside every
                            // idle connection's task.
                            let heard = Box::pin(backlog.read_while(handling, &mut stream, vsn, &tx, &metrics, acks.as_deref()));
                            if heard.await {
                                idle_deadline = Instant::now() + idle;
                            }
                        }
                        Err(e) => {
                            metrics.dropped("malformed_frame", 1);
                            let push = match &msg {
                                Message::Text(text) => protocol::rejected_text(vsn, text.as_str()),
                                Message::Binary(bytes) => protocol::rejected_binary(bytes),
                                _ => None,
                            };
                            session.reject(push.as_ref(), e);
                        }
                    }
                }
            }
        }
        drop(session);
        drop(tx);
        metrics.connections.dec();
        // Boxed: its timers would otherwise be reserved inside every open connection's task.
        let unread = unread_input.then_some(&hub.shutdown);
        Box::pin(drain_and_finish(writer, stream, unread)).await;
        tracing::debug!(conn_id, "connection closed");
    }
}

/// A frame's payload bytes.
fn message_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 0,
    }
}

/// Whether a client's close reason says it found a heartbeat reply missing: realtime-js
/// closes with `heartbeat timeout` (`hearbeat timeout` before 2.13).
fn heartbeat_timed_out(reason: &str) -> bool {
    matches!(reason, "heartbeat timeout" | "hearbeat timeout")
}

/// What the client sent while the session was busy with an earlier push (a join or a
/// private channel's check waiting on the database): heartbeats are answered at once, so
/// a connection waiting on a slow policy or a lock is not taken for dead; everything else
/// waits here and is handled next, in the order it came. At most `BACKLOG_FRAMES` are
/// read ahead; past that the socket is left unread until the push is done.
struct Backlog(std::collections::VecDeque<Option<Result<Message, axum::Error>>>);

/// Frames a connection reads ahead while its session is busy, and their bytes: past
/// either the socket is left unread (its kernel buffer holds the rest).
const BACKLOG_FRAMES: usize = 64;
const BACKLOG_BYTES: usize = 64 * 1024;

/// A heartbeat push is short; longer text frames are not parsed to look for one.
const HEARTBEAT_MAX_LEN: usize = 256;

impl Backlog {
    fn new() -> Backlog {
        Backlog(std::collections::VecDeque::new())
    }

    /// The next frame: a held one first, else the socket's.
    async fn next<R>(&mut self, stream: &mut R) -> Option<Result<Message, axum::Error>>
    where
        R: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        match self.0.pop_front() {
            Some(held) => {
                if self.0.is_empty() {
                    // Its buffer is given back, not kept for the connection's life.
                    self.0 = std::collections::VecDeque::new();
                }
                held
            }
            None => stream.next().await,
        }
    }

    fn bytes(&self) -> usize {
        self.0
            .iter()
            .map(|m| match m {
                Some(Ok(m)) => message_len(m),
                _ => 0,
            })
            .sum()
    }

    /// Runs `handling` to its end, reading the socket meanwhile (see `Backlog`); true when
    /// the client sent anything meanwhile (it is not idle).
    async fn read_while<R>(
        &mut self,
        handling: impl Future<Output = ()>,
        stream: &mut R,
        vsn: Vsn,
        outbox: &OutboxTx,
        metrics: &Metrics,
        acks: Option<&ConnAcks>,
    ) -> bool
    where
        R: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        tokio::pin!(handling);
        let mut heard = false;
        // Nothing is read past the socket's end or an error: they are handled in turn.
        let mut ended = self.0.back().is_some_and(|m| !matches!(m, Some(Ok(_))));
        let mut bytes = self.bytes();
        loop {
            let room = self.0.len() < BACKLOG_FRAMES && bytes < BACKLOG_BYTES;
            tokio::select! {
                biased;
                () = &mut handling => return heard,
                msg = stream.next(), if !ended && room => {
                    heard = true;
                    if let Some(Ok(Message::Text(text))) = &msg {
                        let short = text.len() <= HEARTBEAT_MAX_LEN;
                        if let Some(push) = short.then(|| protocol::decode_text(vsn, text.as_str()).ok()).flatten() {
                            if is_heartbeat(&push) {
                                if let Some(acks) = acks {
                                    acks.heartbeat();
                                }
                                metrics.message_in("heartbeat");
                                answer_heartbeat(vsn, outbox, metrics, &push);
                                continue;
                            }
                        }
                    }
                    ended = !matches!(msg, Some(Ok(_)));
                    if let Some(Ok(m)) = &msg {
                        bytes += message_len(m);
                    }
                    self.0.push_back(msg);
                }
            }
        }
    }
}

/// While the writer flushes and closes, keeps reading (and discarding) what the client
/// still sends, until it answers the close frame or goes quiet: a socket closed with
/// unread input is reset, and a reset makes the client drop what it has not read yet (a
/// join flood's error reply and close frame were lost so). A client that stopped reading
/// could keep its socket forever: gives up on both after a while.
///
/// With `unread` (set when reading stopped mid-frame, so the stream cannot be drained),
/// the socket is then held up to `UNREAD_LINGER`, or until that shutdown: closed at once,
/// the reset beat the close frame to the client (Node `ws` reported 1006, not 1009).
async fn drain_and_finish<R>(
    writer: WriterHandle,
    mut stream: R,
    unread: Option<&CancellationToken>,
) where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let drain = async {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DRAIN_QUIET, stream.next()).await {}
    };
    let both = async { tokio::join!(writer.finish(CLOSE_FLUSH_TIMEOUT * 2), drain) };
    let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT * 2, both).await;
    if let Some(shutdown) = unread {
        let _ = tokio::time::timeout(UNREAD_LINGER, shutdown.cancelled()).await;
    }
}

#[cfg(test)]
mod tests;
