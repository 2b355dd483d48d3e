//! `writeload`: what capture costs writers. One invocation runs the same writes against a
//! plain table, a captured table (with the hub running and reading it) and a table with a
//! bare per-row `pg_notify` trigger (how a LISTEN/NOTIFY forwarder is fed), on a durable
//! Postgres (fsync on), in alternating rounds, and prints rows/s and the ratios to plain.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::pgload::connect;
use crate::stats::{cpu_seconds, machine_jiffies};
use crate::{BenchError, Common};

#[derive(Args)]
pub struct WriteloadArgs {
    #[command(flatten)]
    pub common: Common,
    /// Writer connections.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Rows per multi-row statement.
    #[arg(long, default_value_t = 50)]
    pub rows: usize,
    /// Rounds of (plain, captured, notify); figures are the mean over rounds.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
}

const SCHEMA: &str = r#"
drop table if exists public.wl_plain, public.wl_captured, public.wl_notify;
create table public.wl_plain (id bigserial primary key, body text not null, n int not null);
create table public.wl_captured (like public.wl_plain including all);
create table public.wl_notify (like public.wl_plain including all);
create or replace function public.wl_notify_row() returns trigger language plpgsql as $$
begin
    perform pg_notify('wl_rows', '');
    return null;
end $$;
create trigger wl_notify after insert on public.wl_notify
    for each row execute function public.wl_notify_row();
"#;

const TABLES: [&str; 3] = ["wl_plain", "wl_captured", "wl_notify"];

pub async fn writeload(a: WriteloadArgs) -> Result<(), BenchError> {
    let c = &a.common;
    let setup = c.setup_durable().await?;
    let url = setup
        .database_url
        .clone()
        .expect("writeload has a database");
    let admin = connect(&url).await?;
    admin.batch_execute(SCHEMA).await?;
    switchboard::db::enable(&admin, "public.wl_captured").await?;
    let hub_pid = setup.hub.pid;
    let modes = [
        ("single-row transactions", 1usize),
        ("multi-row statements", a.rows),
    ];
    let mut results = serde_json::Map::new();
    let mut lines = Vec::new();
    for (label, rows) in modes {
        let mut sums = [0.0f64; 3];
        let (mut hub_cpu, mut captured_rows, mut busy) = (0.0f64, 0.0f64, 0.0f64);
        for _ in 0..a.rounds {
            for (i, table) in TABLES.iter().enumerate() {
                let cpu0 = hub_pid.map(cpu_seconds).unwrap_or(0.0);
                let j0 = machine_jiffies();
                let run = rows_per_second(&url, table, a.clients, rows, c.window()).await?;
                let j1 = machine_jiffies();
                if i == 1 {
                    hub_cpu += hub_pid.map(cpu_seconds).unwrap_or(0.0) - cpu0;
                    captured_rows += run.rows as f64;
                    busy += (j1.0 - j0.0) as f64 / ((j1.1 - j0.1).max(1)) as f64;
                }
                sums[i] += run.per_second;
                admin
                    .batch_execute(&format!("truncate public.{table}"))
                    .await?;
            }
            // Keep the log from growing across rounds.
            admin.batch_execute("truncate realtime.changes").await?;
        }
        let mean = sums.map(|s| s / a.rounds as f64);
        let (captured, notify) = (mean[1] / mean[0], mean[2] / mean[0]);
        let hub_us_per_row = hub_cpu * 1e6 / captured_rows.max(1.0);
        lines.push(format!(
            "{label} ({rows} row(s) each, {} clients): plain {:.0} rows/s, captured {:.0} ({captured:.2}x, hub {hub_us_per_row:.1} CPU µs per row), notify trigger {:.0} ({notify:.2}x)",
            a.clients, mean[0], mean[1], mean[2]
        ));
        results.insert(
            if rows == 1 { "single_row" } else { "multi_row" }.into(),
            json!({
                "rows_per_statement": rows,
                "plain_rows_per_s": mean[0].round(),
                "captured_rows_per_s": mean[1].round(),
                "notify_rows_per_s": mean[2].round(),
                "captured_to_plain": (captured * 1000.0).round() / 1000.0,
                "notify_to_plain": (notify * 1000.0).round() / 1000.0,
                "hub_cpu_us_per_captured_row": (hub_us_per_row * 10.0).round() / 10.0,
                "machine_busy_while_captured": (busy / a.rounds as f64 * 100.0).round() / 100.0,
            }),
        );
    }
    println!("writeload: {}", lines.join("; "));
    results.insert("scenario".into(), json!("writeload"));
    results.insert("clients".into(), json!(a.clients));
    results.insert("seconds_per_run".into(), json!(c.duration));
    println!("{}", serde_json::Value::Object(results));
    drop(setup);
    Ok(())
}

/// Rows committed in one run.
struct Run {
    rows: u64,
    per_second: f64,
}

/// `clients` connections inserting `rows` rows per autocommit statement into `table` for
/// `window`.
async fn rows_per_second(
    url: &str,
    table: &str,
    clients: usize,
    rows: usize,
    window: Duration,
) -> Result<Run, BenchError> {
    let total = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let sql = format!(
        "insert into public.{table} (body, n) select repeat('x', 64), g from generate_series(1, $1::int) g"
    );
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = connect(url).await?;
        let stmt = client.prepare(&sql).await?;
        let (total, stop) = (total.clone(), stop.clone());
        let n = rows as i32;
        tasks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                match client.execute(&stmt, &[&n]).await {
                    Ok(k) => total.fetch_add(k, Ordering::Relaxed),
                    Err(_) => return,
                };
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let done = total.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    Ok(Run {
        rows: done,
        per_second: done as f64 / elapsed.as_secs_f64(),
    })
}
