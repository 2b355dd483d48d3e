//! Decoded changes turned into `realtime.changes` rows with the same JSON as the capture
//! triggers write, and written in one statement that also records how far the slot was
//! read.
//!
//! A row's text values become a row literal of the table's type, cast by the type's own
//! input functions (`record_in`) and rendered by `row_to_json`, as the trigger renders
//! its transition rows: the JSON is the trigger's, whatever the column types. The literal
//! follows the table's columns as they are when the rows are written, matched by name to
//! the columns the change was decoded with (looked up at each write). A column added
//! since comes out null, as do generated columns (`pgoutput` in Postgres 15 does not send
//! them) and a column renamed since (the trigger would have logged its value); a column
//! dropped since is left out. A value that no longer parses as its column's type (the
//! type was changed since) fails the write, and the changes stay waiting: the reader
//! tries again, with backoff, and logs why. Changes of a table dropped since are counted
//! in [`Written::dropped`] and not logged. An update that left a large value out needs
//! the old row to carry it: replica identity FULL.
//!
//! Consecutive changes of one table and kind in a transaction make one log row of up to
//! [`CHUNK_ROWS`] rows, as a statement's rows do under the trigger. The log row's
//! `created_at` is the transaction's commit time.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

use super::pgoutput::{Datum, Message, Relation, Tuple};
use super::DecodeError;

/// Rows per log row, as the trigger's chunks.
pub const CHUNK_ROWS: usize = 100;

/// Microseconds from the Unix epoch to Postgres's (2000-01-01 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// One future log row: a run of one table's changes of one kind.
struct Chunk {
    relation: Arc<Relation>,
    op: Op,
    commit_micros: i64,
    /// (new, old) per change.
    rows: Vec<(Option<Tuple>, Option<Tuple>)>,
}

/// A table's columns now, for the literal.
struct Current {
    reltype: u32,
    columns: Vec<String>,
}

/// What one write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Log rows inserted.
    pub log_rows: u64,
    /// Row changes in them.
    pub changes: u64,
    /// Row changes of tables dropped since they were written, which cannot be rendered.
    pub dropped: u64,
    /// The end of the last transaction written, now recorded for the slot.
    pub end_lsn: Option<u64>,
}

/// Decoded transactions waiting to be written.
#[derive(Default)]
pub struct LogRows {
    relations: HashMap<u32, Arc<Relation>>,
    /// The transaction being decoded: its commit time, and whether it ends at or before
    /// the position already written (a read again after a restart), so is skipped.
    open: Option<(i64, bool)>,
    open_chunks: Vec<Chunk>,
    done: Vec<Chunk>,
    end_lsn: Option<u64>,
    transactions: usize,
    /// Transactions whose commit is before this were written before.
    written_until: u64,
}

impl LogRows {
    /// Skips transactions that committed before `end_lsn`: the position recorded by the
    /// last write ([`written_position`]).
    pub fn resume_after(end_lsn: u64) -> LogRows {
        LogRows {
            written_until: end_lsn,
            ..LogRows::default()
        }
    }

    /// Takes in one `pgoutput` message.
    pub fn apply(&mut self, message: Message) -> Result<(), DecodeError> {
        match message {
            Message::Begin {
                final_lsn,
                commit_time_micros,
                ..
            } => self.begin(final_lsn, commit_time_micros),
            Message::Commit { end_lsn, .. } => self.commit(end_lsn),
            Message::Relation(r) => {
                self.relations.insert(r.id, Arc::new(r));
            }
            Message::Insert { relation, new } => {
                self.push(relation, Op::Insert, Some(new), None)?
            }
            Message::Update { relation, old, new } => {
                let new = fill_unchanged(new, old.as_ref())?;
                self.push(relation, Op::Update, Some(new), old)?
            }
            Message::Delete { relation, old } => {
                self.push(relation, Op::Delete, None, Some(old))?
            }
            Message::Other(_) => {}
        }
        Ok(())
    }

    /// A transaction starts (a replication stream hands Begin over decoded).
    pub fn begin(&mut self, final_lsn: u64, commit_time_micros: i64) {
        self.open_chunks.clear();
        self.open = Some((commit_time_micros, final_lsn < self.written_until));
    }

    /// The transaction ends at `end_lsn`: its changes wait to be written.
    pub fn commit(&mut self, end_lsn: u64) {
        if let Some((_, skipped)) = self.open.take() {
            if !skipped {
                self.done.append(&mut self.open_chunks);
                self.transactions += 1;
            }
        }
        self.open_chunks.clear();
        if end_lsn > self.written_until {
            self.end_lsn = Some(self.end_lsn.map_or(end_lsn, |e| e.max(end_lsn)));
        }
    }

    /// Transactions committed and not yet written.
    pub fn transactions(&self) -> usize {
        self.transactions
    }

    /// Whether a write would record a new position.
    pub fn is_empty(&self) -> bool {
        self.end_lsn.is_none()
    }

    fn push(
        &mut self,
        relation: u32,
        op: Op,
        new: Option<Tuple>,
        old: Option<Tuple>,
    ) -> Result<(), DecodeError> {
        let Some((commit_micros, skipped)) = self.open else {
            return Err(DecodeError("a change outside a transaction".into()));
        };
        if skipped {
            return Ok(());
        }
        let relation = self.relations.get(&relation).ok_or_else(|| {
            DecodeError(format!(
                "a change of relation {relation} before its description"
            ))
        })?;
        let width = relation.columns.len();
        for t in new.iter().chain(old.iter()) {
            if t.0.len() != width {
                return Err(DecodeError(format!(
                    "a row of {} values for {}.{}, which has {width} columns",
                    t.0.len(),
                    relation.schema,
                    relation.name
                )));
            }
        }
        match self.open_chunks.last_mut() {
            Some(c)
                if Arc::ptr_eq(&c.relation, relation)
                    && c.op == op
                    && c.rows.len() < CHUNK_ROWS =>
            {
                c.rows.push((new, old))
            }
            _ => self.open_chunks.push(Chunk {
                relation: relation.clone(),
                op,
                commit_micros,
                rows: vec![(new, old)],
            }),
        }
        Ok(())
    }

    /// Writes every committed transaction waiting, and records the end of the last as
    /// `slot`'s position, in one statement (so one transaction): after a crash, the slot
    /// is read again from before that position and [`LogRows::resume_after`] skips what
    /// was written. The tables' columns are looked up at each write; one refused as they
    /// changed between that lookup and the write is tried once more, looked up again
    /// (in autocommit: inside a caller's transaction the first error has aborted it).
    pub async fn write(
        &mut self,
        client: &Client,
        slot: &str,
    ) -> Result<Written, tokio_postgres::Error> {
        let Some(end_lsn) = self.end_lsn else {
            return Ok(Written::default());
        };
        let mut first = true;
        let written = loop {
            let current = self.look_up(client).await?;
            let batch = self.batch(&current);
            let result = client
                .query_one(
                    WRITE,
                    &[
                        &batch.reltypes,
                        &batch.schemas,
                        &batch.tables,
                        &batch.ops,
                        &batch.times,
                        &batch.row_chunks,
                        &batch.news,
                        &batch.olds,
                        &slot,
                        &PgLsn::from(end_lsn),
                    ],
                )
                .await;
            match result {
                Ok(row) => {
                    break Written {
                        log_rows: row.get::<_, i64>(0) as u64,
                        changes: batch.changes,
                        dropped: batch.dropped,
                        end_lsn: Some(end_lsn),
                    }
                }
                Err(e) if first && e.as_db_error().is_some() => first = false,
                Err(e) => return Err(e),
            }
        };
        self.done.clear();
        self.end_lsn = None;
        self.transactions = 0;
        self.written_until = end_lsn;
        Ok(written)
    }

    /// The columns now of the tables waiting to be written (one catalog query), by
    /// relation id; a table dropped since is missing.
    async fn look_up(
        &self,
        client: &Client,
    ) -> Result<HashMap<u32, Current>, tokio_postgres::Error> {
        let mut ids: Vec<u32> = self.done.iter().map(|c| c.relation.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = client.query(COLUMNS, &[&ids]).await?;
        Ok(rows
            .iter()
            .map(|row| {
                let current = Current {
                    reltype: row.get(1),
                    columns: row.get(2),
                };
                (row.get(0), current)
            })
            .collect())
    }

    fn batch(&self, current: &HashMap<u32, Current>) -> Batch {
        let mut b = Batch::default();
        for (k, chunk) in self.done.iter().enumerate() {
            let Some(current) = current.get(&chunk.relation.id) else {
                b.dropped += chunk.rows.len() as u64;
                continue;
            };
            let map: Vec<Option<usize>> = current
                .columns
                .iter()
                .map(|name| chunk.relation.columns.iter().position(|c| c == name))
                .collect();
            b.reltypes.push(current.reltype);
            b.schemas.push(chunk.relation.schema.clone());
            b.tables.push(chunk.relation.name.clone());
            b.ops.push(chunk.op.name());
            b.times.push(commit_time(chunk.commit_micros));
            for (new, old) in &chunk.rows {
                b.row_chunks.push(k as i64 + 1);
                b.news.push(new.as_ref().map(|t| literal(t, &map)));
                b.olds.push(old.as_ref().map(|t| literal(t, &map)));
                b.changes += 1;
            }
        }
        // Chunks are numbered by their place among those kept.
        renumber(&mut b.row_chunks);
        b
    }
}

/// The log position `slot`'s reader recorded with its last write, if any.
pub async fn written_position(
    client: &Client,
    slot: &str,
) -> Result<Option<u64>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "select end_lsn from realtime.decoded_position where slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| u64::from(r.get::<_, PgLsn>(0))))
}

#[derive(Default)]
struct Batch {
    reltypes: Vec<u32>,
    schemas: Vec<String>,
    tables: Vec<String>,
    ops: Vec<&'static str>,
    times: Vec<DateTime<Utc>>,
    row_chunks: Vec<i64>,
    news: Vec<Option<String>>,
    olds: Vec<Option<String>>,
    changes: u64,
    dropped: u64,
}

/// Chunk numbers, in order with gaps where a chunk was left out, made 1, 2, 3…
fn renumber(row_chunks: &mut [i64]) {
    let mut last = None;
    let mut n = 0;
    for k in row_chunks {
        if last != Some(*k) {
            last = Some(*k);
            n += 1;
        }
        *k = n;
    }
}

fn commit_time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros.saturating_add(PG_EPOCH_MICROS)).unwrap_or_default()
}

/// An UPDATE's new row with the values `pgoutput` left out as unchanged taken from the
/// old row, which has them under replica identity FULL.
fn fill_unchanged(mut new: Tuple, old: Option<&Tuple>) -> Result<Tuple, DecodeError> {
    for (i, v) in new.0.iter_mut().enumerate() {
        if *v != Datum::Unchanged {
            continue;
        }
        // An unchanged value is not null, so a null in the old row is a column the old
        // row does not carry (a key-only old row, sent when the key changed).
        match old.and_then(|o| o.0.get(i)) {
            Some(o @ Datum::Text(_)) => *v = o.clone(),
            _ => {
                return Err(DecodeError(
                    "an update left a large value out and the old row lacks it \
                     (the table's replica identity is not FULL)"
                        .into(),
                ))
            }
        }
    }
    Ok(new)
}

/// The row literal of `tuple` for a type whose columns are, by position, `map`'s
/// entries: the decoded column each comes from, or none (null).
fn literal(tuple: &Tuple, map: &[Option<usize>]) -> String {
    let mut s = String::with_capacity(2 + map.len() * 8);
    s.push('(');
    for (i, from) in map.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        // An unquoted empty field is null; `Unchanged` is gone after `fill_unchanged`
        // for updates and never comes in inserts or old rows.
        if let Some(Datum::Text(v)) = from.and_then(|j| tuple.0.get(j)) {
            s.push('"');
            for ch in v.chars() {
                if ch == '"' || ch == '\\' {
                    s.push('\\');
                }
                s.push(ch);
            }
            s.push('"');
        }
    }
    s.push(')');
    s
}

/// Each table's type and its columns now, in order, without dropped ones.
const COLUMNS: &str = "\
select c.oid, c.reltype, \
       array(select a.attname::text from pg_catalog.pg_attribute a \
             where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped \
             order by a.attnum) \
from pg_catalog.pg_class c where c.oid = any($1::oid[])";

/// One log row per chunk ($1..$5: the chunks' types, names, kinds and commit times;
/// $6..$8: each change's chunk, new and old literal), in order, and `$9`'s position
/// ($10) raised; the number of log rows. As the trigger: `rows` for inserts and
/// updates, `old_rows` for updates and deletes (an update's missing old row is null).
const WRITE: &str = "\
with position as ( \
    insert into realtime.decoded_position as p (slot_name, end_lsn) values ($9, $10) \
    on conflict (slot_name) do update set end_lsn = excluded.end_lsn, written_at = now() \
    where p.end_lsn < excluded.end_lsn \
), logged as ( \
    insert into realtime.changes (created_at, schema_name, table_name, op, rows, old_rows) \
    select c.at, c.s, c.t, c.op, \
           case when c.op <> 'DELETE' then pg_catalog.json_agg(pg_catalog.row_to_json( \
               pg_catalog.record_in(r.new::cstring, c.typ, -1)) order by r.i) end, \
           case when c.op <> 'INSERT' then pg_catalog.json_agg(pg_catalog.row_to_json( \
               pg_catalog.record_in(r.old::cstring, c.typ, -1)) order by r.i) end \
    from unnest($1::oid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) \
         with ordinality c(typ, s, t, op, at, k) \
    join unnest($6::int8[], $7::text[], $8::text[]) with ordinality r(k, new, old, i) \
         on r.k = c.k \
    group by c.k, c.typ, c.s, c.t, c.op, c.at \
    order by c.k \
    returning 1 \
) select pg_catalog.count(*) from logged";

#[cfg(test)]
mod tests {
    use super::super::pgoutput::{parse, tests as msg};
    use super::*;

    fn text(v: &str) -> Datum {
        Datum::Text(v.into())
    }

    #[test]
    fn a_literal_quotes_every_value_and_leaves_nulls_empty() {
        let t = Tuple(vec![
            text("1"),
            Datum::Null,
            text(r#"a "b" \c, (d)"#),
            text(""),
        ]);
        let map = [Some(0), Some(1), Some(2), Some(3), None];
        assert_eq!(literal(&t, &map), r#"("1",,"a \"b\" \\c, (d)","",)"#);
        // Columns matched by name: reordered, one dropped since, one added since.
        assert_eq!(
            literal(&t, &[Some(2), None, Some(0)]),
            r#"("a \"b\" \\c, (d)",,"1")"#
        );
    }

    #[test]
    fn unchanged_values_come_from_the_old_row_or_refuse() {
        let new = Tuple(vec![text("1"), Datum::Unchanged]);
        let old = Tuple(vec![text("1"), text("long")]);
        assert_eq!(
            fill_unchanged(new.clone(), Some(&old)).unwrap().0[1],
            text("long")
        );
        assert!(fill_unchanged(new.clone(), None).is_err());
        // A key-only old row (the key changed, replica identity not FULL) lacks it.
        let key_only = Tuple(vec![text("1"), Datum::Null]);
        assert!(fill_unchanged(new, Some(&key_only)).is_err());
    }

    fn begin(rows: &mut LogRows, final_lsn: u64) {
        rows.begin(final_lsn, 0);
    }

    fn insert(id: &str) -> Message {
        let mut m = vec![b'I', 0, 0, 0, 7, b'N'];
        m.extend(msg::tuple(&[Some(id)]));
        parse(&m).unwrap()
    }

    #[test]
    fn runs_of_one_table_and_kind_make_chunks_of_at_most_a_hundred() {
        let mut rows = LogRows::default();
        rows.apply(parse(&msg::relation(7, "t", &["id"])).unwrap())
            .unwrap();
        begin(&mut rows, 10);
        for i in 0..150 {
            rows.apply(insert(&i.to_string())).unwrap();
        }
        let mut del = vec![b'D', 0, 0, 0, 7, b'K'];
        del.extend(msg::tuple(&[Some("3")]));
        rows.apply(parse(&del).unwrap()).unwrap();
        rows.apply(insert("200")).unwrap();
        rows.commit(20);
        let sizes: Vec<(Op, usize)> = rows.done.iter().map(|c| (c.op, c.rows.len())).collect();
        assert_eq!(
            sizes,
            [
                (Op::Insert, 100),
                (Op::Insert, 50),
                (Op::Delete, 1),
                (Op::Insert, 1)
            ]
        );
        assert_eq!((rows.transactions(), rows.end_lsn), (1, Some(20)));
    }

    #[test]
    fn transactions_before_the_written_position_are_skipped() {
        let mut rows = LogRows::resume_after(20);
        rows.apply(parse(&msg::relation(7, "t", &["id"])).unwrap())
            .unwrap();
        begin(&mut rows, 10);
        rows.apply(insert("1")).unwrap();
        rows.commit(20);
        assert!(rows.is_empty() && rows.done.is_empty());
        begin(&mut rows, 30);
        rows.apply(insert("2")).unwrap();
        rows.commit(40);
        assert_eq!(
            (rows.transactions(), rows.end_lsn, rows.done.len()),
            (1, Some(40), 1)
        );
    }

    #[test]
    fn a_change_without_its_relation_or_transaction_is_an_error() {
        let mut rows = LogRows::default();
        assert!(rows.apply(insert("1")).is_err());
        rows.apply(parse(&msg::relation(7, "t", &["id", "b"])).unwrap())
            .unwrap();
        assert!(rows.apply(insert("1")).is_err(), "outside a transaction");
        begin(&mut rows, 1);
        assert!(
            rows.apply(insert("1")).is_err(),
            "one value for two columns"
        );
    }

    #[test]
    fn chunk_numbers_close_their_gaps() {
        let mut k = [1, 1, 3, 3, 4];
        renumber(&mut k);
        assert_eq!(k, [1, 1, 2, 2, 3]);
    }
}
