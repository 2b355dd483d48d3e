//! `idle`: N sockets that only heartbeat, spread over `--procs` child processes (each
//! process may hold 20,000 files). Reports the hub's RSS and the kernel's TCP socket
//! memory per connection.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::run::Clients;
use crate::stats::{report, rss_kib, tcp_mem_bytes};
use crate::ws::{self, JoinSpec};
use crate::{BenchError, Common};

#[derive(Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Idle sockets in total.
    #[arg(long, default_value_t = 18_000)]
    pub connections: usize,
    /// Client processes sharing them.
    #[arg(long, default_value_t = 2)]
    pub procs: usize,
    /// Each socket also joins one channel (`realtime:idle<i % 100>`).
    #[arg(long)]
    pub join: bool,
}

#[derive(Args)]
pub struct ChildArgs {
    #[arg(long)]
    hub: SocketAddr,
    #[arg(long)]
    secret: String,
    #[arg(long)]
    first: usize,
    #[arg(long)]
    count: usize,
    #[arg(long)]
    parallel: usize,
    #[arg(long)]
    join: bool,
}

pub async fn idle(a: IdleArgs) -> Result<(), BenchError> {
    let c = &a.common;
    let setup = c
        .setup(
            false,
            0,
            vec![("SWITCHBOARD_IDLE_TIMEOUT_SECS", "600".into())],
        )
        .await?;
    let hub = &setup.hub;
    let pid = hub
        .pid
        .ok_or_else(|| BenchError::Setup("idle needs a hub this program starts (RSS)".into()))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss0, sock0) = (rss_kib(pid), tcp_mem_bytes());
    let cpu0 = crate::stats::cpu_seconds(pid);
    let started = Instant::now();
    let share = a.connections.div_ceil(a.procs);
    let mut children = Vec::new();
    for k in 0..a.procs {
        let first = k * share;
        let count = share.min(a.connections.saturating_sub(first));
        if count == 0 {
            break;
        }
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "idle-child",
            "--hub",
            &hub.addr.to_string(),
            "--secret",
            &hub.secret,
        ])
        .args(["--first", &first.to_string(), "--count", &count.to_string()])
        .args(["--parallel", &c.parallel.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        if a.join {
            cmd.arg("--join");
        }
        children.push(cmd.spawn()?);
    }
    // Each child prints one line once all its sockets are open (or an error).
    let mut opened = 0usize;
    for child in &mut children {
        let stdout = child.stdout.take().expect("piped stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            line
        })
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
        match line.trim().strip_prefix("ready ") {
            Some(n) => opened += n.parse::<usize>().unwrap_or(0),
            None => {
                return Err(BenchError::Setup(format!(
                    "idle child failed: {}",
                    line.trim()
                )))
            }
        }
    }
    let setup_secs = started.elapsed().as_secs_f64();
    // No deliveries here: what the hub spent per connection opened (and joined).
    let setup_us = crate::stats::us_per(crate::stats::cpu_seconds(pid) - cpu0, opened as u64);
    // Let the hub's allocator settle before reading.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss1, sock1) = (rss_kib(pid), tcp_mem_bytes());
    let per_conn_rss = (rss1.saturating_sub(rss0) * 1024) as f64 / opened.max(1) as f64;
    // Both ends of every socket are on this machine: the kernel figure covers 2 sockets.
    let per_conn_sock = sock1.saturating_sub(sock0) as f64 / opened.max(1) as f64;
    for mut child in children {
        drop(child.stdin.take());
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    }
    let summary = format!(
        "{opened} idle sockets (setup {setup_secs:.1} s, hub {setup_us} CPU µs per connection): hub RSS {} -> {} KiB, {:.0} B ({:.2} KiB) per connection; kernel TCP mem {:.0} B per connection (both ends)",
        rss0,
        rss1,
        per_conn_rss,
        per_conn_rss / 1024.0,
        per_conn_sock
    );
    report(
        "idle",
        &summary,
        json!({
            "connections": opened, "procs": a.procs, "joined": a.join, "setup_s": setup_secs,
            "hub_rss_kib_before": rss0, "hub_rss_kib_after": rss1,
            "hub_rss_bytes_per_conn": per_conn_rss.round(),
            "tcp_mem_bytes_before": sock0, "tcp_mem_bytes_after": sock1,
            "tcp_mem_bytes_per_conn": per_conn_sock.round(),
            "hub_cpu_us_per_connection_setup": setup_us,
            "pinned": crate::pin::describe(),
        }),
    );
    Ok(())
}

/// Opens a share of the idle sockets, says `ready <n>`, then holds them (heartbeating)
/// until its stdin closes.
pub async fn child(a: ChildArgs) -> Result<(), BenchError> {
    let hub = crate::env::Hub::external(&a.hub.to_string(), &a.secret)?;
    let join = a.join;
    let opened = ws::open_many(a.hub, a.first, a.count, a.parallel, |i| {
        let token = hub.token(&format!("idle-{}", a.first + i));
        let spec = join.then(|| JoinSpec {
            topic: format!("realtime:idle{}", (a.first + i) % 100),
            changes: vec![],
            presence_key: None,
            access_token: token.clone(),
        });
        (token, spec)
    })
    .await;
    let sockets = match opened {
        Ok(s) => s,
        Err(e) => {
            println!("error {e}");
            return Ok(());
        }
    };
    println!("ready {}", sockets.len());
    let clients = Clients::spawn(sockets, |_| None);
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
    clients.stop().await;
    Ok(())
}
