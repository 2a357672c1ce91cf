//! Reusable memory for the hot path: empty queue rings and the byte buffers of chunks
//! every recipient has been sent.
//!
//! Owns: what is kept for reuse and how much. Must not touch: sockets, framing, who gets
//! what. One `Pool` serves the whole loop: the chat's `Outbox` owns it, because that is
//! where new chunks are written (`take_buffer`); write queues give rings and finished
//! chunks back into it as they drain (`give_ring`, `give_chunk`).
//!
//! Why: a queue is emptied and refilled on every turn a client gets something, so
//! without the rings each recipient would cost a `malloc` and a `free` per turn; with
//! them, the hot path allocates nothing per recipient, and an idle client still holds no
//! queue memory (its empty ring is here, shared, not in its slot). Chunk buffers are
//! reused so the next turn's chunks are written into memory that is already mapped,
//! instead of growing and trimming the heap: a fresh 64 KiB chunk per read cost page
//! faults and `brk` calls that were a tenth of the server's time in the 1 KiB fan-out
//! profile.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::rc::Rc;

/// An encoded chunk of frames, built once and shared by every queue it is pushed to.
pub type Shared = Rc<Vec<u8>>;

/// Rings kept at most (each a few hundred bytes), so the pool itself stays small.
const RINGS_MAX: usize = 4096;
/// A ring that grew past this many slots is freed rather than kept.
const RING_CAPACITY_MAX: usize = 64;
/// Chunk buffers kept at most.
const BUFFERS_MAX: usize = 16;
/// The capacities worth keeping: a smaller buffer saves little (a pong's few bytes), a
/// larger one is an outlier (a huge message) not worth holding on to.
const BUFFER_CAPACITY: RangeInclusive<usize> = (4 << 10)..=(256 << 10);

/// Empty rings and empty buffers with their capacity.
#[derive(Debug, Default)]
pub struct Pool {
    rings: Vec<VecDeque<Shared>>, // empty rings, for queues that get their first chunk
    buffers: Vec<Vec<u8>>,        // empty buffers, for the next chunks to be written into
}

impl Pool {
    /// A ring for a queue that is about to hold something.
    pub fn take_ring(&mut self) -> VecDeque<Shared> {
        self.rings.pop().unwrap_or_default()
    }

    /// A drained queue's ring.
    pub fn give_ring(&mut self, ring: VecDeque<Shared>) {
        if self.rings.len() < RINGS_MAX && ring.capacity() <= RING_CAPACITY_MAX {
            debug_assert!(ring.is_empty());
            self.rings.push(ring);
        }
    }

    /// A buffer to write a new chunk into: a kept one if there is one, else a new empty
    /// `Vec` (which allocates when first written).
    pub fn take_buffer(&mut self) -> Vec<u8> {
        self.buffers.pop().unwrap_or_default()
    }

    /// A chunk leaves a queue: if that was its last reference and its buffer is worth
    /// keeping, keep the buffer.
    pub fn give_chunk(&mut self, chunk: Shared) {
        if let Ok(buffer) = Rc::try_unwrap(chunk) {
            self.give_buffer(buffer);
        }
    }

    /// A buffer nobody needs any more (a chunk no recipient took, or one sent to all).
    pub fn give_buffer(&mut self, mut buffer: Vec<u8>) {
        if self.buffers.len() < BUFFERS_MAX && BUFFER_CAPACITY.contains(&buffer.capacity()) {
            buffer.clear();
            self.buffers.push(buffer);
        }
    }

    /// Buffers kept now (for tests and accounting).
    pub fn buffers(&self) -> usize {
        self.buffers.len()
    }

    /// Rings kept now (for tests and accounting).
    pub fn rings(&self) -> usize {
        self.rings.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_buffers_worth_keeping() {
        let mut pool = Pool::default();
        pool.give_buffer(vec![0; 64]); // too small to be worth keeping
        pool.give_buffer(vec![0; 1 << 20]); // an outlier: not held
        pool.give_buffer(Vec::with_capacity(64 << 10));
        assert_eq!(pool.buffers(), 1);
        let buffer = pool.take_buffer();
        assert!(buffer.is_empty() && buffer.capacity() == 64 << 10, "a kept buffer comes back empty");
        assert_eq!(pool.take_buffer().capacity(), 0, "then a fresh one");
    }

    #[test]
    fn a_chunk_returns_its_buffer_only_from_its_last_reference() {
        let mut pool = Pool::default();
        let chunk: Shared = Rc::new(Vec::with_capacity(8 << 10));
        pool.give_chunk(Rc::clone(&chunk));
        assert_eq!(pool.buffers(), 0, "another queue still holds it");
        pool.give_chunk(chunk);
        assert_eq!(pool.buffers(), 1);
    }
}
