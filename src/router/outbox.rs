//! The bounded per-connection outbound queue that fan-out writes into. Bounded by frame
//! count and by bytes; a push that does not fit closes that one connection as a slow
//! consumer instead of waiting or growing. The connection's writer task holds `OutboxRx`;
//! the router, channels and REST handlers hold clones of `OutboxTx`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::WireFrame;

pub use crate::protocol::Close;

struct Shared {
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    close: CancellationToken,
    reason: OnceLock<Close>,
}

/// Sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct OutboxTx {
    tx: mpsc::Sender<WireFrame>,
    shared: Arc<Shared>,
}

/// Receiving side, owned by the connection's writer task.
pub struct OutboxRx {
    rx: mpsc::Receiver<WireFrame>,
    shared: Arc<Shared>,
}

/// Creates an outbox holding at most `max_frames` frames and `max_bytes` bytes.
pub fn outbox(max_frames: usize, max_bytes: usize) -> (OutboxTx, OutboxRx) {
    let (tx, rx) = mpsc::channel(max_frames.max(1));
    let shared = Arc::new(Shared {
        queued_bytes: AtomicUsize::new(0),
        max_bytes,
        close: CancellationToken::new(),
        reason: OnceLock::new(),
    });
    (
        OutboxTx {
            tx,
            shared: shared.clone(),
        },
        OutboxRx { rx, shared },
    )
}

fn frame_len(frame: &WireFrame) -> usize {
    match frame {
        WireFrame::Text(b) | WireFrame::Binary(b) => b.len(),
    }
}

/// Result of a push that did not queue the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection is already closing; the frame is dropped.
    Closed,
    /// This push overflowed the queue; the connection is now closing as a slow consumer.
    Overflow,
}

impl OutboxTx {
    /// Queues a frame without waiting. On overflow the connection is closed.
    pub fn push(&self, frame: WireFrame) -> Result<(), PushError> {
        if self.shared.close.is_cancelled() {
            return Err(PushError::Closed);
        }
        let len = frame_len(&frame);
        let before = self.shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.shared.max_bytes && before > 0 {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.close(Close::SlowConsumer);
            return Err(PushError::Overflow);
        }
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                match e {
                    mpsc::error::TrySendError::Full(_) => {
                        self.close(Close::SlowConsumer);
                        Err(PushError::Overflow)
                    }
                    mpsc::error::TrySendError::Closed(_) => Err(PushError::Closed),
                }
            }
        }
    }

    /// Asks the connection to close; the first reason given wins.
    pub fn close(&self, reason: Close) {
        let _ = self.shared.reason.set(reason);
        self.shared.close.cancel();
    }

    pub fn is_closed(&self) -> bool {
        self.shared.close.is_cancelled()
    }

    /// A handle that resolves when the connection has been asked to close.
    pub fn close_token(&self) -> CancellationToken {
        self.shared.close.clone()
    }

    /// Bytes currently queued and not yet written to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }
}

impl OutboxRx {
    /// Next frame to write; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<WireFrame> {
        let frame = self.rx.recv().await?;
        self.shared
            .queued_bytes
            .fetch_sub(frame_len(&frame), Ordering::AcqRel);
        Some(frame)
    }

    /// The next frame if one is already queued (for batching writes).
    pub fn try_recv(&mut self) -> Option<WireFrame> {
        let frame = self.rx.try_recv().ok()?;
        self.shared
            .queued_bytes
            .fetch_sub(frame_len(&frame), Ordering::AcqRel);
        Some(frame)
    }

    /// A handle that resolves when the connection has been asked to close.
    pub fn close_token(&self) -> CancellationToken {
        self.shared.close.clone()
    }

    pub fn close_reason(&self) -> Option<Close> {
        self.shared.reason.get().copied()
    }

    /// Asks the connection to close (from the connection task itself).
    pub fn close(&self, reason: Close) {
        let _ = self.shared.reason.set(reason);
        self.shared.close.cancel();
    }

    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn text(n: usize) -> WireFrame {
        WireFrame::Text(Bytes::from(vec![b'x'; n]))
    }

    #[tokio::test]
    async fn overflow_by_count_closes_as_slow_consumer() {
        let (tx, rx) = outbox(2, 1 << 20);
        assert!(tx.push(text(1)).is_ok());
        assert!(tx.push(text(1)).is_ok());
        assert_eq!(tx.push(text(1)), Err(PushError::Overflow));
        assert!(tx.is_closed());
        assert_eq!(rx.close_reason(), Some(Close::SlowConsumer));
        assert_eq!(tx.push(text(1)), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn overflow_by_bytes_closes_and_bytes_are_released_on_recv() {
        let (tx, mut rx) = outbox(100, 10);
        assert!(tx.push(text(6)).is_ok());
        assert_eq!(tx.queued_bytes(), 6);
        rx.recv().await.unwrap();
        assert_eq!(tx.queued_bytes(), 0);
        assert!(tx.push(text(6)).is_ok());
        assert_eq!(tx.push(text(6)), Err(PushError::Overflow));
        assert_eq!(tx.queued_bytes(), 6);
    }

    #[tokio::test]
    async fn a_single_frame_larger_than_the_byte_bound_still_goes_to_an_empty_queue() {
        let (tx, _rx) = outbox(100, 10);
        assert!(tx.push(text(50)).is_ok());
    }
}
