//! The faults, injected one after another at random moments: killing the capture's
//! backend or all of the hub's backends, restarting Postgres (fast shutdown, or a crash
//! with `-m immediate`), SIGTERM and SIGKILL of the hub (restarted on its port), and
//! black holes over some subscribers' connections. Kinds are dealt from a shuffled deck,
//! so a run of N kinds' worth of faults injects every kind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use super::proxy::Proxy;
use super::world::{kill_backends, HubProc};
use crate::env::PgCluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Fault {
    /// pg_terminate_backend of the capture (LISTEN) connection.
    KillCapture,
    /// pg_terminate_backend of every hub connection (capture and pool).
    KillBackends,
    /// `pg_ctl stop -m fast`, then start.
    RestartPostgres,
    /// `pg_ctl stop -m immediate` (crash and WAL recovery), then start.
    CrashPostgres,
    /// SIGTERM the hub (it parks resumable channels and exits 0), start it again.
    HubSigterm,
    /// SIGKILL the hub, start it again.
    HubSigkill,
    /// Black-hole 10-30% of the subscribers' connections for 0.5-6 s, then cut them or
    /// let them flow again.
    BlackHole,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::KillCapture,
        Fault::KillBackends,
        Fault::RestartPostgres,
        Fault::CrashPostgres,
        Fault::HubSigterm,
        Fault::HubSigkill,
        Fault::BlackHole,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillCapture => "kill-capture",
            Fault::KillBackends => "kill-backends",
            Fault::RestartPostgres => "restart-postgres",
            Fault::CrashPostgres => "crash-postgres",
            Fault::HubSigterm => "hub-sigterm",
            Fault::HubSigkill => "hub-sigkill",
            Fault::BlackHole => "black-hole",
        }
    }

    fn needs_own_postgres(self) -> bool {
        matches!(self, Fault::RestartPostgres | Fault::CrashPostgres)
    }
}

/// What the faults act on.
pub struct Targets {
    pub hub: Arc<HubProc>,
    /// `None` with `--database-url`: Postgres is not ours to restart.
    pub pg: Option<Arc<PgCluster>>,
    pub url: String,
    pub proxy: Arc<Proxy>,
}

/// Faults injected, and what went wrong around them.
#[derive(Default, Serialize)]
pub struct FaultLog {
    /// (seconds into the run, fault, what happened).
    pub injected: Vec<(f64, &'static str, String)>,
    pub counts: BTreeMap<&'static str, u32>,
    /// A hub that did not come back ready, a Postgres that did not start, ...
    pub problems: Vec<String>,
}

/// Injects faults of `kinds` until `until`, `mean_gap` seconds apart on average.
pub async fn run_faults(
    t: &Targets,
    kinds: &[Fault],
    mean_gap: f64,
    mut rng: StdRng,
    start: Instant,
    until: Instant,
) -> FaultLog {
    let kinds: Vec<Fault> = kinds
        .iter()
        .copied()
        .filter(|k| t.pg.is_some() || !k.needs_own_postgres())
        .collect();
    let mut log = FaultLog::default();
    let mut deck: Vec<Fault> = Vec::new();
    loop {
        let gap = Duration::from_secs_f64(rng.random_range(0.3..(2.0 * mean_gap - 0.3).max(0.4)));
        let left = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(gap.min(left)).await;
        if gap >= left || kinds.is_empty() {
            return log;
        }
        if deck.is_empty() {
            deck = kinds.clone();
            deck.shuffle(&mut rng);
        }
        let fault = deck.pop().expect("refilled");
        let at = start.elapsed().as_secs_f64();
        let detail = inject(t, fault, &mut rng, &mut log.problems).await;
        log.injected
            .push(((at * 10.0).round() / 10.0, fault.name(), detail));
        *log.counts.entry(fault.name()).or_default() += 1;
        if let Err(e) = t.hub.wait_ready(Duration::from_secs(60)).await {
            log.problems.push(format!("after {}: {e}", fault.name()));
        }
    }
}

async fn inject(t: &Targets, fault: Fault, rng: &mut StdRng, problems: &mut Vec<String>) -> String {
    let pause = Duration::from_millis(rng.random_range(200..2000));
    match fault {
        Fault::KillCapture | Fault::KillBackends => {
            match kill_backends(&t.url, fault == Fault::KillCapture).await {
                Ok(n) => format!("{n} backends terminated"),
                Err(e) => format!("could not kill backends: {e}"),
            }
        }
        Fault::RestartPostgres | Fault::CrashPostgres => {
            let pg = t.pg.clone().expect("filtered: own Postgres");
            let mode = if fault == Fault::RestartPostgres {
                "fast"
            } else {
                "immediate"
            };
            let stopped = {
                let pg = pg.clone();
                tokio::task::spawn_blocking(move || pg.stop(mode)).await
            };
            if let Ok(Err(e)) = &stopped {
                problems.push(format!("pg_ctl stop -m {mode}: {e}"));
            }
            tokio::time::sleep(pause).await;
            match tokio::task::spawn_blocking(move || pg.start_again()).await {
                Ok(Ok(())) => format!("down {} ms", pause.as_millis()),
                other => {
                    problems.push(format!("postgres did not start again: {other:?}"));
                    "postgres did not start again".into()
                }
            }
        }
        Fault::HubSigterm | Fault::HubSigkill => {
            let signal = if fault == Fault::HubSigterm {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            t.hub.stop(signal).await;
            if fault == Fault::HubSigkill {
                tokio::time::sleep(pause / 2).await;
            }
            let started = Instant::now();
            match t.hub.start(Duration::from_secs(60)).await {
                Ok(()) => format!("ready again in {} ms", started.elapsed().as_millis()),
                Err(e) => {
                    problems.push(format!("restart after {}: {e}", fault.name()));
                    "did not come back".into()
                }
            }
        }
        Fault::BlackHole => {
            let share = rng.random_range(0.1..0.3);
            let ids = t.proxy.black_hole(share, rng);
            let hold = Duration::from_millis(rng.random_range(500..6000));
            tokio::time::sleep(hold).await;
            let cut = rng.random_bool(0.6);
            t.proxy.release(&ids, cut);
            format!(
                "{} connections for {} ms, then {}",
                ids.len(),
                hold.as_millis(),
                if cut { "cut" } else { "flowing again" }
            )
        }
    }
}
