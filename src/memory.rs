//! Giving memory back to the operating system after a flood. glibc's allocator keeps
//! freed memory in its arenas (one per busy thread) for reuse and returns little of it
//! on its own: after a presence flood the hub stayed at 15x its resting RSS with no
//! connection left. Every `CHECK_EVERY` this task estimates how much resident memory
//! the allocator holds free (the process's resident set less what `mallinfo2` says is
//! in use) and, past `TRIM_AT_BYTES`, returns it (`malloc_trim(0)`, which also releases
//! free pages inside the arenas). Pages already returned stay counted as free by
//! `mallinfo2`, so its free figure alone would ask for a trim every time. Measured with `switchboard-bench rss`
//! (BENCHMARKS.md). Other allocators and platforms: nothing to do.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the allocator's free memory is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Resident free memory held by the allocator beyond which it is returned.
pub const TRIM_AT_BYTES: usize = 32 * 1024 * 1024;

/// Runs until `shutdown`.
pub async fn run_trimmer(shutdown: CancellationToken) {
    if !trim::SUPPORTED {
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        // Both calls walk the arenas under their locks: off the async workers.
        let done = tokio::task::spawn_blocking(|| {
            let free = trim::resident_free_bytes();
            (free >= TRIM_AT_BYTES).then(|| {
                let started = std::time::Instant::now();
                trim::release();
                (free, trim::resident_free_bytes(), started.elapsed())
            })
        })
        .await;
        if let Ok(Some((before, after, took))) = done {
            tracing::info!(
                free_mib = before / (1024 * 1024),
                kept_mib = after / (1024 * 1024),
                took_ms = took.as_millis() as u64,
                "returned freed memory to the operating system"
            );
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod trim {
    pub const SUPPORTED: bool = true;

    /// Resident bytes not in use by the allocator's callers: the resident set less the
    /// bytes allocated (heap and mmapped). Also counts code and stacks, which are small
    /// next to `TRIM_AT_BYTES`.
    pub fn resident_free_bytes() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's statistics (glibc >= 2.33).
        let info = unsafe { libc::mallinfo2() };
        resident_bytes().saturating_sub(info.uordblks + info.hblkhd)
    }

    /// The resident set (`/proc/self/statm`, second field, in pages).
    fn resident_bytes() -> usize {
        let pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
            .unwrap_or(0);
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        pages * usize::try_from(page).unwrap_or(4096)
    }

    /// Returns free memory of every arena to the operating system.
    pub fn release() {
        // SAFETY: malloc_trim takes the arena locks itself; 0 keeps no padding.
        unsafe { libc::malloc_trim(0) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod trim {
    pub const SUPPORTED: bool = false;

    pub fn resident_free_bytes() -> usize {
        0
    }

    pub fn release() {}
}
