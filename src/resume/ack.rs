//! Acknowledged positions. A connection's writer sends a WebSocket ping after it has
//! queued everything dispatch had delivered up to some batch; the pong proves every frame
//! of that batch and before arrived (TCP keeps order, every client answers pings). Each
//! channel turns the connection's latest proof into its own position, never earlier than
//! where the channel started.
//!
//! A pong proves the frames reached the client's WebSocket layer, not its app: a browser
//! answers pings below the page (Chromium does so even while the page is offline or
//! frozen and never sees the frames), and realtime-js, finding a heartbeat reply missing,
//! closes the socket with reason `heartbeat timeout` and drops whatever it had not read.
//! So each heartbeat the client sends is a second, coarser proof: realtime-js sends the
//! next one only once it has read the reply to the last, so everything written before
//! that reply was read. A connection closed with `heartbeat timeout` resumes from that
//! proof instead of its pongs (more may then be replayed twice, nothing is lost).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::capture::Position;
use crate::changes::Mark;
use crate::protocol::NotRecovered;

/// Pings never answered are forgotten beyond this many.
const MAX_IN_FLIGHT: usize = 64;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connection's pings in flight and its latest acknowledged batch. The writer task
/// records pings, the reader loop records pongs, channels read.
#[derive(Debug, Default)]
pub struct ConnAcks {
    next_ping: AtomicU64,
    in_flight: Mutex<VecDeque<(u64, Mark)>>,
    acked: Mutex<Option<(u64, Mark)>>,
    /// Heartbeat proofs (see the module's note).
    read: Mutex<ReadProof>,
    /// The client closed with `heartbeat timeout`: only `read.proven` counts.
    distrusted: AtomicBool,
}

/// What the client's heartbeats prove it read.
#[derive(Debug, Default)]
struct ReadProof {
    /// The last ping written.
    written: Option<(u64, Mark)>,
    /// `written` when the last heartbeat reply was written.
    at_reply: Option<(u64, Mark)>,
    /// `at_reply` when the client's last heartbeat arrived: it had read that reply.
    proven: Option<(u64, Mark)>,
}

impl ConnAcks {
    /// The id the next ping will carry: a channel whose frames are all queued from now on
    /// counts acknowledgements of pings from this id.
    pub fn next_ping_id(&self) -> u64 {
        self.next_ping.load(Ordering::Acquire)
    }

    /// A ping is about to be sent after everything delivered up to `mark` was queued
    /// ahead of it; returns its id (its payload).
    pub fn ping(&self, mark: Mark) -> u64 {
        let id = self.next_ping.fetch_add(1, Ordering::AcqRel);
        let mut in_flight = lock(&self.in_flight);
        if in_flight.len() >= MAX_IN_FLIGHT {
            in_flight.pop_front();
        }
        in_flight.push_back((id, mark));
        id
    }

    /// The pong for ping `id` came back.
    pub fn pong(&self, id: u64) {
        let mut in_flight = lock(&self.in_flight);
        while let Some((first, mark)) = in_flight.pop_front() {
            if first == id {
                *lock(&self.acked) = Some((id, mark));
                return;
            }
            if first > id {
                in_flight.push_front((first, mark));
                return;
            }
        }
    }

    /// The latest proof: the last pong, or after a `heartbeat timeout` close the last
    /// heartbeat's.
    pub fn acked(&self) -> Option<(u64, Mark)> {
        if self.distrusted.load(Ordering::Acquire) {
            return lock(&self.read).proven.clone();
        }
        lock(&self.acked).clone()
    }

    /// The writer wrote ping `id`.
    pub fn ping_written(&self, id: u64) {
        let mark = lock(&self.in_flight)
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, m)| m.clone());
        if let Some(mark) = mark {
            lock(&self.read).written = Some((id, mark));
        }
    }

    /// The writer wrote a heartbeat reply.
    pub fn urgent_written(&self) {
        let mut read = lock(&self.read);
        read.at_reply = read.written.clone();
    }

    /// A heartbeat came from the client: it read the reply to its last one.
    pub fn heartbeat(&self) {
        let mut read = lock(&self.read);
        read.proven = read.at_reply.clone();
    }

    /// The client closed with `heartbeat timeout`: it may not have read what its pongs
    /// confirm.
    pub fn distrust_pongs(&self) {
        self.distrusted.store(true, Ordering::Release);
    }
}

/// Where one channel is acknowledged.
#[derive(Debug)]
pub struct ChannelAck {
    /// The batch from which live frames flow straight to the connection.
    floor: Mark,
    /// The position to resume from until a valid acknowledgement arrives: where the
    /// channel resumed from, or (fresh) where it started.
    unconfirmed: String,
    /// Acknowledgements of pings from this id on count (`u64::MAX` while catching up).
    valid_from: AtomicU64,
    /// Where the channel resumed from, when that was ahead of the floor (it came from a
    /// hub that had read further): no acknowledged position behind it counts.
    ahead: Option<Arc<Position>>,
    /// Why the channel was told to refetch, if it was.
    refetch: Mutex<Option<NotRecovered>>,
}

impl ChannelAck {
    pub fn new(
        floor: Mark,
        unconfirmed: String,
        valid_from: u64,
        ahead: Option<Arc<Position>>,
    ) -> ChannelAck {
        ChannelAck {
            floor,
            unconfirmed,
            valid_from: AtomicU64::new(valid_from),
            ahead,
            refetch: Mutex::new(None),
        }
    }

    /// The channel is told to refetch (`why`), or will be: its resume position covers
    /// nothing before where it started.
    pub fn told_refetch(&self, why: NotRecovered) {
        *lock(&self.refetch) = Some(why);
    }

    /// Why the channel was told to refetch, while no pong shows its client read that (a
    /// join of it again must be told so too: realtime-js drops the first join's frames
    /// once it has sent a second join).
    pub fn unread_refetch(&self, conn: &ConnAcks) -> Option<NotRecovered> {
        let why = (*lock(&self.refetch))?;
        match conn.acked() {
            Some((id, _)) if id >= self.valid_from.load(Ordering::Acquire) => None,
            _ => Some(why),
        }
    }

    /// The catch-up is queued: pings from `ping_id` on prove it.
    pub fn caught_up(&self, ping_id: u64) {
        self.valid_from.store(ping_id, Ordering::Release);
    }

    /// The channel's acknowledged log position (text form of `capture::Position`).
    pub fn position(&self, conn: &ConnAcks) -> String {
        let acked = match conn.acked() {
            Some((id, mark)) if id >= self.valid_from.load(Ordering::Acquire) => {
                if mark.seq >= self.floor.seq {
                    mark.position
                } else {
                    self.floor.position.clone()
                }
            }
            _ => return self.unconfirmed.clone(),
        };
        if let Some(ahead) = &self.ahead {
            // Until dispatch here has passed where the channel resumed, that stays its
            // position: behind it, the changes in between would be replayed again.
            if Position::parse(&acked).map_or(true, |p| p.behind(ahead)) {
                return self.unconfirmed.clone();
            }
        }
        acked.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(seq: u64) -> Mark {
        Mark {
            seq,
            position: format!("{seq}:").into(),
        }
    }

    #[test]
    fn a_channel_counts_only_pongs_of_pings_sent_once_it_was_caught_up() {
        let conn = ConnAcks::default();
        let early = conn.ping(mark(5));
        let ch = ChannelAck::new(mark(7), "3:".into(), u64::MAX, None);
        conn.pong(early);
        assert_eq!(ch.position(&conn), "3:", "still catching up");
        ch.caught_up(conn.next_ping_id());
        assert_eq!(ch.position(&conn), "3:", "that pong came before");
        let later = conn.ping(mark(6));
        conn.pong(later);
        assert_eq!(ch.position(&conn), "7:", "never before the floor");
        let last = conn.ping(mark(9));
        conn.pong(last);
        assert_eq!(ch.position(&conn), "9:");
    }

    #[test]
    fn a_channel_resumed_ahead_of_its_floor_keeps_its_position_until_an_ack_passes_it() {
        let conn = ConnAcks::default();
        let at = |seq: u64, position: &str| Mark {
            seq,
            position: position.into(),
        };
        let from = Arc::new(Position::parse("120:").unwrap());
        let ch = ChannelAck::new(at(7, "100:"), "120:".into(), 0, Some(from));
        assert_eq!(ch.position(&conn), "120:", "nothing acknowledged");
        conn.pong(conn.ping(at(8, "110:")));
        assert_eq!(ch.position(&conn), "120:", "acknowledged, still behind it");
        conn.pong(conn.ping(at(9, "120:")));
        assert_eq!(ch.position(&conn), "120:");
        conn.pong(conn.ping(at(10, "130:")));
        assert_eq!(ch.position(&conn), "130:", "past it");
    }

    #[test]
    fn after_a_heartbeat_timeout_only_what_heartbeats_prove_counts() {
        let conn = ConnAcks::default();
        let ch = ChannelAck::new(mark(1), "1:".into(), 0, None);
        let a = conn.ping(mark(2));
        conn.ping_written(a);
        conn.pong(a);
        conn.urgent_written(); // the reply to heartbeat 1, after ping a
        conn.heartbeat(); // heartbeat 2 (read reply 1): ping a's mark is proven
        let b = conn.ping(mark(5));
        conn.ping_written(b);
        conn.pong(b); // answered below the page
        conn.heartbeat(); // heartbeat 3, sent before reply 2 was written: nothing new
        conn.urgent_written(); // reply 2, never read
        assert_eq!(ch.position(&conn), "5:");
        conn.distrust_pongs();
        assert_eq!(ch.position(&conn), "2:");
        let fresh = ConnAcks::default();
        fresh.distrust_pongs();
        assert_eq!(ch.position(&fresh), "1:", "no heartbeat proof yet");
    }

    #[test]
    fn a_lost_pong_is_covered_by_a_later_one() {
        let conn = ConnAcks::default();
        let a = conn.ping(mark(1));
        let b = conn.ping(mark(2));
        conn.pong(b);
        assert_eq!(conn.acked().map(|(id, m)| (id, m.seq)), Some((b, 2)));
        conn.pong(a);
        assert_eq!(
            conn.acked().map(|(_, m)| m.seq),
            Some(2),
            "a stale pong changes nothing"
        );
    }
}
