#![allow(dead_code)]
//! Concurrent write load for the capture tests, and the check that what the capture
//! delivered is exactly what committed. Each writer owns its rows; every write stamps
//! the row with a number never used again (not even by a rolled-back write), so a
//! delivered change names exactly one write.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use switchboard::capture::{run_capture, CaptureConfig, CaptureStatus};
use switchboard::changes::{into_events, DbEvent, LogBatch, Op};
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

pub const TABLES: [&str; 2] = ["items_a", "items_b"];
const MARKER_TABLE: &str = "load_marker";

/// One write as it shows in a change: (table, op, stamp of the row written or deleted).
pub type ChangeKey = (String, &'static str, i64);

/// Creates the load tables (capture enabled) after migrating.
pub async fn setup(client: &Client) {
    switchboard::db::migrate(client).await.expect("migrate");
    for t in TABLES.iter().chain([&MARKER_TABLE]) {
        client
            .batch_execute(&format!(
                "create table {t} (id bigint primary key, writer int not null, \
                 version int not null, stamp bigint not null, pad text)"
            ))
            .await
            .unwrap();
        switchboard::db::enable(client, t).await.unwrap();
    }
    client
        .batch_execute("create table load_txlog (tag bigint primary key)")
        .await
        .unwrap();
}

/// A running capture and the receiving end of its pages.
pub struct Capture {
    pub rx: mpsc::Receiver<LogBatch>,
    pub status: Arc<CaptureStatus>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    /// Each page `collect_until` took: the index of its first event and its position,
    /// to tell which read delivered a change when a check fails.
    pub pages: Vec<(usize, Arc<str>)>,
}

/// Starts the capture and waits until its cursor is set.
pub async fn start_capture(url: &str, batch_limit: usize) -> Capture {
    start_capture_polling(url, batch_limit, Duration::from_millis(250)).await
}

/// Same, reading the log every `poll_interval` when no wake-up comes.
pub async fn start_capture_polling(
    url: &str,
    batch_limit: usize,
    poll_interval: Duration,
) -> Capture {
    let cfg = CaptureConfig {
        poll_interval,
        batch_limit,
        reconnect_max_backoff: Duration::from_millis(400),
        ..CaptureConfig::new(url)
    };
    let (tx, rx) = mpsc::channel(8);
    let status = Arc::new(CaptureStatus::new());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_capture(cfg, tx, status.clone(), shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(30), status.wait_connected())
        .await
        .expect("capture connects");
    Capture {
        rx,
        status,
        shutdown,
        task,
        pages: Vec::new(),
    }
}

impl Capture {
    /// Collects every change until marker row `marker` arrives, taking `page_delay`
    /// over each page (a slow consumer); panics after `within`.
    pub async fn collect_until(
        &mut self,
        marker: i64,
        within: Duration,
        page_delay: Duration,
    ) -> Vec<DbEvent> {
        let deadline = tokio::time::Instant::now() + within;
        let mut events = Vec::new();
        loop {
            let page = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "marker not delivered within {within:?}; {} events so far; status {:?}",
                        events.len(),
                        self.status.snapshot()
                    )
                })
                .expect("capture stopped");
            self.pages.push((events.len(), page.position.clone()));
            let page = into_events(page.events);
            let done = page.iter().any(|e| match e {
                DbEvent::Change(c) => c.table == MARKER_TABLE && field(&c.record, "id") == marker,
                DbEvent::Broadcast(_) => false,
            });
            events.extend(page);
            if done {
                return events;
            }
            tokio::time::sleep(page_delay).await;
        }
    }

    /// The next page's events (position-only batches skipped); fails the test after
    /// `within`.
    pub async fn next_events(&mut self, within: Duration) -> Vec<DbEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let batch = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("nothing captured within {within:?}"))
                .expect("capture stopped");
            if !batch.events.is_empty() {
                return into_events(batch.events);
            }
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("capture exits on shutdown")
            .unwrap();
    }
}

#[derive(Debug, Clone)]
pub struct LoadOpts {
    pub writers: usize,
    pub duration: Duration,
    /// One extra transaction that stays open this long, then commits.
    pub long_tx: Option<Duration>,
}

/// What the load committed, and how much it rolled back.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub committed: Vec<ChangeKey>,
    pub rolled_back_writes: usize,
    pub failed_txs: usize,
}

/// Runs the writers until `opts.duration` has passed; a writer whose connection fails
/// reconnects and records only transactions that did commit.
pub async fn run_load(url: &str, opts: &LoadOpts) -> LoadResult {
    let deadline = Instant::now() + opts.duration;
    let mut tasks = Vec::new();
    for w in 0..opts.writers {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            writer(&url, w as i64 + 1, deadline).await
        }));
    }
    if let Some(hold) = opts.long_tx {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move { long_writer(&url, hold).await }));
    }
    let mut total = LoadResult::default();
    for t in tasks {
        let r = t.await.expect("writer task");
        total.committed.extend(r.committed);
        total.rolled_back_writes += r.rolled_back_writes;
        total.failed_txs += r.failed_txs;
    }
    total
}

/// Inserts marker row `marker`; it commits after everything before it.
pub async fn write_marker(url: &str, marker: i64) {
    let client = connect_retrying(url, Duration::from_secs(30)).await;
    client
        .execute(
            &format!("insert into {MARKER_TABLE} values ($1, 0, 0, 0, null)"),
            &[&marker],
        )
        .await
        .unwrap();
}

/// A row this writer owns: (table index, id) -> (version, stamp).
type Rows = BTreeMap<(usize, i64), (i32, i64)>;

struct Writer {
    client: Client,
    rng: StdRng,
    id: i64,
    next_row: i64,
    next_stamp: i64,
}

impl Writer {
    fn stamp(&mut self) -> i64 {
        self.next_stamp += 1;
        self.id * 1_000_000_000 + self.next_stamp
    }

    /// One random write on `rows`: a single-row statement, or now and then one statement
    /// touching several rows. Returns the changes it makes, in the statement's row order.
    async fn write(&mut self, rows: &mut Rows) -> Result<Vec<ChangeKey>, tokio_postgres::Error> {
        let table_ix = self.rng.random_range(0..TABLES.len());
        let t = TABLES[table_ix];
        let existing: Vec<_> = rows.keys().filter(|k| k.0 == table_ix).copied().collect();
        let roll: f64 = self.rng.random();
        if self.rng.random_bool(0.25) {
            return self.write_many(table_ix, &existing, roll, rows).await;
        }
        let stamp = self.stamp();
        if existing.is_empty() || roll < 0.35 {
            self.next_row += 1;
            let id = self.id * 10_000_000 + self.next_row;
            self.client
                .execute(
                    &format!("insert into {t} values ($1, $2, 0, $3, $4)"),
                    &[
                        &id,
                        &(self.id as i32),
                        &stamp,
                        &"x".repeat(self.rng.random_range(0..64)),
                    ],
                )
                .await?;
            rows.insert((table_ix, id), (0, stamp));
            return Ok(vec![(t.to_string(), "INSERT", stamp)]);
        }
        let key = existing[self.rng.random_range(0..existing.len())];
        let (version, old_stamp) = rows[&key];
        if roll < 0.85 {
            self.client
                .execute(
                    &format!("update {t} set version = $2, stamp = $3 where id = $1"),
                    &[&key.1, &(version + 1), &stamp],
                )
                .await?;
            rows.insert(key, (version + 1, stamp));
            Ok(vec![(t.to_string(), "UPDATE", stamp)])
        } else {
            self.client
                .execute(&format!("delete from {t} where id = $1"), &[&key.1])
                .await?;
            rows.remove(&key);
            Ok(vec![(t.to_string(), "DELETE", old_stamp)])
        }
    }

    /// One statement inserting, updating or deleting 2 to 6 rows.
    async fn write_many(
        &mut self,
        table_ix: usize,
        existing: &[(usize, i64)],
        roll: f64,
        rows: &mut Rows,
    ) -> Result<Vec<ChangeKey>, tokio_postgres::Error> {
        let t = TABLES[table_ix];
        let n = self.rng.random_range(2..=6);
        if existing.len() < n || roll < 0.35 {
            let mut ids = Vec::new();
            let mut stamps = Vec::new();
            for _ in 0..n {
                self.next_row += 1;
                ids.push(self.id * 10_000_000 + self.next_row);
                stamps.push(self.stamp());
            }
            let writer = vec![self.id as i32; n];
            self.client
                .execute(
                    &format!(
                        "insert into {t} (id, writer, version, stamp) \
                         select i, w, 0, s from unnest($1::int8[], $2::int4[], $3::int8[]) as u(i, w, s)"
                    ),
                    &[&ids, &writer, &stamps],
                )
                .await?;
            let mut out = Vec::new();
            for (id, stamp) in ids.into_iter().zip(stamps) {
                rows.insert((table_ix, id), (0, stamp));
                out.push((t.to_string(), "INSERT", stamp));
            }
            return Ok(out);
        }
        let start = self.rng.random_range(0..=existing.len() - n);
        let keys = &existing[start..start + n];
        let ids: Vec<i64> = keys.iter().map(|k| k.1).collect();
        if roll < 0.85 {
            let stamps: Vec<i64> = keys.iter().map(|_| self.stamp()).collect();
            self.client
                .execute(
                    &format!(
                        "update {t} set version = {t}.version + 1, stamp = u.s \
                         from unnest($1::int8[], $2::int8[]) as u(i, s) where {t}.id = u.i"
                    ),
                    &[&ids, &stamps],
                )
                .await?;
            let mut out = Vec::new();
            for (key, stamp) in keys.iter().zip(stamps) {
                let version = rows[key].0;
                rows.insert(*key, (version + 1, stamp));
                out.push((t.to_string(), "UPDATE", stamp));
            }
            Ok(out)
        } else {
            self.client
                .execute(&format!("delete from {t} where id = any($1)"), &[&ids])
                .await?;
            Ok(keys
                .iter()
                .map(|k| {
                    let (_, stamp) = rows.remove(k).expect("owned row");
                    (t.to_string(), "DELETE", stamp)
                })
                .collect())
        }
    }

    async fn pause(&mut self) {
        if self.rng.random_bool(0.15) {
            let ms = self.rng.random_range(1..25);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    /// One transaction: writes, savepoints (some rolled back), pauses; commits or rolls
    /// back. Ok(Some(..)) = committed with these changes and rows.
    async fn transaction(
        &mut self,
        rows: &Rows,
        tag: i64,
        result: &mut LoadResult,
    ) -> Result<Option<(Vec<ChangeKey>, Rows)>, TxError> {
        let mut rows = rows.clone();
        let mut changes = Vec::new();
        self.client.batch_execute("begin").await?;
        self.client
            .execute("insert into load_txlog values ($1)", &[&tag])
            .await?;
        for _ in 0..self.rng.random_range(1..=10) {
            if self.rng.random_bool(0.2) {
                self.client.batch_execute("savepoint sp").await?;
                let mut sp_rows = rows.clone();
                let mut sp_changes = Vec::new();
                for _ in 0..self.rng.random_range(1..=3) {
                    sp_changes.extend(self.write(&mut sp_rows).await?);
                    self.pause().await;
                }
                if self.rng.random_bool(0.5) {
                    self.client
                        .batch_execute("rollback to savepoint sp")
                        .await?;
                    result.rolled_back_writes += sp_changes.len();
                } else {
                    self.client.batch_execute("release savepoint sp").await?;
                    rows = sp_rows;
                    changes.extend(sp_changes);
                }
            } else {
                changes.extend(self.write(&mut rows).await?);
            }
            self.pause().await;
        }
        if self.rng.random_bool(0.15) {
            self.client.batch_execute("rollback").await?;
            result.rolled_back_writes += changes.len();
            return Ok(None);
        }
        // An error here may come after the commit happened: the caller looks it up.
        match self.client.batch_execute("commit").await {
            Ok(()) => Ok(Some((changes, rows))),
            Err(_) => Err(TxError::CommitUnknown(changes, rows)),
        }
    }
}

enum TxError {
    /// COMMIT failed: it may or may not have committed.
    CommitUnknown(Vec<ChangeKey>, Rows),
    /// Failed before COMMIT: nothing committed.
    Failed,
}

impl From<tokio_postgres::Error> for TxError {
    fn from(_: tokio_postgres::Error) -> Self {
        TxError::Failed
    }
}

async fn writer(url: &str, id: i64, deadline: Instant) -> LoadResult {
    let mut result = LoadResult::default();
    let mut w = Writer {
        client: connect_retrying(url, Duration::from_secs(60)).await,
        rng: StdRng::seed_from_u64(rand::random()),
        id,
        next_row: 0,
        next_stamp: 0,
    };
    let mut rows = Rows::new();
    while Instant::now() < deadline {
        let tag = w.stamp();
        match w.transaction(&rows, tag, &mut result).await {
            Ok(Some((changes, new_rows))) => {
                result.committed.extend(changes);
                rows = new_rows;
            }
            Ok(None) => {}
            Err(err) => {
                result.failed_txs += 1;
                w.client = connect_retrying(url, Duration::from_secs(60)).await;
                if let TxError::CommitUnknown(changes, new_rows) = err {
                    let committed = w
                        .client
                        .query_opt("select 1 from load_txlog where tag = $1", &[&tag])
                        .await
                        .expect("check txlog")
                        .is_some();
                    if committed {
                        result.committed.extend(changes);
                        rows = new_rows;
                    }
                }
            }
        }
    }
    result
}

/// Opens a transaction early, writes, holds it open for `hold`, writes again, commits.
async fn long_writer(url: &str, hold: Duration) -> LoadResult {
    let client = connect_retrying(url, Duration::from_secs(30)).await;
    let mut committed = Vec::new();
    client.batch_execute("begin").await.unwrap();
    for i in 0..5i64 {
        let (id, stamp) = (990_000_000 + i, 990_000_000_000 + i);
        client
            .execute(
                "insert into items_a values ($1, 0, 0, $2, 'long')",
                &[&id, &stamp],
            )
            .await
            .unwrap();
        committed.push(("items_a".to_string(), "INSERT", stamp));
    }
    tokio::time::sleep(hold).await;
    for i in 0..5i64 {
        let (id, stamp) = (990_000_000 + i, 990_000_100_000 + i);
        client
            .execute(
                "update items_a set version = 1, stamp = $2 where id = $1",
                &[&id, &stamp],
            )
            .await
            .unwrap();
        committed.push(("items_a".to_string(), "UPDATE", stamp));
    }
    client.batch_execute("commit").await.unwrap();
    LoadResult {
        committed,
        ..LoadResult::default()
    }
}

pub async fn connect_retrying(url: &str, within: Duration) -> Client {
    let deadline = Instant::now() + within;
    loop {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                return client;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot connect to {url}: {e}"),
        }
    }
}

fn field(record: &Option<Map<String, Value>>, name: &str) -> i64 {
    record
        .as_ref()
        .and_then(|r| r.get(name))
        .and_then(Value::as_i64)
        .unwrap_or(i64::MIN)
}

/// Asserts the delivered events are exactly the committed changes, each once, that
/// every row's changes arrived in version order, and that each UPDATE carries its own
/// row's previous version as `old_record`.
pub fn assert_exactly_committed(committed: &[ChangeKey], events: &[DbEvent]) {
    assert_exactly_committed_traced(committed, events, &[])
}

/// `assert_exactly_committed`, naming for a row whose changes arrived out of order the
/// page of `pages` (`Capture::pages`) and the log row of each of its changes.
pub fn assert_exactly_committed_traced(
    committed: &[ChangeKey],
    events: &[DbEvent],
    pages: &[(usize, Arc<str>)],
) {
    let mut expected: HashMap<ChangeKey, usize> = HashMap::new();
    for k in committed {
        *expected.entry(k.clone()).or_default() += 1;
    }
    assert!(
        expected.values().all(|&n| n == 1),
        "load produced a repeated key"
    );
    let mut delivered: HashMap<ChangeKey, usize> = HashMap::new();
    let mut versions: HashMap<(String, i64), Vec<i64>> = HashMap::new();
    let mut arrivals: HashMap<(String, i64), Vec<String>> = HashMap::new();
    for (at, e) in events.iter().enumerate() {
        let DbEvent::Change(c) = e else { continue };
        if !TABLES.contains(&c.table.as_str()) {
            continue;
        }
        let (row, version) = match c.op {
            Op::Delete => (&c.old_record, field(&c.old_record, "version") + 1),
            _ => (&c.record, field(&c.record, "version")),
        };
        if c.op == Op::Update {
            assert_eq!(
                (
                    field(&c.old_record, "id"),
                    field(&c.old_record, "version") + 1
                ),
                (field(&c.record, "id"), field(&c.record, "version")),
                "an UPDATE's old_record is not its row's previous version"
            );
        }
        let key = (c.table.clone(), c.op.as_str(), field(row, "stamp"));
        *delivered.entry(key).or_default() += 1;
        versions
            .entry((c.table.clone(), field(row, "id")))
            .or_default()
            .push(version);
        let page = pages.partition_point(|(first, _)| *first <= at);
        let position = page.checked_sub(1).map(|p| &*pages[p].1);
        arrivals
            .entry((c.table.clone(), field(row, "id")))
            .or_default()
            .push(format!(
                "v{version} {} event {at} log ({}, {}) xid {} page {page} at {position:?}",
                c.op.as_str(),
                c.id,
                c.seq,
                c.xid
            ));
    }
    let duplicated: Vec<_> = delivered.iter().filter(|(_, &n)| n > 1).collect();
    let extra: Vec<_> = delivered
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !delivered.contains_key(*k))
        .collect();
    assert!(
        duplicated.is_empty() && extra.is_empty() && missing.is_empty(),
        "{} committed, {} delivered: {} duplicated {:?}, {} not committed {:?}, {} missing {:?}",
        expected.len(),
        delivered.len(),
        duplicated.len(),
        duplicated.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
    );
    for (row, vs) in versions {
        assert!(
            vs.windows(2).all(|w| w[0] < w[1]),
            "changes of row {row:?} arrived out of order: versions {vs:?}\n{}",
            arrivals[&row].join("\n")
        );
    }
}
