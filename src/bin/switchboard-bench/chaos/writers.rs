//! The chaos load's writers and the ground truth they keep. Each writer owns its rows
//! (so it knows every row's values) and commits transactions of single- and multi-row
//! inserts, updates (some moving a row to another owner) and deletes, with savepoints
//! rolled back or released and whole transactions rolled back. Every write stamps its
//! row with a number never used again. A commit whose answer was lost (Postgres
//! restarting, the backend killed) is settled through `chaos_txlog`.
//!
//! A tick writer commits `chaos_ticks` rows 1, 2, 3, ... that every channel receives.
//! Each committed transaction records the last tick committed before it began and the
//! first tick that began after it committed: in the log's order it lies between the two,
//! which lets the verdict say which changes a subscriber that received both ticks on one
//! unbroken stream must have received, without any clock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use super::model::{owner_uuid, Change, Op, Row, Table, KINDS, N_MAX, STRANGERS};

/// Tick numbers: the last one whose insert began, and the last one known committed.
#[derive(Default)]
pub struct Ticks {
    pub started: AtomicI64,
    pub committed: AtomicI64,
}

/// One committed transaction.
pub struct Tx {
    pub changes: Vec<Change>,
    /// The last tick committed before its first statement.
    pub after_tick: i64,
    /// A tick that began after its commit was acknowledged.
    pub before_tick: i64,
}

/// What the writers did.
#[derive(Default)]
pub struct Truth {
    pub txs: Vec<Tx>,
    pub rolled_back_writes: u64,
    pub rolled_back_txs: u64,
    /// Transactions interrupted by a fault (their commits settled through the txlog).
    pub interrupted: u64,
    pub commits_settled: u64,
}

impl Truth {
    pub fn changes(&self) -> usize {
        self.txs.iter().map(|t| t.changes.len()).sum()
    }
}

/// Connects (retrying through outages) as `application_name`; `None` once `stop` fires.
pub async fn connect(url: &str, app: &str, stop: &CancellationToken) -> Option<Client> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let config = format!("{url}{sep}application_name={app}");
    loop {
        if let Ok((client, conn)) = tokio_postgres::connect(&config, NoTls).await {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            return Some(client);
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Writes tick after tick every `every` until `stop`; a tick whose commit is unknown is
/// looked up, and written again if it did not commit.
pub async fn run_ticks(url: String, ticks: Arc<Ticks>, every: Duration, stop: CancellationToken) {
    let mut client = None;
    let mut k = 0i64;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
        k += 1;
        loop {
            let c = match client.take() {
                Some(c) => c,
                None => match connect(&url, "chaos-ticks", &stop).await {
                    Some(c) => c,
                    None => return,
                },
            };
            ticks.started.fetch_max(k, Ordering::SeqCst);
            let done = match c
                .execute("insert into public.chaos_ticks values ($1)", &[&k])
                .await
            {
                Ok(_) => true,
                Err(_) => matches!(
                    c.query_opt("select 1 from public.chaos_ticks where k = $1", &[&k])
                        .await,
                    Ok(Some(_))
                ),
            };
            if done {
                ticks.committed.store(k, Ordering::SeqCst);
                client = Some(c);
                break;
            }
            if c.is_closed() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            } else {
                client = Some(c);
            }
        }
    }
}

/// Settings of the writers.
#[derive(Clone, Copy)]
pub struct Load {
    pub writers: usize,
    /// Transactions per second, all writers together.
    pub rate: f64,
    pub users: usize,
    pub seed: u64,
}

/// Runs the writers until `stop`, then returns the truth.
pub async fn run_writers(
    url: &str,
    load: Load,
    ticks: Arc<Ticks>,
    stop: CancellationToken,
) -> Truth {
    let truth = Arc::new(Mutex::new(Truth::default()));
    let mut tasks = Vec::new();
    for w in 0..load.writers {
        let mut writer = Writer {
            id: w as i64 + 1,
            rng: StdRng::seed_from_u64(load.seed ^ (0x5eed_0000 + w as u64)),
            owners: load.users + STRANGERS,
            rows: BTreeMap::new(),
            next: 0,
        };
        let (url, ticks, stop, truth) =
            (url.to_owned(), ticks.clone(), stop.clone(), truth.clone());
        let period = Duration::from_secs_f64(load.writers as f64 / load.rate.max(0.1));
        tasks.push(tokio::spawn(async move {
            writer.run(&url, period, &ticks, &truth, &stop).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut truth = truth.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *truth)
}

/// Every row a writer owns, by (table, id).
type Rows = BTreeMap<(Table, i64), Row>;

struct Writer {
    id: i64,
    rng: StdRng,
    owners: usize,
    rows: Rows,
    next: i64,
}

/// How one transaction ended.
enum Outcome {
    Committed(Vec<Change>, Rows),
    RolledBack(u64),
    /// Failed before COMMIT: nothing committed.
    Failed,
    /// COMMIT sent, answer lost.
    Unknown(Vec<Change>, Rows),
}

static TAGS: AtomicU64 = AtomicU64::new(1);

impl Writer {
    fn number(&mut self) -> i64 {
        self.next += 1;
        self.id * 1_000_000_000 + self.next
    }

    async fn run(
        &mut self,
        url: &str,
        period: Duration,
        ticks: &Ticks,
        truth: &Mutex<Truth>,
        stop: &CancellationToken,
    ) {
        let Some(mut client) = connect(url, "chaos-writer", stop).await else {
            return;
        };
        let mut pace = tokio::time::interval(period);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.is_cancelled() {
            tokio::select! { _ = pace.tick() => {}, _ = stop.cancelled() => return }
            let tag = TAGS.fetch_add(1, Ordering::Relaxed) as i64;
            let after_tick = ticks.committed.load(Ordering::SeqCst);
            let outcome = self.transaction(&client, tag).await;
            let mut settled = false;
            let committed = match outcome {
                Outcome::Committed(changes, rows) => Some((changes, rows)),
                Outcome::RolledBack(writes) => {
                    let mut t = truth.lock().unwrap_or_else(|p| p.into_inner());
                    t.rolled_back_txs += 1;
                    t.rolled_back_writes += writes;
                    None
                }
                Outcome::Failed => {
                    truth.lock().unwrap_or_else(|p| p.into_inner()).interrupted += 1;
                    let _ = client.batch_execute("rollback").await;
                    None
                }
                Outcome::Unknown(changes, rows) => {
                    truth.lock().unwrap_or_else(|p| p.into_inner()).interrupted += 1;
                    match connect(url, "chaos-writer", stop).await {
                        Some(c) => client = c,
                        None => return,
                    }
                    let found = client
                        .query_opt("select 1 from public.chaos_txlog where tag = $1", &[&tag])
                        .await;
                    settled = matches!(found, Ok(Some(_)));
                    settled.then_some((changes, rows))
                }
            };
            // Read after the commit was acknowledged: the next tick begins after it.
            let before_tick = ticks.started.load(Ordering::SeqCst) + 1;
            if let Some((changes, rows)) = committed {
                self.rows = rows;
                let mut t = truth.lock().unwrap_or_else(|p| p.into_inner());
                t.commits_settled += u64::from(settled);
                t.txs.push(Tx {
                    changes,
                    after_tick,
                    before_tick,
                });
            }
            if client.is_closed() {
                match connect(url, "chaos-writer", stop).await {
                    Some(c) => client = c,
                    None => return,
                }
            }
        }
    }

    /// One transaction: 1-5 statements, some inside a savepoint that is rolled back or
    /// released; now and then the whole transaction is rolled back.
    async fn transaction(&mut self, c: &Client, tag: i64) -> Outcome {
        let mut rows = self.rows.clone();
        let mut changes = Vec::new();
        let mut undone = 0u64;
        let body = async {
            c.batch_execute("begin").await?;
            c.execute("insert into public.chaos_txlog values ($1)", &[&tag])
                .await?;
            for _ in 0..self.rng.random_range(1..=5) {
                if self.rng.random_bool(0.2) {
                    c.batch_execute("savepoint sp").await?;
                    let mut sp_rows = rows.clone();
                    let mut sp = Vec::new();
                    for _ in 0..self.rng.random_range(1..=2) {
                        sp.extend(self.statement(c, &mut sp_rows).await?);
                    }
                    if self.rng.random_bool(0.5) {
                        c.batch_execute("rollback to savepoint sp").await?;
                        undone += sp.len() as u64;
                    } else {
                        c.batch_execute("release savepoint sp").await?;
                        rows = sp_rows;
                        changes.extend(sp);
                    }
                } else {
                    changes.extend(self.statement(c, &mut rows).await?);
                }
            }
            Ok::<bool, tokio_postgres::Error>(self.rng.random_bool(0.1))
        };
        match body.await {
            Err(_) => Outcome::Failed,
            Ok(true) => match c.batch_execute("rollback").await {
                Ok(()) => Outcome::RolledBack(undone + changes.len() as u64),
                Err(_) => Outcome::Failed,
            },
            Ok(false) => match c.batch_execute("commit").await {
                Ok(()) => Outcome::Committed(changes, rows),
                Err(_) => Outcome::Unknown(changes, rows),
            },
        }
    }

    fn fresh_row(&mut self) -> Row {
        Row {
            id: self.number(),
            owner: self.rng.random_range(0..self.owners),
            n: self.rng.random_range(0..N_MAX),
            kind: self.rng.random_range(0..KINDS.len()),
            stamp: self.number(),
        }
    }

    /// One statement on one table touching 1 row, or 2-5 rows now and then; returns the
    /// changes in the statement's row order and updates `rows`.
    async fn statement(
        &mut self,
        c: &Client,
        rows: &mut Rows,
    ) -> Result<Vec<Change>, tokio_postgres::Error> {
        let table = Table::ALL[self.rng.random_range(0..Table::ALL.len())];
        let count = if self.rng.random_bool(0.25) {
            self.rng.random_range(2..=5)
        } else {
            1
        };
        let mine: Vec<i64> = rows
            .range((table, i64::MIN)..=(table, i64::MAX))
            .map(|(k, _)| k.1)
            .collect();
        let roll: f64 = self.rng.random();
        let t = table.name();
        if mine.len() < count || roll < 0.4 {
            let new: Vec<Row> = (0..count).map(|_| self.fresh_row()).collect();
            let (ids, owners, ns, kinds, stamps) = columns(&new);
            c.execute(
                &format!(
                    "insert into public.{t} (id, owner, n, kind, stamp) \
                     select * from unnest($1::int8[], $2::text[]::uuid[], $3::int4[], $4::text[], $5::int8[])"
                ),
                &[&ids, &owners, &ns, &kinds, &stamps],
            )
            .await?;
            return Ok(new
                .into_iter()
                .map(|row| {
                    rows.insert((table, row.id), row);
                    Change {
                        table,
                        op: Op::Insert,
                        row,
                    }
                })
                .collect());
        }
        let start = self.rng.random_range(0..=mine.len() - count);
        let ids = &mine[start..start + count];
        if roll < 0.85 {
            let moved = self.rng.random_bool(0.15);
            let new: Vec<Row> = ids
                .iter()
                .map(|id| {
                    let old = rows[&(table, *id)];
                    Row {
                        id: *id,
                        owner: if moved {
                            self.rng.random_range(0..self.owners)
                        } else {
                            old.owner
                        },
                        n: self.rng.random_range(0..N_MAX),
                        kind: self.rng.random_range(0..KINDS.len()),
                        stamp: self.number(),
                    }
                })
                .collect();
            let (ids, owners, ns, kinds, stamps) = columns(&new);
            c.execute(
                &format!(
                    "update public.{t} set owner = u.o::uuid, n = u.n, kind = u.k, stamp = u.s \
                     from unnest($1::int8[], $2::text[], $3::int4[], $4::text[], $5::int8[]) as u(i, o, n, k, s) \
                     where {t}.id = u.i"
                ),
                &[&ids, &owners, &ns, &kinds, &stamps],
            )
            .await?;
            Ok(new
                .into_iter()
                .map(|row| {
                    rows.insert((table, row.id), row);
                    Change {
                        table,
                        op: Op::Update,
                        row,
                    }
                })
                .collect())
        } else {
            let ids = ids.to_vec();
            c.execute(
                &format!("delete from public.{t} where id = any($1)"),
                &[&ids],
            )
            .await?;
            Ok(ids
                .iter()
                .filter_map(|id| rows.remove(&(table, *id)))
                .map(|row| Change {
                    table,
                    op: Op::Delete,
                    row,
                })
                .collect())
        }
    }
}

type Columns = (Vec<i64>, Vec<String>, Vec<i32>, Vec<String>, Vec<i64>);

fn columns(rows: &[Row]) -> Columns {
    (
        rows.iter().map(|r| r.id).collect(),
        rows.iter().map(|r| owner_uuid(r.owner)).collect(),
        rows.iter().map(|r| r.n).collect(),
        rows.iter().map(|r| KINDS[r.kind].to_owned()).collect(),
        rows.iter().map(|r| r.stamp).collect(),
    )
}
