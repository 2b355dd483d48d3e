//! Latency histograms and the report every scenario prints: a one-line summary for people
//! and one JSON record for scripts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Microseconds since the Unix epoch (the clock rows and payloads carry).
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A histogram of microseconds, 1 µs to 1 h, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What one client has received: frames carrying a send time, and their latencies.
/// The receiving task is the only writer; the scenario resets and reads between phases.
pub struct ClientStats {
    pub delivered: AtomicU64,
    pub latency: Mutex<Histogram<u64>>,
}

impl ClientStats {
    pub fn new() -> ClientStats {
        ClientStats {
            delivered: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
        }
    }

    /// Records one frame sent at `sent_us`.
    pub fn record(&self, sent_us: i64) {
        let lat = (now_us() - sent_us).max(1) as u64;
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let mut h = self.latency.lock().expect("stats lock");
        h.saturating_record(lat);
    }
}

/// Sum of deliveries over `clients`.
pub fn delivered(clients: &[std::sync::Arc<ClientStats>]) -> u64 {
    clients
        .iter()
        .map(|c| c.delivered.load(Ordering::Relaxed))
        .sum()
}

/// Clears every client's histogram (the delivery counters keep counting).
pub fn reset(clients: &[std::sync::Arc<ClientStats>]) {
    for c in clients {
        c.latency.lock().expect("stats lock").reset();
    }
}

/// All clients' latencies in one histogram.
pub fn merged(clients: &[std::sync::Arc<ClientStats>]) -> Histogram<u64> {
    let mut all = histogram();
    for c in clients {
        let h = c.latency.lock().expect("stats lock");
        all.add(&*h).expect("same bounds");
    }
    all
}

/// p50/p95/p99/max in milliseconds, as JSON.
pub fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
    json!({
        "samples": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p95_ms": ms(h.value_at_quantile(0.95)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

/// One line of latency for the summary.
pub fn latency_line(h: &Histogram<u64>) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.95)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}

/// Per-second rate of `n` events over `elapsed`.
pub fn rate(n: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        (n as f64 / s).round()
    } else {
        0.0
    }
}

/// CPU microseconds per event (one decimal), `null` without events.
pub fn us_per(cpu_seconds: f64, events: u64) -> Value {
    if events == 0 {
        return Value::Null;
    }
    json!((cpu_seconds * 1e7 / events as f64).round() / 10.0)
}

/// Prints the summary line and then the JSON record (`{"scenario": ..., ...}`).
pub fn report(scenario: &str, summary: &str, fields: Value) {
    println!("{scenario}: {summary}");
    let mut rec = Map::new();
    rec.insert("scenario".into(), scenario.into());
    if let Value::Object(f) = fields {
        rec.extend(f);
    }
    println!("{}", Value::Object(rec));
}

/// CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// A process's resident set in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// One `/proc/<pid>/status` field in KiB (`VmRSS:`, `RssAnon:`, `RssFile:` …); 0 if absent.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Kernel TCP socket memory in bytes (`/proc/net/sockstat` `TCP: ... mem <pages>`).
pub fn tcp_mem_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("TCP:")) else {
        return 0;
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "mem")
        .and_then(|w| w[1].parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Busy and total jiffies of the whole machine (`/proc/stat` first line).
pub fn machine_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let nums: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = nums.iter().sum();
    // idle and iowait are the 4th and 5th numbers.
    let idle = nums.get(3).copied().unwrap_or(0) + nums.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU seconds so far of every process named `postgres` (the server and its backends),
/// or, given a postmaster's pid, of that server and its children only (another cluster
/// on the machine, say a test run's, is left out).
pub fn postgres_cpu(postmaster: Option<u32>) -> HashMap<u32, f64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter(|pid| postmaster.is_none_or(|p| *pid == p || parent(*pid) == Some(p)))
        .map(|pid| (pid, cpu_seconds(pid)))
        .collect()
}

/// CPU seconds Postgres processes used since `before` (a backend started since counts
/// whole; one that exited is missed).
pub fn postgres_cpu_since(before: &HashMap<u32, f64>, postmaster: Option<u32>) -> f64 {
    postgres_cpu(postmaster)
        .into_iter()
        .map(|(pid, cpu)| cpu - before.get(&pid).copied().unwrap_or(0.0))
        .sum()
}

/// A process's parent pid, from /proc/<pid>/stat.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}
