//! Change scenarios that stress the capture and row-scope path: `rowscoped` (portal
//! customers, RLS on, each filtered to their own rows) and `capture` (writers at the
//! maximum commit rate, a few subscribers, delivered/committed and lag).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::env::http_get_as;
use crate::pgload::{self, Write, WriteCounts};
use crate::run::{Clients, Window};
use crate::stats::{rate, report};

use crate::ws::{self, JoinSpec};
use crate::{BenchError, Common};

#[derive(Args)]
pub struct RowscopedArgs {
    #[command(flatten)]
    pub common: Common,
    /// Portal customers (one socket each).
    #[arg(long, default_value_t = 1000)]
    pub customers: usize,
    /// Postgres connections writing.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Rows updated per transaction.
    #[arg(long, default_value_t = 50)]
    pub rows_per_tx: usize,
    /// Transactions per second (0: as fast as the writers go).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Only the window where customers subscribe to the whole table (RLS alone scopes
    /// rows) instead of `customer_id=eq.<own id>`; by default both windows run, filtered
    /// first, and the ratio unfiltered/filtered is printed.
    #[arg(long, conflicts_with = "filtered")]
    pub unfiltered: bool,
    /// Only the filtered window.
    #[arg(long)]
    pub filtered: bool,
    /// Give the portal policy a shape the hub does not decide itself
    /// (`customer_id = auth.uid() and n >= 0`), so Postgres judges every candidate
    /// subscriber of every change (`realtime.visible_to`). Unfiltered, that is every
    /// customer for every row: pair it with `--filtered`.
    #[arg(long)]
    pub policy_in_postgres: bool,
}

/// The portal policy as a shape `realtime.row_keys` does not recognise.
const POLICY_IN_POSTGRES: &str = "
drop policy own_jobs on public.portal_jobs;
create policy own_jobs on public.portal_jobs for select to authenticated
    using (customer_id = auth.uid() and n >= 0);
";

pub async fn rowscoped(a: RowscopedArgs) -> Result<(), BenchError> {
    let c = &a.common;
    let setup = c.setup(true, a.customers, vec![]).await?;
    let url = setup
        .database_url
        .clone()
        .expect("rowscoped has a database");
    if a.policy_in_postgres {
        pgload::connect(&url)
            .await?
            .batch_execute(POLICY_IN_POSTGRES)
            .await?;
    }
    let hub = &setup.hub;
    let modes: &[bool] = match (a.filtered, a.unfiltered) {
        (true, _) => &[false],
        (_, true) => &[true],
        _ => &[false, true],
    };
    let mut record = json!({"customers": a.customers, "writers": a.writers, "rows_per_tx": a.rows_per_tx, "rate": a.rate, "policy_in_postgres": a.policy_in_postgres});
    let mut lines = Vec::new();
    for &unfiltered in modes {
        let sockets = ws::open_many(hub.addr, 0, a.customers, c.parallel, |i| {
            let id = pgload::customer_id(i);
            let token = hub.token(&id);
            let mut entry = json!({"event": "UPDATE", "schema": "public", "table": "portal_jobs"});
            if !unfiltered {
                entry["filter"] = json!(format!("customer_id=eq.{id}"));
            }
            let spec = JoinSpec {
                topic: format!("realtime:portal:{i}"),
                changes: vec![entry],
                presence_key: None,
                access_token: token.clone(),
            };
            (token, Some(spec))
        })
        .await?;
        let clients = Clients::spawn(sockets, |_| None);
        let what = Write::UpdatePortal {
            customers: a.customers,
            rows: a.rows_per_tx,
        };
        let out = write_window(
            &clients,
            hub.pid,
            &url,
            a.writers,
            a.rate,
            what,
            c.window(),
            1,
        )
        .await?;
        clients.stop().await;
        let name = if unfiltered { "unfiltered" } else { "filtered" };
        lines.push(format!(
            "{name}: {} rows changed/s -> {} RLS-checked deliveries/s, delivered/changed {:.4}, {}, hub {} CPU µs/delivery",
            out["rows_per_s"],
            out["delivered_per_s"],
            out["delivered_ratio"].as_f64().unwrap_or(0.0),
            out["latency_line"].as_str().unwrap_or(""),
            out["hub_cpu_us_per_delivery"],
        ));
        record[name] = out;
    }
    let rate = |name: &str| record[name]["delivered_per_s"].as_f64();
    if let (Some(f), Some(u)) = (rate("filtered"), rate("unfiltered")) {
        let ratio = u / f.max(1.0);
        lines.push(format!("unfiltered/filtered {ratio:.3}"));
        record["unfiltered_to_filtered"] = json!((ratio * 1000.0).round() / 1000.0);
    }
    let summary = format!("{} customers; {}", a.customers, lines.join("; "));
    report("rowscoped", &summary, record);
    Ok(())
}

#[derive(Args)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub common: Common,
    /// Postgres connections writing (one insert per transaction).
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Subscribers on the table.
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Subscribers connect with a `resume=` key (the hub then keeps what it delivers for
    /// their resumes, see `resume_memory_secs`).
    #[arg(long)]
    pub resumable: bool,
}

pub async fn capture(a: CaptureArgs) -> Result<(), BenchError> {
    let c = &a.common;
    let setup = c.setup(true, 0, vec![]).await?;
    let url = setup.database_url.clone().expect("capture has a database");
    let hub = &setup.hub;
    let sockets = ws::open_many_with(hub.addr, 0, a.subscribers, c.parallel, |i| {
        let token = hub.token(&pgload::customer_id(i));
        let spec = JoinSpec {
            topic: "realtime:capture".into(),
            changes: vec![json!({"event": "INSERT", "schema": "public", "table": "bench_events"})],
            presence_key: None,
            access_token: token.clone(),
        };
        let query = match a.resumable {
            true => format!("&resume=capture-{i}-{}", std::process::id()),
            false => String::new(),
        };
        (token, Some(spec), query)
    })
    .await?;
    let clients = Clients::spawn(sockets, |_| None);
    let mut out = write_window(
        &clients,
        hub.pid,
        &url,
        a.writers,
        0.0,
        Write::Insert,
        c.window(),
        a.subscribers as u64,
    )
    .await?;
    let admin = hub.admin_token();
    if let Ok((200, body)) = http_get_as(hub.addr, "/api/status", Some(&admin)).await {
        out["hub_status"] =
            serde_json::from_str::<Value>(&body).map_or(Value::Null, |v| v["capture"].clone());
    }
    let summary = format!(
        "{} writers{}: committed {}/s, delivered {}/s per subscriber ({} subscribers), delivered/committed {:.4}, lag {}, drain {} ms, hub {} CPU µs/delivery",
        a.writers,
        if a.resumable { ", resumable subscribers" } else { "" },
        out["committed_per_s"],
        (out["delivered_per_s"].as_f64().unwrap_or(0.0) / a.subscribers as f64).round(),
        a.subscribers,
        out["delivered_ratio"].as_f64().unwrap_or(0.0),
        out["latency_line"].as_str().unwrap_or(""),
        out["drain_ms"],
        out["hub_cpu_us_per_delivery"],
    );
    clients.stop().await;
    report(
        "capture",
        &summary,
        json!({"writers": a.writers, "subscribers": a.subscribers, "resumable": a.resumable, "window": out}),
    );
    Ok(())
}

/// Writers doing `what` at `tx_rate` for `length`; waits for stragglers; expects each
/// changed row to reach `receivers` clients.
#[allow(clippy::too_many_arguments)]
async fn write_window(
    clients: &Clients,
    hub_pid: Option<u32>,
    url: &str,
    writers: usize,
    tx_rate: f64,
    what: Write,
    length: Duration,
    receivers: u64,
) -> Result<Value, BenchError> {
    let counts = Arc::new(WriteCounts::default());
    let stop = CancellationToken::new();
    let before = clients.delivered();
    let w = Window::open(clients, hub_pid);
    let writing = {
        let (url, counts, stop) = (url.to_owned(), counts.clone(), stop.clone());
        tokio::spawn(async move {
            pgload::run_writers(&url, writers, tx_rate, what, counts, stop).await
        })
    };
    tokio::time::sleep(length).await;
    stop.cancel();
    let _ = writing.await;
    let commits = counts.commits.load(Ordering::Relaxed);
    let rows = counts.rows.load(Ordering::Relaxed);
    let expected = before + rows * receivers;
    let drain = clients
        .drain(expected, Duration::from_secs(5), Duration::from_secs(60))
        .await;
    // The window runs until the last straggler, so rates include the drain.
    let mut out = w.close(clients);
    let got = clients.delivered() - before;
    out["committed"] = json!(commits);
    out["committed_per_s"] = json!(rate(commits, length));
    out["rows"] = json!(rows);
    out["rows_per_s"] = json!(rate(rows, length));
    out["delivered_ratio"] = json!(got as f64 / (rows * receivers).max(1) as f64);
    out["drain_ms"] = json!(drain.as_millis() as u64);
    Ok(out)
}
