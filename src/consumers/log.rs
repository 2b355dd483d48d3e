//! Reading the change log from a `Mark` on a pooled connection: the next page of changes
//! a reader selects, each with the mark just after it, so a batch may end after any
//! change (even inside one statement's log row) and the next read starts exactly there.
//! Broadcasts and changes the reader does not select are passed over, their place
//! counted as read.

use deadpool_postgres::Pool;

use super::mark::Mark;
use super::select::Selection;
use super::ConsumersError;
use crate::capture::{
    holds_large_row, next_page, release, Cursor, LogTables, Origin, Statements, READ_PAGE_OF_SQL,
};
use crate::changes::{Change, DbEvent, LogEntry};

/// What one read found.
#[derive(Debug)]
pub struct Read {
    /// Selected changes in log order, each with the mark after it (and after any changes
    /// not selected that follow it in this read).
    pub items: Vec<(Change, Mark)>,
    /// The mark after everything read.
    pub tail: Mark,
    /// The page was full: more is waiting.
    pub full: bool,
}

/// Reads up to `limit` log rows after `from` and keeps the changes `select` selects.
/// Postgres sends the data of the changes of `select`'s tables and kinds only
/// (`READ_PAGE_OF_SQL`); every other log row comes as a change without rows, counted as
/// read. A statement's rows are parsed only when `select` may select some change of it.
pub async fn read(
    pool: &Pool,
    from: &Mark,
    limit: usize,
    select: &Selection,
) -> Result<Read, ConsumersError> {
    let client = pool.get().await?;
    let tables = LogTables {
        tables: select
            .table_names()
            .map(|(s, t)| (s.to_owned(), t.to_owned()))
            .collect(),
        ..LogTables::default()
    };
    let stmts = Statements::of_tables(
        client.prepare_cached(READ_PAGE_OF_SQL).await?,
        &tables,
        select.ops(),
    );
    let mut after = from.position.clone();
    let page = next_page(&client, &stmts, &mut after, limit).await?;
    release(client, holds_large_row(&page.entries));
    // Marks go on from the position the page was read from (corrected if Postgres
    // crashed since `from` was taken).
    let from = &Mark {
        position: page.from.clone(),
        partial: from.partial.clone(),
    };
    let tail = Mark {
        position: after,
        // A short page read every row new to the position, partly read ones included.
        partial: match (page.full, page.last_id) {
            (true, Some(last)) => keep_beyond(from, last),
            _ => Vec::new(),
        },
    };
    let n = page.entries.iter().map(LogEntry::len).sum();
    let (mut keys, mut changes) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // Each event not yet read from `from`, with the change if `select` selects it.
    let mut unread = |id: i64, seq: u32, change: Option<Change>| {
        if !from.covers(id, seq) {
            keys.push((id, seq));
            changes.push(change.filter(|c| select.selects(c)));
        }
    };
    let mut events = Vec::new();
    for entry in page.entries {
        match entry {
            LogEntry::Statement(s) if !select.may_select(&s.schema, &s.table, s.op) => {
                (0..u32::try_from(s.len()).unwrap_or(u32::MAX))
                    .for_each(|seq| unread(s.id, seq, None));
            }
            entry => entry.into_events(&mut events),
        }
        for event in events.drain(..) {
            match event {
                DbEvent::Change(c) => unread(c.id, c.seq, Some(c)),
                DbEvent::Broadcast(b) => unread(b.log_id, 0, None),
            }
        }
    }
    let selected: Vec<usize> = (0..changes.len())
        .filter(|&i| changes[i].is_some())
        .collect();
    let mut items = Vec::with_capacity(selected.len());
    for (n, &i) in selected.iter().enumerate() {
        let through = selected.get(n + 1).map_or(keys.len() - 1, |next| next - 1);
        let mark = mark_through(from, (&page.snapshot, page.origin), &keys, through, &tail);
        if let Some(change) = changes[i].take() {
            items.push((change, mark));
        }
    }
    Ok(Read {
        items,
        tail,
        full: page.full,
    })
}

/// The partly read rows of `from` beyond log row `id`.
fn keep_beyond(from: &Mark, id: i64) -> Vec<(i64, u32)> {
    from.partial
        .iter()
        .copied()
        .filter(|&(pid, _)| pid > id)
        .collect()
}

/// The mark after event `k` of a page read from `from` under `snapshot` (taken at its
/// origin), whose events (log row id, seq) are `keys` in log order; `tail` is the mark
/// after the whole page.
/// Rows of the page with ids up to event `k`'s row were read whole (a page holds every
/// row new to the position up to its last id, in id order), except event `k`'s own row
/// when more of it follows.
pub fn mark_through(
    from: &Mark,
    (snapshot, origin): (&Cursor, Origin),
    keys: &[(i64, u32)],
    k: usize,
    tail: &Mark,
) -> Mark {
    let (id, seq) = keys[k];
    let inside_row = match keys.get(k + 1) {
        None => return tail.clone(),
        Some(&(next_id, _)) => next_id == id,
    };
    let through = if inside_row { id - 1 } else { id };
    let mut position = from.position.clone();
    position.read_through(snapshot, through, Some(origin));
    let mut partial = keep_beyond(from, through);
    if inside_row {
        partial.retain(|&(pid, _)| pid != id);
        partial.push((id, seq));
        partial.sort_unstable();
    }
    Mark { position, partial }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Position;

    fn cursor(text: &str) -> Cursor {
        Cursor::parse(text).unwrap()
    }

    const O: Origin = Origin { server: 1, at: 2 };

    #[test]
    fn a_mark_inside_a_log_row_names_the_row_and_covers_the_rows_before_it() {
        let from = Mark::at(cursor("100:"));
        let snap = cursor("110:104");
        let keys = [(7, 0), (9, 0), (9, 1), (9, 2), (12, 0)];
        let tail = Mark::at(snap.clone());
        // After a whole row: rows up to its id are read.
        let m = mark_through(&from, (&snap, O), &keys, 0, &tail);
        assert_eq!(m.to_string(), "100:/110:104@7/~1.2");
        // Inside row 9: rows before it are read, and of row 9 changes up to seq 1.
        let m = mark_through(&from, (&snap, O), &keys, 2, &tail);
        assert_eq!(m.to_string(), "100:/110:104@8/~1.2+9.1");
        assert!(m.covers(9, 1) && !m.covers(9, 2));
        // The last change of row 9 closes it.
        let m = mark_through(&from, (&snap, O), &keys, 3, &tail);
        assert_eq!(m.to_string(), "100:/110:104@9/~1.2");
        // The page's last change: the position after the page.
        assert_eq!(mark_through(&from, (&snap, O), &keys, 4, &tail), tail);
    }

    #[test]
    fn a_partly_read_row_stays_partly_read_until_a_mark_passes_it() {
        // Row 9 was cut after seq 1; since then row 5 committed late (a lower id).
        let from = Mark::parse("100:/110:104@8+9.1").unwrap();
        let snap = cursor("120:");
        let keys = [(5, 0), (5, 1), (9, 2), (9, 3)];
        let tail = Mark::at(snap.clone());
        let m = mark_through(&from, (&snap, O), &keys, 0, &tail);
        assert_eq!(m.to_string(), "100:/110:104@8/120:@4/~1.2+5.0+9.1");
        let m = mark_through(&from, (&snap, O), &keys, 1, &tail);
        assert_eq!(m.to_string(), "100:/110:104@8/120:@5/~1.2+9.1");
        let m = mark_through(&from, (&snap, O), &keys, 2, &tail);
        assert_eq!(m.to_string(), "100:/120:@8/~1.2+9.2");
    }

    #[test]
    fn a_mark_keeps_earlier_pages_that_reach_further() {
        let mut position = Position::at(cursor("100:"));
        position.read_through(&cursor("105:"), 50, None);
        let from = Mark {
            position,
            partial: Vec::new(),
        };
        let snap = cursor("110:");
        let keys = [(20, 0), (21, 0)];
        let m = mark_through(&from, (&snap, O), &keys, 0, &Mark::at(snap.clone()));
        assert_eq!(m.to_string(), "100:/105:@50/110:@20/~1.2");
    }
}
