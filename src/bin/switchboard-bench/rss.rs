//! `rss`: does memory come back after a flood? Measures the hub's RSS at rest, floods it
//! (connections that join presence-enabled rooms, track a large presence and broadcast,
//! in waves so that every joiner gets a big `presence_state`), closes every connection,
//! and samples RSS for `--after` seconds. Prints baseline, peak and RSS at the end, and
//! the end as a ratio of the baseline (issue 15: within 1.2 a minute after the flood).
//!
//! The baseline is taken after a small warm-up flood (two members per room doing the
//! same things), so that code pages the flood's paths touch once (file-backed RSS,
//! which stays while the process runs) are in both figures. The cold baseline (after
//! one connection) and the anonymous and file-backed parts are printed too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::env::Hub;
use crate::stats::{report, rss_kib, status_kib};
use crate::ws::{self, JoinSpec, Ws};
use crate::{BenchError, Common};

#[derive(Args)]
pub struct RssArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections in the flood (all open at once at its height).
    #[arg(long, default_value_t = 3000)]
    pub connections: usize,
    /// Presence-enabled rooms they spread over.
    #[arg(long, default_value_t = 30)]
    pub rooms: usize,
    /// Bytes of each member's tracked presence.
    #[arg(long, default_value_t = 8192)]
    pub presence_bytes: usize,
    /// Broadcasts each connection sends once joined.
    #[arg(long, default_value_t = 20)]
    pub broadcasts: usize,
    /// Seconds RSS is sampled after the flood ends.
    #[arg(long, default_value_t = 60)]
    pub after: u64,
    /// Run the flood twice, first against a hub with `memory_trim = false`.
    #[arg(long)]
    pub compare_untrimmed: bool,
    /// Give the hub a database (capture, catalog pool), as deployed; the flood itself
    /// does not touch it.
    #[arg(long)]
    pub with_db: bool,
}

/// How often RSS is sampled (peak and the curve after the flood).
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

pub async fn rss(a: RssArgs) -> Result<(), BenchError> {
    let variants: &[bool] = if a.compare_untrimmed {
        &[false, true]
    } else {
        &[true]
    };
    let mut results = Vec::new();
    for &trim in variants {
        let r = run_once(&a, trim).await?;
        results.push(r);
    }
    if let [untrimmed, trimmed] = &results[..] {
        let after = |v: &serde_json::Value| v["after_mib"].as_f64().unwrap_or(0.0);
        report(
            "rss-compare",
            &format!(
                "after {} s: {} MiB untrimmed vs {} MiB trimmed (ratio {:.2})",
                a.after,
                after(untrimmed),
                after(trimmed),
                after(trimmed) / after(untrimmed).max(0.1)
            ),
            json!({"untrimmed": untrimmed, "trimmed": trimmed}),
        );
    }
    Ok(())
}

/// One flood against a fresh hub, with `SWITCHBOARD_MEMORY_TRIM=<trim>`.
async fn run_once(a: &RssArgs, trim: bool) -> Result<serde_json::Value, BenchError> {
    let c = &a.common;
    let setup = c
        .setup(
            a.with_db,
            0,
            vec![
                ("SWITCHBOARD_MAX_MESSAGES_PER_SECOND", "1000".into()),
                ("SWITCHBOARD_IDLE_TIMEOUT_SECS", "600".into()),
                ("SWITCHBOARD_MEMORY_TRIM", trim.to_string()),
            ],
        )
        .await?;
    let hub = &setup.hub;
    let pid = hub
        .pid
        .ok_or_else(|| BenchError::Setup("rss needs a hub this program starts".into()))?;
    // The cold baseline: the hub after one connection came and went, at rest.
    drop(ws::connect(hub.addr, 0, &hub.token("warmup")).await?);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cold = rss_kib(pid);
    // The baseline: after a warm-up flood of two members per room, at rest.
    let warmup = Flood {
        connections: 2 * a.rooms,
        ..Flood::from(a)
    };
    let sockets = warmup
        .run(hub, c.parallel, &Arc::new(AtomicU64::new(0)))
        .await?;
    for mut s in sockets {
        let _ = s.close(None).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline = rss_kib(pid);
    let baseline_split = split(pid);

    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };
    let started = Instant::now();
    let closed = Arc::new(AtomicU64::new(0));
    let sockets = Flood::from(a).run(hub, c.parallel, &closed).await?;
    let flood_secs = started.elapsed().as_secs_f64();
    let at_height = rss_kib(pid);
    for mut s in sockets {
        let _ = s.close(None).await;
    }
    let ended = Instant::now();
    let mut curve = Vec::new();
    while ended.elapsed() < Duration::from_secs(a.after) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        curve.push(json!({"s": ended.elapsed().as_secs(), "rss_kib": rss_kib(pid)}));
    }
    sampler.abort();
    let after = rss_kib(pid);
    let after_split = split(pid);
    let peak = peak.load(Ordering::Relaxed).max(at_height);
    let ratio = after as f64 / baseline.max(1) as f64;
    let mib = |k: u64| (k as f64 / 1024.0 * 10.0).round() / 10.0;
    let fields = json!({
        "memory_trim": trim,
        "with_db": a.with_db,
        "connections": a.connections,
        "rooms": a.rooms,
        "presence_bytes": a.presence_bytes,
        "broadcasts": a.broadcasts,
        "flood_seconds": (flood_secs * 10.0).round() / 10.0,
        "clients_closed_by_hub": closed.load(Ordering::Relaxed),
        "baseline_mib": mib(baseline),
        "peak_mib": mib(peak),
        "after_mib": mib(after),
        "after_seconds": a.after,
        "after_over_baseline": (ratio * 100.0).round() / 100.0,
        "baseline_anon_file_kib": baseline_split,
        "cold_baseline_mib": mib(cold),
        "after_over_cold_baseline": (after as f64 / cold.max(1) as f64 * 100.0).round() / 100.0,
        "after_anon_file_kib": after_split,
        "curve": curve,
    });
    report(
        "rss",
        &format!(
            "memory_trim={}{}: baseline {} MiB (anon {} + file {}), peak {} MiB, after {} s {} MiB (anon {} + file {}; {:.2}x baseline, {:.2}x the cold baseline of {} MiB); {} connections, flood {:.1} s",
            trim,
            if a.with_db { ", with a database" } else { "" },
            mib(baseline),
            mib(baseline_split[0]),
            mib(baseline_split[1]),
            mib(peak),
            a.after,
            mib(after),
            mib(after_split[0]),
            mib(after_split[1]),
            ratio,
            after as f64 / cold.max(1) as f64,
            mib(cold),
            a.connections,
            flood_secs
        ),
        fields.clone(),
    );
    Ok(fields)
}

/// Anonymous and file-backed resident KiB.
fn split(pid: u32) -> [u64; 2] {
    [status_kib(pid, "RssAnon:"), status_kib(pid, "RssFile:")]
}

/// A flood's shape: connections over rooms, each tracking a presence and broadcasting.
struct Flood {
    connections: usize,
    rooms: usize,
    presence_bytes: usize,
    broadcasts: usize,
}

impl From<&RssArgs> for Flood {
    fn from(a: &RssArgs) -> Flood {
        Flood {
            connections: a.connections,
            rooms: a.rooms,
            presence_bytes: a.presence_bytes,
            broadcasts: a.broadcasts,
        }
    }
}

impl Flood {
    /// Opens every connection, then each tracks, broadcasts and reads what the others
    /// send. Returns the sockets still open (`closed` counts those the hub closed).
    async fn run(
        &self,
        hub: &Hub,
        parallel: usize,
        closed: &Arc<AtomicU64>,
    ) -> Result<Vec<Ws>, BenchError> {
        let payload = "x".repeat(self.presence_bytes);
        let token = hub.token("flood");
        let rooms = self.rooms;
        let sockets = ws::open_many(hub.addr, 1, self.connections, parallel, |i| {
            let spec = JoinSpec {
                topic: format!("realtime:rss{}", i % rooms),
                changes: Vec::new(),
                presence_key: Some(format!("m{i}")),
                access_token: token.clone(),
            };
            (token.clone(), Some(spec))
        })
        .await?;
        let flood: Vec<_> = sockets
            .into_iter()
            .enumerate()
            .map(|(i, ws)| {
                let room = i % rooms;
                let members = (self.connections - room).div_ceil(rooms);
                let expected = (members - 1) * self.broadcasts;
                let topic = format!("realtime:rss{room}");
                flood_one(
                    ws,
                    topic,
                    payload.clone(),
                    self.broadcasts,
                    expected,
                    closed.clone(),
                )
            })
            .collect();
        Ok(futures_util::future::join_all(flood)
            .await
            .into_iter()
            .flatten()
            .collect())
    }
}

/// Tracks `payload` in its room, sends `broadcasts` broadcasts and reads until the other
/// members' `expected` broadcasts have arrived (or 30 s). Returns the socket, still open,
/// unless the hub closed it.
async fn flood_one(
    mut ws: Ws,
    topic: String,
    payload: String,
    broadcasts: usize,
    expected: usize,
    closed: Arc<AtomicU64>,
) -> Option<Ws> {
    let track = json!(["1", "2", topic, "presence",
        {"type": "presence", "event": "track", "payload": {"blob": payload}}]);
    let mut out = vec![Message::text(track.to_string())];
    for n in 0..broadcasts {
        let b = json!(["1", (3 + n).to_string(), topic, "broadcast",
            {"type": "broadcast", "event": "flood", "payload": {"n": n, "blob": &payload[..payload.len().min(1024)]}}]);
        out.push(Message::text(b.to_string()));
    }
    for m in out {
        if ws.send(m).await.is_err() {
            closed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    }
    let mut seen = 0;
    let read = async {
        while seen < expected {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"flood\"") => seen += 1,
                Some(Ok(_)) => {}
                _ => return false,
            }
        }
        true
    };
    match tokio::time::timeout(Duration::from_secs(30), read).await {
        Ok(true) | Err(_) => Some(ws),
        Ok(false) => {
            closed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}
