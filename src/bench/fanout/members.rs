//! The receive side of `bench fanout`: what every member has seen, and, after the
//! drain, what never arrived.
//!
//! Owns: the per-(member, sender) sequence trackers, the closed loop's ack rings, the
//! latency histogram and the delivery counters. Must not touch: sockets or the clock;
//! the pool calls [`Fanout`] with the time it read once per `read(2)`.
//!
//! Receive hot path (`Fanout::on_data`): read the stamp, update one sequence tracker,
//! one ack counter and the histogram. No allocation, no clock read.

use hdrhistogram::Histogram;

use crate::bench::pool::{End, Handler};
use crate::bench::report;
use crate::bench::stamp::Stamp;
use crate::bench::track::{AckRing, Arrival, SeqTrack};
use crate::bench::wire::Frame;

/// The receive side: what every member has seen.
pub(super) struct Fanout {
    senders: u32,                        // S: stamps name senders 0..S
    pub(super) tracks: Vec<SeqTrack>,    // per (member, sender): member × S + sender
    pub(super) rings: Vec<AckRing>,      // per sender, closed loop only (empty when paced)
    pub(super) hist: Histogram<u64>,     // latency in µs of messages sent in the measured interval
    pub(super) measure_from_ns: u64,     // the measured interval, bench time
    pub(super) measure_to_ns: u64,       // (u64::MAX until known)
    pub(super) deliveries: u64,          // stamped data frames received, whole run
    pub(super) measured_deliveries: u64, // of which received within the measured interval
    pub(super) unique: u64,              // distinct (member, sender, seq) received
    pub(super) duplicated: u64,          // a (member, sender, seq) seen again
    pub(super) out_of_order: u64,        // arrived after a higher seq of the same sender
    pub(super) foreign: u64,             // data frames without a bench stamp
    pub(super) members_lost: u32,        // connections that ended during the run
    pub(super) closing: bool,            // the run is over: ends are expected now
}

impl Fanout {
    /// Nothing received yet; measuring starts when the warm-up ends (set by the caller).
    pub(super) fn new(members: usize, senders: u32, rings: Vec<AckRing>) -> Fanout {
        Fanout {
            senders,
            tracks: vec![SeqTrack::default(); members * senders as usize],
            rings,
            hist: report::latency_histogram(),
            measure_from_ns: u64::MAX,
            measure_to_ns: u64::MAX,
            deliveries: 0,
            measured_deliveries: 0,
            unique: 0,
            duplicated: 0,
            out_of_order: 0,
            foreign: 0,
            members_lost: 0,
            closing: false,
        }
    }
}

impl Handler for Fanout {
    #[inline]
    fn on_data(&mut self, tag: u32, frame: &Frame<'_>, now_ns: u64) {
        let Some(stamp) = Stamp::read(frame.prefix) else {
            self.foreign += 1;
            return;
        };
        let slot = tag as usize * self.senders as usize + stamp.sender as usize;
        let (true, Some(track)) = (stamp.sender < self.senders, self.tracks.get_mut(slot)) else {
            self.foreign += 1;
            return;
        };
        let first = match track.observe(stamp.seq) {
            Arrival::New => true,
            Arrival::Late => {
                self.out_of_order += 1;
                true
            }
            Arrival::Duplicate => {
                self.duplicated += 1;
                false
            }
            Arrival::TooOld => {
                self.out_of_order += 1;
                false
            }
        };
        if first {
            self.unique += 1;
            if let Some(ring) = self.rings.get_mut(stamp.sender as usize) {
                ring.delivered(stamp.seq);
            }
        }
        self.deliveries += 1;
        if now_ns >= self.measure_from_ns && now_ns < self.measure_to_ns {
            self.measured_deliveries += 1;
        }
        if stamp.sent_ns >= self.measure_from_ns && stamp.sent_ns < self.measure_to_ns {
            self.hist.saturating_record(now_ns.saturating_sub(stamp.sent_ns) / 1000);
        }
    }

    fn on_end(&mut self, tag: u32, _end: &End) {
        if self.closing {
            return;
        }
        self.members_lost += 1;
        // Nobody waits for a confirmation from a member that is gone.
        for (sender, ring) in self.rings.iter_mut().enumerate() {
            if sender as u32 != tag {
                ring.member_lost();
            }
        }
    }
}

/// Messages that never arrived, after the drain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Loss {
    pub(super) total: u64,          // Σ over members of (expected − distinct received)
    pub(super) max_per_member: u64, // the worst member's shortfall
    pub(super) members: u32,        // members that missed anything
}

impl Loss {
    /// Each member expects every message of every *other* sender (members 0..S are the
    /// senders); `tracks` holds member × S + sender.
    pub(super) fn count(tracks: &[SeqTrack], sent: &[u64]) -> Loss {
        let senders = sent.len().max(1);
        let total_sent: u64 = sent.iter().sum();
        let mut loss = Loss::default();
        for (member, row) in tracks.chunks(senders).enumerate() {
            let own = sent.get(member).copied().unwrap_or(0);
            let received: u64 = row.iter().map(SeqTrack::unique).sum();
            let missing = (total_sent - own).saturating_sub(received);
            loss.total += missing;
            loss.max_per_member = loss.max_per_member.max(missing);
            loss.members += u32::from(missing > 0);
        }
        loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::Latency;
    use crate::bench::stamp::{Encoding, FILLER};

    fn handler(members: usize, senders: u32, window: usize) -> Fanout {
        let mut fanout =
            Fanout::new(members, senders, vec![AckRing::new(window, members as u32 - 1); senders as usize]);
        fanout.measure_from_ns = 1_000;
        fanout
    }

    fn deliver(f: &mut Fanout, member: u32, stamp: Stamp, now_ns: u64) {
        let mut payload = vec![FILLER; 64];
        stamp.write(Encoding::Binary, &mut payload);
        let frame = Frame { fin: true, rsv: 0, opcode_bits: 0x2, payload_len: 64, prefix: &payload };
        f.on_data(member, &frame, now_ns);
    }

    #[test]
    fn hot_path_counts_and_times() {
        let mut f = handler(3, 1, 4);
        deliver(&mut f, 1, Stamp { sender: 0, seq: 0, sent_ns: 2_000 }, 52_000);
        deliver(&mut f, 2, Stamp { sender: 0, seq: 0, sent_ns: 2_000 }, 62_000);
        assert_eq!(f.rings[0].acked(), 1, "both other members have message 0");
        deliver(&mut f, 2, Stamp { sender: 0, seq: 0, sent_ns: 2_000 }, 63_000);
        assert_eq!((f.deliveries, f.unique, f.duplicated), (3, 2, 1));
        assert_eq!((f.hist.min(), Latency::of(&f.hist).p50, Latency::of(&f.hist).max), (50, 60, 61));
        deliver(&mut f, 1, Stamp { sender: 0, seq: 1, sent_ns: 500 }, 9_000);
        assert_eq!(f.hist.len(), 3, "sent before the measured interval: not timed");
        deliver(&mut f, 1, Stamp { sender: 5, seq: 0, sent_ns: 2_000 }, 9_000);
        let frame = Frame { fin: true, rsv: 0, opcode_bits: 0x1, payload_len: 5, prefix: b"hello" };
        f.on_data(1, &frame, 9_000);
        assert_eq!(f.foreign, 2, "an unknown sender and an unstamped frame");
    }

    #[test]
    fn loss_counts_what_other_senders_sent() {
        // 2 senders (members 0, 1) and 1 receiver (member 2); sender 0 sent 3, sender 1 sent 2.
        let mut tracks = vec![SeqTrack::default(); 3 * 2];
        let mut see = |member: usize, sender: usize, seqs: &[u64]| {
            for &seq in seqs {
                tracks[member * 2 + sender].observe(seq);
            }
        };
        see(0, 1, &[0, 1]); // sender 0 got all of sender 1's
        see(1, 0, &[0, 2]); // sender 1 missed sender 0's #1
        see(2, 0, &[0, 1, 2]);
        see(2, 1, &[1]); // the receiver missed sender 1's #0
        let loss = Loss::count(&tracks, &[3, 2]);
        assert_eq!(loss, Loss { total: 2, max_per_member: 1, members: 2 });
    }

    #[test]
    fn a_lost_member_releases_the_window() {
        let mut f = handler(3, 1, 4);
        deliver(&mut f, 1, Stamp { sender: 0, seq: 0, sent_ns: 2_000 }, 3_000);
        assert_eq!(f.rings[0].acked(), 0);
        f.on_end(2, &End::Failed("eof".into()));
        assert_eq!(f.rings[0].acked(), 1);
        assert_eq!(f.members_lost, 1);
    }
}
