//! Judging what every subscriber received against what committed.
//!
//! A channel's observations split into sessions (one per "Subscribed to PostgreSQL").
//! Sessions form *chains*: a plain subscriber's session is a chain of its own; a
//! resumable subscriber's session continues the previous chain unless the hub answered
//! its resume with `recovered: false` (the documented signal to refetch). A chain is one
//! unbroken stream of the log, so it must hold every change it may see between the first
//! and the last tick it received: every committed transaction that began after the first
//! tick committed and committed before the last tick began (`writers::Tx`). Those are
//! *held*; a held change that never arrived is *lost*.
//!
//! Also counted: *leaked* (a change the subscriber may not see — row scope, event or
//! filter — or one that never committed, or a frame whose row differs from the committed
//! one), *duplicates* (allowed only among the frames a resume replays, before its system
//! message; anywhere else a violation), out-of-order changes of one row within a live
//! stream, and *missed* changes outside every chain (a plain subscriber's reconnect gap:
//! not promised).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::model::{Change, Key, Viewer};
use super::subscriber::{ConnResult, ConnSpec, Obs};
use super::writers::Truth;

/// One subscriber's line of the report.
#[derive(Debug, Default, Serialize)]
pub struct SubReport {
    pub sub: usize,
    pub conn: usize,
    pub resumable: bool,
    pub v2: bool,
    pub viewer: String,
    pub binding: String,
    pub sessions: u32,
    pub chains: u32,
    pub received: u64,
    pub held: u64,
    pub lost: u64,
    pub leaked: u64,
    pub phantom: u64,
    pub corrupt: u64,
    pub dup_replayed: u64,
    pub dup_live: u64,
    pub out_of_order: u64,
    pub missed_unheld: u64,
    pub last_tick: i64,
    /// Resume answers other than "recovered" after the first join, with their text.
    pub breaks: Vec<String>,
    /// Joins refused, postgres_changes errors, channels closed by the hub.
    pub refusals: Vec<String>,
    /// The first few changes lost (ticks as `Tick(k)`, writes by stamp).
    pub lost_sample: Vec<String>,
    /// Most duplicates one resume replayed.
    pub max_dup_per_resume: u64,
    pub resumes_recovered: u32,
    /// Changes the hub said its resumes replayed (the `count` of their messages).
    pub replayed: u64,
    /// Breaks, refusals and closes in order, each with the session it followed (printed
    /// for a subscriber the report marks).
    #[serde(skip)]
    pub story: Vec<String>,
}

struct Chain {
    received: HashSet<Key>,
    first_tick: i64,
    last_tick: i64,
}

/// Judges one channel (`obs`) of connection `spec`.
pub fn judge(
    spec: &ConnSpec,
    ch: usize,
    obs: &[Obs],
    truth: &HashMap<Key, Change>,
    txs: &Truth,
    users: usize,
    final_tick: i64,
) -> SubReport {
    let chan = &spec.channels[ch];
    let resumable = spec.resume.is_some();
    let mut r = SubReport {
        sub: chan.sub,
        conn: spec.index,
        resumable,
        v2: spec.v2,
        viewer: match spec.viewer {
            Viewer::User(u) => format!("user{u}"),
            Viewer::Service => "service_role".into(),
        },
        binding: chan.binding.describe(),
        ..SubReport::default()
    };
    let mut chains: Vec<Chain> = Vec::new();
    let mut seen: HashMap<Key, u32> = HashMap::new();
    // Per session: in the replay phase?, last stamp per row in the live phase.
    let mut replay = false;
    let mut last_stamp: HashMap<(u8, i64), i64> = HashMap::new();
    let mut dup_this_resume = 0u64;
    for o in obs {
        match o {
            Obs::Subscribed => {
                r.sessions += 1;
                replay = resumable;
                last_stamp.clear();
                dup_this_resume = 0;
                // Decided below at the resume message; until then it continues the chain.
                if chains.is_empty() || !resumable {
                    chains.push(Chain {
                        received: HashSet::new(),
                        first_tick: i64::MAX,
                        last_tick: i64::MIN,
                    });
                }
            }
            Obs::Resume {
                recovered,
                count,
                message,
            } => {
                r.replayed += count;
                replay = false;
                r.max_dup_per_resume = r.max_dup_per_resume.max(dup_this_resume);
                if *recovered {
                    r.resumes_recovered += 1;
                } else if r.sessions > 1 {
                    r.breaks.push(message.clone());
                    r.story
                        .push(format!("session {}: break: {message}", r.sessions));
                    chains.push(Chain {
                        received: HashSet::new(),
                        first_tick: i64::MAX,
                        last_tick: i64::MIN,
                    });
                }
            }
            Obs::Refused(m) => {
                r.story
                    .push(format!("after session {}: refused: {m}", r.sessions));
                r.refusals.push(m.clone());
            }
            Obs::Closed(m) => {
                r.story
                    .push(format!("after session {}: closed: {m}", r.sessions));
                r.refusals.push(format!("channel closed by the hub ({m})"));
            }
            Obs::Tick(_) | Obs::Change { .. } => {
                let key = match o {
                    Obs::Tick(k) => Key::Tick(*k),
                    Obs::Change { key, .. } => *key,
                    _ => unreachable!("matched above"),
                };
                r.received += 1;
                let n = seen.entry(key).or_default();
                *n += 1;
                if *n > 1 {
                    if replay {
                        r.dup_replayed += 1;
                        dup_this_resume += 1;
                    } else {
                        r.dup_live += 1;
                    }
                }
                let Some(chain) = chains.last_mut() else {
                    continue;
                };
                chain.received.insert(key);
                if let Obs::Tick(k) = o {
                    chain.first_tick = chain.first_tick.min(*k);
                    chain.last_tick = chain.last_tick.max(*k);
                    r.last_tick = r.last_tick.max(*k);
                    continue;
                }
                let Obs::Change { op, table, row, .. } = o else {
                    continue;
                };
                let Some(c) = truth.get(&key) else {
                    r.phantom += 1;
                    continue;
                };
                if !chan.binding.sees(spec.viewer, users, c) {
                    r.leaked += 1;
                }
                if c.op != *op || c.table != *table || row.is_some_and(|row| row != c.row) {
                    r.corrupt += 1;
                }
                if let (false, Key::Write(stamp)) = (replay, key) {
                    let last = last_stamp.entry((c.table as u8, c.row.id)).or_insert(0);
                    if stamp <= *last {
                        r.out_of_order += 1;
                    }
                    *last = (*last).max(stamp);
                }
            }
        }
    }
    r.chains = chains.len() as u32;
    let mut held_anywhere: HashSet<Key> = HashSet::new();
    for chain in chains.iter().filter(|c| c.first_tick <= c.last_tick) {
        for k in chain.first_tick..=chain.last_tick {
            r.held += 1;
            if !chain.received.contains(&Key::Tick(k)) {
                r.lost += 1;
                if r.lost_sample.len() < 5 {
                    r.lost_sample.push(format!("{:?}", Key::Tick(k)));
                }
            }
        }
        for tx in txs
            .txs
            .iter()
            .filter(|t| t.after_tick >= chain.first_tick && t.before_tick <= chain.last_tick)
        {
            for c in tx
                .changes
                .iter()
                .filter(|c| chan.binding.sees(spec.viewer, users, c))
            {
                r.held += 1;
                held_anywhere.insert(c.key());
                if !chain.received.contains(&c.key()) {
                    r.lost += 1;
                    if r.lost_sample.len() < 5 {
                        r.lost_sample.push(format!("{:?}", c.key()));
                    }
                }
            }
        }
    }
    r.missed_unheld = txs
        .txs
        .iter()
        .flat_map(|t| &t.changes)
        .filter(|c| chan.binding.sees(spec.viewer, users, c))
        .filter(|c| !held_anywhere.contains(&c.key()) && !seen.contains_key(&c.key()))
        .count() as u64;
    if r.last_tick < final_tick {
        r.refusals
            .push(format!("never reached the final tick {final_tick}"));
    }
    r
}

/// Every subscriber's report, in subscriber order.
pub fn judge_all(
    specs: &[std::sync::Arc<ConnSpec>],
    results: &[ConnResult],
    truth: &Truth,
    users: usize,
    final_tick: i64,
) -> Vec<SubReport> {
    let by_key: HashMap<Key, Change> = truth
        .txs
        .iter()
        .flat_map(|t| &t.changes)
        .map(|c| (c.key(), *c))
        .collect();
    let mut out: Vec<SubReport> = results
        .iter()
        .flat_map(|res| {
            let spec = &specs[res.index];
            res.obs
                .iter()
                .enumerate()
                .map(|(ch, obs)| judge(spec, ch, obs, &by_key, truth, users, final_tick))
        })
        .collect();
    out.sort_by_key(|r| r.sub);
    out
}

/// Totals over a set of subscribers.
#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub subscribers: usize,
    pub received: u64,
    pub held: u64,
    pub lost: u64,
    pub leaked: u64,
    pub phantom: u64,
    pub corrupt: u64,
    pub dup_replayed: u64,
    pub dup_live: u64,
    pub out_of_order: u64,
    pub missed_unheld: u64,
    pub sessions: u64,
    pub chain_breaks: u64,
    pub resumes_recovered: u64,
    pub replayed: u64,
    pub max_dup_per_resume: u64,
    pub stuck: u64,
    /// Break texts and refusal texts with how often they came.
    pub break_reasons: BTreeMap<String, u64>,
    pub refusal_reasons: BTreeMap<String, u64>,
    /// Lost changes with how many subscribers lost each (from the samples).
    pub lost_changes: BTreeMap<String, u64>,
}

pub fn totals<'a>(reports: impl Iterator<Item = &'a SubReport>, final_tick: i64) -> Totals {
    let mut t = Totals::default();
    for r in reports {
        t.subscribers += 1;
        t.received += r.received;
        t.held += r.held;
        t.lost += r.lost;
        t.leaked += r.leaked;
        t.phantom += r.phantom;
        t.corrupt += r.corrupt;
        t.dup_replayed += r.dup_replayed;
        t.dup_live += r.dup_live;
        t.out_of_order += r.out_of_order;
        t.missed_unheld += r.missed_unheld;
        t.sessions += u64::from(r.sessions);
        t.chain_breaks += r.breaks.len() as u64;
        t.resumes_recovered += u64::from(r.resumes_recovered);
        t.replayed += r.replayed;
        t.max_dup_per_resume = t.max_dup_per_resume.max(r.max_dup_per_resume);
        t.stuck += u64::from(r.last_tick < final_tick);
        for b in &r.breaks {
            *t.break_reasons.entry(b.clone()).or_default() += 1;
        }
        for f in &r.refusals {
            *t.refusal_reasons.entry(f.clone()).or_default() += 1;
        }
        for k in &r.lost_sample {
            *t.lost_changes.entry(k.clone()).or_default() += 1;
        }
    }
    t
}
