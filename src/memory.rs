//! Giving memory back to the operating system after a flood. glibc's allocator keeps
//! freed memory in its arenas (one per busy thread) for reuse and returns little of it
//! on its own: after a presence flood the hub stayed at 15x its resting RSS with no
//! connection left. Every `CHECK_EVERY` this task asks the allocator how much it holds
//! free (`mallinfo2`) and, past `TRIM_AT_BYTES`, returns it (`malloc_trim(0)`, which
//! also releases free pages inside the arenas). Measured with `switchboard-bench rss`
//! (BENCHMARKS.md). Other allocators and platforms: nothing to do.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the allocator's free memory is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Free memory held by the allocator beyond which it is returned.
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
            let free = trim::free_bytes();
            (free >= TRIM_AT_BYTES).then(|| {
                let started = std::time::Instant::now();
                trim::release();
                (free, trim::free_bytes(), started.elapsed())
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

    /// Bytes the allocator holds free (in its arenas, not yet returned).
    pub fn free_bytes() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's statistics (glibc >= 2.33).
        let info = unsafe { libc::mallinfo2() };
        info.fordblks
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

    pub fn free_bytes() -> usize {
        0
    }

    pub fn release() {}
}
