//! One WebSocket connection, written against `Sink`/`Stream` so tests can drive it with
//! channel pairs: a reader loop (decode, hand to the session, idle timeout, token expiry,
//! shutdown) and a writer task draining the bounded outbox to the socket. One cleanup
//! path: whatever ends the loop, the session is dropped (members leave) and the writer
//! sends a close frame with the reason.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite;

use super::Hub;
use crate::auth::Claims;
use crate::changes::Mark;
use crate::channel::{ConnResume, Session};
use crate::protocol::{self, Close, ReplyError, Vsn, WireFrame};
use crate::resume::ConnAcks;
use crate::router::outbox::{outbox, OutboxRx};
use crate::telemetry::next_id;

/// Most frames written to the socket before one flush.
const WRITE_BATCH: usize = 64;

/// How long the writer may take to flush queued frames once a close is requested.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A closing connection reads what the client still sends until it is quiet this long.
const DRAIN_QUIET: Duration = Duration::from_millis(100);

/// Resumable connections: a ping at most this often while frames flow to the client...
const PING_EVERY: Duration = Duration::from_millis(100);
/// ...and about this often while only dispatch moves on (so parked positions stay recent).
const PING_IDLE: Duration = Duration::from_secs(1);

fn to_message(frame: WireFrame) -> Message {
    match frame {
        WireFrame::Text(bytes) => match Utf8Bytes::try_from(bytes) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Text(Utf8Bytes::from_static("")),
        },
        WireFrame::Binary(bytes) => Message::Binary(bytes),
    }
}

/// Whether a read error is an inbound message over the configured size.
fn is_too_large(e: axum::Error) -> bool {
    matches!(
        e.into_inner().downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// Runs a connection to completion: `sink` and `stream` are the two halves of the socket;
/// `resume` is the connection's `resume=` key, if it opted in; `request_headers` are the
/// upgrade's `x-` headers as JSON (private channel policies read them).
pub async fn run_connection<W, R>(
    hub: Arc<Hub>,
    sink: W,
    stream: R,
    vsn: Vsn,
    claims: Claims,
    resume: Option<Arc<str>>,
    request_headers: Arc<str>,
) where
    W: Sink<Message> + Unpin + Send + 'static,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let conn_id = next_id();
    // Fused: after the loop it is read again until it ends (see the drain below).
    let mut stream = stream.fuse();
    let limits = &hub.services.limits;
    let (tx, rx) = outbox(limits.outbox_frames, limits.outbox_bytes);
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
    let writer = tokio::spawn(run_writer(sink, rx, pinger));
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
    let mut idle_deadline = Instant::now() + idle;
    loop {
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
            msg = stream.next() => {
                let msg = match msg {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        tracing::debug!(conn_id, error = %e, "socket read failed");
                        let reason = if is_too_large(e) {
                            metrics.limit_hit(conn_id, "frame_too_large");
                            Close::FrameTooLarge
                        } else {
                            Close::Gone
                        };
                        tx.close(reason);
                        break;
                    }
                    None => {
                        tx.close(Close::Gone);
                        break;
                    }
                };
                idle_deadline = Instant::now() + idle;
                let decoded = match msg {
                    Message::Text(text) => protocol::decode_text(vsn, text.as_str()),
                    Message::Binary(bytes) => protocol::decode_binary(&bytes),
                    Message::Close(_) => {
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
                    Ok(inbound) => Box::pin(session.handle(inbound)).await,
                    Err(e) => {
                        metrics.dropped("malformed_frame", 1);
                        let response = ReplyError::Malformed(e).response();
                        let frame = protocol::encode_reply(vsn, None, None, "phoenix", "error", &response);
                        hub.services.router.deliver(&tx, conn_id, frame, "reply");
                    }
                }
            }
        }
    }
    drop(session);
    drop(tx);
    metrics.connections.dec();
    // While the writer flushes and closes, keep reading (and discarding) what the client
    // still sends, until it answers the close frame or goes quiet: a socket closed with
    // unread input is reset, and a reset makes the client drop what it has not read yet
    // (a join flood's error reply and close frame were lost so). A client that stopped
    // reading can keep the writer blocked in `send`: give up on both after a while.
    let mut writer = writer;
    let drain = async {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DRAIN_QUIET, stream.next()).await {}
    };
    let both = async { tokio::join!(&mut writer, drain) };
    if tokio::time::timeout(CLOSE_FLUSH_TIMEOUT * 2, both)
        .await
        .is_err()
    {
        writer.abort();
    }
    tracing::debug!(conn_id, "connection closed");
}

/// A resumable connection's pings: each proves the frames queued before it arrived.
struct Pinger {
    acks: Arc<ConnAcks>,
    /// The last batch dispatch has fully queued (for every connection).
    delivered: watch::Receiver<Option<Mark>>,
}

/// When the writer last pinged.
#[derive(Default)]
struct Pinged {
    at: Option<Instant>,
    seq: u64,
    wrote: bool,
}

impl Pinger {
    /// Pings if due: first reads how far dispatch has queued, then writes everything
    /// queued (which includes all of that), then the ping; its pong proves that far.
    async fn maybe_ping<S>(&self, sink: &mut S, rx: &mut OutboxRx, last: &mut Pinged) -> bool
    where
        S: Sink<Message> + Unpin,
    {
        let Some(mark) = self.delivered.borrow().clone() else {
            return true;
        };
        let since = last.at.map_or(Duration::MAX, |at| at.elapsed());
        let due =
            (last.wrote && since >= PING_EVERY) || (mark.seq != last.seq && since >= PING_IDLE);
        if !due {
            return true;
        }
        while let Some(frame) = rx.try_recv() {
            if sink.feed(to_message(frame)).await.is_err() {
                return false;
            }
        }
        let id = self.acks.ping(mark.clone());
        let ping = Message::Ping(Bytes::copy_from_slice(&id.to_be_bytes()));
        if sink.feed(ping).await.is_err() || sink.flush().await.is_err() {
            return false;
        }
        *last = Pinged {
            at: Some(Instant::now()),
            seq: mark.seq,
            wrote: false,
        };
        true
    }
}

/// Writes queued frames until a close is requested, then (unless the client is too slow
/// to read at all) flushes what is queued and sends a close frame with the reason.
/// Resumable connections also ping (see `Pinger`).
async fn run_writer<S>(mut sink: S, mut rx: OutboxRx, pinger: Option<Pinger>)
where
    S: Sink<Message> + Unpin,
{
    let closed = rx.close_token();
    let mut tick = pinger.as_ref().map(|_| tokio::time::interval(PING_EVERY));
    let mut pinged = Pinged::default();
    loop {
        tokio::select! {
            biased;
            _ = closed.cancelled() => break,
            frame = rx.recv() => match frame {
                Some(frame) => {
                    // Write what is already queued too, then flush once: one syscall
                    // for a burst instead of one per frame.
                    if sink.feed(to_message(frame)).await.is_err() {
                        return;
                    }
                    for _ in 1..WRITE_BATCH {
                        let Some(frame) = rx.try_recv() else { break };
                        if sink.feed(to_message(frame)).await.is_err() {
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                    pinged.wrote = true;
                }
                None => break,
            },
            _ = async { tick.as_mut().expect("guarded").tick().await }, if tick.is_some() => {}
        }
        if let Some(p) = &pinger {
            if !p.maybe_ping(&mut sink, &mut rx, &mut pinged).await {
                return;
            }
        }
    }
    let reason = rx.close_reason().unwrap_or(Close::Gone);
    if reason == Close::Gone && rx.queued_bytes() == 0 {
        let _ = sink.close().await;
        return;
    }
    let flush = async {
        if reason != Close::SlowConsumer {
            while let Ok(Some(frame)) =
                tokio::time::timeout(Duration::from_millis(1), rx.recv()).await
            {
                if sink.send(to_message(frame)).await.is_err() {
                    return;
                }
            }
        }
        let close = CloseFrame {
            code: reason.code(),
            reason: Utf8Bytes::from_static(reason.text()),
        };
        let _ = sink.send(Message::Close(Some(close))).await;
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, flush).await;
}

#[cfg(test)]
mod tests;
