//! `switchboard-bench chaos`: the hub in a hostile world. Writers commit with savepoints
//! and rollbacks; a few hundred subscribers (plain and resumable, vsn 1 and 2, users
//! under row-level security and service_role, with filters) listen through a proxy;
//! faults land at random (backends killed, Postgres restarted or crashed, the hub
//! SIGTERMed and SIGKILLed, connections black-holed) while one hostile client floods.
//! Then everything calms down, a last tick is written, and every subscriber's stream is
//! judged against what committed (`verdict`). `tests/chaos.rs` runs a short one in CI.

mod faults;
mod hostile;
mod model;
mod plan;
mod proxy;
mod subscriber;
mod verdict;
mod world;
mod writers;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::env::PgCluster;
use crate::{stats, BenchError, Common};
use faults::{Fault, Targets};
use subscriber::LiveTicks;
use world::HubProc;
use writers::{Load, Ticks};

#[derive(Args)]
pub struct ChaosArgs {
    /// `--duration` is the length of the chaos phase, in seconds.
    #[command(flatten)]
    pub common: Common,
    /// Subscribers (channels), one to three per connection.
    #[arg(long, default_value_t = 300)]
    pub subscribers: usize,
    /// Share of connections with a `resume=` key.
    #[arg(long, default_value_t = 0.5)]
    pub resumable: f64,
    /// Portal users (row owners with subscribers).
    #[arg(long, default_value_t = 40)]
    pub users: usize,
    /// Topics the channels spread over.
    #[arg(long, default_value_t = 24)]
    pub topics: usize,
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Transactions per second, all writers together.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
    /// Mean seconds between faults.
    #[arg(long, default_value_t = 4.0)]
    pub fault_every: f64,
    /// Fault kinds to inject (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<Fault>,
    /// Random seed (printed; the same seed plans the same subscribers and faults).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seconds every subscriber may take to be live again after the chaos phase.
    #[arg(long, default_value_t = 90.0)]
    pub settle: f64,
    /// Where the hub logs go (default: a new temp dir, kept).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Print only subscribers with something to report (not all of them).
    #[arg(long)]
    pub quiet: bool,
}

/// Waits until every channel's highest tick is at least `tick`; how many are not.
async fn wait_ticks(live: &LiveTicks, tick: i64, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let behind = live
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) < tick)
            .count();
        if behind == 0 || Instant::now() > deadline {
            return behind;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn chaos(a: ChaosArgs) -> Result<(), BenchError> {
    if a.common.hub_url.is_some() {
        return Err(BenchError::Setup(
            "chaos starts (and restarts) its own hub: --hub-url is not supported".into(),
        ));
    }
    let seed = a.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let kinds = if a.faults.is_empty() {
        Fault::ALL.to_vec()
    } else {
        a.faults.clone()
    };
    let log_dir = match &a.log_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("switchboard-chaos-{}", std::process::id())),
    };
    std::fs::create_dir_all(&log_dir)?;
    let began = Instant::now();

    // Postgres (ours, so it can be restarted; or --database-url), schema, hub, proxy.
    let pg = match &a.common.database_url {
        Some(_) => None,
        None => Some(Arc::new(
            tokio::task::spawn_blocking(PgCluster::start_crashable)
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))??,
        )),
    };
    let server_url = a
        .common
        .database_url
        .clone()
        .or_else(|| pg.as_ref().map(|p| p.url.clone()))
        .expect("a database");
    let url = plan::create_database(&server_url, a.users).await?;
    let bin = match &a.common.hub_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("switchboard"),
    };
    let mut hub_env = vec![("DATABASE_URL".to_owned(), url.clone())];
    hub_env.extend(a.common.hub_env.iter().cloned());
    let hub = Arc::new(HubProc::new(bin, hub_env, &log_dir)?);
    hub.start(Duration::from_secs(60)).await?;
    let proxy = Arc::new(proxy::Proxy::start(hub.addr).await?);
    let stop_sampler = CancellationToken::new();
    tokio::spawn(hub.clone().run_sampler(stop_sampler.clone()));
    let baseline_kib = hub.rss_kib();

    // Ticks, then the subscribers; the chaos starts once every channel is live.
    let ticks = Arc::new(Ticks::default());
    let stop_ticks = CancellationToken::new();
    let tick_task = tokio::spawn(writers::run_ticks(
        url.clone(),
        ticks.clone(),
        Duration::from_millis(250),
        stop_ticks.clone(),
    ));
    let specs = plan::subscribers(&a, &mut rng);
    let subscribers: usize = specs.iter().map(|s| s.channels.len()).sum();
    let live: LiveTicks = Arc::new((0..subscribers).map(|_| Default::default()).collect());
    let stop_subs = CancellationToken::new();
    let conn_tasks: Vec<_> = specs
        .iter()
        .map(|s| {
            tokio::spawn(subscriber::run_conn(
                s.clone(),
                hub.addr,
                proxy.addr,
                live.clone(),
                stop_subs.clone(),
            ))
        })
        .collect();
    let not_live = wait_ticks(&live, 1, Duration::from_secs(120)).await;
    if not_live > 0 {
        return Err(BenchError::Setup(format!(
            "{not_live} of {subscribers} subscribers not live within 120 s (logs in {})",
            log_dir.display()
        )));
    }
    let setup_secs = began.elapsed().as_secs_f64();
    let before_kib = hub.rss_kib();
    println!(
        "chaos: seed {seed}; {subscribers} subscribers on {} connections live after {setup_secs:.1} s; \
         hub logs in {}",
        specs.len(),
        log_dir.display()
    );

    // The chaos phase: writers, the hostile client and the faults.
    let stop_writers = CancellationToken::new();
    let load = Load {
        writers: a.writers,
        rate: a.rate,
        users: a.users,
        seed,
    };
    let writer_task = {
        let (url, ticks, stop) = (url.clone(), ticks.clone(), stop_writers.clone());
        tokio::spawn(async move { writers::run_writers(&url, load, ticks, stop).await })
    };
    let stop_hostile = CancellationToken::new();
    let hostile_task = tokio::spawn(hostile::run_hostile(
        hub.addr,
        plan::token(&serde_json::json!({"role": "anon"}), a.common.duration),
        plan::topics(a.topics),
        5_000_001 + 1024,
        stop_hostile.clone(),
    ));
    let targets = Targets {
        hub: hub.clone(),
        pg: pg.clone(),
        url: url.clone(),
        proxy: proxy.clone(),
    };
    let chaos_start = Instant::now();
    let fault_log = faults::run_faults(
        &targets,
        &kinds,
        a.fault_every,
        StdRng::seed_from_u64(seed ^ 0xfa17),
        chaos_start,
        chaos_start + a.common.window(),
    )
    .await;
    let chaos_secs = chaos_start.elapsed().as_secs_f64();

    // Calm: no more faults or floods; everyone live again, then the writers stop and a
    // last tick (begun after the last commit) must reach every subscriber.
    stop_hostile.cancel();
    proxy.release_all();
    let mut problems = fault_log.problems.clone();
    if let Err(e) = hub.wait_ready(Duration::from_secs(60)).await {
        problems.push(format!("after the chaos: {e}"));
    }
    let calm = ticks.started.load(Ordering::SeqCst) + 1;
    let behind = wait_ticks(&live, calm, Duration::from_secs_f64(a.settle)).await;
    if behind > 0 {
        problems.push(format!(
            "{behind} subscribers not live again within {} s of the calm",
            a.settle
        ));
    }
    stop_writers.cancel();
    let truth = writer_task
        .await
        .map_err(|e| BenchError::Setup(format!("writers: {e}")))?;
    let final_tick = ticks.started.load(Ordering::SeqCst) + 1;
    wait_ticks(&live, final_tick, Duration::from_secs_f64(a.settle)).await;
    stop_subs.cancel();
    let mut results = Vec::new();
    for t in conn_tasks {
        results.push(
            t.await
                .map_err(|e| BenchError::Setup(format!("subscriber: {e}")))?,
        );
    }
    stop_ticks.cancel();
    let _ = tick_task.await;
    let hostile = hostile_task.await.unwrap_or_default();
    hub.sample();
    stop_sampler.cancel();
    problems.extend(
        hub.surprises
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned(),
    );

    // The verdict.
    let reports = verdict::judge_all(&specs, &results, &truth, a.users, final_tick);
    let resumable = verdict::totals(reports.iter().filter(|r| r.resumable), final_tick);
    let plain = verdict::totals(reports.iter().filter(|r| !r.resumable), final_tick);
    let all = verdict::totals(reports.iter(), final_tick);
    println!(
        "{:>4} {:>4} {:>3} {:>2} {:<13} {:<38} {:>4} {:>4} {:>6} {:>6} {:>4} {:>4} {:>5} {:>5} {:>6}",
        "sub", "conn", "res", "v", "viewer", "binding", "sess", "chn", "recv", "held", "lost", "leak", "dupR", "dupL", "missed"
    );
    for r in &reports {
        let notable = r.lost + r.leaked + r.phantom + r.corrupt + r.dup_live + r.out_of_order > 0
            || !r.breaks.is_empty()
            || r.last_tick < final_tick;
        if a.quiet && !notable {
            continue;
        }
        println!(
            "{:>4} {:>4} {:>3} {:>2} {:<13} {:<38} {:>4} {:>4} {:>6} {:>6} {:>4} {:>4} {:>5} {:>5} {:>6}{}",
            r.sub,
            r.conn,
            if r.resumable { "yes" } else { "no" },
            if r.v2 { 2 } else { 1 },
            r.viewer,
            r.binding,
            r.sessions,
            r.chains,
            r.received,
            r.held,
            r.lost,
            r.leaked + r.phantom + r.corrupt,
            r.dup_replayed,
            r.dup_live,
            r.missed_unheld,
            if notable { "  <<" } else { "" }
        );
        if notable {
            for line in &r.story {
                println!("       {line}");
            }
            if !r.lost_sample.is_empty() {
                println!("       lost, first few: {}", r.lost_sample.join(", "));
            }
        }
    }
    let mut violations = problems.clone();
    let mut check = |what: &str, n: u64| {
        if n > 0 {
            violations.push(format!("{what}: {n}"));
        }
    };
    check("leaked (row scope, event or filter)", all.leaked);
    check("phantom (never committed)", all.phantom);
    check("corrupt (row differs from the committed one)", all.corrupt);
    check("lost by resumable subscribers", resumable.lost);
    check("lost by plain subscribers within a connection", plain.lost);
    check("duplicates outside a resume's replay", all.dup_live);
    check("out of order within a live stream", all.out_of_order);
    check("subscribers that never got the final tick", all.stuck);
    if resumable.chain_breaks > 0 {
        // With the answers' texts, so a failing CI run says which reason it was.
        violations.push(format!(
            "resumes answered recovered: false: {} ({:?})",
            resumable.chain_breaks, resumable.break_reasons
        ));
    }

    let peak_mib = hub.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0;
    let summary = format!(
        "{} committed changes ({} rolled-back writes); {} faults; resumable: lost {}, duplicates {} (max {} per resume), \
         breaks {}; plain: lost {}, missed while away {}; leaked {}; peak hub RSS {:.1} MiB; {}",
        truth.changes(),
        truth.rolled_back_writes,
        fault_log.injected.len(),
        resumable.lost,
        resumable.dup_replayed,
        resumable.max_dup_per_resume,
        resumable.chain_breaks,
        plain.lost,
        plain.missed_unheld,
        all.leaked + all.phantom + all.corrupt,
        peak_mib,
        if violations.is_empty() {
            "OK".to_owned()
        } else {
            format!("{} VIOLATIONS", violations.len())
        }
    );
    for f in &fault_log.injected {
        println!("  fault at {:>6.1} s: {} ({})", f.0, f.1, f.2);
    }
    for v in &violations {
        println!("  violation: {v}");
    }
    let ok = violations.is_empty();
    stats::report(
        "chaos",
        &summary,
        json!({
            "ok": ok,
            "violations": violations,
            "seed": seed,
            "duration_s": (chaos_secs * 10.0).round() / 10.0,
            "setup_s": (setup_secs * 10.0).round() / 10.0,
            "total_s": (began.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "connections": specs.len(),
            "final_tick": final_tick,
            "committed_transactions": truth.txs.len(),
            "committed_changes": truth.changes(),
            "rolled_back_writes": truth.rolled_back_writes,
            "rolled_back_transactions": truth.rolled_back_txs,
            "interrupted_transactions": truth.interrupted,
            "commits_settled_by_lookup": truth.commits_settled,
            "faults": fault_log,
            "hub_starts": hub.starts.load(Ordering::Relaxed),
            "rss_mib": {
                "peak": (peak_mib * 10.0).round() / 10.0,
                "at_start": (baseline_kib as f64 / 102.4).round() / 10.0,
                "subscribers_live": (before_kib as f64 / 102.4).round() / 10.0,
                "at_end": (hub.rss_kib() as f64 / 102.4).round() / 10.0,
            },
            "hostile": hostile,
            "resumable": resumable,
            "plain": plain,
            "sockets": results.iter().map(|r| r.sockets).sum::<u32>(),
            "socket_ends": count_ends(&results),
            "subscribers": reports,
            "log_dir": log_dir,
        }),
    );
    if ok {
        Ok(())
    } else {
        Err(BenchError::Failed(format!(
            "chaos: {} violations",
            violations.len()
        )))
    }
}

fn count_ends(results: &[subscriber::ConnResult]) -> std::collections::BTreeMap<String, u32> {
    let mut ends = std::collections::BTreeMap::new();
    for e in results.iter().flat_map(|r| &r.ends) {
        *ends.entry(e.clone()).or_default() += 1;
    }
    ends
}
