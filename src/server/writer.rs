//! Writer tasks: a few long-lived tasks, each writing to many sockets. A connection hands
//! its socket's sending half and its outbox to one of them (`Writers::attach`); a push
//! into the outbox marks that socket ready in its writer task (one queue push, no task
//! wake-up while the writer is busy), and the writer visits ready sockets in turn: it
//! feeds what is queued (up to `WRITE_BATCH` frames) and flushes once. A change fanned out
//! to 10,000 connections wakes a few tasks, each writing many sockets, and the sockets a
//! busy writer reaches late get several frames in one write.
//!
//! Sockets are polled, never awaited: one that does not take its frames waits for the
//! socket to become writable (its own waker) while the task serves the others. Per socket
//! the writer also sends the resume pings (`Pinger`) and, once the connection is asked to
//! close, flushes what is queued and sends a close frame with the reason, giving up after
//! `CLOSE_FLUSH_TIMEOUT`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::Bytes;
use futures_util::task::{waker_ref, ArcWake};
use futures_util::{Sink, SinkExt};
use tokio::sync::{watch, Notify};
use tokio::time::{Instant, MissedTickBehavior};

use crate::changes::Mark;
use crate::protocol::{Close, WireFrame};
use crate::resume::ConnAcks;
use crate::router::outbox::OutboxRx;

/// Most frames written to one socket before one flush (and before the writer moves on).
const WRITE_BATCH: usize = 64;
/// Sockets a writer task visits before it lets other tasks on its thread run.
const VISITS_BEFORE_YIELD: usize = 512;

/// How long the writer may take to flush queued frames once a close is requested.
pub const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Resumable connections: a ping at most this often while frames flow to the client...
const PING_EVERY: Duration = Duration::from_millis(100);
/// ...and about this often while only dispatch moves on (so parked positions stay recent).
const PING_IDLE: Duration = Duration::from_secs(1);

/// A socket's sending half as the writer tasks hold it.
type BoxSink = Pin<Box<dyn Sink<Message, Error = ()> + Send>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn to_message(frame: WireFrame) -> Message {
    match frame {
        WireFrame::Text(bytes) => match Utf8Bytes::try_from(bytes) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Text(Utf8Bytes::from_static("")),
        },
        WireFrame::Binary(bytes) => Message::Binary(bytes),
    }
}

/// The hub's writer tasks (started on the first socket, ended when a task has none).
pub struct Writers {
    groups: Box<[Arc<Group>]>,
    next: AtomicUsize,
}

impl Writers {
    /// `tasks` writer tasks (at least one); sockets are dealt to them in turn.
    pub fn new(tasks: usize) -> Writers {
        Writers {
            groups: (0..tasks.max(1))
                .map(|_| Arc::new(Group::default()))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// One writer task per core the runtime may use.
    pub fn per_core() -> Writers {
        Writers::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Hands a socket's sending half and its outbox to a writer task; `pinger` for a
    /// resumable connection. The writer runs until the outbox is closed (then flushes and
    /// sends the close frame) or the socket fails.
    pub fn attach<S>(&self, sink: S, rx: OutboxRx, pinger: Option<Pinger>) -> WriterHandle
    where
        S: Sink<Message> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.groups.len();
        let group = self.groups[i].clone();
        let resumable = pinger.is_some();
        let slot = Arc::new(Slot {
            group: group.clone(),
            scheduled: AtomicBool::new(false),
            done: AtomicBool::new(false),
            abandon: AtomicBool::new(false),
            finished: Notify::new(),
            io: Mutex::new(Io {
                sink: Some(Box::pin(sink.sink_map_err(drop))),
                rx,
                pinger,
                pinged: Pinged::default(),
                closing: None,
                unflushed: false,
            }),
        });
        group.attach(&slot, resumable);
        slot.schedule();
        WriterHandle { slot }
    }
}

/// The connection's hold on its writer.
pub struct WriterHandle {
    slot: Arc<Slot>,
}

impl WriterHandle {
    /// Waits (at most `limit`) until the writer has finished with the socket; past the
    /// limit (a client that stopped reading) the socket is dropped unflushed.
    pub async fn finish(self, limit: Duration) {
        let slot = &self.slot;
        let done = async {
            loop {
                let notified = slot.finished.notified();
                if slot.done.load(Ordering::Acquire) {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, done).await;
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        if !self.slot.done.load(Ordering::Acquire) {
            self.slot.abandon.store(true, Ordering::Release);
            self.slot.schedule();
        }
    }
}

/// One writer task's sockets.
#[derive(Default)]
struct Group {
    state: Mutex<GroupState>,
    /// Notified when a socket becomes ready; the group's task waits on it.
    wake: Notify,
}

#[derive(Default)]
struct GroupState {
    /// Sockets with something to do, in the order they became ready.
    ready: VecDeque<Arc<Slot>>,
    /// Sockets visited on every tick: resumable ones (pings) and closing ones (deadline).
    timed: Vec<Arc<Slot>>,
    /// Sockets attached and not finished.
    attached: usize,
    running: bool,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        lock(&self.state)
    }

    fn attach(self: &Arc<Self>, slot: &Arc<Slot>, resumable: bool) {
        let mut state = self.lock();
        state.attached += 1;
        if resumable {
            state.timed.push(slot.clone());
        }
        if !state.running {
            state.running = true;
            // Unconstrained: every socket write spends tokio's per-poll budget, which would
            // turn most of a long round's visits into no-ops; the task yields on its own.
            tokio::spawn(tokio::task::coop::unconstrained(run_group(self.clone())));
        }
    }

    /// Visits every timed socket (pings due, close deadlines) and forgets finished ones.
    fn tick(&self) {
        let timed = std::mem::take(&mut self.lock().timed);
        for slot in &timed {
            slot.visit();
        }
        let mut state = self.lock();
        let added = std::mem::replace(&mut state.timed, timed);
        state.timed.extend(added);
        state.timed.retain(|s| !s.done.load(Ordering::Acquire));
    }
}

/// A writer task: visits ready sockets until it has none attached.
async fn run_group(group: Arc<Group>) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch = VecDeque::new();
    loop {
        let timed = {
            let mut state = group.lock();
            std::mem::swap(&mut state.ready, &mut batch);
            if batch.is_empty() && state.attached == 0 {
                state.running = false;
                state.timed.clear();
                return;
            }
            !state.timed.is_empty()
        };
        if batch.is_empty() {
            tokio::select! {
                _ = group.wake.notified() => {}
                _ = tick.tick(), if timed => group.tick(),
            }
            continue;
        }
        let mut visits = 0;
        while let Some(slot) = batch.pop_front() {
            slot.scheduled.store(false, Ordering::Release);
            slot.visit();
            visits += 1;
            if visits % VISITS_BEFORE_YIELD == 0 {
                tokio::task::yield_now().await;
            }
        }
        if timed && tick.reset_if_due() {
            group.tick();
        }
    }
}

/// The timer's next tick is due: consume it.
trait ResetIfDue {
    fn reset_if_due(&mut self) -> bool;
}

impl ResetIfDue for tokio::time::Interval {
    fn reset_if_due(&mut self) -> bool {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        self.poll_tick(&mut cx).is_ready()
    }
}

/// One socket in a writer task.
struct Slot {
    group: Arc<Group>,
    /// In the group's ready queue (cleared just before a visit).
    scheduled: AtomicBool,
    /// The writer is finished with the socket (dropped it).
    done: AtomicBool,
    /// The connection stopped waiting: drop the socket at the next visit.
    abandon: AtomicBool,
    /// Notified once `done` is set; the connection waits on it.
    finished: Notify,
    /// Only the group's task locks it.
    io: Mutex<Io>,
}

impl ArcWake for Slot {
    fn wake_by_ref(slot: &Arc<Self>) {
        slot.schedule();
    }
}

impl Slot {
    /// Puts the socket in its writer's ready queue (once until visited).
    fn schedule(self: &Arc<Self>) {
        if self.done.load(Ordering::Acquire) || self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let first = {
            let mut state = self.group.lock();
            state.ready.push_back(self.clone());
            state.ready.len() == 1
        };
        // A non-empty queue was already announced and not yet taken.
        if first {
            self.group.wake.notify_one();
        }
    }

    /// Writes what it can without waiting; the socket and the outbox wake it for more.
    fn visit(self: &Arc<Self>) {
        if self.done.load(Ordering::Acquire) {
            return;
        }
        let waker = waker_ref(self);
        let mut cx = Context::from_waker(&waker);
        let mut io = lock(&self.io);
        let was_closing = io.closing.is_some();
        let step = if self.abandon.load(Ordering::Acquire) {
            Step::Finished
        } else {
            io.step(&mut cx)
        };
        match step {
            Step::Waiting => {
                if !was_closing && io.closing.is_some() && io.pinger.is_none() {
                    // Its close deadline is checked on every tick.
                    self.group.lock().timed.push(self.clone());
                }
            }
            Step::More => {
                drop(io);
                self.schedule();
            }
            Step::Finished => {
                io.finish();
                drop(io);
                self.done.store(true, Ordering::Release);
                self.group.lock().attached -= 1;
                self.finished.notify_one();
            }
        }
    }
}

/// What a visit left to do.
enum Step {
    /// Nothing until the outbox or the socket wakes the slot (or the next tick).
    Waiting,
    /// Frames remain and the socket takes more: visit again after the others.
    More,
    /// The socket is closed or failed, or the close deadline passed.
    Finished,
}

/// A socket, its outbox and what the writer remembers about them.
struct Io {
    /// `None` once finished.
    sink: Option<BoxSink>,
    rx: OutboxRx,
    pinger: Option<Pinger>,
    pinged: Pinged,
    closing: Option<Closing>,
    /// Frames were fed since the last completed flush.
    unflushed: bool,
}

/// A close in progress.
struct Closing {
    reason: Close,
    deadline: Instant,
    /// Queued frames are written first (not for a slow consumer: it would not read them).
    drain: bool,
    close_sent: bool,
}

/// The socket failed (or was closed by the peer).
struct Failed;

/// What one `feed` did.
struct Fed {
    count: usize,
    stop: Stop,
}

/// Why a `feed` stopped.
enum Stop {
    /// It fed as many frames as it was allowed.
    Batch,
    /// The socket's `poll_ready` was pending.
    NotReady,
    /// Nothing more was ready in the queue.
    Drained,
}

impl Io {
    fn step(&mut self, cx: &mut Context<'_>) -> Step {
        self.rx.register(cx.waker());
        if self.closing.is_none() {
            if let Some(reason) = self.rx.close_reason() {
                self.closing = Some(Closing {
                    reason,
                    deadline: Instant::now() + CLOSE_FLUSH_TIMEOUT,
                    drain: reason.drains(),
                    // A vanished client with nothing queued gets no close frame.
                    close_sent: reason == Close::Gone && self.rx.queued_bytes() == 0,
                });
            }
        }
        let result = if self.closing.is_some() {
            self.step_closing(cx)
        } else {
            self.step_open(cx)
        };
        result.unwrap_or(Step::Finished)
    }

    fn sink(
        &mut self,
    ) -> Result<Pin<&mut (dyn Sink<Message, Error = ()> + Send + 'static)>, Failed> {
        self.sink.as_mut().map(|s| s.as_mut()).ok_or(Failed)
    }

    /// Feeds up to `max` queued frames (fewer when the socket is full or the queue runs
    /// out). A heartbeat reply among them is noted for resume's heartbeat proof, once per
    /// feed rather than per frame: no ping is written inside a feed, so that is exact.
    fn feed(&mut self, cx: &mut Context<'_>, max: usize) -> Result<Fed, Failed> {
        let urgent_before = self.rx.urgent_taken();
        let fed = self.feed_frames(cx, max);
        if self.rx.urgent_taken() != urgent_before {
            if let Some(pinger) = &self.pinger {
                pinger.acks.urgent_written();
            }
        }
        fed
    }

    fn feed_frames(&mut self, cx: &mut Context<'_>, max: usize) -> Result<Fed, Failed> {
        let mut fed = 0;
        while fed < max {
            match self.sink()?.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(())) => return Err(Failed),
                Poll::Pending => {
                    return Ok(Fed {
                        count: fed,
                        stop: Stop::NotReady,
                    })
                }
            }
            let Some(frame) = self.rx.try_recv() else {
                return Ok(Fed {
                    count: fed,
                    stop: Stop::Drained,
                });
            };
            self.sink()?
                .start_send(to_message(frame))
                .map_err(|()| Failed)?;
            self.unflushed = true;
            fed += 1;
        }
        Ok(Fed {
            count: fed,
            stop: Stop::Batch,
        })
    }

    /// Flushes what was fed; `Ok(false)` while the socket is not writable.
    fn flush(&mut self, cx: &mut Context<'_>) -> Result<bool, Failed> {
        if !self.unflushed {
            return Ok(true);
        }
        match self.sink()?.poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.unflushed = false;
                Ok(true)
            }
            Poll::Ready(Err(())) => Err(Failed),
            Poll::Pending => Ok(false),
        }
    }

    /// Queue items still to be written before the waiting ping (`None`: no ping waits
    /// for any).
    fn frames_before_ping(&self) -> Option<usize> {
        let w = self.pinged.waiting.as_ref()?;
        let ahead = w.after.saturating_sub(self.rx.taken());
        (ahead > 0).then_some(ahead as usize)
    }

    fn step_open(&mut self, cx: &mut Context<'_>) -> Result<Step, Failed> {
        // A waiting ping goes out right after the frames queued before its mark: on a
        // socket that is always full, frames queued later would otherwise take every
        // place it frees first.
        let batch = match self.pinged.waiting {
            Some(_) => self.frames_before_ping().unwrap_or(0).min(WRITE_BATCH),
            None => WRITE_BATCH,
        };
        let fed = self.feed(cx, batch)?;
        // The flush polls the socket only when something was fed since the last one.
        let polls_socket = self.unflushed;
        let flushed = self.flush(cx)?;
        if fed.count > 0 {
            self.pinged.wrote = true;
        }
        let pinged = flushed && self.maybe_ping(cx)?;
        // The socket took a flush and frames are still queued: visit again. Not only after
        // a full batch: `feed` also stops when `poll_ready` is pending, and the flush that
        // then goes through may take back the waker that pending left (a split socket's
        // lock keeps one waiter, and it is ours again), so waiting here could wait for a
        // wake-up that never comes while a frame sits queued (found at 10,000 sockets: a
        // join's "Subscribed" message left behind its reply). A socket that took nothing
        // (no flush polled) keeps the waker of its pending `poll_ready` and waits; a feed
        // that drained the queue waits for the next push (the usual case: no queue check).
        let took_flush = polls_socket && !self.unflushed;
        let more = (took_flush
            && match fed.stop {
                Stop::Batch => true,
                Stop::NotReady => self.rx.has_ready(),
                Stop::Drained => false,
            })
            // A ping went out ahead of queued frames (whose batch stopped at it).
            || (pinged && self.rx.has_ready());
        Ok(if more { Step::More } else { Step::Waiting })
    }

    /// Pings if due: first reads how far dispatch has queued, then writes everything that
    /// was queued at that moment (which includes all of it), then the ping; its pong
    /// proves that far.
    fn maybe_ping(&mut self, cx: &mut Context<'_>) -> Result<bool, Failed> {
        if self.pinged.waiting.is_none() {
            // Read only when no ping waits (a waiting one already has its mark).
            let Some(mark) = self
                .pinger
                .as_ref()
                .and_then(|p| p.delivered.borrow().clone())
            else {
                return Ok(false);
            };
            let last = &self.pinged;
            let since = last.at.map_or(Duration::MAX, |at| at.elapsed());
            let due =
                (last.wrote && since >= PING_EVERY) || (mark.seq != last.seq && since >= PING_IDLE);
            if !due {
                return Ok(false);
            }
            let Some(pinger) = &self.pinger else {
                return Ok(false);
            };
            // The id first, then the count: a channel that opens its gate (queueing the
            // frames it held) before this count is read is covered by it, and one that
            // opens it later counts only pings from a later id (`ChannelAck::caught_up`).
            let id = pinger.acks.ping(mark.clone());
            // Everything delivered up to `mark` is queued now (or written already): once
            // as many items are taken as that, the ping may follow them.
            let after = self.rx.taken_once_queued_now();
            self.pinged.waiting = Some(Waiting {
                id,
                seq: mark.seq,
                after,
            });
        }
        // Not "once the queue is empty": a connection whose queue never ran dry (frames
        // kept coming a little faster than its client read them) was never pinged, so its
        // position stood still and each resume replayed more, until one was over the
        // replay limit and answered `recovered: false` (found by the chaos run). Frames
        // queued after the mark wait behind the ping (`step_open` feeds up to it).
        let Some(waiting) = self.pinged.waiting else {
            return Ok(false);
        };
        if let Some(ahead) = self.frames_before_ping() {
            self.feed(cx, ahead)?;
            if self.frames_before_ping().is_some() {
                return Ok(false);
            }
        }
        if !ready(self.sink()?.poll_ready(cx))? {
            // The socket is full: the ping waits for the next visit.
            return Ok(false);
        }
        let ping = Message::Ping(Bytes::copy_from_slice(&waiting.id.to_be_bytes()));
        self.sink()?.start_send(ping).map_err(|()| Failed)?;
        if let Some(pinger) = &self.pinger {
            pinger.acks.ping_written(waiting.id);
        }
        self.unflushed = true;
        self.pinged = Pinged {
            at: Some(Instant::now()),
            seq: waiting.seq,
            wrote: false,
            waiting: None,
        };
        self.flush(cx)?;
        Ok(true)
    }

    /// Writes what is queued (unless the reason says not to), the close frame, then
    /// closes; past the deadline it gives up.
    fn step_closing(&mut self, cx: &mut Context<'_>) -> Result<Step, Failed> {
        let closing = self.closing.as_ref().expect("closing");
        if Instant::now() >= closing.deadline {
            return Ok(Step::Finished);
        }
        let (drain, close_sent, reason) = (closing.drain, closing.close_sent, closing.reason);
        if drain && !close_sent {
            self.feed(cx, usize::MAX)?;
            if self.rx.queued_frames() > 0 {
                self.flush(cx)?;
                return Ok(Step::Waiting);
            }
        }
        if !close_sent {
            if !ready(self.sink()?.poll_ready(cx))? {
                return Ok(Step::Waiting);
            }
            let close = CloseFrame {
                code: reason.code(),
                reason: Utf8Bytes::from_static(reason.text()),
            };
            self.sink()?
                .start_send(Message::Close(Some(close)))
                .map_err(|()| Failed)?;
            self.unflushed = true;
            if let Some(c) = self.closing.as_mut() {
                c.close_sent = true;
            }
        }
        match self.sink()?.poll_close(cx) {
            Poll::Ready(_) => Ok(Step::Finished),
            Poll::Pending => Ok(Step::Waiting),
        }
    }

    /// Drops the socket and everything that could keep the slot alive.
    fn finish(&mut self) {
        self.sink = None;
        self.pinger = None;
        self.rx.unregister();
        if self.rx.close_reason().is_none() {
            // The socket failed: the connection stops reading too.
            self.rx.close(Close::Gone);
        }
    }
}

/// Whether a `poll_ready` says the sink takes a frame now.
fn ready(poll: Poll<Result<(), ()>>) -> Result<bool, Failed> {
    match poll {
        Poll::Ready(Ok(())) => Ok(true),
        Poll::Ready(Err(())) => Err(Failed),
        Poll::Pending => Ok(false),
    }
}

/// A resumable connection's pings: each proves the frames queued before it arrived.
pub struct Pinger {
    pub acks: Arc<ConnAcks>,
    /// The last batch dispatch has fully queued (for every connection).
    pub delivered: watch::Receiver<Option<Mark>>,
}

/// When the writer last pinged.
#[derive(Default)]
struct Pinged {
    at: Option<Instant>,
    seq: u64,
    wrote: bool,
    /// A ping that is due but not sent yet.
    waiting: Option<Waiting>,
}

/// A ping whose id is taken (its mark recorded in `ConnAcks`), waiting for the frames
/// queued before it to be written.
#[derive(Clone, Copy)]
struct Waiting {
    id: u64,
    seq: u64,
    /// Queue items to be taken first (`OutboxRx::taken_once_queued_now` after the id).
    after: u64,
}

#[cfg(test)]
mod tests;
