//! `writeload`: what capture costs writers. One invocation runs the same writes against a
//! plain table, a captured table (with the hub running and reading it) and a table with a
//! bare per-row `pg_notify` trigger (how a LISTEN/NOTIFY forwarder is fed), on a durable
//! Postgres (fsync on), in alternating rounds, and prints rows/s and the ratios to plain.
//! With `--partitioned` the three are partitioned tables written through the parent: one
//! uncaptured, one captured as itself (`realtime.enable` on the parent, or a publication
//! with `publish_via_partition_root`) and one whose partition is captured (what the
//! publication lists by default); then the one captured as itself written straight into
//! its partition (logged under its name by the partition's own triggers, 065). With
//! `--decoded`, two more: one captured without a trigger (logical decoding) and one whose
//! trigger sends a logical message (see decoded.rs).
//!
//! Each round writes the tables in a rotated order (round r starts at table r), so no
//! table always runs first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::decoded;
use crate::pgload::connect;
use crate::stats::{cpu_seconds, machine_jiffies, status_kib};
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
    /// Partitioned tables instead: uncaptured, captured as itself, its partition captured,
    /// and the one captured as itself written straight into its partition.
    #[arg(long)]
    pub partitioned: bool,
    /// Also a table captured by logical decoding (no trigger) and one whose trigger sends
    /// a logical message; the cluster runs with `wal_level=logical`.
    #[arg(long, conflicts_with = "partitioned")]
    pub decoded: bool,
    /// With `--decoded`: how the slot is read.
    #[arg(long, value_enum, default_value = "stream")]
    pub decoder: decoded::Decoder,
    /// With `--decoder crate`: the hub's own reader (`capture::decoding::run`) reads the
    /// slot instead, writes what it read into the hub's log (`realtime.changes`, with the
    /// trigger's JSON) and confirms the slot only after that commit.
    #[arg(long)]
    pub reader_log: bool,
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

const PARTITIONED: &str = r#"
drop table if exists public.wl_pplain, public.wl_proot, public.wl_pleaf;
create table public.wl_pplain (id bigserial, body text not null, n int not null, primary key (id))
    partition by range (id);
create table public.wl_pplain_all partition of public.wl_pplain for values from (minvalue) to (maxvalue);
create table public.wl_proot (like public.wl_pplain including all) partition by range (id);
create table public.wl_proot_all partition of public.wl_proot for values from (minvalue) to (maxvalue);
create table public.wl_pleaf (like public.wl_pplain including all) partition by range (id);
create table public.wl_pleaf_all partition of public.wl_pleaf for values from (minvalue) to (maxvalue);
"#;

/// The tables of one invocation (written in this order; the first uncaptured, the second
/// the captured one whose hub CPU is counted), the tables captured and the labels of each
/// (as printed, as JSON keys).
struct Variant {
    schema: &'static str,
    tables: &'static [&'static str],
    enable: &'static [&'static str],
    labels: &'static [&'static str],
    keys: &'static [&'static str],
}

const UNPARTITIONED: Variant = Variant {
    schema: SCHEMA,
    tables: &["wl_plain", "wl_captured", "wl_notify"],
    enable: &["public.wl_captured"],
    labels: &["plain", "captured", "notify trigger"],
    keys: &["plain", "captured", "notify"],
};

/// Written through the parents; the first is uncaptured, the second captured as itself,
/// the third through its partition; the fourth is the second's partition, written straight.
const PARTITIONS: Variant = Variant {
    schema: PARTITIONED,
    tables: &["wl_pplain", "wl_proot", "wl_pleaf", "wl_proot_all"],
    enable: &["public.wl_proot", "public.wl_pleaf_all"],
    labels: &[
        "partitioned plain",
        "captured as itself",
        "partition captured",
        "captured as itself, written straight into its partition",
    ],
    keys: &["plain", "captured", "partition_captured", "captured_direct"],
};

/// With `--decoded`: the third table has no trigger (its changes read from a slot), the
/// fourth a trigger that sends a logical message.
const DECODED: Variant = Variant {
    schema: decoded::SCHEMA,
    tables: &["wl_plain", "wl_captured", "wl_decoded", "wl_message"],
    enable: &["public.wl_captured"],
    labels: &[
        "plain",
        "captured",
        "decoded (no trigger)",
        "logical message trigger",
    ],
    keys: &["plain", "captured", "decoded", "message"],
};

pub async fn writeload(a: WriteloadArgs) -> Result<(), BenchError> {
    let c = &a.common;
    if a.reader_log && !(a.decoded && a.decoder == decoded::Decoder::Crate) {
        return Err(BenchError::Setup(
            "--reader-log needs --decoded --decoder crate".into(),
        ));
    }
    let setup = if a.decoded {
        c.setup_durable_with(decoded::SERVER_OPTIONS).await?
    } else {
        c.setup_durable().await?
    };
    let url = setup
        .database_url
        .clone()
        .expect("writeload has a database");
    let admin = connect(&url).await?;
    let v = if a.partitioned {
        &PARTITIONS
    } else if a.decoded {
        &DECODED
    } else {
        &UNPARTITIONED
    };
    admin.batch_execute(v.schema).await?;
    for table in v.enable {
        switchboard::db::enable(&admin, table).await?;
    }
    let stop_reader = tokio_util::sync::CancellationToken::new();
    let reader = if a.decoded {
        decoded::make_slot(&url).await?;
        Some(decoded::spawn_reader(&url, a.decoder, a.reader_log, stop_reader.clone()).await?)
    } else {
        None
    };
    let reader_pid = reader.as_ref().map(|r| r.decoding_pid);
    let client_id = reader.as_ref().and_then(|r| r.client_id);
    let hub_pid = setup.hub.pid;
    let modes = [
        ("single-row transactions", 1usize),
        ("multi-row statements", a.rows),
    ];
    let mut results = serde_json::Map::new();
    let mut lines = Vec::new();
    for (label, rows) in modes {
        let mut sums = vec![0.0f64; v.tables.len()];
        let (mut hub_cpu, mut captured_rows, mut busy) = (0.0f64, 0.0f64, 0.0f64);
        let (mut reader_cpu, mut decoded_rows, mut catch_up) = (0.0f64, 0.0f64, 0.0f64);
        let (mut client_cpu, mut confirmed) = (0.0f64, Some(0.0f64));
        // The reader's voluntary context switches: how often it slept and was woken.
        let mut client_waits = 0u64;
        let waits = |id: u32| status_kib(id, "voluntary_ctxt_switches:");
        for round in 0..a.rounds {
            for k in 0..v.tables.len() {
                let i = (round + k) % v.tables.len();
                let table = v.tables[i];
                let cpu0 = hub_pid.map(cpu_seconds).unwrap_or(0.0);
                let reader0 = reader_pid.map(cpu_seconds).unwrap_or(0.0);
                let client0 = client_id.map(cpu_seconds).unwrap_or(0.0);
                let waits0 = client_id.map(waits).unwrap_or(0);
                let j0 = machine_jiffies();
                let run = rows_per_second(&url, table, a.clients, rows, c.window()).await?;
                let j1 = machine_jiffies();
                if i == 1 {
                    hub_cpu += hub_pid.map(cpu_seconds).unwrap_or(0.0) - cpu0;
                    captured_rows += run.rows as f64;
                    busy += (j1.0 - j0.0) as f64 / ((j1.1 - j0.1).max(1)) as f64;
                }
                if i == 2 && a.decoded {
                    let r = reader.as_ref().expect("a reader with --decoded");
                    let (lag, confirm) = decoded::catch_up(&url, a.decoder, r).await?;
                    catch_up = catch_up.max(lag.as_secs_f64());
                    confirmed = match (confirmed, confirm) {
                        (Some(worst), Some(c)) => Some(worst.max(c.as_secs_f64())),
                        _ => None,
                    };
                    reader_cpu += reader_pid.map(cpu_seconds).unwrap_or(0.0) - reader0;
                    client_cpu += client_id.map(cpu_seconds).unwrap_or(0.0) - client0;
                    client_waits += client_id.map(waits).unwrap_or(0).saturating_sub(waits0);
                    decoded_rows += run.rows as f64;
                }
                sums[i] += run.per_second;
                admin
                    .batch_execute(&format!("truncate public.{table}"))
                    .await?;
            }
            // Keep the logs from growing across rounds.
            admin.batch_execute("truncate realtime.changes").await?;
            if a.decoded {
                admin
                    .batch_execute("truncate public.wl_decoded_log")
                    .await?;
            }
        }
        let mean: Vec<f64> = sums.iter().map(|s| s / a.rounds as f64).collect();
        let hub_us_per_row = hub_cpu * 1e6 / captured_rows.max(1.0);
        let mut parts = vec![format!("{} {:.0} rows/s", v.labels[0], mean[0])];
        let mut figures = serde_json::Map::new();
        figures.insert("rows_per_statement".into(), json!(rows));
        figures.insert(format!("{}_rows_per_s", v.keys[0]), json!(mean[0].round()));
        for i in 1..mean.len() {
            let ratio = mean[i] / mean[0];
            let hub = if i == 1 {
                format!(", hub {hub_us_per_row:.1} CPU µs per row")
            } else if i == 2 && a.decoded {
                let us = reader_cpu * 1e6 / decoded_rows.max(1.0);
                figures.insert(
                    "decoder_cpu_us_per_row".into(),
                    json!((us * 10.0).round() / 10.0),
                );
                figures.insert(
                    "decoder_catch_up_s".into(),
                    json!((catch_up * 100.0).round() / 100.0),
                );
                let mut text = format!(", decoding process {us:.1} CPU µs per row");
                if client_id.is_some() {
                    let us = client_cpu * 1e6 / decoded_rows.max(1.0);
                    figures.insert(
                        "reader_client_cpu_us_per_row".into(),
                        json!((us * 10.0).round() / 10.0),
                    );
                    let w = client_waits as f64 / decoded_rows.max(1.0);
                    figures.insert(
                        "reader_client_wakeups_per_row".into(),
                        json!((w * 100.0).round() / 100.0),
                    );
                    text += &format!(
                        ", reader client {us:.1} CPU µs per row, woken {w:.2} times per row"
                    );
                }
                text += &format!(
                    ", read all WAL {catch_up:.2} s after the writers stopped (worst round)"
                );
                if a.decoder == decoded::Decoder::Crate {
                    figures.insert(
                        "slot_confirmed_s".into(),
                        json!(confirmed.map(|c| (c * 100.0).round() / 100.0)),
                    );
                    text += &match confirmed {
                        Some(c) => format!(", slot confirmed there {c:.2} s after"),
                        None => ", slot NOT confirmed there within 60 s".into(),
                    };
                }
                text
            } else {
                String::new()
            };
            parts.push(format!("{} {:.0} ({ratio:.2}x{hub})", v.labels[i], mean[i]));
            figures.insert(format!("{}_rows_per_s", v.keys[i]), json!(mean[i].round()));
            figures.insert(
                format!("{}_to_plain", v.keys[i]),
                json!((ratio * 1000.0).round() / 1000.0),
            );
        }
        lines.push(format!(
            "{label} ({rows} row(s) each, {} clients): {}",
            a.clients,
            parts.join(", ")
        ));
        figures.insert(
            "hub_cpu_us_per_captured_row".into(),
            json!((hub_us_per_row * 10.0).round() / 10.0),
        );
        figures.insert(
            "machine_busy_while_captured".into(),
            json!((busy / a.rounds as f64 * 100.0).round() / 100.0),
        );
        results.insert(
            if rows == 1 { "single_row" } else { "multi_row" }.into(),
            serde_json::Value::Object(figures),
        );
    }
    stop_reader.cancel();
    if let Some(r) = reader {
        let totals = r
            .task
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))??;
        results.insert("decoded_log_rows".into(), json!(totals.logged));
        if a.decoder == decoded::Decoder::Crate && a.reader_log {
            println!(
                "hub reader: {} row changes logged in {} log rows",
                totals.rows, totals.logged
            );
        } else if a.decoder == decoded::Decoder::Crate {
            println!(
                "crate reader: {} transactions, {} row changes, {} logical messages decoded",
                totals.transactions, totals.rows, totals.messages
            );
        }
        if a.decoder == decoded::Decoder::Crate {
            results.insert("crate_transactions".into(), json!(totals.transactions));
            results.insert("crate_rows".into(), json!(totals.rows));
            results.insert("crate_messages".into(), json!(totals.messages));
            results.insert("reader_log".into(), json!(a.reader_log));
        }
        decoded::drop_slot(&url).await?;
    }
    println!("writeload: {}", lines.join("; "));
    results.insert("scenario".into(), json!("writeload"));
    results.insert("partitioned".into(), json!(a.partitioned));
    results.insert("decoded".into(), json!(a.decoded));
    if a.decoded {
        results.insert("decoder".into(), json!(a.decoder.name()));
    }
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
