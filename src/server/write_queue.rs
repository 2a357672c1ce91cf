//! A client's outgoing bytes: a queue of shared, already encoded frames.
//!
//! Owns: the order of what this client will be sent, how much of the head is already
//! written, the byte count that the slow-consumer limit is checked against, and the one
//! vectored write that drains it. Must not touch: framing (bytes arrive encoded), other
//! clients, readiness registration (`client.rs` derives interest from `is_empty()`).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use crate::buffers::{Pool, Shared};
use crate::sys::nb::retrying;

/// How many chunks one `writev` call hands to the kernel (Linux takes up to 1024,
/// `IOV_MAX`). 64 keeps the slice array on the stack; a longer queue simply takes another
/// `writev` in the same flush.
const IOVECS_PER_WRITE: usize = 64;

/// A FIFO of shared chunks plus the write offset into the first one.
#[derive(Debug, Default)]
pub struct WriteQueue {
    chunks: VecDeque<Shared>, // what is left to send, oldest first; no allocation while empty
    head_written: usize,      // bytes of `chunks[0]` already written
    bytes: usize,             // unsent bytes in total, for the `--max-queue` check
}

impl WriteQueue {
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Unsent bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Appends a chunk; an empty one is ignored.
    pub fn push(&mut self, chunk: Shared, pool: &mut Pool) {
        if chunk.is_empty() {
            return;
        }
        if self.chunks.capacity() == 0 {
            self.chunks = pool.take_ring();
        }
        self.bytes += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// Drops everything not yet started, keeping a partly written head so the stream
    /// stays framed. Used when a slow consumer is cut off: its backlog goes, its Close
    /// can still follow.
    pub fn truncate_unstarted(&mut self, pool: &mut Pool) {
        let keep = usize::from(self.head_written > 0);
        self.chunks.truncate(keep);
        self.bytes = self.chunks.front().map_or(0, |head| head.len() - self.head_written);
        self.release_if_empty(pool);
    }

    /// Writes as much as the socket takes, several chunks per `writev`.
    ///
    /// Returns the bytes written. Stops at WouldBlock (the caller then asks for WRITABLE
    /// readiness) or when the queue is empty.
    pub fn write_to<W: Write>(&mut self, sink: &mut W, pool: &mut Pool) -> io::Result<usize> {
        let mut total = 0;
        while !self.chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); IOVECS_PER_WRITE];
            let mut count = 0;
            for (i, chunk) in self.chunks.iter().take(IOVECS_PER_WRITE).enumerate() {
                let start = if i == 0 { self.head_written } else { 0 };
                slices[i] = IoSlice::new(&chunk[start..]);
                count += 1;
            }
            let Some(written) = retrying(|| sink.write_vectored(&slices[..count]))? else {
                break; // the kernel buffer is full: WRITABLE readiness will tell us when to go on
            };
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            total += written;
            self.consume(written, pool);
        }
        self.release_if_empty(pool);
        Ok(total)
    }

    /// Advances past `written` bytes, dropping every chunk that is done.
    fn consume(&mut self, mut written: usize, pool: &mut Pool) {
        self.bytes -= written;
        while let Some(head) = self.chunks.front() {
            let left = head.len() - self.head_written;
            if written < left {
                self.head_written += written;
                return;
            }
            written -= left;
            self.head_written = 0;
            if let Some(done) = self.chunks.pop_front() {
                pool.give_chunk(done);
            }
        }
    }

    /// An idle client holds no queue allocation: give the ring back to the pool once
    /// drained.
    fn release_if_empty(&mut self, pool: &mut Pool) {
        if self.chunks.is_empty() && self.chunks.capacity() > 0 {
            pool.give_ring(std::mem::take(&mut self.chunks));
            self.head_written = 0;
        }
    }
}

/// A socket's write side for tests: at most `room` bytes per call and `calls` calls,
/// then WouldBlock, like a kernel buffer that fills up. (Shared with the TLS tests.)
#[cfg(test)]
pub(super) mod sink {
    use std::io::{self, IoSlice, Write};

    pub struct Trickle {
        pub got: Vec<u8>,  // what the peer will read
        pub room: usize,   // bytes accepted per call
        pub calls: usize,  // calls left before WouldBlock
        pub writes: usize, // calls that took bytes
    }

    impl Trickle {
        pub fn new(room: usize, calls: usize) -> Trickle {
            Trickle { got: Vec::new(), room, calls, writes: 0 }
        }

        /// A sink that never blocks.
        pub fn open() -> Trickle {
            Trickle::new(usize::MAX, usize::MAX)
        }
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls -= 1;
            self.writes += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.room - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sink::Trickle;
    use super::*;
    use std::rc::Rc;

    fn shared(bytes: &[u8]) -> Shared {
        Rc::new(bytes.to_vec())
    }

    impl WriteQueue {
        fn push_test(&mut self, chunk: Shared) {
            self.push(chunk, &mut Pool::default());
        }
    }

    #[test]
    fn drained_rings_are_reused_not_reallocated() {
        let mut pool = Pool::default();
        let mut q = WriteQueue::default();
        q.push(shared(b"x"), &mut pool);
        let mut sink = Trickle::new(100, 10);
        q.write_to(&mut sink, &mut pool).unwrap();
        assert_eq!((q.chunks.capacity(), pool.rings()), (0, 1), "the client holds nothing, the pool the ring");
        q.push(shared(b"y"), &mut pool);
        assert_eq!(pool.rings(), 0, "taken back from the pool");
    }

    #[test]
    fn a_chunk_sent_to_everyone_leaves_its_buffer() {
        let mut pool = Pool::default();
        let mut frames = Vec::with_capacity(8 << 10);
        frames.extend_from_slice(b"frames");
        let chunk = Rc::new(frames);
        let (mut a, mut b) = (WriteQueue::default(), WriteQueue::default());
        a.push(Rc::clone(&chunk), &mut pool);
        b.push(chunk, &mut pool);
        let mut sink = Trickle::new(100, 10);
        a.write_to(&mut sink, &mut pool).unwrap();
        assert_eq!(pool.buffers(), 0, "b still holds the chunk");
        b.write_to(&mut sink, &mut pool).unwrap();
        assert_eq!(pool.buffers(), 1, "the last reference gave its buffer back");
        assert_eq!(pool.take_buffer().capacity(), 8 << 10);
        a.push(shared(b"pong"), &mut pool);
        a.write_to(&mut sink, &mut pool).unwrap();
        assert_eq!(pool.buffers(), 0, "a few bytes' buffer is not worth keeping");
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut q = WriteQueue::default();
        q.push_test(shared(b"hello "));
        q.push_test(shared(b"big "));
        q.push_test(shared(b"world"));
        assert_eq!(q.len(), 15);
        let mut sink = Trickle::new(4, 2);
        assert_eq!(q.write_to(&mut sink, &mut Pool::default()).unwrap(), 8);
        assert_eq!(q.len(), 7);
        sink.calls = 100;
        assert_eq!(q.write_to(&mut sink, &mut Pool::default()).unwrap(), 7);
        assert_eq!(sink.got, b"hello big world");
        assert!(q.is_empty());
        assert_eq!(q.chunks.capacity(), 0, "drained queue gives its memory back");
    }

    #[test]
    fn truncate_keeps_a_started_head() {
        let mut q = WriteQueue::default();
        q.push_test(shared(b"abcd"));
        q.push_test(shared(b"efgh"));
        let mut sink = Trickle::new(2, 1);
        q.write_to(&mut sink, &mut Pool::default()).unwrap();
        q.truncate_unstarted(&mut Pool::default());
        assert_eq!(q.len(), 2);
        q.push_test(shared(b"Z"));
        sink.calls = 10;
        sink.room = 100;
        q.write_to(&mut sink, &mut Pool::default()).unwrap();
        assert_eq!(sink.got, b"abcdZ");
    }

    #[test]
    fn truncate_unstarted_drops_all() {
        let mut q = WriteQueue::default();
        q.push_test(shared(b"abcd"));
        q.truncate_unstarted(&mut Pool::default());
        assert!(q.is_empty());
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn more_chunks_than_one_writev_takes() {
        let mut q = WriteQueue::default();
        for i in 0..200u8 {
            q.push_test(shared(&[i]));
        }
        let mut sink = Trickle::new(1000, 100);
        assert_eq!(q.write_to(&mut sink, &mut Pool::default()).unwrap(), 200);
        assert_eq!(sink.got, (0..200u8).collect::<Vec<_>>());
        assert_eq!(sink.calls, 100 - 4, "64 chunks per writev");
    }
}
