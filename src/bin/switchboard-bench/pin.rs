//! `--pin`: the hub and Postgres (and the null hub, the floor or Redis standing beside
//! it) on one set of CPUs, the load generator (this process: clients and writers) on the
//! other, so neither side's figures include the other's scheduling. With two CPUs: CPU 0
//! for the hub side, CPU 1 for the load generator. Processes are moved as soon as they
//! are started (every thread; what they start later inherits the set).

use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::BenchError;

/// The two CPU sets, or `None` when not pinning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinning {
    pub hub: CpuSet,
    pub load: CpuSet,
}

/// A set of CPU numbers below 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSet(u64);

impl CpuSet {
    fn to_libc(self) -> libc::cpu_set_t {
        // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut set);
            for cpu in 0..64 {
                if self.0 & (1 << cpu) != 0 {
                    libc::CPU_SET(cpu, &mut set);
                }
            }
            set
        }
    }

    /// `0-1,3` style, for the report.
    pub fn describe(self) -> String {
        (0..64)
            .filter(|c| self.0 & (1u64 << c) != 0)
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

static PINNED: OnceLock<Pinning> = OnceLock::new();

/// Pins this process to the load generator's CPUs; from now on [`hub_side`] and
/// [`postgres`] move what the scenario starts to the hub's.
pub fn enable() -> Result<(), BenchError> {
    let p = Pinning::split()?;
    p.pin_self()?;
    let _ = PINNED.set(p);
    Ok(())
}

/// Moves process `pid` to the hub's CPUs when pinning.
pub fn hub_side(pid: u32) -> Result<(), BenchError> {
    match PINNED.get() {
        Some(p) => p.pin_hub_side(pid),
        None => Ok(()),
    }
}

/// Moves the Postgres cluster in `data_dir` to the hub's CPUs when pinning.
pub fn postgres(data_dir: &std::path::Path) -> Result<(), BenchError> {
    match PINNED.get() {
        Some(p) => p.pin_postgres(data_dir),
        None => Ok(()),
    }
}

/// The CPU sets, for the JSON record.
pub fn describe() -> Value {
    match PINNED.get() {
        Some(p) => json!({"hub_cpus": p.hub.describe(), "load_cpus": p.load.describe()}),
        None => Value::Null,
    }
}

impl Pinning {
    /// Splits the CPUs this process may use in two halves (the first for the hub side).
    pub fn split() -> Result<Pinning, BenchError> {
        let cpus: Vec<usize> = allowed_cpus()?;
        if cpus.len() < 2 {
            return Err(BenchError::Setup(format!(
                "--pin needs at least two CPUs, this process may use {}",
                cpus.len()
            )));
        }
        let half = cpus.len() / 2;
        let mask = |cs: &[usize]| CpuSet(cs.iter().fold(0u64, |m, c| m | (1u64 << c)));
        Ok(Pinning {
            hub: mask(&cpus[..half]),
            load: mask(&cpus[half..]),
        })
    }

    /// Moves every thread of this process to the load generator's CPUs (threads started
    /// later inherit it from the thread that starts them).
    pub fn pin_self(&self) -> Result<(), BenchError> {
        for task in std::fs::read_dir("/proc/self/task")? {
            let tid: i32 = task?
                .file_name()
                .to_string_lossy()
                .parse()
                .map_err(|_| BenchError::Setup("unreadable /proc/self/task".into()))?;
            set_affinity(tid, self.load)?;
        }
        Ok(())
    }

    /// Moves every thread of process `pid` to the hub's CPUs (threads and processes it
    /// starts later inherit that).
    pub fn pin_hub_side(&self, pid: u32) -> Result<(), BenchError> {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            if let Ok(tid) = task?.file_name().to_string_lossy().parse::<i32>() {
                // A thread may end meanwhile; that is fine.
                let _ = set_affinity(tid, self.hub);
            }
        }
        Ok(())
    }

    /// Moves a Postgres cluster (its postmaster, whose future backends inherit the set,
    /// and every process it has started) to the hub's CPUs.
    pub fn pin_postgres(&self, data_dir: &std::path::Path) -> Result<(), BenchError> {
        let pid_file = std::fs::read_to_string(data_dir.join("postmaster.pid"))?;
        let postmaster: u32 = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| BenchError::Setup("unreadable postmaster.pid".into()))?;
        self.pin_hub_side(postmaster)?;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if parent_of(pid) == Some(postmaster) {
                self.pin_hub_side(pid)?;
            }
        }
        Ok(())
    }
}

/// The parent pid of `pid`, from /proc/<pid>/stat.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Result<Vec<usize>, BenchError> {
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok((0..64).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

fn set_affinity(tid: i32, cpus: CpuSet) -> Result<(), BenchError> {
    let set = cpus.to_libc();
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}
