//! `webhooks`: what webhook delivery sustains. A writer inserts rows into one captured
//! table (in statements of `--rows-per-statement`, at `--rate` rows/s or as fast as it
//! goes), `--endpoints` endpoints each deliver every row to a receiver in this process,
//! and the bench reports events received per second, the latency from the row's insert
//! (its `sent_us`, taken by Postgres's clock, which is this machine's) to its receipt,
//! the hub's and Postgres's CPU, and requests per endpoint. `--idle-endpoints` adds
//! endpoints of a table that is not written. With `--row-bytes` near a batch's
//! byte limit it measures large rows.
//!
//! The receiver answers 200 at once and checks that every endpoint gets every row once.
//! The table is captured whatever `--endpoints` is, so `--endpoints 0` measures capture
//! alone (what each endpoint adds is the difference). `BENCH_DEBUG=1` prints each
//! request's arrival (µs since the epoch) and size, to see how batches form.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::post;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::stats::{
    cpu_seconds, histogram, latency_json, latency_line, now_us, postgres_cpu, postgres_cpu_since,
    rate, report,
};
use crate::{pgload, BenchError, Common};

#[derive(Args)]
pub struct WebhooksArgs {
    #[command(flatten)]
    pub common: Common,
    /// Rows inserted in all.
    #[arg(long, default_value_t = 20_000)]
    pub rows: usize,
    /// Rows per insert statement (one transaction each).
    #[arg(long, default_value_t = 50)]
    pub rows_per_statement: usize,
    /// Rows per second (0: as fast as one writer goes).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Bytes of padding in each row (a text column).
    #[arg(long, default_value_t = 100)]
    pub row_bytes: usize,
    /// Endpoints, each delivering every row.
    #[arg(long, default_value_t = 1)]
    pub endpoints: usize,
    /// Endpoints of another table, never written (what waiting endpoints cost).
    #[arg(long, default_value_t = 0)]
    pub idle_endpoints: usize,
    /// Longest wait for the last event after the writer stops, in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub drain_secs: f64,
}

const TABLE: &str = "
create table if not exists public.bench_hooked (
    id bigint primary key,
    sent_us bigint not null,
    pad text not null
);
truncate public.bench_hooked;
select realtime.enable('public.bench_hooked');
create table if not exists public.bench_quiet (id bigint primary key);
";

/// What the receiver has seen.
struct Received {
    latency: Histogram<u64>,
    /// (endpoint, id) pairs, to tell duplicates.
    seen: HashSet<(usize, i64)>,
    events: u64,
    duplicates: u64,
    requests: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

type Shared = Arc<Mutex<Received>>;

async fn receive(
    State(got): State<Shared>,
    Path(endpoint): Path<usize>,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let at = now_us();
    let Ok(Value::Array(events)) = serde_json::from_slice::<Value>(&body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let mut g = got.lock().expect("receiver lock");
    let now = Instant::now();
    g.first.get_or_insert(now);
    g.last = Some(now);
    g.requests += 1;
    if std::env::var("BENCH_DEBUG").is_ok() {
        eprintln!("{at} endpoint {endpoint}: {} events", events.len());
    }
    for e in &events {
        let record = &e["record"];
        let (Some(id), Some(sent)) = (record["id"].as_i64(), record["sent_us"].as_i64()) else {
            continue;
        };
        g.events += 1;
        if !g.seen.insert((endpoint, id)) {
            g.duplicates += 1;
        }
        let _ = g
            .latency
            .record(u64::try_from(at - sent).unwrap_or(0).max(1));
    }
    axum::http::StatusCode::OK
}

async fn start_receiver(got: Shared) -> Result<u16, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new()
        .route("/hook/{endpoint}", post(receive))
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(got);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(port)
}

pub async fn webhooks(a: WebhooksArgs) -> Result<(), BenchError> {
    let c = &a.common;
    let setup = c.setup(true, 0, vec![]).await?;
    let url = setup.database_url.clone().expect("webhooks has a database");
    let hub_pid = setup.hub.pid;
    let sql = pgload::connect(&url).await?;
    sql.batch_execute(TABLE).await?;
    let got: Shared = Arc::new(Mutex::new(Received {
        latency: histogram(),
        seen: HashSet::new(),
        events: 0,
        duplicates: 0,
        requests: 0,
        first: None,
        last: None,
    }));
    let port = start_receiver(got.clone()).await?;
    // Endpoints 0.. of the written table, then the idle ones of the quiet table.
    let tables = std::iter::repeat_n("bench_hooked", a.endpoints)
        .chain(std::iter::repeat_n("bench_quiet", a.idle_endpoints));
    for (i, table) in tables.enumerate() {
        sql.execute(
            "select realtime.create_webhook($1, $2, array[$3::text::regclass])",
            &[
                &format!("bench{i}"),
                &format!("http://127.0.0.1:{port}/hook/{i}"),
                &format!("public.{table}"),
            ],
        )
        .await?;
    }
    // Every endpoint held by the hub before the clock starts (rows written before would
    // be delivered all the same, from the cursor `create_webhook` set, but their latency
    // would include the claim).
    let held = "select count(*) from realtime.webhook_endpoints where lease_owner is not null";
    let within = Duration::from_secs(30);
    let n = a.endpoints + a.idle_endpoints;
    pgload::wait_for_count(&sql, held, &[], n, within, "webhook endpoints claimed").await?;

    let per = a.rows_per_statement.max(1);
    let statements = a.rows.div_ceil(per);
    let postmaster = setup.postmaster();
    let cpu0 = hub_pid.map(cpu_seconds).unwrap_or(0.0);
    let pg_cpu0 = postgres_cpu(postmaster);
    let started = Instant::now();
    let mut written = 0usize;
    for s in 0..statements {
        if a.rate > 0.0 {
            let due = started + Duration::from_secs_f64(written as f64 / a.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let from = (s * per) as i64;
        let n = per.min(a.rows - written) as i64;
        sql.execute(
            "insert into public.bench_hooked (id, sent_us, pad) \
             select g, (extract(epoch from clock_timestamp()) * 1000000)::int8, \
                    repeat('x', $3::int) \
             from generate_series($1::int8, $1::int8 + $2::int8 - 1) g",
            &[&from, &n, &(a.row_bytes as i32)],
        )
        .await?;
        written += n as usize;
    }
    let wrote_in = started.elapsed();
    let expected = (a.rows * a.endpoints) as u64;
    let deadline = Instant::now() + Duration::from_secs_f64(a.drain_secs);
    loop {
        let events = got.lock().expect("receiver lock").events;
        if events >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_in = started.elapsed();
    let cpu = hub_pid.map(cpu_seconds).unwrap_or(0.0) - cpu0;
    let pg_cpu = postgres_cpu_since(&pg_cpu0, postmaster);
    let distinct = {
        let g = got.lock().expect("receiver lock");
        let distinct = g.seen.len() as u64;
        let received_span = match (g.first, g.last) {
            (Some(f), Some(l)) => l.duration_since(f),
            _ => Duration::ZERO,
        };
        let summary = format!(
            "{} of {} events received once ({} duplicates) in {:.2} s: {:.0} events/s, \
             written in {:.2} s ({:.0} rows/s); {} requests ({:.1} events each); \
             latency insert→receipt {}; hub {} CPU µs/event, Postgres {} (all its processes); \
             CPU s in all: hub {:.2}, Postgres {:.2}",
            distinct,
            expected,
            g.duplicates,
            all_in.as_secs_f64(),
            rate(distinct, all_in),
            wrote_in.as_secs_f64(),
            rate(written as u64, wrote_in),
            g.requests,
            g.events as f64 / g.requests.max(1) as f64,
            latency_line(&g.latency),
            crate::stats::us_per(cpu, g.events),
            crate::stats::us_per(pg_cpu, g.events),
            cpu,
            pg_cpu,
        );
        report(
            "webhooks",
            &summary,
            json!({
                "rows": a.rows, "rows_per_statement": per, "rate": a.rate,
                "row_bytes": a.row_bytes, "endpoints": a.endpoints,
            "idle_endpoints": a.idle_endpoints,
                "expected": expected, "received_once": distinct, "duplicates": g.duplicates,
                "requests": g.requests, "seconds": all_in.as_secs_f64(),
                "received_span_seconds": received_span.as_secs_f64(),
                "events_per_sec": rate(distinct, all_in),
                "write_seconds": wrote_in.as_secs_f64(),
                "latency": latency_json(&g.latency),
                "hub_cpu_us_per_event": crate::stats::us_per(cpu, g.events),
                "postgres_cpu_us_per_event": crate::stats::us_per(pg_cpu, g.events),
                "hub_cpu_s": cpu, "postgres_cpu_s": pg_cpu,
            }),
        );
        distinct
    };
    setup.hub.terminate().await?;
    if distinct < expected {
        return Err(BenchError::Failed(format!(
            "{} of {expected} events arrived within {} s of the last write",
            distinct, a.drain_secs
        )));
    }
    Ok(())
}
