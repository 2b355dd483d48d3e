//! Positions in the change log (ARCHITECTURE.md, "Gap-free capture"). A `Cursor` is the
//! last snapshot the log was read under: a row is new to the reader exactly when its
//! transaction was not yet visible in that snapshot, `xid >= xmax OR xid = ANY(xip)`. A
//! `Position` adds the pages already read past the cursor: rows visible in a page's
//! snapshot with an id up to the page's last id. Every reader of the log (the live
//! capture, resumed subscriptions, webhooks, the pull feed) keeps one. The live capture's
//! position also names log rows delivered ahead of any read, from the wake-up that
//! carried them (`ahead`). A position read from the log also carries its `Origin` (which
//! server lifetime, and when), so a position kept across a Postgres crash can be corrected
//! (`reader::correct`).

use std::fmt;

/// `xmax` and the in-progress xids of a `pg_snapshot`; `xmin` is implied by them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub xmax: u64,
    /// Sorted, every element below `xmax`.
    pub xip: Vec<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad snapshot {0:?}")]
pub struct CursorError(pub String);

impl Cursor {
    /// Parses Postgres's `pg_snapshot` text form, `xmin:xmax:xip1,xip2`.
    pub fn from_pg_snapshot(text: &str) -> Result<Cursor, CursorError> {
        let bad = || CursorError(text.to_string());
        let mut parts = text.split(':');
        let (Some(xmin), Some(xmax), Some(xip), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let xmin: u64 = xmin.parse().map_err(|_| bad())?;
        let cursor = Cursor::new(
            xmax.parse().map_err(|_| bad())?,
            parse_xip(xip).ok_or_else(bad)?,
        )
        .ok_or_else(bad)?;
        if cursor.xmin() != xmin {
            return Err(bad());
        }
        Ok(cursor)
    }

    /// Parses the cursor's own text form, `xmax:xip1,xip2` (see `Display`).
    pub fn parse(text: &str) -> Result<Cursor, CursorError> {
        let bad = || CursorError(text.to_string());
        let (xmax, xip) = text.split_once(':').ok_or_else(bad)?;
        Cursor::new(
            xmax.parse().map_err(|_| bad())?,
            parse_xip(xip).ok_or_else(bad)?,
        )
        .ok_or_else(bad)
    }

    fn new(xmax: u64, mut xip: Vec<u64>) -> Option<Cursor> {
        xip.sort_unstable();
        xip.dedup();
        if xip.last().is_some_and(|&x| x >= xmax) {
            return None;
        }
        Some(Cursor { xmax, xip })
    }

    /// Whether transaction `xid` had finished when this snapshot was taken (so its rows,
    /// if it committed, are no longer new to a reader at this cursor).
    pub fn sees(&self, xid: u64) -> bool {
        xid < self.xmax && self.xip.binary_search(&xid).is_err()
    }

    /// Whether every transaction this snapshot sees, `later` sees too.
    pub fn seen_by(&self, later: &Cursor) -> bool {
        self.xmax <= later.xmax
            && later
                .xip
                .iter()
                .all(|x| *x >= self.xmax || self.xip.binary_search(x).is_ok())
    }

    /// Every transaction below `xmin` had finished when this snapshot was taken.
    pub fn xmin(&self) -> u64 {
        self.xip.first().copied().unwrap_or(self.xmax)
    }

    /// The `pg_snapshot` text form, for `::pg_snapshot` casts.
    pub fn to_pg_snapshot(&self) -> String {
        format!("{}:{}:{}", self.xmin(), self.xmax, join(&self.xip))
    }

    /// The xids as text, for binding as `$n::text::xid8` / `$n::text[]::xid8[]`.
    pub(crate) fn bind_texts(&self) -> (String, Vec<String>) {
        let xip = self.xip.iter().map(u64::to_string).collect();
        (self.xmax.to_string(), xip)
    }
}

impl Cursor {
    /// Treats every transaction from `xid` on as not yet read (see
    /// `Position::forget_from`). True when that changed anything.
    pub fn forget_from(&mut self, xid: u64) -> bool {
        if xid >= self.xmax {
            return false;
        }
        self.xmax = xid;
        self.xip.retain(|&x| x < xid);
        true
    }
}

impl fmt::Display for Cursor {
    /// `xmax:xip1,xip2`: the form shown in status and handed back to resume.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.xmax, join(&self.xip))
    }
}

/// Where a position's snapshots were taken: the server lifetime
/// (`pg_postmaster_start_time()`) and the server's clock just after the newest of them,
/// both in microseconds since the Unix epoch. Within one lifetime a log row created
/// (`created_at`, its transaction's start) after `at` is new to the position; so after a
/// crash, rows created after `at` that the position counts as read are exactly those
/// whose ids the restarted server handed out again (`reader::correct`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub server: i64,
    pub at: i64,
}

/// A cursor plus the pages read beyond it (each a snapshot and the last id read under
/// it) and the log rows delivered ahead of any read. Rows new to `cursor` are read except
/// those covered by a page or named in `ahead`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub cursor: Cursor,
    pub pages: Vec<(Cursor, i64)>,
    /// Log rows (transaction id, log id) read from a wake-up's payload before any read of
    /// the log saw them; each stays until a snapshot that sees its transaction takes over.
    pub ahead: Vec<(u64, i64)>,
    /// `None` for a position not read from the log (or from before origins were kept).
    pub origin: Option<Origin>,
}

impl Position {
    pub fn at(cursor: Cursor) -> Position {
        Position {
            cursor,
            pages: Vec::new(),
            ahead: Vec::new(),
            origin: None,
        }
    }

    /// A position at `cursor`, a snapshot taken at `origin`.
    pub fn taken(cursor: Cursor, origin: Origin) -> Position {
        Position {
            origin: Some(origin),
            ..Position::at(cursor)
        }
    }

    /// The position after reading everything new to it under `snapshot` (taken at
    /// `origin`): that snapshot, keeping the rows delivered ahead whose transactions it
    /// does not see yet.
    pub fn caught_up(&self, snapshot: Cursor, origin: Origin) -> Position {
        let ahead = self
            .ahead
            .iter()
            .filter(|(xid, _)| !snapshot.sees(*xid))
            .copied()
            .collect();
        Position {
            ahead,
            ..Position::taken(snapshot, origin)
        }
    }

    /// Records that log row `id` of transaction `xid`, created at `created_at` (µs since
    /// the epoch, on the server's clock), was delivered ahead of any read. The origin's
    /// time moves to its creation: the only rows created after the origin that a position
    /// counts as read must otherwise be ones a crashed server handed out again
    /// (`reader::correct`).
    pub fn read_ahead(&mut self, xid: u64, id: i64, created_at: i64) {
        self.ahead.push((xid, id));
        if let Some(origin) = &mut self.origin {
            origin.at = origin.at.max(created_at);
        }
    }

    /// Records that rows visible in `snapshot` (taken at `origin`) with ids up to
    /// `last_id` were read. `snapshot` must be no older than any page already recorded: a
    /// later snapshot sees everything an earlier one saw, so pages with lower last ids are
    /// covered by it.
    pub fn read_through(&mut self, snapshot: &Cursor, last_id: i64, origin: Option<Origin>) {
        self.pages.retain(|(_, id)| *id > last_id);
        self.pages.push((snapshot.clone(), last_id));
        if origin.is_some() {
            self.origin = origin;
        }
    }

    /// Treats every transaction from `xid` on as not yet read, in the cursor and in every
    /// page. After a Postgres crash the server can hand out again the ids of transactions
    /// that rolled back after its last WAL write, ids a position may already have passed
    /// as finished; forgetting from the lowest id handed out since the start reads those
    /// again (no id at or above it committed before the start, so nothing is read twice).
    /// True when that changed anything.
    pub fn forget_from(&mut self, xid: u64) -> bool {
        let mut changed = self.cursor.forget_from(xid);
        for (page, _) in &mut self.pages {
            changed |= page.forget_from(xid);
        }
        let before = self.ahead.len();
        self.ahead.retain(|(x, _)| *x < xid);
        changed | (self.ahead.len() != before)
    }

    /// Parses the `Display` form: `xmax:xip`, then `/xmax:xip@last_id` per page, then
    /// `/axid.id,xid.id` for rows read ahead (if any), then `/~server.at` if the origin is
    /// known (texts without it are still read).
    pub fn parse(text: &str) -> Result<Position, CursorError> {
        let bad = || CursorError(text.to_string());
        let (text_pages, origin) = match text.rsplit_once("/~") {
            Some((rest, origin)) => {
                let (server, at) = origin.split_once('.').ok_or_else(bad)?;
                let origin = Origin {
                    server: server.parse().map_err(|_| bad())?,
                    at: at.parse().map_err(|_| bad())?,
                };
                (rest, Some(origin))
            }
            None => (text, None),
        };
        let (text_pages, ahead) = match text_pages.rsplit_once("/a") {
            Some((rest, ahead)) => (rest, parse_ahead(ahead).ok_or_else(bad)?),
            None => (text_pages, Vec::new()),
        };
        let mut parts = text_pages.split('/');
        let cursor = Cursor::parse(parts.next().ok_or_else(bad)?)?;
        let pages = parts
            .map(|p| {
                let (snap, id) = p.rsplit_once('@').ok_or_else(bad)?;
                Ok((Cursor::parse(snap)?, id.parse().map_err(|_| bad())?))
            })
            .collect::<Result<_, CursorError>>()?;
        Ok(Position {
            cursor,
            pages,
            ahead,
            origin,
        })
    }

    /// Whether this position counts log row `id` of transaction `xid` as read: the
    /// negation of `unread_by!` (reader.rs), which reads say it for the log's rows.
    pub fn has_read(&self, xid: u64, id: i64) -> bool {
        self.cursor.sees(xid)
            || self.ahead.iter().any(|(_, a)| *a == id)
            || self
                .pages
                .iter()
                .any(|(snap, last)| id <= *last && snap.sees(xid))
    }

    /// Whether this position is behind `other` (read on the same server lifetime):
    /// `other` counts a row as read that this one may not (`read_within`): a transaction
    /// its snapshot sees and this one's does not, a row it read ahead. A position partway
    /// through a page (a hub catching up reads page by page) counts as behind until the
    /// page is done: the rows of it that `other` has read may not be read yet.
    pub fn behind(&self, other: &Position) -> bool {
        let same_server = match (self.origin, other.origin) {
            (Some(a), Some(b)) => a.server == b.server,
            _ => true,
        };
        same_server && !other.read_within(self)
    }

    /// Whether every row this position counts as read, `later` counts as read too. Sure
    /// when true; false also for some positions that are (a page of this one that
    /// `later` has read only partly, by a page of its own).
    pub fn read_within(&self, later: &Position) -> bool {
        self.cursor.seen_by(&later.cursor)
            && self
                .pages
                .iter()
                .all(|(snap, _)| snap.seen_by(&later.cursor))
            && self.ahead.iter().all(|&(xid, id)| later.has_read(xid, id))
    }

    /// Every row this position counts as read belongs to a transaction below this xid: the
    /// cursor's and every page's xmax, and each row read ahead.
    pub fn read_below(&self) -> u64 {
        let pages = self.pages.iter().map(|(c, _)| c.xmax);
        let ahead = self.ahead.iter().map(|(xid, _)| xid.saturating_add(1));
        pages.chain(ahead).fold(self.cursor.xmax, u64::max)
    }

    /// The bind values of a read: xmax, xip, page snapshots, page last ids, ids read ahead.
    pub(crate) fn bind_values(&self) -> BindValues {
        let (xmax, xip) = self.cursor.bind_texts();
        let snaps = self.pages.iter().map(|(c, _)| c.to_pg_snapshot()).collect();
        let ids = self.pages.iter().map(|(_, id)| *id).collect();
        let ahead = self.ahead.iter().map(|(_, id)| *id).collect();
        (xmax, xip, snaps, ids, ahead)
    }
}

/// A position's bind values (see `Position::bind_values`).
pub(crate) type BindValues = (String, Vec<String>, Vec<String>, Vec<i64>, Vec<i64>);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cursor)?;
        for (snap, id) in &self.pages {
            write!(f, "/{snap}@{id}")?;
        }
        for (i, (xid, id)) in self.ahead.iter().enumerate() {
            let sep = if i == 0 { "/a" } else { "," };
            write!(f, "{sep}{xid}.{id}")?;
        }
        if let Some(o) = &self.origin {
            write!(f, "/~{}.{}", o.server, o.at)?;
        }
        Ok(())
    }
}

fn parse_xip(text: &str) -> Option<Vec<u64>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',').map(|x| x.parse().ok()).collect()
}

fn parse_ahead(text: &str) -> Option<Vec<(u64, i64)>> {
    text.split(',')
        .map(|a| {
            let (xid, id) = a.split_once('.')?;
            Some((xid.parse().ok()?, id.parse().ok()?))
        })
        .collect()
}

fn join(xids: &[u64]) -> String {
    xids.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_behind_another_only_when_that_has_read_more_on_the_same_server() {
        let p = |s: &str| Position::parse(s).unwrap();
        assert!(p("100:/~1.5").behind(&p("105:/~1.9")));
        // A transaction still open at the first, finished for the second.
        assert!(p("105:101/~1.5").behind(&p("105:/~1.9")));
        assert!(!p("105:/~1.5").behind(&p("100:/~1.9")), "ahead");
        assert!(!p("105:/~1.5").behind(&p("105:/~1.9")), "the same");
        assert!(
            !p("100:/~1.5").behind(&p("105:/~2.9")),
            "another server lifetime"
        );
        // Catching up page by page: behind until the page is read whole.
        assert!(p("100:/110:@7/~1.5").behind(&p("105:/~1.9")));
        assert!(!p("105:/110:@7/~1.5").behind(&p("105:/~1.9")));
        // Rows read ahead (carried by wake-ups): behind until it has read them too.
        assert!(p("107:/a108.4/~1.5").behind(&p("105:/a108.4,109.5/~1.9")));
        assert!(!p("110:/~1.5").behind(&p("105:/a108.4,109.5/~1.9")));
        assert!(!p("105:/a108.4,109.5/~1.5").behind(&p("105:/a108.4/~1.9")));
    }

    #[test]
    fn forgetting_from_an_id_lowers_xmax_and_drops_later_in_progress_ids() {
        let mut p = Position::parse("105:100,102/110:103@7").unwrap();
        assert!(p.forget_from(102));
        assert_eq!(
            p.to_string(),
            Position::parse("102:100/102:@7").unwrap().to_string()
        );
        assert!(!p.forget_from(102), "nothing more to forget");
        assert!(!p.forget_from(200));
    }

    #[test]
    fn a_pg_snapshot_round_trips_through_the_cursor() {
        let c = Cursor::from_pg_snapshot("100:105:100,102").unwrap();
        assert_eq!(
            c,
            Cursor {
                xmax: 105,
                xip: vec![100, 102]
            }
        );
        assert_eq!(c.xmin(), 100);
        assert_eq!(c.to_pg_snapshot(), "100:105:100,102");
        assert_eq!(c.to_string(), "105:100,102");
        assert_eq!(Cursor::parse("105:100,102").unwrap(), c);
    }

    #[test]
    fn an_idle_snapshot_has_xmin_equal_to_xmax() {
        let c = Cursor::from_pg_snapshot("2779:2779:").unwrap();
        assert_eq!((c.xmin(), c.xip.len()), (2779, 0));
        assert_eq!(c.to_string(), "2779:");
        assert_eq!(Cursor::parse("2779:").unwrap(), c);
    }

    #[test]
    fn a_position_with_pages_round_trips_through_text() {
        let mut p = Position {
            cursor: Cursor::parse("105:100,102").unwrap(),
            pages: vec![(Cursor::parse("110:").unwrap(), 42)],
            ahead: Vec::new(),
            origin: None,
        };
        assert_eq!(p.to_string(), "105:100,102/110:@42");
        assert_eq!(Position::parse(&p.to_string()).unwrap(), p);
        p.origin = Some(Origin {
            server: 1_764_629_601_123_456,
            at: 1_764_629_700_000_001,
        });
        assert_eq!(
            p.to_string(),
            "105:100,102/110:@42/~1764629601123456.1764629700000001"
        );
        assert_eq!(Position::parse(&p.to_string()).unwrap(), p);
        let bare = Position::parse("7:/~1.2").unwrap();
        assert_eq!(bare.origin, Some(Origin { server: 1, at: 2 }));
        assert_eq!(
            Position::parse("7:").unwrap(),
            Position::at(Cursor::parse("7:").unwrap())
        );
        for bad in [
            "",
            "7",
            "7:/8:",
            "7:/8:@x",
            "7:/x@1",
            "7:/~1",
            "7:/~x.2",
            "7:/~1.2/8:@1",
            "/~1.2",
            "7:/a",
            "7:/a5",
            "7:/a5.x",
            "7:/a5.1,",
            "7:/~1.2/a5.1",
        ] {
            assert!(Position::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_later_page_reaching_further_covers_earlier_pages() {
        let mut p = Position::at(Cursor::parse("100:").unwrap());
        p.read_through(&Cursor::parse("110:105").unwrap(), 40, None);
        p.read_through(&Cursor::parse("112:").unwrap(), 30, None);
        assert_eq!(
            p.pages.len(),
            2,
            "a late page with lower ids covers nothing"
        );
        let origin = Origin { server: 5, at: 9 };
        p.read_through(&Cursor::parse("120:").unwrap(), 90, Some(origin));
        assert_eq!(p.to_string(), "100:/120:@90/~5.9");
    }

    #[test]
    fn rows_read_ahead_round_trip_and_stay_until_a_snapshot_sees_them() {
        let origin = Origin { server: 5, at: 9 };
        let mut p = Position::taken(Cursor::parse("100:97").unwrap(), origin);
        p.read_ahead(101, 7, 8);
        p.read_ahead(97, 8, 12);
        assert_eq!(
            p.to_string(),
            "100:97/a101.7,97.8/~5.12",
            "the origin moves to the latest row read ahead"
        );
        assert_eq!(Position::parse(&p.to_string()).unwrap(), p);
        assert_eq!(p.bind_values().4, vec![7, 8]);
        let next = p.caught_up(Cursor::parse("101:").unwrap(), origin);
        assert_eq!(next.origin, Some(origin), "the snapshot's own origin");
        assert_eq!(
            next.to_string(),
            "101:/a101.7/~5.9",
            "97 finished before the snapshot, 101 had not started"
        );
        let next = next.caught_up(Cursor::parse("104:101").unwrap(), origin);
        assert_eq!(next.ahead, vec![(101, 7)], "101 still in progress");
        let next = next.caught_up(Cursor::parse("104:").unwrap(), origin);
        assert!(next.ahead.is_empty());
        let mut p = Position::parse("100:/a101.7,99.3").unwrap();
        assert!(p.forget_from(100));
        assert_eq!(p.to_string(), "100:/a99.3");
    }

    #[test]
    fn every_row_a_position_counts_as_read_is_below_its_read_below() {
        let at = |t: &str| Position::parse(t).unwrap().read_below();
        assert_eq!(at("100:97"), 100, "the cursor alone");
        assert_eq!(at("100:/120:@90/110:104@95"), 120, "the furthest page");
        assert_eq!(
            at("100:/110:@90/a130.7,97.8"),
            131,
            "a row read ahead past both"
        );
    }

    #[test]
    fn malformed_snapshots_are_rejected() {
        for bad in [
            "", "1", "1:2", "a:2:", "1:2:x", "1:2:3", "5:9:6", "1:2:3:4", "2:1,x",
        ] {
            assert!(Cursor::from_pg_snapshot(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "5", "5:7", "x:", "5:1,,2"] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_position_has_read_what_its_cursor_sees_its_pages_cover_and_it_read_ahead() {
        let p = Position::parse("105:100,102/110:103@7/a107.9").unwrap();
        assert!(p.has_read(99, 1), "below xmin");
        assert!(
            !p.has_read(100, 8),
            "in progress at the cursor, past the page"
        );
        assert!(
            p.has_read(100, 1),
            "in progress at the cursor, seen by the page"
        );
        assert!(p.has_read(101, 50), "finished before the cursor");
        assert!(p.has_read(102, 7), "the page sees 102 and covers id 7");
        assert!(!p.has_read(102, 8), "past the page's last id");
        assert!(p.has_read(106, 7), "new to the cursor, covered by the page");
        assert!(!p.has_read(106, 8), "new to the cursor, past the page");
        assert!(p.has_read(107, 9), "read ahead");
        assert!(!p.has_read(107, 10));
        assert!(!p.has_read(110, 1));
    }

    #[test]
    fn a_position_reads_within_a_later_one_only_when_everything_it_read_is_read_there() {
        let p = |t: &str| Position::parse(t).unwrap();
        assert!(p("105:100,102").read_within(&p("108:102,106")));
        assert!(p("105:100,102").read_within(&p("105:100,102")));
        assert!(
            !p("105:100,102").read_within(&p("104:100")),
            "xmax went back"
        );
        assert!(
            !p("105:100,102").read_within(&p("108:101")),
            "101 was seen and is in progress later"
        );
        assert!(p("105:/a106.3").read_within(&p("108:")));
        assert!(p("105:/a106.3").read_within(&p("105:/a106.3,107.4")));
        assert!(
            p("105:/110:@7").read_within(&p("110:")),
            "its page, read whole"
        );
        assert!(
            !p("105:/110:@7").read_within(&p("108:")),
            "its page, not yet"
        );
        assert!(
            !p("105:/a106.3").read_within(&p("108:106")),
            "106 read ahead"
        );
        assert!(
            !p("105:/110:@4").read_within(&p("120:109")),
            "a page's transaction still in progress later"
        );
    }
}
