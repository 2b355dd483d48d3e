//! The processes the chaos run hurts: the hub (the real binary, restarted on the same
//! port after SIGTERM or SIGKILL, its peak RSS sampled) and an admin connection for
//! killing its Postgres backends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::env::{http_get, stop_child, SECRET, STOP_WITHIN};
use crate::BenchError;

/// The hub process, restartable on its address.
pub struct HubProc {
    pub addr: SocketAddr,
    bin: PathBuf,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    child: Mutex<Option<Child>>,
    /// The running process's pid (0 while down), for the RSS sampler.
    pub pid: AtomicU32,
    /// The highest `VmHWM` seen of any hub process, in KiB.
    pub peak_kib: AtomicU64,
    pub starts: AtomicU32,
    /// Exits nobody asked for, and SIGTERMs that did not exit 0.
    pub surprises: Mutex<Vec<String>>,
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl HubProc {
    pub fn new(
        bin: PathBuf,
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> Result<HubProc, BenchError> {
        let port = crate::env::free_port()?;
        Ok(HubProc {
            addr: format!("127.0.0.1:{port}").parse().expect("valid address"),
            bin,
            env,
            log_dir: log_dir.to_owned(),
            child: Mutex::new(None),
            pid: AtomicU32::new(0),
            peak_kib: AtomicU64::new(0),
            starts: AtomicU32::new(0),
            surprises: Mutex::new(Vec::new()),
        })
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the binary and waits until `/ready` answers 200 (at most `within`).
    pub async fn start(&self, within: Duration) -> Result<(), BenchError> {
        let n = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
        let log = std::fs::File::create(self.log_dir.join(format!("hub-{n}.log")))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .env("SWITCHBOARD_LISTEN", self.addr.to_string())
            .env("SWITCHBOARD_JWT_SECRET", SECRET)
            .env("SWITCHBOARD_SHUTDOWN_DEADLINE_SECS", "5")
            .env("SWITCHBOARD_INSPECTOR", "false")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::Setup(format!("cannot start {}: {e}", self.bin.display())))?;
        self.pid.store(child.id(), Ordering::Relaxed);
        *self.child() = Some(child);
        self.wait_ready(within).await
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + within;
        while http_get(self.addr, "/ready").await.ok().map(|(c, _)| c) != Some(200) {
            if Instant::now() > deadline {
                return Err(BenchError::Setup(format!(
                    "hub not ready within {within:?} (logs in {})",
                    self.log_dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Reads the running hub's peak RSS into `peak_kib`; notes an exit nobody asked for.
    pub fn sample(&self) {
        let mut guard = self.child();
        let Some(child) = guard.as_mut() else { return };
        if let Ok(Some(status)) = child.try_wait() {
            self.surprises
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("hub exited by itself: {status}"));
            *guard = None;
            self.pid.store(0, Ordering::Relaxed);
            return;
        }
        let pid = child.id();
        self.peak_kib
            .fetch_max(vm_kib(pid, "VmHWM:"), Ordering::Relaxed);
    }

    /// The running hub's RSS in KiB (0 while down).
    pub fn rss_kib(&self) -> u64 {
        match self.pid.load(Ordering::Relaxed) {
            0 => 0,
            pid => vm_kib(pid, "VmRSS:"),
        }
    }

    /// Sends `signal` (`libc::SIGTERM` or `SIGKILL`) and waits for the exit
    /// (`env::stop_child`). A SIGTERM must end in exit 0 within the shutdown deadline
    /// (plus slack).
    pub async fn stop(&self, signal: i32) {
        self.sample();
        let Some(child) = self.child().take() else {
            return;
        };
        self.pid.store(0, Ordering::Relaxed);
        let waited = stop_child(child, signal).await;
        if signal == libc::SIGTERM && !waited.is_some_and(|s| s.success()) {
            self.surprises
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!(
                    "SIGTERM did not end in exit 0 within {STOP_WITHIN:?}: {waited:?}"
                ));
        }
    }

    /// Samples the hub's memory every 200 ms until `stop`.
    pub async fn run_sampler(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        while !stop.is_cancelled() {
            tokio::select! { _ = tick.tick() => self.sample(), _ = stop.cancelled() => return }
        }
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Terminates the hub's Postgres backends: the capture's alone, or every backend of the
/// database that is not the load's own (`chaos-*`) or this one. Returns how many.
pub async fn kill_backends(url: &str, capture_only: bool) -> Result<i64, BenchError> {
    let stop = CancellationToken::new();
    let connect = super::writers::connect(url, "chaos-admin", &stop);
    let Ok(Some(c)) = tokio::time::timeout(Duration::from_secs(5), connect).await else {
        return Ok(0);
    };
    let sql = if capture_only {
        "select count(pg_terminate_backend(pid)) from pg_stat_activity \
         where datname = current_database() and application_name = $1"
    } else {
        "select count(pg_terminate_backend(pid)) from pg_stat_activity \
         where datname = current_database() and pid <> pg_backend_pid() \
         and backend_type = 'client backend' and application_name not like $1"
    };
    let arg = if capture_only {
        switchboard::capture::APPLICATION_NAME
    } else {
        "chaos-%"
    };
    Ok(c.query_one(sql, &[&arg]).await?.get(0))
}
