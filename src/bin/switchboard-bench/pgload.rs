//! The Postgres side of the change scenarios: the bench schema (a plain table and a
//! row-scoped portal table with RLS), and writers that commit through several
//! connections, each row carrying its commit-time clock in `sent_at_us`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use crate::stats::now_us;
use crate::BenchError;

const SCHEMA: &str = r#"
drop table if exists public.bench_events, public.portal_jobs;
create table public.bench_events (
    id bigserial primary key,
    body text not null,
    sent_at_us bigint not null
);
create table public.portal_jobs (
    id bigint primary key,
    customer_id uuid not null,
    title text not null,
    n bigint not null default 0,
    sent_at_us bigint not null default 0
);
grant usage on schema public to anon, authenticated;
grant select on public.bench_events, public.portal_jobs to authenticated;
alter table public.portal_jobs enable row level security;
create policy own_jobs on public.portal_jobs for select to authenticated
    using (customer_id = auth.uid());
"#;

/// Rows per portal customer.
pub const JOBS_PER_CUSTOMER: i64 = 4;

pub async fn connect(url: &str) -> Result<Client, BenchError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Polls `count` (a query of one `int8`) every 50 ms until it reaches `n`; after
/// `within`, fails saying how many of `n` `what` there were.
pub async fn wait_for_count(
    c: &Client,
    count: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    n: usize,
    within: Duration,
    what: &str,
) -> Result<(), BenchError> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let got: i64 = c.query_one(count, params).await?.get(0);
        if got as usize >= n {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "{got} of {n} {what} within {} s",
                within.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The customer id of portal customer `i`.
pub fn customer_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// Migrates, creates the bench tables with capture enabled and `customers` portal
/// customers with [`JOBS_PER_CUSTOMER`] rows each.
pub async fn setup(url: &str, customers: usize) -> Result<(), BenchError> {
    let c = connect(url).await?;
    switchboard::db::migrate(&c).await?;
    c.batch_execute(SCHEMA).await?;
    switchboard::db::enable(&c, "public.bench_events").await?;
    switchboard::db::enable(&c, "public.portal_jobs").await?;
    c.execute(
        "insert into public.portal_jobs (id, customer_id, title)
         select g, ('00000000-0000-4000-8000-' || lpad(((g - 1) / $2)::text, 12, '0'))::uuid, 'job ' || g
         from generate_series(1, $1::bigint * $2) g",
        &[&(customers as i64), &JOBS_PER_CUSTOMER],
    )
    .await?;
    // The seed rows went through the capture trigger too; let the log start empty.
    c.batch_execute("truncate realtime.changes").await.ok();
    Ok(())
}

/// What the writers do per transaction.
#[derive(Clone, Copy)]
pub enum Write {
    /// One insert into `bench_events`.
    Insert,
    /// One statement inserting this many rows into `bench_events` (one log row holding
    /// them all), so writers can offer more changes than they can commit transactions.
    InsertRows(i64),
    /// Update `rows` random portal rows (of `customers` customers) in one statement.
    UpdatePortal { customers: usize, rows: usize },
}

/// Commits and changed rows so far.
#[derive(Default)]
pub struct WriteCounts {
    pub commits: AtomicU64,
    pub rows: AtomicU64,
}

/// Runs `writers` connections until `stop`, together at `rate` transactions per second
/// (0: as fast as each connection commits).
pub async fn run_writers(
    url: &str,
    writers: usize,
    rate: f64,
    what: Write,
    counts: Arc<WriteCounts>,
    stop: CancellationToken,
) -> Result<(), BenchError> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = connect(url).await?;
        let counts = counts.clone();
        let stop = stop.clone();
        let period = (rate > 0.0).then(|| Duration::from_secs_f64(writers as f64 / rate));
        let offset = period.map_or(Duration::ZERO, |p| p.mul_f64(w as f64 / writers as f64));
        tasks.push(tokio::spawn(async move {
            let mut tick = period.map(|p| {
                let mut i = tokio::time::interval_at(tokio::time::Instant::now() + offset, p);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                i
            });
            let body = "x".repeat(64);
            let stmt = match what {
                Write::Insert => {
                    "insert into public.bench_events (body, sent_at_us) values ($1, $2)"
                }
                Write::InsertRows(_) => {
                    "insert into public.bench_events (body, sent_at_us) \
                     select $1, $2 from generate_series(1, $3::int8)"
                }
                Write::UpdatePortal { .. } => {
                    "update public.portal_jobs set n = n + 1, sent_at_us = $2 where id = any($1)"
                }
            };
            let Ok(stmt) = client.prepare(stmt).await else {
                return;
            };
            while !stop.is_cancelled() {
                if let Some(t) = tick.as_mut() {
                    tokio::select! { _ = t.tick() => {}, _ = stop.cancelled() => return }
                }
                let res = match what {
                    Write::Insert => client.execute(&stmt, &[&body, &now_us()]).await,
                    Write::InsertRows(rows) => {
                        client.execute(&stmt, &[&body, &now_us(), &rows]).await
                    }
                    Write::UpdatePortal { customers, rows } => {
                        let ids: Vec<i64> = {
                            let mut rng = rand::rng();
                            let total = customers as i64 * JOBS_PER_CUSTOMER;
                            (0..rows).map(|_| rng.random_range(1..=total)).collect()
                        };
                        // Sorted ids lock rows in one order: concurrent writers cannot deadlock.
                        let mut ids = ids;
                        ids.sort_unstable();
                        client.execute(&stmt, &[&ids, &now_us()]).await
                    }
                };
                match res {
                    Ok(n) => {
                        counts.commits.fetch_add(1, Ordering::Relaxed);
                        counts.rows.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
