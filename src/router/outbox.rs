//! The bounded per-connection outbound queue that fan-out writes into. Bounded by frame
//! count and by bytes; a push that does not fit closes that one connection as a slow
//! consumer instead of waiting or growing. The connection's writer holds `OutboxRx`;
//! the router, channels and REST handlers hold clones of `OutboxTx`.
//!
//! A burst (one large transaction's changes arrive together) may take the queue past its
//! bounds, up to `BURST_FRAMES` times the frames and `BURST_BYTES` times the bytes, for a
//! grace period (`outbox_bursting`): a client that reads keeps up and gets every change; a
//! queue still past its bounds after the grace, or past those ceilings, is a slow consumer.
//!
//! The queue is a `VecDeque` under a mutex, allocated only while frames wait (an idle
//! connection holds no buffer), and a push wakes whatever waker the writer registered:
//! a writer task serving many sockets registers one per socket, so a change fanned out
//! to many connections costs each of them a queue push, not a task wake-up.
//!
//! A channel reaches the outbox through a `ChannelOutbox`: directly, or, while a resumed
//! channel replays what it missed, behind a `Gate` that holds its live frames and releases
//! them in order once the replay is queued.
//!
//! A frame whose content is not known yet (a change still judged by the filter lane,
//! `changes::lane`) takes its place in the queue as a `Slot`: the writer stops at it until
//! it is filled, so later frames of the connection wait behind it and order is kept.
//!
//! A snapshot (a joiner's `presence_state`) may go past the byte bound: it is refused only
//! when the queue is already over it, so a joiner always gets its state and the queue
//! holds at most the bound plus one snapshot (which configuration keeps below the bound).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio_util::sync::CancellationToken;

use crate::protocol::WireFrame;

pub use crate::protocol::Close;

/// A drained queue keeps its buffer only up to this many frames (a burst's large buffer
/// is given back once the writer catches up).
const KEEP_CAPACITY: usize = 16;
/// Urgent frames (heartbeat replies) waiting at most; more are dropped: a client that
/// sent this many heartbeats without reading one answer is not reading at all.
const MAX_URGENT: usize = 16;
/// How far past its bounds a burst may take a queue (`outbox_bursting`): frames, bytes.
pub const BURST_FRAMES: usize = 16;
pub const BURST_BYTES: usize = 4;

/// Milliseconds since the first queue past its bounds (`Shared::over_since`), plus one.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

struct Shared {
    /// Frames not yet taken by the writer. Pushers and the writer lock it briefly.
    queue: Mutex<VecDeque<Queued>>,
    queued_bytes: AtomicUsize,
    max_frames: usize,
    max_bytes: usize,
    /// How long a burst may keep the queue past its bounds (`outbox_bursting`); 0: no
    /// burst.
    grace_ms: u64,
    /// When the queue went past its bounds (`now_ms`), 0 while within them. Read and
    /// written under the queue's lock.
    over_since: AtomicU64,
    /// Cancelled by `close`, for whoever waits for it (the connection's reader).
    close: CancellationToken,
    /// Set by `close` before `close` is cancelled: pushes test this (one atomic load),
    /// not the token, whose check takes a lock.
    reason: OnceLock<Close>,
    /// Registered by the writer; woken by every push and by `close`.
    writer: AtomicWaker,
    /// Frames written before anything queued (`OutboxTx::push_urgent`), and how many.
    urgent: Mutex<VecDeque<WireFrame>>,
    urgent_len: AtomicUsize,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self, reason: Close) {
        // First: `is_closed` reads it.
        let _ = self.reason.set(reason);
        self.close.cancel();
        self.writer.wake();
    }

    /// How far a burst may take the queue: frames, bytes.
    fn ceilings(&self) -> (usize, usize) {
        (
            self.max_frames.saturating_mul(BURST_FRAMES),
            self.max_bytes.saturating_mul(BURST_BYTES),
        )
    }

    /// Bytes a gate may hold for a catch-up: the burst's ceiling, else the bound.
    fn hold_limit(&self) -> usize {
        match self.grace_ms {
            0 => self.max_bytes,
            _ => self.ceilings().1,
        }
    }

    /// Whether `close` was called (the token is cancelled right after).
    fn is_closed(&self) -> bool {
        self.reason.get().is_some()
    }

    /// Whether an item of `len` bytes may join `frames` queued items and `before` queued
    /// bytes (called under the queue's lock): within the bounds, or past them within the
    /// burst's ceilings while the queue has been past them for less than the grace.
    fn fits(&self, frames: usize, before: usize, len: usize, snapshot: bool) -> bool {
        if within(
            frames,
            before,
            len,
            snapshot,
            self.max_frames,
            self.max_bytes,
        ) {
            if self.over_since.load(Ordering::Relaxed) != 0 {
                self.over_since.store(0, Ordering::Relaxed);
            }
            return true;
        }
        let (max_frames, max_bytes) = self.ceilings();
        if self.grace_ms == 0 || !within(frames, before, len, snapshot, max_frames, max_bytes) {
            return false;
        }
        let now = now_ms();
        match self.over_since.load(Ordering::Relaxed) {
            0 => {
                self.over_since.store(now, Ordering::Relaxed);
                true
            }
            since => now - since < self.grace_ms,
        }
    }

    /// A push that did not fit: its `refused` bytes stop counting and the connection is
    /// closed as a slow consumer.
    fn overflow(&self, refused: usize) -> PushError {
        self.queued_bytes.fetch_sub(refused, Ordering::AcqRel);
        self.close(Close::SlowConsumer);
        PushError::Overflow
    }
}

/// Whether an item of `len` bytes may join `frames` queued items and `before` queued
/// bytes under these bounds: a snapshot may go past the byte bound unless the queue is
/// already over it; anything else past it only into an empty queue.
fn within(
    frames: usize,
    before: usize,
    len: usize,
    snapshot: bool,
    max_frames: usize,
    max_bytes: usize,
) -> bool {
    let within_bytes = match snapshot {
        true => before <= max_bytes,
        false => before == 0 || before + len <= max_bytes,
    };
    frames < max_frames && within_bytes
}

/// What the queue holds: a frame, or the place of one still being decided.
enum Queued {
    Frame(WireFrame),
    /// The place, and the bytes it counts (an estimate of its frame) until taken.
    Slot(Arc<OnceLock<Option<WireFrame>>>, usize),
}

/// The place of a frame reserved in a connection's queue (`ChannelOutbox::reserve`):
/// frames queued after it wait until it is filled. Dropping it unfilled leaves the place
/// empty (the writer moves on); dropped by a panic, it closes the connection first
/// (`Close::InternalError`), so that nothing written after the place can acknowledge a
/// frame that was never decided.
pub struct Slot {
    shared: Arc<Shared>,
    cell: Arc<OnceLock<Option<WireFrame>>>,
}

impl Slot {
    /// Puts `frame` (or nothing) in the reserved place and lets the writer go on. The
    /// place counts its reserved estimate, not the frame's own bytes, until written.
    pub fn fill(self, frame: Option<WireFrame>) {
        self.set(frame);
    }

    fn set(&self, frame: Option<WireFrame>) {
        if self.cell.set(frame).is_ok() {
            self.shared.writer.wake();
        }
    }

    /// Whether the connection is closing (the frame would be dropped anyway).
    pub fn is_closed(&self) -> bool {
        self.shared.close.is_cancelled()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if std::thread::panicking() && self.cell.get().is_none() {
            self.shared.close(Close::InternalError);
        }
        self.set(None);
    }
}

/// Sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct OutboxTx {
    shared: Arc<Shared>,
}

/// Receiving side, owned by the connection's writer.
pub struct OutboxRx {
    shared: Arc<Shared>,
    /// Queue items taken so far (frames, and slots filled or not).
    taken: u64,
    /// Urgent frames taken so far.
    urgent_taken: u64,
}

/// Creates an outbox holding at most `max_frames` frames and `max_bytes` bytes.
pub fn outbox(max_frames: usize, max_bytes: usize) -> (OutboxTx, OutboxRx) {
    outbox_bursting(max_frames, max_bytes, Duration::ZERO)
}

/// Creates an outbox bounded by `max_frames` frames and `max_bytes` bytes that a burst
/// may take past them (up to `BURST_FRAMES` / `BURST_BYTES` times) for `grace`: a
/// queue still past them after it is a slow consumer. A zero `grace` allows no burst.
pub fn outbox_bursting(
    max_frames: usize,
    max_bytes: usize,
    grace: Duration,
) -> (OutboxTx, OutboxRx) {
    let grace_ms = match grace.is_zero() {
        true => 0,
        false => grace.as_millis().clamp(1, u64::MAX.into()) as u64,
    };
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        queued_bytes: AtomicUsize::new(0),
        max_frames: max_frames.max(1),
        max_bytes,
        grace_ms,
        over_since: AtomicU64::new(0),
        close: CancellationToken::new(),
        reason: OnceLock::new(),
        writer: AtomicWaker::new(),
        urgent: Mutex::new(VecDeque::new()),
        urgent_len: AtomicUsize::new(0),
    });
    (
        OutboxTx {
            shared: shared.clone(),
        },
        OutboxRx {
            shared,
            taken: 0,
            urgent_taken: 0,
        },
    )
}

fn frame_len(frame: &WireFrame) -> usize {
    match frame {
        WireFrame::Text(b) | WireFrame::Binary(b) => b.len(),
    }
}

/// Bytes an item counts while queued: a slot's frame counts from when it is filled.
fn queued_len(item: &Queued) -> usize {
    match item {
        Queued::Frame(frame) => frame_len(frame),
        Queued::Slot(_, reserved) => *reserved,
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
        self.push_within(frame, false)
    }

    /// Queues a snapshot frame: past the byte bound too, unless the queue is already
    /// over it (see the module header). The frame count still applies.
    pub fn push_snapshot(&self, frame: WireFrame) -> Result<(), PushError> {
        self.push_within(frame, true)
    }

    fn push_within(&self, frame: WireFrame, snapshot: bool) -> Result<(), PushError> {
        self.push_queued(Queued::Frame(frame), snapshot)
    }

    /// Queues `frames` in order, as one `push` each would, but under one lock and with
    /// one wake-up of the writer (dispatch queues a batch's frames per connection so).
    /// Empties `frames`. Returns how many were queued and, if one was not, why: on
    /// overflow the connection is closed and the rest are dropped.
    pub fn push_run(&self, frames: &mut Vec<WireFrame>) -> (usize, Result<(), PushError>) {
        let shared = &*self.shared;
        if frames.is_empty() {
            return (0, Ok(()));
        }
        if shared.is_closed() {
            frames.clear();
            return (0, Err(PushError::Closed));
        }
        let total: usize = frames.iter().map(frame_len).sum();
        let mut before = shared.queued_bytes.fetch_add(total, Ordering::AcqRel);
        let mut refused = 0;
        let queued = {
            let mut queue = shared.queue();
            let mut queued = 0;
            for frame in frames.drain(..) {
                let len = frame_len(&frame);
                if refused > 0 || !shared.fits(queue.len(), before, len, false) {
                    refused += len;
                    continue;
                }
                queue.push_back(Queued::Frame(frame));
                before += len;
                queued += 1;
            }
            queued
        };
        if queued > 0 {
            shared.writer.wake();
        }
        if refused == 0 {
            return (queued, Ok(()));
        }
        (queued, Err(shared.overflow(refused)))
    }

    /// Reserves a frame's place at the end of the queue: it counts as a frame, and as
    /// `bytes` until taken.
    fn reserve(&self, bytes: usize) -> Result<Slot, PushError> {
        let cell = Arc::new(OnceLock::new());
        self.push_queued(Queued::Slot(cell.clone(), bytes), false)?;
        Ok(Slot {
            shared: self.shared.clone(),
            cell,
        })
    }

    fn push_queued(&self, item: Queued, snapshot: bool) -> Result<(), PushError> {
        let shared = &*self.shared;
        if shared.is_closed() {
            return Err(PushError::Closed);
        }
        let len = queued_len(&item);
        let before = shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        let fits = {
            let mut queue = shared.queue();
            let fits = shared.fits(queue.len(), before, len, snapshot);
            if fits {
                queue.push_back(item);
            }
            fits
        };
        if !fits {
            return Err(shared.overflow(len));
        }
        shared.writer.wake();
        Ok(())
    }

    /// Asks the connection to close; the first reason given wins.
    pub fn close(&self, reason: Close) {
        self.shared.close(reason);
    }

    /// Queues a frame ahead of everything queued: a heartbeat's reply, which says the
    /// connection is alive and must not wait behind a backlog (a long catch-up on a slow
    /// client): the client would take the connection for dead, reconnect, and start the
    /// catch-up over. It carries no data, so it overtakes nothing that has an order.
    pub fn push_urgent(&self, frame: WireFrame) -> Result<(), PushError> {
        let shared = &*self.shared;
        if shared.is_closed() {
            return Err(PushError::Closed);
        }
        let mut urgent = shared.urgent.lock().unwrap_or_else(|p| p.into_inner());
        if urgent.len() < MAX_URGENT {
            urgent.push_back(frame);
            shared.urgent_len.store(urgent.len(), Ordering::Release);
        }
        drop(urgent);
        shared.writer.wake();
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// A handle that resolves when the connection has been asked to close.
    pub fn close_token(&self) -> CancellationToken {
        self.shared.close.clone()
    }

    /// Queues a frame once there is room, waiting for the writer to drain (a catch-up that
    /// may be larger than the queue). False when the connection closed meanwhile.
    pub async fn push_patiently(&self, frame: WireFrame) -> bool {
        let len = frame_len(&frame);
        loop {
            if self.is_closed() {
                return false;
            }
            let bytes = self.queued_bytes();
            let frames = self.shared.queue().len();
            if frames < self.shared.max_frames
                && (bytes == 0 || bytes + len <= self.shared.max_bytes)
            {
                return self.push(frame).is_ok();
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Bytes currently queued and not yet written to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// Frames currently queued and not yet written to the socket.
    pub fn queued_frames(&self) -> usize {
        self.shared.queue().len()
    }
}

/// Anything fan-out can push a frame into.
pub trait FrameSink {
    fn push_frame(&self, frame: WireFrame) -> Result<(), PushError>;

    /// A snapshot frame (`OutboxTx::push_snapshot`).
    fn push_snapshot(&self, frame: WireFrame) -> Result<(), PushError> {
        self.push_frame(frame)
    }
}

impl FrameSink for OutboxTx {
    fn push_frame(&self, frame: WireFrame) -> Result<(), PushError> {
        self.push(frame)
    }

    fn push_snapshot(&self, frame: WireFrame) -> Result<(), PushError> {
        OutboxTx::push_snapshot(self, frame)
    }
}

/// Holds a channel's live frames while it catches up; see `ChannelOutbox::gated`.
pub struct Gate {
    /// `Some` while closed: the frames held, and their bytes. Pushers and `open` take it.
    held: Mutex<Option<(Vec<Queued>, usize)>>,
    tx: OutboxTx,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Vec<Queued>, usize)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `first` (the catch-up's last frames), then everything held, then lets live
    /// frames through: nothing pushed meanwhile can overtake them.
    pub fn open(&self, first: impl IntoIterator<Item = WireFrame>) {
        let mut held = self.lock();
        for frame in first {
            let _ = self.tx.push(frame);
        }
        for item in held.take().map(|(frames, _)| frames).unwrap_or_default() {
            let _ = self.tx.push_queued(item, false);
        }
    }
}

/// One channel's way into its connection's outbox (cheap to clone).
#[derive(Clone)]
pub struct ChannelOutbox {
    tx: OutboxTx,
    /// Only resumed channels have one; it stays (open) after the catch-up.
    gate: Option<Arc<Gate>>,
}

impl ChannelOutbox {
    pub fn direct(tx: OutboxTx) -> ChannelOutbox {
        ChannelOutbox { tx, gate: None }
    }

    /// An outbox whose frames are held until the returned gate opens. Held frames count
    /// against the connection's byte bound: past it the connection is a slow consumer.
    pub fn gated(tx: OutboxTx) -> (ChannelOutbox, Arc<Gate>) {
        let gate = Arc::new(Gate {
            held: Mutex::new(Some((Vec::new(), 0))),
            tx: tx.clone(),
        });
        let outbox = ChannelOutbox {
            tx,
            gate: Some(gate.clone()),
        };
        (outbox, gate)
    }

    pub fn tx(&self) -> &OutboxTx {
        &self.tx
    }

    /// Whether frames go straight to the connection's queue (no gate, never resumed).
    pub fn is_direct(&self) -> bool {
        self.gate.is_none()
    }
}

impl ChannelOutbox {
    /// Reserves the place of a frame to be decided later, behind everything this channel
    /// queued (or held) so far, counting `bytes` (an estimate) until taken; see [`Slot`].
    pub fn reserve(&self, bytes: usize) -> Result<Slot, PushError> {
        if let Some(gate) = &self.gate {
            let mut held = gate.lock();
            if let Some((frames, held_bytes)) = held.as_mut() {
                if self.tx.is_closed() {
                    return Err(PushError::Closed);
                }
                *held_bytes += bytes;
                if *held_bytes > self.tx.shared.hold_limit() {
                    self.tx.close(Close::SlowConsumer);
                    return Err(PushError::Overflow);
                }
                let cell = Arc::new(OnceLock::new());
                frames.push(Queued::Slot(cell.clone(), bytes));
                return Ok(Slot {
                    shared: self.tx.shared.clone(),
                    cell,
                });
            }
        }
        self.tx.reserve(bytes)
    }

    fn push_gated(&self, frame: WireFrame, snapshot: bool) -> Result<(), PushError> {
        if let Some(gate) = &self.gate {
            let mut held = gate.lock();
            if let Some((frames, bytes)) = held.as_mut() {
                if self.tx.is_closed() {
                    return Err(PushError::Closed);
                }
                let before = *bytes;
                *bytes += frame_len(&frame);
                let limit = self.tx.shared.hold_limit();
                if (snapshot && before > limit) || (!snapshot && *bytes > limit) {
                    self.tx.close(Close::SlowConsumer);
                    return Err(PushError::Overflow);
                }
                frames.push(Queued::Frame(frame));
                return Ok(());
            }
        }
        self.tx.push_within(frame, snapshot)
    }
}

impl FrameSink for ChannelOutbox {
    fn push_frame(&self, frame: WireFrame) -> Result<(), PushError> {
        self.push_gated(frame, false)
    }

    fn push_snapshot(&self, frame: WireFrame) -> Result<(), PushError> {
        self.push_gated(frame, true)
    }
}

impl OutboxRx {
    /// How many urgent frames (heartbeat replies) were taken so far.
    pub fn urgent_taken(&self) -> u64 {
        self.urgent_taken
    }

    /// The next frame: an urgent one first, else the first queued (when no unfilled
    /// slot is ahead of it).
    pub fn try_recv(&mut self) -> Option<WireFrame> {
        if self.shared.urgent_len.load(Ordering::Acquire) > 0 {
            let mut urgent = self.shared.urgent.lock().unwrap_or_else(|p| p.into_inner());
            let frame = urgent.pop_front();
            self.shared
                .urgent_len
                .store(urgent.len(), Ordering::Release);
            if frame.is_some() {
                self.urgent_taken += 1;
                return frame;
            }
        }
        let mut queue = self.shared.queue();
        let frame = loop {
            let ready = match queue.front()? {
                Queued::Frame(_) => true,
                Queued::Slot(cell, _) => cell.get().is_some(),
            };
            if !ready {
                return None;
            }
            let item = queue.pop_front()?;
            self.taken += 1;
            let bytes = &self.shared.queued_bytes;
            bytes.fetch_sub(queued_len(&item), Ordering::AcqRel);
            match item {
                Queued::Frame(frame) => break frame,
                Queued::Slot(cell, _) => {
                    if let Some(Some(frame)) = cell.get() {
                        break frame.clone();
                    }
                    // Filled with nothing: on to the next.
                }
            }
        };
        if queue.is_empty() && queue.capacity() > KEEP_CAPACITY {
            *queue = VecDeque::new();
        }
        // Back within the bounds: the next burst gets a whole grace.
        let shared = &*self.shared;
        if shared.over_since.load(Ordering::Relaxed) != 0
            && queue.len() < shared.max_frames
            && shared.queued_bytes.load(Ordering::Acquire) <= shared.max_bytes
        {
            shared.over_since.store(0, Ordering::Relaxed);
        }
        Some(frame)
    }

    /// Whether `try_recv` would return a frame now (one is queued and no unfilled slot is
    /// ahead of it).
    pub fn has_ready(&self) -> bool {
        if self.shared.urgent_len.load(Ordering::Acquire) > 0 {
            return true;
        }
        match self.shared.queue().front() {
            Some(Queued::Frame(_)) => true,
            Some(Queued::Slot(cell, _)) => cell.get().is_some(),
            None => false,
        }
    }

    /// Wakes `waker` on the next push or close. Register, then take what is queued: a
    /// frame pushed in between wakes it.
    pub fn register(&self, waker: &Waker) {
        self.shared.writer.register(waker);
    }

    /// Forgets the registered waker (the writer is gone).
    pub fn unregister(&self) {
        drop(self.shared.writer.take());
    }

    /// The next frame; `None` once the connection is closing and nothing is queued.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<WireFrame>> {
        if let Some(frame) = self.try_recv() {
            return Poll::Ready(Some(frame));
        }
        self.register(cx.waker());
        match self.try_recv() {
            Some(frame) => Poll::Ready(Some(frame)),
            None if self.shared.is_closed() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    /// Next frame to write; `None` once the connection is closing and nothing is queued.
    pub async fn recv(&mut self) -> Option<WireFrame> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// A handle that resolves when the connection has been asked to close.
    pub fn close_token(&self) -> CancellationToken {
        self.shared.close.clone()
    }

    pub fn close_reason(&self) -> Option<Close> {
        self.shared.reason.get().copied()
    }

    /// Asks the connection to close (from the writer itself).
    pub fn close(&self, reason: Close) {
        self.shared.close(reason);
    }

    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// Frames not written yet, urgent ones included.
    pub fn queued_frames(&self) -> usize {
        self.shared.queue().len() + self.shared.urgent_len.load(Ordering::Acquire)
    }

    /// Queue items taken so far (urgent frames are not queue items).
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// The count `taken` reaches once everything queued now has been taken: all of it
    /// is then written, whatever was queued after.
    pub fn taken_once_queued_now(&self) -> u64 {
        self.taken + self.shared.queue().len() as u64
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
    async fn a_burst_past_the_bounds_is_queued_for_a_reader_that_drains_it() {
        let (tx, mut rx) = outbox_bursting(4, 100, Duration::from_secs(60));
        let mut run: Vec<WireFrame> = (0..4 * BURST_FRAMES).map(|_| text(1)).collect();
        assert_eq!(tx.push_run(&mut run), (4 * BURST_FRAMES, Ok(())));
        while rx.try_recv().is_some() {}
        // Drained: the next burst has the whole allowance again, bytes too.
        assert!(tx.push(text(300)).is_ok());
        assert!(tx.push(text(100)).is_ok());
        assert_eq!(tx.queued_bytes(), 400);
        assert!(!tx.is_closed());
    }

    #[tokio::test]
    async fn a_burst_closes_at_its_ceilings_and_a_queue_past_its_bounds_after_the_grace() {
        let (tx, rx) = outbox_bursting(4, 1 << 20, Duration::from_secs(60));
        let mut run: Vec<WireFrame> = (0..4 * BURST_FRAMES + 1).map(|_| text(1)).collect();
        assert_eq!(
            tx.push_run(&mut run),
            (4 * BURST_FRAMES, Err(PushError::Overflow))
        );
        assert_eq!(rx.close_reason(), Some(Close::SlowConsumer));

        let (tx, _rx) = outbox_bursting(100, 10, Duration::from_secs(60));
        assert!(tx.push(text(40)).is_ok());
        assert_eq!(tx.push(text(1)), Err(PushError::Overflow), "4 × 10 bytes");

        let (tx, mut rx) = outbox_bursting(2, 1 << 20, Duration::from_millis(30));
        for _ in 0..3 {
            assert!(tx.push(text(1)).is_ok());
        }
        std::thread::sleep(Duration::from_millis(40));
        // Still past the bound (nothing was read) after the grace: a slow consumer.
        assert_eq!(tx.push(text(1)), Err(PushError::Overflow));
        assert_eq!(rx.close_reason(), Some(Close::SlowConsumer));
        assert!(
            rx.recv().await.is_some(),
            "what was queued is still written"
        );

        // A reader that got back within the bounds starts a new grace, though no push
        // found the queue within them (the next one takes it past them again).
        let (tx, mut rx) = outbox_bursting(100, 10, Duration::from_millis(30));
        assert!(tx.push(text(6)).is_ok());
        assert!(tx.push(text(6)).is_ok(), "past the bound: a burst");
        rx.try_recv().unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert!(tx.push(text(6)).is_ok(), "past it again: a new burst");
        assert!(!tx.is_closed());
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
    async fn a_gate_releases_held_frames_after_the_catch_up_and_before_later_ones() {
        let (tx, mut rx) = outbox(100, 1 << 20);
        let (channel, gate) = ChannelOutbox::gated(tx.clone());
        channel.push_frame(text(1)).unwrap();
        channel.push_frame(text(2)).unwrap();
        assert!(rx.try_recv().is_none(), "held while the gate is closed");
        gate.open([text(10), text(11)]);
        channel.push_frame(text(3)).unwrap();
        let lens: Vec<usize> = std::iter::from_fn(|| rx.try_recv())
            .map(|f| frame_len(&f))
            .collect();
        assert_eq!(lens, [10, 11, 1, 2, 3]);
    }

    #[tokio::test]
    async fn frames_held_past_the_byte_bound_close_the_connection() {
        let (tx, rx) = outbox(100, 10);
        let (channel, _gate) = ChannelOutbox::gated(tx);
        channel.push_frame(text(6)).unwrap();
        assert_eq!(channel.push_frame(text(6)), Err(PushError::Overflow));
        assert_eq!(rx.close_reason(), Some(Close::SlowConsumer));
    }

    #[tokio::test]
    async fn a_snapshot_goes_past_the_byte_bound_unless_the_queue_is_already_over_it() {
        let (tx, _rx) = outbox(100, 10);
        tx.push(text(4)).unwrap();
        assert!(
            tx.push_snapshot(text(10)).is_ok(),
            "4 queued, within the bound"
        );
        assert_eq!(tx.push_snapshot(text(1)), Err(PushError::Overflow));
        let (tx, _rx) = outbox(100, 10);
        let (channel, _gate) = ChannelOutbox::gated(tx);
        channel.push_frame(text(4)).unwrap();
        assert!(channel.push_snapshot(text(10)).is_ok());
        assert_eq!(channel.push_snapshot(text(1)), Err(PushError::Overflow));
    }

    fn lens(rx: &mut OutboxRx) -> Vec<usize> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|f| frame_len(&f))
            .collect()
    }

    #[tokio::test]
    async fn frames_behind_an_unfilled_slot_wait_for_it_and_keep_their_order() {
        let (tx, mut rx) = outbox(100, 1 << 20);
        let channel = ChannelOutbox::direct(tx.clone());
        channel.push_frame(text(1)).unwrap();
        let first = channel.reserve(0).unwrap();
        let second = channel.reserve(7).unwrap();
        tx.push(text(3)).unwrap();
        assert_eq!(lens(&mut rx), [1], "stops at the unfilled slot");
        assert_eq!(tx.queued_frames(), 3, "the slots count as frames");
        assert_eq!(tx.queued_bytes(), 7 + 3, "and their estimates as bytes");
        second.fill(Some(text(20)));
        assert_eq!(tx.queued_bytes(), 7 + 3, "the estimate counts until taken");
        assert_eq!(lens(&mut rx), Vec::<usize>::new(), "the first still holds");
        first.fill(None);
        assert_eq!(lens(&mut rx), [20, 3], "an empty slot is skipped");
        assert_eq!(tx.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_dropped_slot_lets_the_writer_on_and_a_gate_holds_slots_in_order() {
        let (tx, mut rx) = outbox(100, 1 << 20);
        let (channel, gate) = ChannelOutbox::gated(tx.clone());
        channel.push_frame(text(1)).unwrap();
        let slot = channel.reserve(0).unwrap();
        channel.push_frame(text(2)).unwrap();
        gate.open([text(10)]);
        assert_eq!(lens(&mut rx), [10, 1]);
        drop(slot);
        assert_eq!(lens(&mut rx), [2]);
        let (tx, _rx) = outbox(1, 1 << 20);
        let _slot = tx.reserve(0).unwrap();
        assert!(matches!(tx.reserve(0), Err(PushError::Overflow)));
    }

    #[tokio::test]
    async fn a_slot_dropped_by_a_panic_closes_its_connection() {
        let (tx, rx) = outbox(100, 1 << 20);
        let slot = tx.reserve(0).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _slot = slot;
            panic!("deciding the frame failed");
        }));
        assert!(panicked.is_err());
        assert_eq!(rx.close_reason(), Some(Close::InternalError));
        // An ordinary drop leaves the place empty and the connection open.
        let (tx, rx) = outbox(100, 1 << 20);
        drop(tx.reserve(0).unwrap());
        assert_eq!(rx.close_reason(), None);
    }

    #[tokio::test]
    async fn a_run_is_queued_in_order_and_bounded_like_single_pushes() {
        let (tx, mut rx) = outbox(100, 10);
        let mut run = vec![text(3), text(4), text(2)];
        assert_eq!(tx.push_run(&mut run), (3, Ok(())));
        assert!(run.is_empty());
        assert_eq!(tx.queued_bytes(), 9);
        for n in [3, 4, 2] {
            assert_eq!(frame_len(&rx.recv().await.unwrap()), n, "in order");
        }
        assert_eq!(tx.queued_bytes(), 0);
        // The third goes past the byte bound: the first two stay queued, the rest dropped.
        let mut run = vec![text(4), text(4), text(4), text(1)];
        assert_eq!(tx.push_run(&mut run), (2, Err(PushError::Overflow)));
        assert_eq!(tx.queued_bytes(), 8, "only what was queued counts");
        assert_eq!(rx.close_reason(), Some(Close::SlowConsumer));
        let mut run = vec![text(1)];
        assert_eq!(tx.push_run(&mut run), (0, Err(PushError::Closed)));
        // By count, and a large first frame to an empty queue, as `push`.
        let (tx, _rx) = outbox(2, 10);
        let mut run = vec![text(50), text(1), text(1)];
        assert_eq!(tx.push_run(&mut run).0, 1);
        let (tx, _rx) = outbox(2, 1 << 20);
        let mut run = vec![text(1), text(1), text(1)];
        assert_eq!(tx.push_run(&mut run), (2, Err(PushError::Overflow)));
    }

    #[tokio::test]
    async fn a_single_frame_larger_than_the_byte_bound_still_goes_to_an_empty_queue() {
        let (tx, _rx) = outbox(100, 10);
        assert!(tx.push(text(50)).is_ok());
    }
}
