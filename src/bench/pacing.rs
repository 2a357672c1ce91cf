//! Open-loop pacing for `--rate N`: when each sender's next message is due.
//!
//! Owns: the schedule arithmetic only. Time is a parameter (nanoseconds since sending
//! began); nothing here reads a clock or touches a socket.
//!
//! The `N` messages per second are one global schedule, interleaved across the senders:
//! global message `g` is due at `g / N` seconds and belongs to sender `g % S`. So sender
//! `i`'s `k`-th message is global message `k·S + i`, the senders take turns, and a total
//! rate below the sender count still works (each sender sends less than once a second).
//! The schedule never depends on what was actually sent, so a sender that falls behind
//! sends its backlog as soon as it can, stamped with the time each message was *due*:
//! latency then includes the wait, instead of being hidden (no coordinated omission).

/// Nanoseconds per second.
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The schedule of `rate` messages per second over `senders` senders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacer {
    rate: u64,    // messages per second, all senders together (≥ 1)
    senders: u64, // how many senders share the rate (≥ 1)
}

impl Pacer {
    /// A schedule; `rate` and `senders` are clamped to at least 1.
    pub fn new(rate: u64, senders: u32) -> Pacer {
        Pacer { rate: rate.max(1), senders: u64::from(senders.max(1)) }
    }

    /// How many messages sender `sender` should have sent by `elapsed_ns` after the start
    /// (message 0 is due at once).
    pub fn due(&self, sender: u32, elapsed_ns: u64) -> u64 {
        // Global messages due: g = 0 ..= floor(elapsed · rate / 1e9).
        let last_global = u128::from(elapsed_ns) * u128::from(self.rate) / NANOS_PER_SEC;
        let sender = u128::from(sender);
        if last_global < sender {
            return 0;
        }
        let count = (last_global - sender) / u128::from(self.senders) + 1;
        u64::try_from(count).unwrap_or(u64::MAX)
    }

    /// When sender `sender`'s `k`-th message (counting from 0) is due, in nanoseconds
    /// after the start.
    pub fn due_at(&self, sender: u32, k: u64) -> u64 {
        let global = u128::from(k) * u128::from(self.senders) + u128::from(sender);
        // Ceiling, so that `due(sender, due_at(sender, k))` already counts message k.
        let ns = (global * NANOS_PER_SEC).div_ceil(u128::from(self.rate));
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn one_sender_at_a_thousand_per_second() {
        let p = Pacer::new(1000, 1);
        assert_eq!(p.due(0, 0), 1, "message 0 is due at once");
        assert_eq!(p.due(0, 999_999), 1);
        assert_eq!(p.due(0, 1_000_000), 2);
        assert_eq!(p.due(0, SEC), 1001);
        assert_eq!(p.due_at(0, 0), 0);
        assert_eq!(p.due_at(0, 1), 1_000_000);
    }

    #[test]
    fn senders_share_the_rate_and_take_turns() {
        let p = Pacer::new(10, 3);
        // Global messages 0..=10 are due within the first second: 0,3,6,9 | 1,4,7,10 | 2,5,8.
        assert_eq!([p.due(0, SEC), p.due(1, SEC), p.due(2, SEC)], [4, 4, 3]);
        for t in (0..5 * SEC).step_by(7_777_777) {
            let total: u64 = (0..3).map(|i| p.due(i, t)).sum();
            assert_eq!(total, t * 10 / SEC + 1, "t = {t}");
        }
        assert_eq!(p.due_at(1, 0), SEC / 10, "sender 1 starts one slot later");
        assert_eq!(p.due_at(0, 1), 3 * SEC / 10);
    }

    #[test]
    fn due_at_is_the_first_instant_due_counts_it() {
        for (rate, senders) in [(1, 1), (7, 3), (1000, 10), (123_457, 4), (3, 5)] {
            let p = Pacer::new(rate, senders);
            for sender in 0..senders {
                for k in 0..50 {
                    let at = p.due_at(sender, k);
                    assert_eq!(p.due(sender, at), k + 1, "rate {rate} senders {senders} sender {sender} k {k}");
                    if at > 0 {
                        assert_eq!(p.due(sender, at - 1), k, "rate {rate} sender {sender} k {k}");
                    }
                }
            }
        }
    }

    #[test]
    fn rate_below_the_sender_count() {
        let p = Pacer::new(2, 4);
        assert_eq!(p.due(3, SEC), 0, "global messages 0,1,2 go to senders 0,1,2");
        assert_eq!(p.due(3, 3 * SEC / 2), 1);
        assert_eq!(p.due_at(3, 0), 3 * SEC / 2);
    }

    #[test]
    fn no_overflow_at_extremes() {
        let p = Pacer::new(u64::MAX, 1);
        assert_eq!(p.due(0, u64::MAX), u64::MAX);
        let slow = Pacer::new(1, 1);
        assert_eq!(slow.due_at(0, u64::MAX), u64::MAX);
    }
}
