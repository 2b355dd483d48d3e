//! A batch's change frames, held per connection and then queued together: one lock,
//! one byte count and one wake-up of the writer per connection for all the frames a
//! batch has for it, instead of one per frame. A statement that changes ten rows seen
//! by 10,000 members thus costs 10,000 queue operations, not 100,000. Each connection
//! still gets its frames in log order, and anything queued to it another way during the
//! batch (a row-scope problem, a filter-lane slot) first flushes what it holds.

use foldhash::HashMap;

use crate::protocol::WireFrame;
use crate::router::outbox::{ChannelOutbox, OutboxTx};
use crate::router::Router;

/// Where a held frame goes: a change of the segment and one of its matched members.
#[derive(Clone, Copy)]
pub(super) struct At {
    pub change: u32,
    pub member: u32,
}

/// Held frames are queued once this many wait, so a large batch neither holds its
/// frames long nor much memory.
pub(super) const MAX_HELD: usize = 1 << 16;

const END: u32 = u32::MAX;

struct HeldFrame {
    at: At,
    conn_id: u64,
    /// Taken when queued.
    frame: Option<WireFrame>,
    /// The connection's next held frame (`END`: none).
    next: u32,
}

#[derive(Default)]
pub(super) struct Held {
    frames: Vec<HeldFrame>,
    /// Per connection: its first and last frame still held.
    lists: HashMap<u64, (u32, u32)>,
    /// Frames queued since the last `flush` (counted there).
    queued: u64,
    run: Vec<WireFrame>,
}

/// The outbox of a held frame's member.
pub(super) type OutboxOf<'s> = dyn Fn(At) -> &'s ChannelOutbox + 's;

impl Held {
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn hold(&mut self, at: At, conn_id: u64, frame: WireFrame) {
        let i = self.frames.len() as u32;
        self.frames.push(HeldFrame {
            at,
            conn_id,
            frame: Some(frame),
            next: END,
        });
        match self.lists.entry(conn_id) {
            std::collections::hash_map::Entry::Occupied(mut list) => {
                let (_, last) = list.get_mut();
                self.frames[*last as usize].next = i;
                *last = i;
            }
            std::collections::hash_map::Entry::Vacant(list) => {
                list.insert((i, i));
            }
        }
    }

    /// Queues what one connection has held (before something else is queued to it).
    pub fn flush_conn(&mut self, conn_id: u64, router: &Router, outbox: &OutboxOf<'_>) {
        if let Some((first, _)) = self.lists.remove(&conn_id) {
            self.queue_list(first, router, outbox);
        }
    }

    /// Queues everything held, connection by connection; returns how many frames were
    /// queued since the last flush (by `flush_conn` too).
    pub fn flush(&mut self, router: &Router, outbox: &OutboxOf<'_>) -> u64 {
        for i in 0..self.frames.len() {
            // The first frame still held of a connection starts its list.
            if self.frames[i].frame.is_some() {
                self.queue_list(i as u32, router, outbox);
            }
        }
        self.frames.clear();
        self.lists.clear();
        std::mem::take(&mut self.queued)
    }

    /// Frees what the buffers hold (dispatch is idle).
    pub fn release(&mut self) {
        *self = Held::default();
    }

    fn queue_list<'s>(&mut self, first: u32, router: &Router, outbox_of: &OutboxOf<'s>) {
        let conn_id = self.frames[first as usize].conn_id;
        let mut direct: Option<&'s OutboxTx> = None;
        let mut i = first;
        while i != END {
            let held = &mut self.frames[i as usize];
            i = held.next;
            let Some(frame) = held.frame.take() else {
                continue;
            };
            let outbox = outbox_of(held.at);
            if outbox.is_direct() {
                direct = Some(outbox.tx());
                self.run.push(frame);
                continue;
            }
            // A resumed channel's gate decides for each frame, after those before it.
            if let Some(tx) = direct {
                self.queued += router.push_run(tx, conn_id, &mut self.run) as u64;
            }
            self.queued += u64::from(router.push(outbox, conn_id, frame));
        }
        if let Some(tx) = direct {
            self.queued += router.push_run(tx, conn_id, &mut self.run) as u64;
        }
        self.lists.remove(&conn_id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::router::outbox::{outbox, OutboxRx};
    use crate::telemetry::Metrics;

    fn frame(text: &'static str) -> WireFrame {
        WireFrame::Text(Bytes::from_static(text.as_bytes()))
    }

    fn drain(rx: &mut OutboxRx) -> Vec<Bytes> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|f| match f {
                WireFrame::Text(b) | WireFrame::Binary(b) => b,
            })
            .collect()
    }

    fn at(member: u32) -> At {
        At { change: 0, member }
    }

    #[test]
    fn each_connection_gets_its_frames_in_the_order_held() {
        let router = Router::new(Arc::new(Metrics::new()));
        let (tx1, mut rx1) = outbox(100, 1 << 20);
        let (tx2, mut rx2) = outbox(100, 1 << 20);
        // Connection 1: two channels straight into its queue. Connection 2: a resumed
        // channel whose gate still holds its live frames.
        let (gated, gate) = ChannelOutbox::gated(tx2.clone());
        let outboxes = [
            ChannelOutbox::direct(tx1.clone()),
            ChannelOutbox::direct(tx1.clone()),
            gated,
        ];
        let of = |at: At| &outboxes[at.member as usize];
        let mut held = Held::default();
        held.hold(at(0), 1, frame("1a"));
        held.hold(at(1), 1, frame("1b"));
        held.hold(at(2), 2, frame("1c"));
        held.hold(at(0), 1, frame("2a"));
        held.hold(at(2), 2, frame("2c"));
        assert!(drain(&mut rx1).is_empty(), "held, not queued");
        // Something queued to connection 1 another way first flushes what it holds.
        held.flush_conn(1, &router, &of);
        tx1.push(frame("x")).unwrap();
        held.hold(at(1), 1, frame("3b"));
        assert_eq!(held.flush(&router, &of), 6);
        assert_eq!(held.len(), 0);
        assert_eq!(drain(&mut rx1), ["1a", "1b", "2a", "x", "3b"]);
        assert!(drain(&mut rx2).is_empty(), "behind the gate");
        gate.open([frame("caught up")]);
        assert_eq!(drain(&mut rx2), ["caught up", "1c", "2c"]);
    }

    #[test]
    fn an_overflowing_connection_is_cut_off_alone() {
        let router = Router::new(Arc::new(Metrics::new()));
        let (tx1, rx1) = outbox(2, 1 << 20);
        let (tx2, mut rx2) = outbox(100, 1 << 20);
        let outboxes = [ChannelOutbox::direct(tx1), ChannelOutbox::direct(tx2)];
        let of = |at: At| &outboxes[at.member as usize];
        let mut held = Held::default();
        for text in ["1", "2", "3"] {
            held.hold(at(0), 1, frame(text));
            held.hold(at(1), 2, frame(text));
        }
        assert_eq!(held.flush(&router, &of), 5, "two of three to the first");
        assert_eq!(
            rx1.close_reason(),
            Some(crate::protocol::Close::SlowConsumer)
        );
        assert_eq!(drain(&mut rx2), ["1", "2", "3"]);
    }
}
