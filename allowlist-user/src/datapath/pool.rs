//! Which chunks of a fast table's pool are free.
//!
//! A chunk is filled while it is free (nothing points at it), then published by the
//! single store of the code that points at it. A chunk nothing points at any more may
//! still be read by a program that loaded the old code just before: freed chunks are
//! therefore only handed out again from the next sync on ([`Pool::recycle`]). An XDP
//! run lasts well under a microsecond, in an RCU read-side section with bottom halves
//! off; syncs are a refresh apart (at least the time of the trie updates of a whole
//! sync, milliseconds, and normally minutes).

/// The free and the recently freed chunk numbers of a pool.
#[derive(Debug)]
pub(super) struct Pool {
    /// Free chunks, the lowest number last (taken first).
    free: Vec<u32>,
    /// Freed during this sync: reusable from the next one.
    deferred: Vec<u32>,
    capacity: u32,
}

impl Pool {
    /// A pool of `capacity` chunks of which `used` (a flag per chunk) are in use.
    pub(super) fn new(used: &[bool]) -> Self {
        let free = (0..used.len() as u32)
            .rev()
            .filter(|n| !used[*n as usize])
            .collect();
        Self {
            free,
            deferred: Vec::new(),
            capacity: used.len() as u32,
        }
    }

    /// A free chunk, or `None` when every chunk is in use.
    pub(super) fn take(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// `chunk` is no longer pointed at: free from the next sync on.
    pub(super) fn release_later(&mut self, chunk: u32) {
        debug_assert!(chunk < self.capacity);
        self.deferred.push(chunk);
    }

    /// A new sync starts: the chunks freed by the previous ones become free.
    pub(super) fn recycle(&mut self) {
        self.free.append(&mut self.deferred);
    }

    /// Chunks in use or not yet recycled.
    pub(super) fn in_use(&self) -> usize {
        self.capacity as usize - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_chunks_wait_for_the_next_sync() {
        let mut pool = Pool::new(&[false, true, false]);
        assert_eq!(pool.in_use(), 1);
        assert_eq!(pool.take(), Some(0));
        assert_eq!(pool.take(), Some(2));
        assert_eq!(pool.take(), None);
        pool.release_later(0);
        assert_eq!(pool.take(), None, "not within the same sync");
        pool.recycle();
        assert_eq!(pool.take(), Some(0));
        assert_eq!(pool.in_use(), 3);
    }
}
