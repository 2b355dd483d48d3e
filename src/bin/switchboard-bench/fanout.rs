//! Fan-out scenarios, each compared with the null hub in the same invocation:
//! `fanout` (one table, N subscribers, changes at a fixed rate and at saturation) and
//! `broadcast` (C channels x M members sending R messages per second each).

use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use crate::env::Hub;
use crate::nullhub::NullHub;
use crate::pgload::{self, Write, WriteCounts};
use crate::run::{Clients, Window};
use crate::stats::report;
use crate::ws::{self, JoinSpec, Sender};
use crate::{BenchError, Common};

#[derive(Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers on the table.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Changes per second in the latency window.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Postgres connections writing.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Changes per second in the saturation window: enough to exceed what the hub can
    /// deliver, low enough that Postgres leaves the CPU to the hub.
    #[arg(long, default_value_t = 1000.0)]
    pub saturation_rate: f64,
    /// Rows per insert statement in the saturation window (one log row and one commit for
    /// them all), so that Postgres, sharing the machine with the hub and the clients, can
    /// offer more changes than the hub delivers.
    #[arg(long, default_value_t = 10)]
    pub saturation_statement_rows: i64,
    /// Skip the saturation window.
    #[arg(long)]
    pub no_saturation: bool,
    /// Skip the null hub comparison.
    #[arg(long)]
    pub no_nullhub: bool,
}

/// Outboxes large enough that a saturated hub queues instead of cutting clients off.
fn big_outbox() -> Vec<(&'static str, String)> {
    vec![
        ("SWITCHBOARD_OUTBOX_FRAMES", "65536".into()),
        ("SWITCHBOARD_OUTBOX_BYTES", (64 * 1024 * 1024).to_string()),
    ]
}

fn fanout_join(hub: &Hub, i: usize) -> (String, Option<JoinSpec>) {
    let token = hub.token(&pgload::customer_id(i));
    let spec = JoinSpec {
        topic: "realtime:fanout".into(),
        changes: vec![json!({"event": "INSERT", "schema": "public", "table": "bench_events"})],
        presence_key: None,
        access_token: token.clone(),
    };
    (token, Some(spec))
}

pub async fn fanout(a: FanoutArgs) -> Result<(), BenchError> {
    let c = &a.common;
    let setup = c.setup(true, 0, big_outbox()).await?;
    let url = setup.database_url.clone().expect("fanout has a database");
    let hub = &setup.hub;
    let n = a.subscribers;
    let sockets = ws::open_many(hub.addr, 0, n, c.parallel, |i| fanout_join(hub, i)).await?;
    let clients = Clients::spawn(sockets, |_| None);

    // Window 1: the fixed rate, for latency.
    let fixed = changes_window(
        &clients,
        hub.pid,
        &url,
        a.writers,
        Write::Insert,
        a.rate,
        c.window(),
        n as u64,
        Duration::from_secs(30),
    )
    .await?;
    let mut record =
        json!({"subscribers": n, "writers": a.writers, "rate": a.rate, "fixed": fixed});
    let mut summary = format!(
        "{n} subscribers, {} changes/s -> {} deliveries/s, {}, hub {} CPU µs/delivery",
        fixed["committed_per_s"],
        fixed["delivered_per_s"],
        fixed["latency_line"].as_str().unwrap_or(""),
        fixed["hub_cpu_us_per_delivery"],
    );
    if !a.no_saturation {
        let sat = changes_window(
            &clients,
            hub.pid,
            &url,
            a.writers,
            Write::InsertRows(a.saturation_statement_rows),
            a.saturation_rate,
            c.window(),
            n as u64,
            Duration::from_secs(2),
        )
        .await?;
        summary += &format!(
            "; saturation: {} changes/s offered ({} rows per statement) -> {} deliveries/s, \
             hub {} CPU µs/delivery",
            sat["committed_per_s"],
            a.saturation_statement_rows,
            sat["delivered_per_s_while_writing"],
            sat["hub_cpu_us_per_delivery"],
        );
        record["saturation"] = sat;
    }
    let sample = clients.shared.sample.get().cloned();
    clients.stop().await;
    drop(setup);
    if !a.no_nullhub {
        if let Some(sample) = sample {
            let null = null_window(c, n, &sample, |i| {
                (
                    "null".into(),
                    Some(JoinSpec {
                        topic: "realtime:fanout".into(),
                        changes: vec![],
                        presence_key: None,
                        access_token: format!("c{i}"),
                    }),
                )
            })
            .await?;
            let hub_rate = record.get("saturation").unwrap_or(&record["fixed"])["delivered_per_s"]
                .as_f64()
                .unwrap_or(0.0);
            let ratio = hub_rate / null["delivered_per_s"].as_f64().unwrap_or(1.0).max(1.0);
            summary += &format!(
                "; null hub {} deliveries/s ({} CPU µs/delivery), hub/null {ratio:.3}",
                null["delivered_per_s"], null["hub_cpu_us_per_delivery"]
            );
            record["nullhub"] = null;
            record["hub_to_nullhub"] = json!((ratio * 1000.0).round() / 1000.0);
        }
    }
    report("fanout", &summary, record);
    Ok(())
}

/// Writers writing `what` at `rate` changes/s (0: flat out) for `length`, then waits up
/// to `drain_max` for stragglers.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn changes_window(
    clients: &Clients,
    hub_pid: Option<u32>,
    url: &str,
    writers: usize,
    what: Write,
    rate: f64,
    length: Duration,
    receivers: u64,
    drain_max: Duration,
) -> Result<Value, BenchError> {
    let counts = std::sync::Arc::new(WriteCounts::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let before = clients.delivered();
    let w = Window::open(clients, hub_pid);
    let writing = {
        let (url, counts, stop) = (url.to_owned(), counts.clone(), stop.clone());
        tokio::spawn(async move {
            let statements = match what {
                Write::InsertRows(rows) => rate / rows.max(1) as f64,
                _ => rate,
            };
            pgload::run_writers(&url, writers, statements, what, counts, stop).await
        })
    };
    tokio::time::sleep(length).await;
    stop.cancel();
    let _ = writing.await;
    let while_writing = clients.delivered() - before;
    // Changes, not transactions: a statement of `InsertRows` commits many.
    let committed = counts.rows.load(std::sync::atomic::Ordering::Relaxed);
    let statements = counts.commits.load(std::sync::atomic::Ordering::Relaxed);
    let expected = before + committed * receivers;
    let drain = clients
        .drain(expected, Duration::from_secs(3), drain_max)
        .await;
    // The window runs until the last straggler: delivered_per_s is what the hub sustained.
    let mut out = w.close(clients);
    let got = clients.delivered() - before;
    out["delivered_per_s_while_writing"] = json!(crate::stats::rate(while_writing, length));
    out["committed"] = json!(committed);
    out["statements"] = json!(statements);
    out["committed_per_s"] = json!(crate::stats::rate(committed, length));
    out["delivered_total"] = json!(got);
    out["delivered_ratio"] = json!(got as f64 / (committed * receivers).max(1) as f64);
    out["drain_ms"] = json!(drain.as_millis() as u64);
    Ok(out)
}

/// The same clients against the null hub, replaying `sample` as fast as it can.
async fn null_window(
    c: &Common,
    n: usize,
    sample: &tokio_tungstenite::tungstenite::Message,
    spec_of: impl Fn(usize) -> (String, Option<JoinSpec>),
) -> Result<Value, BenchError> {
    let null = NullHub::start().await?;
    crate::pin::hub_side(null.pid())?;
    let sockets = ws::open_many(null.addr, 0, n, c.parallel, spec_of).await?;
    let clients = Clients::spawn(sockets, |_| None);
    let w = Window::open(&clients, Some(null.pid()));
    null.start_blast(sample, c.window()).await?;
    tokio::time::sleep(c.window()).await;
    let out = w.close(&clients);
    clients.stop().await;
    Ok(out)
}

#[derive(Args)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub common: Common,
    /// Channels.
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    /// Members per channel.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Broadcasts per second sent by each member.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Join with presence too (each member tracks nothing; presence is enabled).
    #[arg(long)]
    pub presence: bool,
    /// Skip the null hub comparison.
    #[arg(long)]
    pub no_nullhub: bool,
}

pub async fn broadcast(a: BroadcastArgs) -> Result<(), BenchError> {
    let c = &a.common;
    let hub_env = vec![
        ("SWITCHBOARD_MAX_MESSAGES_PER_SECOND", "1000000".to_owned()),
        ("SWITCHBOARD_OUTBOX_FRAMES", "65536".into()),
        ("SWITCHBOARD_OUTBOX_BYTES", (64 * 1024 * 1024).to_string()),
    ];
    let setup = c.setup(false, 0, hub_env).await?;
    let hub = &setup.hub;
    let n = a.channels * a.members;
    let topic = |i: usize| format!("realtime:room{}", i % a.channels);
    let presence = a.presence;
    let spec_of = |i: usize| {
        let token = hub.token(&pgload::customer_id(i));
        let spec = JoinSpec {
            topic: topic(i),
            changes: vec![],
            presence_key: presence.then(|| format!("m{i}")),
            access_token: token.clone(),
        };
        (token, Some(spec))
    };
    let sockets = ws::open_many(hub.addr, 0, n, c.parallel, spec_of).await?;
    let every = Duration::from_secs_f64(1.0 / a.rate);
    let clients = Clients::spawn(sockets, |i| {
        Some(Sender {
            topic: topic(i),
            every,
            offset: every.mul_f64(rand::random::<f64>()),
        })
    });
    let sent0 = clients
        .shared
        .sent
        .load(std::sync::atomic::Ordering::Relaxed);
    let w = Window::open(&clients, hub.pid);
    tokio::time::sleep(c.window()).await;
    let mut hubw = w.close(&clients);
    let sent = clients
        .shared
        .sent
        .load(std::sync::atomic::Ordering::Relaxed)
        - sent0;
    hubw["sent"] = json!(sent);
    hubw["sent_per_s"] = json!(crate::stats::rate(sent, c.window()));
    hubw["expected_per_s"] = json!(crate::stats::rate(
        sent * (a.members as u64 - 1),
        c.window()
    ));
    let mut summary = format!(
        "{} x {} members at {}/s: sent {}/s -> {} deliveries/s (expected {}), {}, hub {} CPU µs/delivery",
        a.channels,
        a.members,
        a.rate,
        hubw["sent_per_s"],
        hubw["delivered_per_s"],
        hubw["expected_per_s"],
        hubw["latency_line"].as_str().unwrap_or(""),
        hubw["hub_cpu_us_per_delivery"],
    );
    let mut record = json!({"channels": a.channels, "members": a.members, "rate": a.rate, "presence": presence, "hub": hubw});
    let sample = clients.shared.sample.get().cloned();
    clients.stop().await;
    drop(setup);
    if let (false, Some(sample)) = (a.no_nullhub, sample) {
        let null = null_window(c, n, &sample, |i| {
            (
                "null".into(),
                Some(JoinSpec {
                    topic: topic(i),
                    changes: vec![],
                    presence_key: None,
                    access_token: String::new(),
                }),
            )
        })
        .await?;
        let ratio = record["hub"]["delivered_per_s"].as_f64().unwrap_or(0.0)
            / null["delivered_per_s"].as_f64().unwrap_or(1.0).max(1.0);
        summary += &format!(
            "; null hub {} deliveries/s ({} CPU µs/delivery), hub/null {ratio:.3}",
            null["delivered_per_s"], null["hub_cpu_us_per_delivery"]
        );
        record["nullhub"] = null;
        record["hub_to_nullhub"] = json!((ratio * 1000.0).round() / 1000.0);
    }
    report("broadcast", &summary, record);
    Ok(())
}
