//! Driving a set of connected clients through measured windows: spawn their loops,
//! count deliveries and CPU over a window, wait for stragglers, and stop them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::stats::{self, ClientStats};
use crate::ws::{self, Sender, Shared, Ws};

/// Running clients and what they have received.
pub struct Clients {
    pub stats: Vec<Arc<ClientStats>>,
    pub shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Clients {
    /// Starts one loop per socket; `sender_of(i)` says whether client `i` sends broadcasts.
    pub fn spawn(sockets: Vec<Ws>, sender_of: impl Fn(usize) -> Option<Sender>) -> Clients {
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let mut stats_all = Vec::with_capacity(sockets.len());
        let mut tasks = Vec::with_capacity(sockets.len());
        for (i, sock) in sockets.into_iter().enumerate() {
            let st = Arc::new(ClientStats::new());
            stats_all.push(st.clone());
            tasks.push(tokio::spawn(ws::run_client(
                sock,
                st,
                shared.clone(),
                sender_of(i),
                stop.clone(),
            )));
        }
        Clients {
            stats: stats_all,
            shared,
            stop,
            tasks,
        }
    }

    pub fn delivered(&self) -> u64 {
        stats::delivered(&self.stats)
    }

    pub fn closed(&self) -> u64 {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// Waits until `expected` deliveries have arrived or deliveries stop growing for
    /// `quiet` (at most `max`); returns how long it waited.
    pub async fn drain(&self, expected: u64, quiet: Duration, max: Duration) -> Duration {
        let start = Instant::now();
        let mut last = self.delivered();
        let mut last_change = Instant::now();
        while self.delivered() < expected && start.elapsed() < max {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.delivered();
            if now != last {
                last = now;
                last_change = Instant::now();
            } else if last_change.elapsed() > quiet {
                break;
            }
        }
        start.elapsed()
    }

    /// Stops every client loop (each closes its socket) and waits for them.
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Deliveries and CPU over one window.
pub struct Window {
    start: Instant,
    delivered0: u64,
    hub_cpu0: f64,
    self_cpu0: f64,
    machine0: (u64, u64),
    hub_pid: Option<u32>,
}

impl Window {
    /// Starts a window; latency histograms are cleared so they hold only this window.
    pub fn open(clients: &Clients, hub_pid: Option<u32>) -> Window {
        stats::reset(&clients.stats);
        Window {
            start: Instant::now(),
            delivered0: clients.delivered(),
            hub_cpu0: hub_pid.map_or(0.0, stats::cpu_seconds),
            self_cpu0: stats::cpu_seconds(std::process::id()),
            machine0: stats::machine_jiffies(),
            hub_pid,
        }
    }

    /// Closes the window: deliveries per second, CPU use, and the latency figures.
    pub fn close(&self, clients: &Clients) -> Value {
        let elapsed = self.start.elapsed();
        let secs = elapsed.as_secs_f64();
        let delivered = clients.delivered() - self.delivered0;
        let hub_cpu = self.hub_pid.map_or(0.0, stats::cpu_seconds) - self.hub_cpu0;
        let self_cpu = stats::cpu_seconds(std::process::id()) - self.self_cpu0;
        let m1 = stats::machine_jiffies();
        let busy = (m1.0 - self.machine0.0) as f64 / ((m1.1 - self.machine0.1).max(1)) as f64;
        let h = stats::merged(&clients.stats);
        json!({
            "seconds": (secs * 100.0).round() / 100.0,
            "delivered": delivered,
            "delivered_per_s": stats::rate(delivered, elapsed),
            "latency": stats::latency_json(&h),
            "latency_line": stats::latency_line(&h),
            "hub_cpu_cores": ((hub_cpu / secs) * 100.0).round() / 100.0,
            "hub_cpu_us_per_delivery": stats::us_per(hub_cpu, delivered),
            "pinned": crate::pin::describe(),
            "bench_cpu_cores": ((self_cpu / secs) * 100.0).round() / 100.0,
            "machine_busy": (busy * 100.0).round() / 100.0,
            "clients_closed": clients.closed(),
        })
    }
}
