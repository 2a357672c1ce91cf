//! The sending side of `bench fanout`: what each sender has sent and may send next.
//!
//! Owns: each sender's next sequence number, the open-loop schedule or the closed-loop
//! window, the payload template and the send-lag histogram. Must not touch: what
//! arrives (the ack rings are read, never written, here).

use hdrhistogram::Histogram;

use super::{FanoutArgs, Rate, Timeline, MAX_SENDS_PER_TURN, PACED_OUTBOX_CAP};
use crate::bench::pacing::Pacer;
use crate::bench::pool::Pool;
use crate::bench::report;
use crate::bench::stamp::{Encoding, Stamp};
use crate::bench::track::AckRing;

/// The sending side: what each sender has sent and may send next.
pub(super) struct Senders {
    keys: Vec<usize>,                // pool key of each sender (members 0..S)
    pub(super) sent: Vec<u64>,       // messages each sender has sent (its next seq)
    pub(super) measured_sends: u64,  // messages queued within the measured interval
    pub(super) pacer: Option<Pacer>, // the open-loop schedule, or None for the closed loop
    window: u64,                     // closed loop: messages in flight per sender
    template: Vec<u8>,               // the payload; its stamp is rewritten per message
    encoding: Encoding,              // binary or text
    t0: u64,                         // when sending began, bench time
    measure: std::ops::Range<u64>,   // the measured interval, bench time
    pub(super) lag: Histogram<u64>,  // open loop: how late each message left, in µs
}

impl Senders {
    /// Nothing sent yet; `keys` are the senders' pool keys, in sender order.
    pub(super) fn new(args: &FanoutArgs, keys: Vec<usize>, timeline: &Timeline) -> Senders {
        let senders = args.senders;
        Senders {
            keys,
            sent: vec![0; senders as usize],
            measured_sends: 0,
            pacer: match args.rate {
                Rate::PerSec(n) => Some(Pacer::new(n, senders)),
                Rate::Max => None,
            },
            window: u64::from(args.window),
            template: args.payload.template(args.size),
            encoding: args.encoding,
            t0: timeline.t0,
            measure: timeline.measure_from..timeline.measure_to,
            lag: report::latency_histogram(),
        }
    }

    /// Phase 1 of a turn: queues what each sender may send at `now`, by the window
    /// (closed loop) or the schedule (open loop). Returns when the next paced message
    /// is due (`u64::MAX` for the closed loop, which is woken by deliveries instead).
    pub(super) fn queue(&mut self, pool: &mut Pool, rings: &[AckRing], now: u64) -> u64 {
        let mut next_due = u64::MAX;
        let opcode = self.encoding.opcode();
        for (s, &key) in self.keys.iter().enumerate() {
            let sender = s as u32; // < S ≤ MAX_CONNECTIONS
            let limit = match (self.pacer, rings.get(s)) {
                (Some(p), _) => p.due(sender, now - self.t0),
                (None, Some(ring)) => ring.acked() + self.window,
                (None, None) => 0, // cannot happen: the closed loop has a ring per sender
            };
            let limit = limit.min(self.sent[s] + MAX_SENDS_PER_TURN);
            let mut backed_up = false;
            while self.sent[s] < limit {
                if self.pacer.is_some() && pool.unsent(key) > PACED_OUTBOX_CAP {
                    backed_up = true; // the server is not reading: wait; the schedule keeps the debt
                    break;
                }
                let sent_ns = match self.pacer {
                    None => now,
                    Some(p) => self.t0 + p.due_at(sender, self.sent[s]),
                };
                Stamp { sender, seq: self.sent[s], sent_ns }.write(self.encoding, &mut self.template);
                if !pool.send(key, opcode, &self.template) {
                    break; // this sender's connection ended; counted among lost members
                }
                self.sent[s] += 1;
                if self.measure.contains(&now) {
                    self.measured_sends += 1;
                    if self.pacer.is_some() {
                        self.lag.saturating_record((now - sent_ns) / 1000);
                    }
                }
            }
            if let (Some(p), false) = (self.pacer, backed_up) {
                // A backed-up sender is woken by its socket draining, not by the schedule.
                next_due = next_due.min(self.t0 + p.due_at(sender, self.sent[s]));
            }
        }
        next_due
    }
}
