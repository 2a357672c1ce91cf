//! `--max-rate`: a token bucket per user, so one client cannot flood a room.
//!
//! Owns: the arithmetic of the allowance. Must not touch: users, replies (the chat drops
//! a message over the allowance and answers `rate_limited`), the clock (`now_ms` is
//! passed in).

/// Tokens are counted in thousandths, so refills need no floating point.
const MILLI: u64 = 1000;

/// A token bucket: `rate` tokens a second, up to `2 × rate`; a message takes one.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens_milli: u64, // tokens × 1000
    last_ms: u64,      // when it was last refilled
}

impl Bucket {
    /// A full bucket: a new client may send a burst of `2 × rate` at once.
    pub fn full(rate: u32, now_ms: u64) -> Bucket {
        Bucket { tokens_milli: 2 * MILLI * u64::from(rate), last_ms: now_ms }
    }

    /// Takes a token if there is one; `rate` 0 means unlimited.
    pub fn take(&mut self, rate: u32, now_ms: u64) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now_ms.saturating_sub(self.last_ms);
        let cap = 2 * MILLI * u64::from(rate);
        self.tokens_milli = (self.tokens_milli + elapsed * u64::from(rate)).min(cap);
        self.last_ms = now_ms;
        if self.tokens_milli < MILLI {
            return false;
        }
        self.tokens_milli -= MILLI;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_of_twice_the_rate_then_refill() {
        let mut bucket = Bucket::full(2, 0);
        assert!((0..4).all(|_| bucket.take(2, 0)), "a burst of 2 × rate passes");
        assert!(!bucket.take(2, 0));
        assert!(bucket.take(2, 500), "half a second brings one token back");
        assert!(!bucket.take(2, 500));
        assert!(Bucket::full(0, 0).take(0, 0), "rate 0: no limit");
    }
}
