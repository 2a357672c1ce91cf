//! Bookkeeping per delivery: which sequence numbers a receiver has seen (loss,
//! duplicates, reordering) and when a sender's message has reached every member (the
//! closed-loop window of `--rate max`).
//!
//! Owns: two small counters, both O(1) per delivery and allocation-free after
//! construction. Must not touch: sockets, clocks, the histogram.

/// How far behind the newest sequence number a late arrival can still be told apart
/// from a duplicate (bits of the `seen` map).
pub const REORDER_WINDOW: u64 = 64;

/// What one receiver has seen of one sender's sequence numbers.
///
/// Keeps the next expected number, a bitmap of the 64 numbers below it (the anti-replay
/// window of IPsec, RFC 4303 §3.4.3) and a count of distinct numbers seen, so loss is
/// `sent - unique` once everything has had time to arrive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqTrack {
    next: u64,   // one past the highest sequence number seen
    seen: u64,   // bit j set: number `next - 1 - j` was seen
    unique: u64, // distinct numbers seen
}

/// How a sequence number compares with what came before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next number, or one beyond a gap (a gap is loss until the missing ones come).
    New,
    /// Below the highest seen and not seen before: out of order, but not lost.
    Late,
    /// Seen before.
    Duplicate,
    /// Further below the highest than the window remembers: counted out of order, and
    /// not as unique (over TCP this never happens).
    TooOld,
}

impl SeqTrack {
    /// Records one arrival of `seq`.
    #[inline]
    pub fn observe(&mut self, seq: u64) -> Arrival {
        if seq == self.next {
            self.seen = self.seen << 1 | 1;
            self.next += 1;
            self.unique += 1;
            return Arrival::New;
        }
        if seq > self.next {
            let shift = seq - self.next + 1;
            self.seen = if shift >= REORDER_WINDOW { 1 } else { self.seen << shift | 1 };
            self.next = seq + 1;
            self.unique += 1;
            return Arrival::New;
        }
        let behind = self.next - 1 - seq;
        if behind >= REORDER_WINDOW {
            return Arrival::TooOld;
        }
        let bit = 1u64 << behind;
        if self.seen & bit != 0 {
            return Arrival::Duplicate;
        }
        self.seen |= bit;
        self.unique += 1;
        Arrival::Late
    }

    /// Distinct sequence numbers seen.
    pub fn unique(&self) -> u64 {
        self.unique
    }
}

/// One sender's messages in flight under `--rate max`: how many members have each of
/// them, so the sender knows how many have reached *every* member.
///
/// A ring of `window` counters indexed by `seq % window`: the sender never has more than
/// `window` messages past `acked`, so their counters never collide.
#[derive(Clone, Debug)]
pub struct AckRing {
    counts: Vec<u32>, // members that have message `seq`, at `seq % window`
    acked: u64,       // messages 0..acked have reached every member
    need: u32,        // members each message must reach
}

impl AckRing {
    /// A ring for `window` messages in flight (≥ 1), each to reach `need` members.
    pub fn new(window: usize, need: u32) -> AckRing {
        AckRing { counts: vec![0; window.max(1)], acked: 0, need }
    }

    /// The first arrival of message `seq` at one member.
    #[inline]
    pub fn delivered(&mut self, seq: u64) {
        let window = self.counts.len() as u64;
        if seq < self.acked || seq >= self.acked + window {
            return; // outside the window: only possible for a misbehaving server
        }
        self.counts[(seq % window) as usize] += 1;
        self.advance();
    }

    /// A member is gone: it will never confirm the messages in flight.
    pub fn member_lost(&mut self) {
        self.need = self.need.saturating_sub(1);
        self.advance();
    }

    /// Messages that have reached every member, from 0 on.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Moves `acked` past every message that has reached all members.
    #[inline]
    fn advance(&mut self) {
        if self.need == 0 {
            return; // every member is gone: nothing can be confirmed, so the sender stalls
        }
        let window = self.counts.len() as u64;
        loop {
            let slot = &mut self.counts[(self.acked % window) as usize];
            if *slot < self.need {
                return;
            }
            *slot = 0;
            self.acked += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream() {
        let mut t = SeqTrack::default();
        for seq in 0..1000 {
            assert_eq!(t.observe(seq), Arrival::New);
        }
        assert_eq!(t.unique(), 1000);
    }

    #[test]
    fn gap_then_late_arrival_then_duplicate() {
        let mut t = SeqTrack::default();
        assert_eq!(t.observe(0), Arrival::New);
        assert_eq!(t.observe(3), Arrival::New, "1 and 2 missing for now");
        assert_eq!(t.unique(), 2);
        assert_eq!(t.observe(1), Arrival::Late);
        assert_eq!(t.observe(1), Arrival::Duplicate);
        assert_eq!(t.observe(3), Arrival::Duplicate);
        assert_eq!(t.observe(0), Arrival::Duplicate);
        assert_eq!(t.unique(), 3, "2 is still lost");
    }

    #[test]
    fn window_edges() {
        let mut t = SeqTrack::default();
        assert_eq!(t.observe(100), Arrival::New);
        assert_eq!(t.observe(100 - REORDER_WINDOW + 1), Arrival::Late, "the oldest the window holds");
        assert_eq!(t.observe(100 - REORDER_WINDOW), Arrival::TooOld);
        assert_eq!(t.observe(100 + REORDER_WINDOW + 5), Arrival::New, "a jump past the whole window");
        assert_eq!(t.observe(100), Arrival::TooOld);
        assert_eq!(t.observe(100 + REORDER_WINDOW + 4), Arrival::Late);
        assert_eq!(t.unique(), 4);
    }

    #[test]
    fn ring_acks_when_every_member_has_it() {
        let mut r = AckRing::new(4, 3);
        r.delivered(0);
        r.delivered(0);
        assert_eq!(r.acked(), 0);
        r.delivered(1);
        r.delivered(1);
        r.delivered(1);
        assert_eq!(r.acked(), 0, "1 is complete but 0 is not");
        r.delivered(0);
        assert_eq!(r.acked(), 2);
        for _ in 0..3 {
            r.delivered(2);
            r.delivered(3);
            r.delivered(4);
            r.delivered(5);
        }
        assert_eq!(r.acked(), 6, "4 and 5 reuse the slots of 0 and 1");
        r.delivered(6 + 4);
        r.delivered(1);
        assert_eq!(r.acked(), 6, "outside the window: ignored");
    }

    #[test]
    fn ring_stops_waiting_for_a_lost_member() {
        let mut r = AckRing::new(8, 2);
        r.delivered(0);
        r.delivered(1);
        assert_eq!(r.acked(), 0);
        r.member_lost();
        assert_eq!(r.acked(), 2);
    }
}
