//! Which endpoints this hub delivers. Once a tick (a second, or a sixth of the lease if
//! shorter) it reads which endpoints it holds and whether any lease is free (a new
//! endpoint, or a hub that died); every third of the lease, or at once when one is free,
//! it renews and claims in one statement (`realtime.claim_webhooks`). A lease so renewed
//! always has more than half its length left, which with a lease of at least three
//! request timeouts leaves every attempt time to finish inside it. It runs one `webhook::run_endpoint` task per endpoint
//! held, tells each its lease and its row's version, and stops the ones it lost. It also
//! upserts the endpoints the config file declares, and moves lost-data marks from the
//! log holds onto the endpoints, loudly.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::webhook::{run_endpoint, Lease};
use super::{admin, store, ConsumersError, Inner};

const MAX_TICK: Duration = Duration::from_secs(1);
/// How often pruning's lost-data marks are looked for.
const LOST_CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long stopping endpoint tasks may take at shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries at upserting the config file's endpoints before giving up (loudly).
const DECLARE_TRIES: u32 = 10;

struct Running {
    /// Read by the task: renewals and version changes.
    lease: watch::Sender<Lease>,
    stop: CancellationToken,
    join: JoinHandle<()>,
}

pub(super) async fn run_webhooks(inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut tasks: HashMap<String, Running> = HashMap::new();
    let lease = inner.settings.lease;
    let renew_every = lease / 3;
    let mut next_claim = Instant::now();
    let mut next_lost_check = Instant::now();
    let mut declare_tries = if inner.declared.is_empty() {
        DECLARE_TRIES
    } else {
        0
    };
    let mut declared = HashSet::new();
    let tick_every = MAX_TICK.min(lease / 6);
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = inner.poke.notified() => {}
        }
        if declare_tries < DECLARE_TRIES {
            declare_tries += 1;
            match declare(&inner, &mut declared).await {
                Ok(failed) if failed.is_empty() => declare_tries = DECLARE_TRIES,
                Ok(failed) if declare_tries == DECLARE_TRIES => {
                    tracing::error!(endpoints = ?failed,
                        "could not set up these webhook endpoints of the config file; giving up (the others are set up)")
                }
                Ok(_) => {}
                Err(e) if declare_tries == DECLARE_TRIES => {
                    tracing::error!(error = %e, "could not set up the webhooks of the config file; giving up")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not set up the webhooks of the config file yet")
                }
            }
        }
        tasks.retain(|_, t| !t.join.is_finished());
        let started = Instant::now();
        let claim_now = started >= next_claim;
        let held = if claim_now {
            claim(&inner, lease).await
        } else {
            held(&inner).await
        };
        match held {
            Ok((held, free)) => {
                if claim_now {
                    next_claim = started + renew_every;
                    sync(&inner, &mut tasks, held, Some(started + lease));
                } else {
                    sync(&inner, &mut tasks, held, None);
                    if free {
                        next_claim = Instant::now();
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook leases could not be renewed; retrying");
                next_claim = next_claim.min(started + tick_every);
            }
        }
        if started >= next_lost_check {
            next_lost_check = started + LOST_CHECK_EVERY;
            check_lost(&inner).await;
        }
    }
    for t in tasks.values() {
        t.stop.cancel();
    }
    let joins = tasks.into_values().map(|t| t.join);
    if tokio::time::timeout(STOP_TIMEOUT, futures_util::future::join_all(joins))
        .await
        .is_err()
    {
        tracing::warn!("webhook endpoint tasks did not stop in time");
    }
    if let Ok(client) = inner.pool.get().await {
        if let Err(e) = store::release(&client, &inner.node_id).await {
            tracing::debug!(error = %e, "could not release webhook leases");
        }
    }
}

/// Renews and claims: the endpoints held now (with versions) and whether any is free.
async fn claim(
    inner: &Inner,
    lease: Duration,
) -> Result<(Vec<(String, i64)>, bool), ConsumersError> {
    let client = inner.pool.get().await?;
    Ok((
        store::claim(&client, &inner.node_id, lease.as_secs_f64()).await?,
        false,
    ))
}

/// What this hub holds without renewing, and whether some lease is free to claim.
async fn held(inner: &Inner) -> Result<(Vec<(String, i64)>, bool), ConsumersError> {
    let client = inner.pool.get().await?;
    let rows = store::held(&client, &inner.node_id).await?;
    let free = rows.iter().any(|(_, _, mine)| !mine);
    Ok((
        rows.into_iter()
            .filter(|(_, _, mine)| *mine)
            .map(|(name, version, _)| (name, version))
            .collect(),
        free,
    ))
}

/// Starts tasks for endpoints newly held (only with a fresh lease: `until`), tells the
/// others their lease and version, and stops those no longer held.
fn sync(
    inner: &Arc<Inner>,
    tasks: &mut HashMap<String, Running>,
    held: Vec<(String, i64)>,
    until: Option<Instant>,
) {
    let names: HashSet<&str> = held.iter().map(|(n, _)| n.as_str()).collect();
    tasks.retain(|name, t| {
        let keep = names.contains(name.as_str());
        if !keep {
            tracing::info!(endpoint = %name, "webhook lease lost or endpoint dropped");
            t.stop.cancel();
        }
        keep
    });
    for (name, version) in held {
        // Versions only grow: a lower one is another row, the endpoint dropped and created
        // again under this name. Its task starts over (url, secret, cursor).
        if let Some(t) = tasks
            .get(&name)
            .filter(|t| version < t.lease.borrow().version)
        {
            tracing::info!(endpoint = %name, "webhook endpoint created again: delivering it afresh");
            t.stop.cancel();
            tasks.remove(&name);
        }
        if let Some(t) = tasks.get(&name) {
            t.lease.send_if_modified(|l| {
                let before = *l;
                if let Some(until) = until {
                    l.until = until;
                }
                l.version = l.version.max(version);
                *l != before
            });
            continue;
        }
        let Some(until) = until else { continue };
        let (tx, rx) = watch::channel(Lease { until, version });
        let stop = CancellationToken::new();
        let join = tokio::spawn(run_endpoint(inner.clone(), name.clone(), rx, stop.clone()));
        tasks.insert(
            name,
            Running {
                lease: tx,
                stop,
                join,
            },
        );
    }
}

/// Sets up each endpoint of the config file not set up yet (`done`): one that fails (a
/// table that does not exist yet, say) is named in the log and tried again, and holds up
/// none of the others. The names of those that failed, or why none could be tried.
async fn declare(inner: &Inner, done: &mut HashSet<String>) -> Result<Vec<String>, ConsumersError> {
    let client = inner.pool.get().await?;
    let mut failed = Vec::new();
    for w in &inner.declared {
        if done.contains(&w.name) {
            continue;
        }
        match admin::declare(&client, w).await {
            Ok(()) => {
                done.insert(w.name.clone());
                tracing::info!(endpoint = %w.name, "webhook endpoint from the config file set up");
            }
            Err(e) => {
                tracing::warn!(endpoint = %w.name, error = %e,
                    "could not set up this webhook endpoint of the config file yet");
                failed.push(w.name.clone());
            }
        }
    }
    Ok(failed)
}

/// Pruning at the retention cap passed these endpoints' cursors: changes they had not
/// received are gone. Said as an error each time it happens; status and metrics keep
/// saying it until a replay.
async fn check_lost(inner: &Inner) {
    let lost = match inner.pool.get().await {
        Ok(client) => store::mark_lost(&client).await,
        Err(e) => Err(e.into()),
    };
    match lost {
        Ok(names) => {
            for name in names {
                tracing::error!(endpoint = %name,
                    "the change log was pruned at the retention cap past this webhook endpoint's \
                     cursor: changes it had not received are lost (status and metrics show \
                     data_lost until `switchboard webhooks replay`)");
            }
        }
        Err(e) => tracing::debug!(error = %e, "lost-data check failed"),
    }
}
