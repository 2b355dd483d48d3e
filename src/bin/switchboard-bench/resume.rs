//! `resume`: a reconnect storm. Portal customers on resumable connections (`resume=`
//! keys) follow their own rows (RLS, no filter) while writers update random ones; every
//! socket drops at once, the writers go on for `--gap` seconds, then every customer
//! reconnects and rejoins at once while the writers keep writing. Reported per hub: how
//! long until every channel said `recovered`, what they recovered, and the CPU the hub
//! and Postgres spent on the storm. Each round runs three storms, in an order that
//! rotates: `memory`, a hub that replays gaps from the batches it kept (the default
//! settings); `log`, one that reads every gap from the log
//! (`SWITCHBOARD_RESUME_MEMORY_SECS=0`); and `restart`, where the sockets drop because
//! the hub is stopped (SIGTERM, as a deploy does) and everyone rejoins a new hub with the
//! default settings, whose first resume reads the log once for the storm.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::env::{http_get_as, Hub};
use crate::pgload::{self, Write, WriteCounts};
use crate::run::Clients;
use crate::stats::{cpu_seconds, histogram, postgres_cpu, postgres_cpu_since, report};
use crate::ws::{self, JoinSpec, Ws};
use crate::{BenchError, Common};

#[derive(Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Portal customers (one resumable socket and channel each).
    #[arg(long, default_value_t = 1000)]
    pub customers: usize,
    /// Postgres connections writing.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Rows updated per transaction.
    #[arg(long, default_value_t = 10)]
    pub rows_per_tx: usize,
    /// Transactions per second, all writers together.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
    /// Seconds the sockets stay away while the writers go on.
    #[arg(long, default_value_t = 5.0)]
    pub gap: f64,
    /// Rounds of (memory, log, restart), rotating which runs first.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Staff writes to a table no customer subscribes to (`bench_events`), single-row
    /// transactions per second from one more connection, throughout (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub staff_rate: f64,
}

/// How long the storm may take before the scenario gives up.
const STORM_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn resume(a: ResumeArgs) -> Result<(), BenchError> {
    let c = &a.common;
    if c.hub_url.is_some() {
        return Err(BenchError::Setup(
            "resume starts its own hubs (one per mode); --hub-url is not supported".into(),
        ));
    }
    let (_pg, url) = c.database().await?;
    pgload::setup(&url, a.customers).await?;
    let mut record = json!({"customers": a.customers, "writers": a.writers,
        "rows_per_tx": a.rows_per_tx, "rate": a.rate, "gap_s": a.gap,
        "staff_rate": a.staff_rate});
    let mut lines = Vec::new();
    let mut runs = Vec::new();
    for round in 0..a.rounds {
        let mut order = ["memory", "log", "restart"];
        order.rotate_left(round % 3);
        for mode in order {
            let out = storm(&a, &url, mode, &format!("r{round}-{mode}")).await?;
            lines.push(format!(
                "round {} {mode}: all {} recovered in {} ms (p50 {} / p99 {} ms per channel), {} changes replayed, hub {} CPU s, Postgres {} CPU s, from memory {}, from the restart read {}",
                round + 1,
                out["recovered"],
                out["storm_ms"],
                out["resume_ms"]["p50"],
                out["resume_ms"]["p99"],
                out["replayed"],
                out["hub_cpu_s"],
                out["postgres_cpu_s"],
                out["from_memory"],
                out["from_restart_read"],
            ));
            runs.push(json!({"round": round + 1, "mode": mode, "result": out}));
        }
    }
    record["runs"] = Value::Array(runs);
    report(
        "resume",
        &format!(
            "{} customers, gap {} s at {} rows/s (staff {} rows/s elsewhere); {}",
            a.customers,
            a.gap,
            a.rate * a.rows_per_tx as f64,
            a.staff_rate,
            lines.join("; ")
        ),
        record,
    );
    Ok(())
}

/// One storm against a fresh hub in `mode`; keys are prefixed with `run`.
async fn storm(a: &ResumeArgs, url: &str, mode: &str, run: &str) -> Result<Value, BenchError> {
    let c = &a.common;
    let memory = if mode == "log" { "0" } else { "60" };
    let start_hub = || {
        let env = vec![("SWITCHBOARD_RESUME_MEMORY_SECS", memory.to_owned())];
        async move { c.start_hub_bin(&c.hub_bin()?, Some(url), env).await }
    };
    let mut hub = start_hub().await?;
    let spec_of = |hub: &crate::env::Hub, i: usize| {
        let id = pgload::customer_id(i);
        let token = hub.token(&id);
        let spec = JoinSpec {
            topic: format!("realtime:portal:{i}"),
            changes: vec![json!({"event": "UPDATE", "schema": "public", "table": "portal_jobs"})],
            presence_key: None,
            access_token: token.clone(),
        };
        (token, spec, format!("&resume={run}-{i}"))
    };
    let sockets = ws::open_many_with(hub.addr, 0, a.customers, c.parallel, |i| {
        let (token, spec, query) = spec_of(&hub, i);
        (token, Some(spec), query)
    })
    .await?;
    let clients = Clients::spawn(sockets, |_| None);
    let stop_writers = CancellationToken::new();
    let counts = Arc::new(WriteCounts::default());
    let writers = {
        let (url, stop, counts) = (url.to_owned(), stop_writers.clone(), counts.clone());
        let what = Write::UpdatePortal {
            customers: a.customers,
            rows: a.rows_per_tx,
        };
        let (n, rate) = (a.writers, a.rate);
        tokio::spawn(async move { pgload::run_writers(&url, n, rate, what, counts, stop).await })
    };
    let staff = (a.staff_rate > 0.0).then(|| {
        let (url, stop) = (url.to_owned(), stop_writers.clone());
        let (rate, counts) = (a.staff_rate, Arc::new(WriteCounts::default()));
        tokio::spawn(async move {
            pgload::run_writers(&url, 1, rate, Write::Insert, counts, stop).await
        })
    });
    // Live for a while, so every channel has acknowledged a position; then all drop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if mode == "restart" {
        // The hub parks every channel as it stops; the storm goes to a new one.
        hub.terminate().await?;
        clients.stop().await;
        wait_parked(url, run, a.customers).await?;
        hub = start_hub().await?;
    } else {
        clients.stop().await;
        wait_parked(url, run, a.customers).await?;
    }
    tokio::time::sleep(Duration::from_secs_f64(a.gap)).await;

    let (hub_cpu0, pg_cpu0) = (hub.pid.map_or(0.0, cpu_seconds), postgres_cpu(None));
    let start = Instant::now();
    let rejoins = (0..a.customers).map(|i| {
        let (token, spec, query) = spec_of(&hub, i);
        let addr = hub.addr;
        async move {
            let began = Instant::now();
            let mut ws = ws::connect_with(addr, i, &token, &query).await?;
            ws::join(&mut ws, &spec).await?;
            let outcome = recovered(&mut ws).await?;
            let _ = ws.close(None).await;
            Ok::<(Value, Duration), BenchError>((outcome, began.elapsed()))
        }
    });
    let outcomes: Vec<(Value, Duration)> = tokio::time::timeout(
        STORM_TIMEOUT,
        futures_util::stream::iter(rejoins)
            .buffer_unordered(c.parallel)
            .collect::<Vec<_>>(),
    )
    .await
    .map_err(|_| BenchError::Failed(format!("the storm took over {STORM_TIMEOUT:?}")))?
    .into_iter()
    .collect::<Result<_, _>>()?;
    let storm = start.elapsed();
    let (hub_cpu, pg_cpu) = (
        hub.pid.map_or(0.0, cpu_seconds) - hub_cpu0,
        postgres_cpu_since(&pg_cpu0, None),
    );
    stop_writers.cancel();
    let _ = writers.await;
    if let Some(staff) = staff {
        let _ = staff.await;
    }

    let mut per_channel = histogram();
    for (_, took) in &outcomes {
        let _ = per_channel.record((took.as_micros() as u64).max(1));
    }
    let ms = |q: f64| (per_channel.value_at_quantile(q) as f64 / 100.0).round() / 10.0;
    let recovered_n = outcomes
        .iter()
        .filter(|(o, _)| o["recovered"] == true)
        .count();
    let replayed: i64 = outcomes
        .iter()
        .filter_map(|(o, _)| o["count"].as_i64())
        .sum();
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for (o, _) in outcomes.iter().filter(|(o, _)| o["recovered"] != true) {
        let reason = o["message"].as_str().unwrap_or("?").to_owned();
        *reasons.entry(reason).or_default() += 1;
    }
    let status = status(&hub).await;
    Ok(json!({
        "recovered": recovered_n,
        "not_recovered": outcomes.len() - recovered_n,
        "not_recovered_reasons": reasons,
        "replayed": replayed,
        "storm_ms": storm.as_millis() as u64,
        "resume_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": ms(1.0)},
        "hub_cpu_s": (hub_cpu * 100.0).round() / 100.0,
        "postgres_cpu_s": (pg_cpu * 100.0).round() / 100.0,
        "from_memory": status["resume"]["from_memory"],
        "from_restart_read": status["resume"]["from_restart_read"],
        "rows_written": counts.rows.load(std::sync::atomic::Ordering::Relaxed),
    }))
}

/// Reads until the resume's system message (`recovered`, `count`) and returns it.
async fn recovered(ws: &mut Ws) -> Result<Value, BenchError> {
    loop {
        let (v, _) = ws::next_text(ws, "before the resume message").await?;
        if v[3] == "system" && v[4].get("recovered").is_some() {
            return Ok(v[4].clone());
        }
    }
}

/// Waits until the `customers` channels of `run` are parked.
async fn wait_parked(url: &str, run: &str, customers: usize) -> Result<(), BenchError> {
    let c = pgload::connect(url).await?;
    let parked = "select count(*) from realtime.log_holds where kind = 'resume' \
                  and (detail->>'parked')::boolean and detail->>'key' like $1";
    let key = format!("{run}-%");
    let within = Duration::from_secs(60);
    pgload::wait_for_count(&c, parked, &[&key], customers, within, "channels parked").await
}

async fn status(hub: &Hub) -> Value {
    http_get_as(hub.addr, "/api/status", Some(&hub.admin_token()))
        .await
        .ok()
        .and_then(|(_, body)| serde_json::from_str(&body).ok())
        .unwrap_or(Value::Null)
}
