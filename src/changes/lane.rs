//! The filter lane: judges, off the shared dispatch path, the filters matching found too
//! costly to judge there (a connection's `like`/`ilike`/`match`/`imatch` work on one
//! change past `filter_inline_cost`, see `BoundFilter::cost`). Dispatch reserves the
//! frame's place in the connection's queue (`router::outbox::Slot`) and hands the rest
//! here; the lane's thread judges the filters and fills the place with the frame, or
//! with nothing when none matched. Everything queued to that connection after the place waits behind it,
//! so the connection's order is kept, while other connections' frames go out at once:
//! an expensive filter delays only its own connection.
//!
//! Each connection's jobs are judged in hand-off order; connections take turns, one job
//! each per round. The thread runs at a lower priority (nice 10), so on a busy machine
//! the lane's work waits rather than the shared path. Row scope was judged before the
//! hand-off (candidates count as matched for it), so the lane decides only the filter.
//! A hold (`LaneHold`, a test hook) pauses the thread between jobs.

use std::collections::{HashMap, VecDeque};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use serde_json::value::RawValue;

use super::dispatch::change_frame;
use super::index::{Entry, Matched, MatchedIds, Member};
use super::row::Row;
use crate::router::outbox::{PushError, Slot};
use crate::router::Router;

/// How dispatch splits filter work between itself and the lane.
#[derive(Debug, Clone, Default)]
pub struct LaneSettings {
    /// Filter cost (`BoundFilter::cost`) one connection may take per change on the
    /// shared path; past it, its remaining filters for that change go to the lane.
    pub inline_cost: u64,
    /// Pauses the lane while held (tests prove isolation with it).
    pub hold: Option<LaneHold>,
}

/// A test hook: while held, the lane judges nothing (its work waits, in order).
#[derive(Debug, Clone, Default)]
pub struct LaneHold(Arc<(Mutex<bool>, Condvar)>);

impl LaneHold {
    fn held(&self) -> std::sync::MutexGuard<'_, bool> {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hold(&self) {
        *self.held() = true;
    }

    pub fn release(&self) {
        *self.held() = false;
        self.0 .1.notify_all();
    }

    fn wait(&self) {
        let mut held = self.held();
        while *held {
            held = self.0 .1.wait(held).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One member's frame for one change, its filters still to judge.
struct Job {
    member: Arc<Member>,
    /// The change's judged row (shared by its jobs).
    row: Arc<Row>,
    /// Ids already judged matching on the shared path.
    ids: MatchedIds,
    deferred: Vec<Entry>,
    /// The change's data as this member sees it.
    data: Box<RawValue>,
    slot: Slot,
}

impl Job {
    /// Judges the deferred filters and fills the slot; true when a frame was queued.
    fn judge(self) -> bool {
        let Job {
            member,
            row,
            mut ids,
            deferred,
            data,
            slot,
        } = self;
        if slot.is_closed() {
            return false;
        }
        for entry in &deferred {
            let sub = &entry.1;
            if !ids.contains(&sub.id) && sub.filter.matches(&row) {
                ids.push(sub.id);
            }
        }
        if ids.is_empty() {
            return false;
        }
        slot.fill(Some(change_frame(member.vsn, &member.topic, &ids, &data)));
        true
    }
}

/// The lane's work by connection, served in turns: a connection's jobs in the order
/// handed over, one job per connection per round, so a connection with much costly work
/// holds up another connection's costly job by at most one of its own.
#[derive(Default)]
struct Turns {
    jobs: HashMap<u64, VecDeque<Job>>,
    order: VecDeque<u64>,
}

impl Turns {
    fn add(&mut self, job: Job) {
        let conn = job.member.conn_id;
        let jobs = self.jobs.entry(conn).or_default();
        if jobs.is_empty() {
            self.order.push_back(conn);
        }
        jobs.push_back(job);
    }

    /// The next job to judge, waiting for one if none is queued; `None` once dispatch
    /// is gone and nothing is left.
    fn next(&mut self, rx: &mpsc::Receiver<Job>) -> Option<Job> {
        if self.order.is_empty() {
            let job = rx.recv().ok()?;
            self.add(job);
        }
        while let Ok(job) = rx.try_recv() {
            self.add(job);
        }
        while let Some(conn) = self.order.pop_front() {
            let Some(jobs) = self.jobs.get_mut(&conn) else {
                continue;
            };
            let job = jobs.pop_front();
            if jobs.is_empty() {
                self.jobs.remove(&conn);
            } else {
                self.order.push_back(conn);
            }
            if job.is_some() {
                return job;
            }
        }
        None
    }
}

/// The lane's handle in dispatch; the thread ends when it is dropped.
pub(super) struct Lane {
    pub inline_cost: u64,
    /// `None` if the thread could not start: jobs are then judged in place.
    tx: Option<mpsc::Sender<Job>>,
    router: Arc<Router>,
}

impl Lane {
    pub fn start(settings: LaneSettings, router: Arc<Router>) -> Lane {
        let (tx, rx) = mpsc::channel::<Job>();
        let (hold, thread_router) = (settings.hold, router.clone());
        let started = std::thread::Builder::new()
            .name("filter-lane".into())
            .spawn(move || {
                yield_cpu();
                let mut turns = Turns::default();
                while let Some(job) = turns.next(&rx) {
                    if let Some(hold) = &hold {
                        hold.wait();
                    }
                    thread_router.metrics().filter_lane_waiting.dec();
                    // A job that panics closes its connection (its slot's drop) and no
                    // other; the lane goes on with the next.
                    let conn_id = job.member.conn_id;
                    let judged = std::panic::AssertUnwindSafe(|| job.judge());
                    match std::panic::catch_unwind(judged) {
                        Ok(sent) => count(&thread_router, sent),
                        Err(_) => tracing::error!(
                            conn_id,
                            "judging a filter on the filter lane failed; the connection was closed"
                        ),
                    }
                }
            });
        let tx = match started {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(error = %e, "filter lane thread did not start; costly filters are judged in dispatch");
                None
            }
        };
        Lane {
            inline_cost: settings.inline_cost,
            tx,
            router,
        }
    }

    /// Reserves `m`'s place for this change (`data`: what it would show of `row`) and
    /// hands its deferred filters to the lane. A connection whose queue is full is cut
    /// off as a slow consumer, as any push would.
    pub fn defer(&self, m: &Matched, row: &Arc<Row>, data: Box<RawValue>) {
        let slot = match m.member.outbox.reserve(data.get().len()) {
            Ok(slot) => slot,
            Err(PushError::Overflow) => {
                self.router.metrics().slow_consumer(m.member.conn_id);
                return;
            }
            Err(PushError::Closed) => return,
        };
        self.send(Job {
            member: m.member.clone(),
            row: row.clone(),
            ids: m.ids.clone(),
            deferred: m.deferred.clone(),
            data,
            slot,
        });
    }

    /// Hands a job over (or judges it here if the lane is gone).
    fn send(&self, job: Job) {
        let job = match &self.tx {
            Some(tx) => {
                let waiting = &self.router.metrics().filter_lane_waiting;
                waiting.inc();
                match tx.send(job) {
                    Ok(()) => return,
                    Err(mpsc::SendError(job)) => {
                        waiting.dec();
                        job
                    }
                }
            }
            None => job,
        };
        count(&self.router, job.judge());
    }
}

/// Lowers the calling thread's scheduling priority (nice 10 on Linux): when the CPU is
/// short, the lane's work waits rather than the hub's shared paths.
fn yield_cpu() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take no pointers; this changes only the calling
    // thread's own nice value.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
    }
}

fn count(router: &Router, sent: bool) {
    if sent {
        router.metrics().message_out("postgres_changes", 1);
    }
}
