//! `cluster`: broadcast fan-out with every channel's members spread over two hub nodes
//! joined by a local `redis-server`, then the same clients all on one hub (no Redis), in
//! one invocation; prints both windows and the ratio spread/single of deliveries per
//! second. Every member sends `rate` broadcasts per second, as in `broadcast`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use crate::env::{self, Hub, HubSpec};
use crate::run::{Clients, Window};
use crate::stats::{self, report};
use crate::ws::{self, JoinSpec, Sender};
use crate::{pgload, BenchError, Common};

#[derive(Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub common: Common,
    /// Channels.
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    /// Members per channel (half on each node in the spread window).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Broadcasts per second sent by each member.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
}

/// A throwaway `redis-server` on a free loopback port; killed on drop.
struct Redis {
    url: String,
    child: Child,
    dir: PathBuf,
}

impl Redis {
    fn start() -> Result<Redis, BenchError> {
        let port = env::free_port()?;
        let dir = std::env::temp_dir().join(format!("switchboard-bench-redis-{port}"));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Setup(format!("cannot run redis-server: {e}")))?;
        crate::pin::hub_side(child.id())?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err(BenchError::Setup("redis-server not listening".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Redis {
            url: format!("redis://{addr}"),
            child,
            dir,
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hub_bin(c: &Common) -> Result<PathBuf, BenchError> {
    Ok(match &c.hub_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("switchboard"),
    })
}

async fn start_hub(c: &Common, redis_url: Option<&str>) -> Result<Hub, BenchError> {
    let mut env: Vec<(String, String)> = vec![
        (
            "SWITCHBOARD_MAX_MESSAGES_PER_SECOND".into(),
            "1000000".into(),
        ),
        ("SWITCHBOARD_OUTBOX_FRAMES".into(), "65536".into()),
        (
            "SWITCHBOARD_OUTBOX_BYTES".into(),
            (64 * 1024 * 1024).to_string(),
        ),
    ];
    if let Some(url) = redis_url {
        env.push(("SWITCHBOARD_REDIS_URL".into(), url.to_owned()));
    }
    env.extend(c.hub_env.iter().cloned());
    Hub::start(HubSpec {
        bin: &hub_bin(c)?,
        database_url: None,
        env,
    })
    .await
}

/// Waits until `hub` has `peers` synced cluster peers.
async fn wait_peers(hub: &Hub, peers: usize) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let admin = hub.admin_token();
    loop {
        let (_, body) = env::http_get_as(hub.addr, "/api/status", Some(&admin)).await?;
        let s: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let synced = s["cluster"]["peers"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| p["synced"] == true).count());
        if synced == peers && s["cluster"]["state"] == "ok" {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!("cluster not formed: {s}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn cluster(a: ClusterArgs) -> Result<(), BenchError> {
    let c = &a.common;
    if c.hub_url.is_some() {
        return Err(BenchError::Setup(
            "cluster starts its own hubs; --hub-url is not supported".into(),
        ));
    }
    let redis = Redis::start()?;
    let hubs = [
        start_hub(c, Some(&redis.url)).await?,
        start_hub(c, Some(&redis.url)).await?,
    ];
    for h in &hubs {
        wait_peers(h, 1).await?;
    }
    let spread = window(&a, &hubs, Some(redis.child.id())).await?;
    drop(hubs);
    drop(redis);
    let single_hub = [start_hub(c, None).await?];
    let single = window(&a, &single_hub, None).await?;
    drop(single_hub);

    let rate = |w: &Value| w["delivered_per_s"].as_f64().unwrap_or(0.0);
    let ratio = rate(&spread) / rate(&single).max(1.0);
    let summary = format!(
        "{} x {} members at {}/s: two nodes {} deliveries/s ({}, hubs {} CPU µs/delivery), one node {} deliveries/s ({}, hub {} CPU µs/delivery); two/one {ratio:.3}",
        a.channels,
        a.members,
        a.rate,
        spread["delivered_per_s"],
        spread["latency_line"].as_str().unwrap_or(""),
        spread["hub_cpu_us_per_delivery"],
        single["delivered_per_s"],
        single["latency_line"].as_str().unwrap_or(""),
        single["hub_cpu_us_per_delivery"],
    );
    let record = json!({
        "channels": a.channels, "members": a.members, "rate": a.rate,
        "two_nodes": spread, "one_node": single,
        "two_to_one": (ratio * 1000.0).round() / 1000.0,
    });
    report("cluster", &summary, record);
    Ok(())
}

/// One measured window with the members of every channel spread over `hubs` (row `r` of
/// members goes to hub `r % hubs.len()`). `redis_pid`'s CPU is reported too.
async fn window(
    a: &ClusterArgs,
    hubs: &[Hub],
    redis_pid: Option<u32>,
) -> Result<Value, BenchError> {
    let c = &a.common;
    let n = a.channels * a.members;
    let topic = |i: usize| format!("realtime:room{}", i % a.channels);
    let hub_of = |i: usize| (i / a.channels) % hubs.len();
    let mut sockets = Vec::with_capacity(n);
    let mut global = Vec::with_capacity(n);
    for (h, hub) in hubs.iter().enumerate() {
        let mine: Vec<usize> = (0..n).filter(|i| hub_of(*i) == h).collect();
        let spec_of = |k: usize| {
            let i = mine[k];
            let token = hub.token(&pgload::customer_id(i));
            let spec = JoinSpec {
                topic: topic(i),
                changes: vec![],
                presence_key: None,
                access_token: token.clone(),
            };
            (token, Some(spec))
        };
        let offset = global.len();
        sockets.extend(ws::open_many(hub.addr, offset, mine.len(), c.parallel, spec_of).await?);
        global.extend(mine);
    }
    let every = Duration::from_secs_f64(1.0 / a.rate);
    let clients = Clients::spawn(sockets, |j| {
        Some(Sender {
            topic: topic(global[j]),
            every,
            offset: every.mul_f64(rand::random::<f64>()),
        })
    });
    let pids: Vec<u32> = hubs.iter().filter_map(|h| h.pid).chain(redis_pid).collect();
    let cpu0: Vec<f64> = pids.iter().map(|p| stats::cpu_seconds(*p)).collect();
    let sent0 = clients
        .shared
        .sent
        .load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let w = Window::open(&clients, None);
    tokio::time::sleep(c.window()).await;
    let mut out = w.close(&clients);
    let secs = started.elapsed().as_secs_f64();
    let sent = clients
        .shared
        .sent
        .load(std::sync::atomic::Ordering::Relaxed)
        - sent0;
    let cores: Vec<f64> = pids
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| ((stats::cpu_seconds(*p) - c0) / secs * 100.0).round() / 100.0)
        .collect();
    let (hub_cores, redis_cores) = cores.split_at(hubs.len());
    let hub_cpu: f64 = hub_cores.iter().sum::<f64>() * secs;
    out["hub_cpu_us_per_delivery"] = stats::us_per(hub_cpu, out["delivered"].as_u64().unwrap_or(0));
    out["hub_cpu_cores"] = json!(hub_cores);
    out["redis_cpu_cores"] = json!(redis_cores.first());
    out["sent_per_s"] = json!(stats::rate(sent, c.window()));
    out["expected_per_s"] = json!(stats::rate(sent * (a.members as u64 - 1), c.window()));
    clients.stop().await;
    Ok(out)
}
