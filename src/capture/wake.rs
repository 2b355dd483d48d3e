//! When the capture loop reads next: at once while rows keep coming and writes are rare,
//! on a short poll while the write rate is high (so each read takes what a millisecond
//! brought instead of hammering Postgres), or on a NOTIFY while it is low. Writers send that NOTIFY
//! only while a hub holds a lease (`sql/012_statement_capture.sql`): a notifying commit
//! serializes on a database-wide lock, so a busy hub lets its lease lapse and polls.
//!
//! The one race: a writer that checked for a lease just before this hub took it sends no
//! NOTIFY. Such a writer already had its xid, so the first read after taking the lease
//! either sees its rows or lists it as in progress; the loop keeps polling until every
//! transaction in progress at that read has ended ("suspects"). Pure logic: the caller
//! does the I/O.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::cursor::Cursor;

/// How long a lease lasts; it is renewed when half of it is left.
pub const LEASE: Duration = Duration::from_secs(2);
/// The poll interval while the write rate is high (and for suspects, doubling from it).
const BUSY_POLL: Duration = Duration::from_millis(1);
/// The longest gap between polls while suspects remain.
const SUSPECT_POLL_MAX: Duration = Duration::from_millis(50);
/// A high write rate: at least this many reads that found rows within `BUSY_WINDOW`, or
/// transactions taken from wake-ups (400 commits a second; while polling every
/// millisecond, reads find rows that often at about 500). Below it, wake-ups cost
/// writers less than polling costs the machine: at 100-400 commits a second a notifying
/// commit seldom waits for another's lock (+0.13 ms a commit at 350/s), while polling
/// every millisecond reads the log 1,000 times a second, mostly for nothing, and
/// delivers later than a wake-up that carries the change (BENCHMARKS.md, "Wake-ups up to
/// 400 commits a second").
const BUSY_READS: usize = 40;
const BUSY_WINDOW: Duration = Duration::from_millis(100);

/// What the capture loop does after a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Rows came while writes are rare: read again at once.
    ReadNow,
    /// Read again after this long (or on a NOTIFY, if one comes first).
    Poll(Duration),
    /// Writes are frequent: give up the lease (writers stop notifying), then poll.
    Drop,
    /// Take (or renew) the lease, then read again.
    Lease,
    /// Wait for a NOTIFY or the poll interval; renew the lease by `renew_at`.
    Wait { renew_at: Instant },
}

/// The wake-up state of one capture connection.
#[derive(Debug, Default)]
pub struct Wake {
    /// When our lease lapses (local clock); `None` when we hold none.
    lease_until: Option<Instant>,
    /// The next read is the first since taking the lease.
    fresh_lease: bool,
    /// Transactions that were in progress at the first read after taking the lease.
    suspects: Vec<u64>,
    suspect_poll: Duration,
    /// When recent reads found rows.
    busy_reads: VecDeque<Instant>,
}

impl Wake {
    pub fn new() -> Wake {
        Wake::default()
    }

    /// The lease was taken (or renewed) at `now`; `was_held`: Postgres says a lease was
    /// in force just before (another hub may have dropped it, or it lapsed).
    pub fn leased(&mut self, now: Instant, was_held: bool) {
        if !was_held || self.lease_until.is_none_or(|until| until <= now) {
            self.fresh_lease = true;
        }
        self.lease_until = Some(now + LEASE);
    }

    /// The next read must be the first since taking the lease (it was not held).
    pub fn needs_read(&self) -> bool {
        self.fresh_lease
    }

    /// Whether every transaction that commits from now on, and every one that committed
    /// since the last read, sends a wake-up: our lease has held since before that read
    /// (with a quarter of it left, so a renewal that came late cannot have let it lapse
    /// unnoticed), and no transaction that began before we took it is still running.
    /// Only then may a carried change be delivered before the read (`carried`).
    pub fn steady(&self, now: Instant) -> bool {
        !self.fresh_lease
            && self.suspects.is_empty()
            && self
                .lease_until
                .is_some_and(|until| until > now + LEASE / 4)
    }

    /// Changes of `commits` transactions were delivered from wake-ups at `now`: each
    /// counts towards the write rate as a read that found rows would (the read after them
    /// finds nothing new). Counted per transaction, not per batch of wake-ups taken: the
    /// wake-ups of a fast writer arrive in batches, and counting batches would keep the
    /// lease, and every writer notifying, however fast they commit. True when writes
    /// have become frequent: the caller reads now, and `after_read` drops the lease.
    pub fn carried(&mut self, now: Instant, commits: usize) -> bool {
        for _ in 0..commits.min(BUSY_READS) {
            self.busy_reads.push_back(now);
        }
        self.forget_old_reads(now);
        self.busy_reads.len() >= BUSY_READS
    }

    fn forget_old_reads(&mut self, now: Instant) {
        while self
            .busy_reads
            .front()
            .is_some_and(|t| now.duration_since(*t) > BUSY_WINDOW)
        {
            self.busy_reads.pop_front();
        }
    }

    /// The lease was given up.
    pub fn dropped(&mut self) {
        self.lease_until = None;
    }

    /// Decides what follows a read that found rows (`got_rows`) and left the reader at
    /// `cursor` (the read's snapshot).
    pub fn after_read(&mut self, got_rows: bool, cursor: &Cursor, now: Instant) -> Next {
        if self.fresh_lease {
            self.fresh_lease = false;
            self.suspects = cursor.xip.clone();
            self.suspect_poll = BUSY_POLL;
        } else {
            self.suspects.retain(|x| cursor.xip.contains(x));
        }
        self.forget_old_reads(now);
        if got_rows {
            self.busy_reads.push_back(now);
        }
        let busy = self.busy_reads.len() >= BUSY_READS;
        if got_rows && !busy {
            return Next::ReadNow;
        }
        if busy {
            if self.lease_until.is_some() {
                return Next::Drop;
            }
            return Next::Poll(BUSY_POLL);
        }
        let renew_at = match self.lease_until {
            Some(until) if until > now + LEASE / 2 => until - LEASE / 2,
            _ => return Next::Lease,
        };
        if !self.suspects.is_empty() {
            let wait = self.suspect_poll;
            self.suspect_poll = (self.suspect_poll * 2).min(SUSPECT_POLL_MAX);
            return Next::Poll(wait);
        }
        Next::Wait { renew_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(xip: &[u64]) -> Cursor {
        Cursor::parse(&format!(
            "100:{}",
            xip.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
        ))
        .unwrap()
    }

    /// A wake that took its lease at `t0` and waits for wake-ups.
    fn waiting(t0: Instant) -> Wake {
        let mut w = Wake::new();
        w.leased(t0, false);
        assert!(matches!(
            w.after_read(false, &cursor(&[]), t0),
            Next::Wait { .. }
        ));
        w
    }

    #[test]
    fn an_idle_reader_takes_a_lease_then_waits() {
        let mut w = Wake::new();
        let t0 = Instant::now();
        assert_eq!(w.after_read(false, &cursor(&[]), t0), Next::Lease);
        w.leased(t0, false);
        assert_eq!(
            w.after_read(false, &cursor(&[]), t0),
            Next::Wait {
                renew_at: t0 + LEASE / 2
            }
        );
        assert_eq!(
            w.after_read(false, &cursor(&[]), t0 + LEASE / 2),
            Next::Lease,
            "renewed when half the lease is left"
        );
    }

    #[test]
    fn transactions_running_when_the_lease_was_taken_are_polled_until_they_end() {
        let mut w = Wake::new();
        let t0 = Instant::now();
        assert_eq!(w.after_read(false, &cursor(&[]), t0), Next::Lease);
        w.leased(t0, false);
        assert_eq!(
            w.after_read(false, &cursor(&[90, 95]), t0),
            Next::Poll(BUSY_POLL)
        );
        assert_eq!(
            w.after_read(false, &cursor(&[95, 99]), t0),
            Next::Poll(BUSY_POLL * 2),
            "99 began after the lease, so only 95 is still a suspect"
        );
        assert!(matches!(
            w.after_read(false, &cursor(&[99]), t0),
            Next::Wait { .. }
        ));
    }

    #[test]
    fn a_renewal_that_finds_the_lease_gone_counts_as_a_fresh_lease() {
        let t0 = Instant::now();
        let mut w = waiting(t0);
        w.leased(t0 + LEASE / 2, false);
        assert!(w.needs_read());
        assert_eq!(
            w.after_read(false, &cursor(&[8]), t0 + LEASE / 2),
            Next::Poll(BUSY_POLL)
        );
    }

    #[test]
    fn carried_changes_go_ahead_only_while_the_lease_has_held_since_the_last_read() {
        let mut w = Wake::new();
        let t0 = Instant::now();
        assert!(!w.steady(t0), "no lease");
        w.leased(t0, false);
        assert!(!w.steady(t0), "not read since the lease was taken");
        assert_eq!(
            w.after_read(false, &cursor(&[90]), t0),
            Next::Poll(BUSY_POLL)
        );
        assert!(!w.steady(t0), "90 may commit without a wake-up");
        assert!(matches!(
            w.after_read(false, &cursor(&[]), t0),
            Next::Wait { .. }
        ));
        assert!(w.steady(t0));
        assert!(
            !w.steady(t0 + LEASE * 3 / 4),
            "a renewal is overdue: the lease may lapse before a change is delivered"
        );
        w.leased(t0 + LEASE / 2, false);
        assert!(!w.steady(t0 + LEASE / 2), "the lease had lapsed");
        w.dropped();
        assert!(!w.steady(t0 + LEASE / 2));
    }

    #[test]
    fn changes_delivered_from_wake_ups_count_towards_a_high_write_rate() {
        let t0 = Instant::now();
        let mut w = waiting(t0);
        for i in 0..BUSY_READS as u64 - 1 {
            let t = t0 + Duration::from_millis(i);
            assert!(!w.carried(t, 1));
            assert!(matches!(
                w.after_read(false, &cursor(&[]), t),
                Next::Wait { .. }
            ));
        }
        let t = t0 + Duration::from_millis(BUSY_READS as u64);
        assert!(w.carried(t, 1), "the caller reads at once");
        assert_eq!(
            w.after_read(false, &cursor(&[]), t),
            Next::Drop,
            "writers stop sending wake-ups once they come this often"
        );
    }

    #[test]
    fn wake_ups_taken_in_one_batch_count_once_per_transaction() {
        let t0 = Instant::now();
        let mut w = waiting(t0);
        assert!(!w.carried(t0, BUSY_READS - 1));
        assert!(
            w.carried(t0 + Duration::from_millis(5), 1),
            "BUSY_READS transactions within the window are a high write rate, however they arrived"
        );
        assert_eq!(
            w.after_read(false, &cursor(&[]), t0 + Duration::from_millis(5)),
            Next::Drop
        );
    }

    #[test]
    fn a_renewed_lease_has_no_suspects() {
        let t0 = Instant::now();
        let mut w = waiting(t0);
        w.leased(t0 + LEASE / 2, true);
        assert!(matches!(
            w.after_read(false, &cursor(&[7]), t0 + LEASE / 2),
            Next::Wait { .. }
        ));
    }

    #[test]
    fn a_high_write_rate_polls_instead_of_taking_the_lease() {
        let mut w = Wake::new();
        let t0 = Instant::now();
        for i in 0..BUSY_READS as u64 - 1 {
            let t = t0 + Duration::from_millis(i);
            assert_eq!(w.after_read(true, &cursor(&[]), t), Next::ReadNow);
        }
        let t = t0 + Duration::from_millis(BUSY_READS as u64);
        assert_eq!(
            w.after_read(true, &cursor(&[]), t),
            Next::Poll(BUSY_POLL),
            "once writes are frequent, reads wait for what a millisecond brings"
        );
        let t = t0 + Duration::from_millis(BUSY_READS as u64 + 10);
        assert_eq!(w.after_read(false, &cursor(&[]), t), Next::Poll(BUSY_POLL));
        w.leased(t, false);
        assert_eq!(
            w.after_read(true, &cursor(&[]), t),
            Next::Drop,
            "a lease taken meanwhile is dropped while writes are frequent"
        );
        w.dropped();
        let later = t + BUSY_WINDOW + Duration::from_millis(30);
        assert_eq!(w.after_read(false, &cursor(&[]), later), Next::Lease);
    }
}
