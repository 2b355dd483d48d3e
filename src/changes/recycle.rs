//! Large per-change buffers kept for the next change. A change matched by 10,000
//! members fills buffers of hundreds of KiB (the matched members, their viewers, row
//! scope's answers). Freed, glibc hands blocks that large back to the kernel, and the
//! next change's first writes fault in fresh pages that the kernel zeroes: up to a fifth
//! of the hub's CPU at 10,000 subscribers (BENCHMARKS.md). A pool keeps a few of them,
//! bounded in bytes, and gives them all back once dispatch has been idle a while.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;

/// Buffers smaller than this are cheap to allocate and are not kept.
const MIN_KEPT_BYTES: usize = 64 * 1024;
/// At most this many bytes of buffers per pool.
const MAX_POOL_BYTES: usize = 4 * 1024 * 1024;

/// A buffer that can be emptied and reused.
pub trait Reusable: Default {
    /// Bytes it holds allocated.
    fn allocated(&self) -> usize;
    fn clear(&mut self);
}

impl<T> Reusable for Vec<T> {
    fn allocated(&self) -> usize {
        self.capacity() * std::mem::size_of::<T>()
    }

    fn clear(&mut self) {
        Vec::clear(self)
    }
}

impl<K: Hash + Eq, V, S: BuildHasher + Default> Reusable for HashMap<K, V, S> {
    fn allocated(&self) -> usize {
        self.capacity() * (std::mem::size_of::<(K, V)>() + 1)
    }

    fn clear(&mut self) {
        HashMap::clear(self)
    }
}

impl<T> Reusable for hashbrown::HashTable<T> {
    fn allocated(&self) -> usize {
        self.capacity() * (std::mem::size_of::<T>() + 1)
    }

    fn clear(&mut self) {
        hashbrown::HashTable::clear(self)
    }
}

/// A bounded pool of emptied buffers of one kind.
pub struct Recycled<T> {
    free: Mutex<Pool<T>>,
}

struct Pool<T> {
    buffers: Vec<T>,
    bytes: usize,
}

impl<T> Default for Recycled<T> {
    fn default() -> Self {
        Recycled {
            free: Mutex::new(Pool {
                buffers: Vec::new(),
                bytes: 0,
            }),
        }
    }
}

impl<T: Reusable> Recycled<T> {
    fn pool(&self) -> std::sync::MutexGuard<'_, Pool<T>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty buffer: a kept one (the most recently given back), else a new one.
    pub fn take(&self) -> T {
        let mut pool = self.pool();
        match pool.buffers.pop() {
            Some(buffer) => {
                pool.bytes -= buffer.allocated();
                buffer
            }
            None => T::default(),
        }
    }

    /// Empties `buffer` (outside the lock) and keeps it if it is large and the pool has
    /// room; otherwise frees it.
    pub fn give(&self, mut buffer: T) {
        let bytes = buffer.allocated();
        if !(MIN_KEPT_BYTES..=MAX_POOL_BYTES).contains(&bytes) {
            return;
        }
        buffer.clear();
        let mut pool = self.pool();
        if pool.bytes + bytes <= MAX_POOL_BYTES {
            pool.bytes += bytes;
            pool.buffers.push(buffer);
        }
    }

    /// Frees every kept buffer.
    pub fn release(&self) {
        let buffers = {
            let mut pool = self.pool();
            pool.bytes = 0;
            std::mem::take(&mut pool.buffers)
        };
        drop(buffers);
    }

    #[cfg(test)]
    fn kept_bytes(&self) -> usize {
        self.pool().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_large_buffer_comes_back_empty_with_its_capacity() {
        let pool: Recycled<Vec<Arc<u64>>> = Recycled::default();
        let item = Arc::new(7);
        let mut v = pool.take();
        v.extend((0..20_000).map(|_| item.clone()));
        let capacity = v.capacity();
        pool.give(v);
        assert_eq!(Arc::strong_count(&item), 1, "emptied when given back");
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity);
        assert_eq!(pool.kept_bytes(), 0, "taken out again");
    }

    #[test]
    fn small_buffers_and_what_goes_past_the_bound_are_freed() {
        let pool: Recycled<Vec<u64>> = Recycled::default();
        pool.give(Vec::with_capacity(16));
        assert_eq!(pool.kept_bytes(), 0, "small: not kept");
        let big = MAX_POOL_BYTES / 8 / 3;
        for _ in 0..4 {
            pool.give(Vec::with_capacity(big));
        }
        assert!(pool.kept_bytes() <= MAX_POOL_BYTES);
        assert_eq!(
            pool.kept_bytes(),
            3 * big * 8,
            "three fit, the fourth is freed"
        );
        pool.release();
        assert_eq!(pool.kept_bytes(), 0);
        assert_eq!(pool.take().capacity(), 0, "released: a new buffer");
    }

    #[test]
    fn maps_are_kept_too() {
        let pool: Recycled<HashMap<u64, u64>> = Recycled::default();
        let mut m = pool.take();
        m.extend((0..10_000).map(|i| (i, i)));
        let capacity = m.capacity();
        pool.give(m);
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity);
    }
}
