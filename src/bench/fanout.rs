//! `pollcast bench fanout`: R receivers and S senders in one room.
//!
//! Every connection is a member of the room (the URL), so every message a sender sends
//! is delivered to the R receivers *and* to the S − 1 other senders: `R + S − 1`
//! deliveries per message. All of them are counted as deliveries, checked for loss,
//! duplicates and order, and timed, because each is work the server did.
//!
//! Sending, per sender, each loop turn:
//! - `--rate N` (open loop): N messages per second in total, interleaved across senders
//!   ([`Pacer`]); each is stamped with the time it was *due*, so falling behind shows as
//!   latency. How late the bench itself sent is reported apart (`send_lag_us`), so a
//!   loaded bench is not mistaken for a slow server. Unsent bytes per sender are
//!   capped; past the cap the sender waits.
//! - `--rate max` (closed loop): a sender keeps at most `--window` messages in flight,
//!   where in flight means sent but not yet delivered to *every* other member
//!   ([`AckRing`]). The slowest member paces the sender, so no server queue grows
//!   without bound.
//!
//! Timeline: connect all → settle → warm-up (sending, not measured) → measured
//! `--duration` → drain (no more sending, up to `--drain` for stragglers) → close.
//! Rates and CPU cost are over the measured interval; latency covers every message
//! *sent* in it, whenever it arrived; loss is counted over the whole run after the drain.
//!
//! Receive hot path (`Fanout::on_data`): read the stamp, update one sequence tracker,
//! one ack counter and the histogram. No allocation, no clock read (the pool reads the
//! clock once per `read(2)`).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::pacing::Pacer;
use super::pool::{End, Errors, Handler, Pool};
use super::report::{self, CpuCost, CpuMark, Latency};
use super::stamp::{Encoding, Stamp, FILLER};
use super::track::{AckRing, Arrival, SeqTrack};
use super::wire::Frame;
use super::{check_duration, check_range, Bench, BenchError, Common, IDLE_POLL};
use crate::config::{parse_duration, parse_size};

/// Largest `--size`.
const MAX_SIZE: usize = 16 << 20;
/// Largest `--window`.
const MAX_WINDOW: u64 = 1 << 20;
/// Largest `--senders × (receivers + senders)`: the sequence trackers' table.
const MAX_TRACKS: u64 = 20_000_000;
/// Unsent bytes a paced sender may hold before it waits for the socket.
const PACED_OUTBOX_CAP: usize = 4 << 20;
/// Messages one sender queues in one turn at most, so a turn stays short.
const MAX_SENDS_PER_TURN: u64 = 4096;
/// Quiet time after every connection is open and before sending starts: some servers
/// add a client to the room just after sending the 101.
const SETTLE: Duration = Duration::from_millis(200);

/// `--rate`: messages per second in total, or as fast as the window allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    Max,         // closed loop, bounded by --window
    PerSec(u64), // open loop, paced
}

fn parse_rate(text: &str) -> Result<Rate, String> {
    if text.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    match text.trim().parse::<u64>() {
        Ok(n) if (1..=100_000_000).contains(&n) => Ok(Rate::PerSec(n)),
        _ => Err(format!("'{text}' is not a rate: use a number of messages per second (1..100000000) or 'max'")),
    }
}

/// Flags of `pollcast bench fanout`.
#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,

    /// Connections that only receive.
    #[arg(long, default_value = "100")]
    pub receivers: u32,

    /// Connections that send (and receive each other's messages).
    #[arg(long, default_value = "1")]
    pub senders: u32,

    /// Payload bytes per message (at least the stamp: 24 binary, 44 text).
    #[arg(long, default_value = "64", value_parser = parse_size)]
    pub size: usize,

    /// Messages per second, all senders together, or `max` (closed loop).
    #[arg(long, default_value = "max", value_parser = parse_rate)]
    pub rate: Rate,

    /// With --rate max: messages per sender sent but not yet delivered to every member.
    /// Larger windows let the server batch more frames per write (more deliveries/s,
    /// more latency); each member may have up to senders × window × size bytes in
    /// flight, which must stay below the server's per-client queue limit.
    #[arg(long, default_value = "256")]
    pub window: u32,

    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Sending before the measurement starts (not counted in rates or latency).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// After sending stops, how long to wait for messages still on their way.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,

    /// Binary or text frames.
    #[arg(long, value_enum, default_value = "binary")]
    pub encoding: Encoding,
}

/// The receive side: what every member has seen.
struct Fanout {
    senders: u32,             // S: stamps name senders 0..S
    tracks: Vec<SeqTrack>,    // per (member, sender): member × S + sender
    rings: Vec<AckRing>,      // per sender, closed loop only (empty when paced)
    hist: Histogram<u64>,     // latency in µs of messages sent in the measured interval
    measure_from_ns: u64,     // the measured interval, bench time
    measure_to_ns: u64,       // (u64::MAX until known)
    deliveries: u64,          // stamped data frames received, whole run
    measured_deliveries: u64, // of which received within the measured interval
    unique: u64,              // distinct (member, sender, seq) received
    duplicated: u64,          // a (member, sender, seq) seen again
    out_of_order: u64,        // arrived after a higher seq of the same sender
    foreign: u64,             // data frames without a bench stamp
    members_lost: u32,        // connections that ended during the run
    closing: bool,            // the run is over: ends are expected now
}

impl Fanout {
    /// Nothing received yet; measuring starts when the warm-up ends (set by the caller).
    fn new(members: usize, senders: u32, rings: Vec<AckRing>) -> Fanout {
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

/// The sending side: what each sender has sent and may send next.
struct Senders {
    keys: Vec<usize>,              // pool key of each sender (members 0..S)
    sent: Vec<u64>,                // messages each sender has sent (its next seq)
    measured_sends: u64,           // messages queued within the measured interval
    pacer: Option<Pacer>,          // the open-loop schedule, or None for the closed loop
    window: u64,                   // closed loop: messages in flight per sender
    template: Vec<u8>,             // the payload; its stamp is rewritten per message
    encoding: Encoding,            // binary or text
    t0: u64,                       // when sending began, bench time
    measure: std::ops::Range<u64>, // the measured interval, bench time
    lag: Histogram<u64>,           // open loop: how late each message left, in µs
}

impl Senders {
    /// Phase 1 of a turn: queues what each sender may send at `now`, by the window
    /// (closed loop) or the schedule (open loop). Returns when the next paced message
    /// is due (`u64::MAX` for the closed loop, which is woken by deliveries instead).
    fn queue(&mut self, pool: &mut Pool, rings: &[AckRing], now: u64) -> u64 {
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

/// Messages that never arrived, after the drain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Loss {
    total: u64,          // Σ over members of (expected − distinct received)
    max_per_member: u64, // the worst member's shortfall
    members: u32,        // members that missed anything
}

impl Loss {
    /// Each member expects every message of every *other* sender (members 0..S are the
    /// senders); `tracks` holds member × S + sender.
    fn count(tracks: &[SeqTrack], sent: &[u64]) -> Loss {
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

/// The parameters, echoed in the report.
#[derive(Clone, Debug, Serialize)]
struct Params {
    receivers: u32,
    senders: u32,
    size: usize,
    encoding: Encoding,
    rate: serde_json::Value, // "max" or messages per second
    window: Option<u32>,     // closed loop only
    duration_s: f64,
    warmup_s: f64,
    drain_s: f64,
    sources: usize,
}

/// Everything `fanout` measured.
#[derive(Debug, Serialize)]
struct FanoutReport {
    scenario: &'static str,
    url: String,
    params: Params,
    connections: u32,
    deliveries_per_message: u32, // R + S − 1: every other member
    measured_s: f64,
    sent: u64,               // messages sent, whole run
    deliveries: u64,         // stamped frames received, whole run
    sends_per_sec: f64,      // in the measured interval
    deliveries_per_sec: f64, // in the measured interval
    latency_us: Latency,
    send_lag_us: Option<Latency>, // open loop: how late the bench sent (included in latency)
    lost: u64,                    // Σ over members of (expected − distinct received)
    lost_max_per_member: u64,
    members_with_loss: u32,
    duplicated: u64,
    out_of_order: u64,
    foreign: u64,
    drained: bool,     // everything sent arrived before --drain ran out
    members_lost: u32, // connections that ended early
    bench_cpu_share: f64,
    bench_cpu_ns_per_delivery: f64,
    server_cpu_share: Option<f64>,
    server_cpu_ns_per_delivery: Option<f64>,
    errors: Errors,
}

/// Runs the scenario.
pub fn run(args: FanoutArgs) -> Result<(), BenchError> {
    check_range("receivers", u64::from(args.receivers), 1, super::MAX_CONNECTIONS)?;
    check_range("senders", u64::from(args.senders), 1, super::MAX_CONNECTIONS)?;
    let members = u64::from(args.receivers) + u64::from(args.senders);
    check_range("size", args.size as u64, args.encoding.stamp_len() as u64, MAX_SIZE as u64)?;
    check_range("window", u64::from(args.window), 1, MAX_WINDOW)?;
    check_duration("duration", args.duration, true)?;
    check_duration("warmup", args.warmup, false)?;
    check_duration("drain", args.drain, false)?;
    if members * u64::from(args.senders) > MAX_TRACKS {
        return Err(BenchError::Usage(format!(
            "--senders × (receivers + senders) must be at most {MAX_TRACKS} (it is {})",
            members * u64::from(args.senders)
        )));
    }
    let mut bench = Bench::prepare(&args.common, members)?;
    let members = members as u32; // ≤ MAX_CONNECTIONS, checked above
    let senders = args.senders;
    let closed_loop = args.rate == Rate::Max;
    let need = members - 1; // every other member gets each message
    let rings = if closed_loop { vec![AckRing::new(args.window as usize, need); senders as usize] } else { Vec::new() };
    let mut fanout = Fanout::new(members as usize, senders, rings);

    // Senders are members 0..S, receivers S..S+R.
    let keys = bench.connect_all(&mut fanout, members, true)?;
    let settle_until = bench.pool.now_ns() + SETTLE.as_nanos() as u64;
    bench.drive_until(&mut fanout, settle_until, |_, _| false)?;
    if !bench.pool.errors().is_empty() {
        bench.progress.finish();
        return Err(bench.connect_failure());
    }

    // The timeline, in bench nanoseconds.
    let t0 = bench.pool.now_ns();
    let measure_from = t0 + args.warmup.as_nanos() as u64;
    let measure_to = measure_from + args.duration.as_nanos() as u64;
    fanout.measure_from_ns = measure_from;
    fanout.measure_to_ns = measure_to;
    let mut outgoing = Senders {
        keys: keys[..senders as usize].to_vec(),
        sent: vec![0; senders as usize],
        measured_sends: 0,
        pacer: match args.rate {
            Rate::PerSec(n) => Some(Pacer::new(n, senders)),
            Rate::Max => None,
        },
        window: u64::from(args.window),
        template: vec![FILLER; args.size],
        encoding: args.encoding,
        t0,
        measure: measure_from..measure_to,
        lag: report::latency_histogram(),
    };
    let mut marks: Option<(CpuMark, u64)> = None; // CPU at the start of the measured interval
    let mut last_shown = (t0, 0u64);
    bench.progress.stage(if args.warmup.is_zero() { "fanout" } else { "warm+run" }, (measure_to - t0) / 1_000_000);

    loop {
        let now = bench.pool.now_ns();
        if marks.is_none() && now >= measure_from {
            marks = Some((CpuMark::take(bench.server_pid)?, now));
        }
        if now >= measure_to {
            break;
        }
        // Phase 1: queue this turn's messages; phases 2-4: write, reap, wait and read.
        let next_due = outgoing.queue(&mut bench.pool, &fanout.rings, now);
        let wake = next_due.min(measure_to);
        if wake <= bench.pool.now_ns() {
            bench.turn(&mut fanout, Duration::ZERO)?;
        } else {
            bench.pool.wake_at(wake).map_err(|e| BenchError::Failed(format!("timerfd: {e}")))?;
            bench.turn(&mut fanout, IDLE_POLL)?;
        }
        if bench.pool.open_count() == 0 {
            bench.progress.finish();
            return Err(BenchError::Failed(format!(
                "every connection ended during the run: {}",
                report::human_errors(bench.pool.errors())
            )));
        }
        let now = bench.pool.now_ns();
        if bench.progress.due(now) {
            let rate = (fanout.deliveries - last_shown.1) as f64 * 1e9 / (now - last_shown.0).max(1) as f64;
            last_shown = (now, fanout.deliveries);
            let phase = if now < measure_from { "warm-up" } else { "measuring" };
            bench.progress.update(now, (now - t0) / 1_000_000, format!("{phase}: {} deliveries/s", report::si(rate)));
        }
    }
    let end_mark = CpuMark::take(bench.server_pid)?;
    let (start_mark, started_at) = marks.ok_or_else(|| BenchError::Failed("the run ended before it began".into()))?;
    let measured = Duration::from_nanos(bench.pool.now_ns().saturating_sub(started_at));

    // Drain: wait for everything sent to reach everyone still there.
    bench.progress.stage("drain", 1);
    let expected_unique: u64 = outgoing.sent.iter().sum::<u64>() * u64::from(need);
    let drain_until = bench.pool.now_ns() + args.drain.as_nanos() as u64;
    let drained = bench.drive_until(&mut fanout, drain_until, |_, f| f.unique >= expected_unique)?;
    fanout.closing = true;
    bench.close_all(&mut fanout)?;
    bench.progress.finish();

    let loss = Loss::count(&fanout.tracks, &outgoing.sent);

    let cost = CpuCost::between(start_mark, end_mark, measured, fanout.measured_deliveries);
    let secs = measured.as_secs_f64().max(1e-9);
    let report = FanoutReport {
        scenario: "fanout",
        url: bench.target.url.clone(),
        params: Params {
            receivers: args.receivers,
            senders,
            size: args.size,
            encoding: args.encoding,
            rate: match args.rate {
                Rate::Max => serde_json::Value::from("max"),
                Rate::PerSec(n) => serde_json::Value::from(n),
            },
            window: closed_loop.then_some(args.window),
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            drain_s: args.drain.as_secs_f64(),
            sources: bench.sources,
        },
        connections: members,
        deliveries_per_message: need,
        measured_s: report::round3(secs),
        sent: outgoing.sent.iter().sum(),
        deliveries: fanout.deliveries,
        sends_per_sec: report::round1(outgoing.measured_sends as f64 / secs),
        deliveries_per_sec: report::round1(fanout.measured_deliveries as f64 / secs),
        latency_us: Latency::of(&fanout.hist),
        send_lag_us: outgoing.pacer.is_some().then(|| Latency::of(&outgoing.lag)),
        lost: loss.total,
        lost_max_per_member: loss.max_per_member,
        members_with_loss: loss.members,
        duplicated: fanout.duplicated,
        out_of_order: fanout.out_of_order,
        foreign: fanout.foreign,
        drained,
        members_lost: fanout.members_lost,
        bench_cpu_share: cost.bench_cpu_share,
        bench_cpu_ns_per_delivery: cost.bench_cpu_ns_per_op,
        server_cpu_share: cost.server_cpu_share,
        server_cpu_ns_per_delivery: cost.server_cpu_ns_per_op,
        errors: bench.pool.errors().clone(),
    };
    if args.common.json {
        return report::print_json(&report);
    }
    print_human(&report, &cost);
    Ok(())
}

fn print_human(r: &FanoutReport, cost: &CpuCost) {
    let rate = match &r.params.window {
        Some(w) => format!("max (window {w})"),
        None => format!("{}/s", r.params.rate),
    };
    println!(
        "fanout        {} receivers + {} senders on {}, {} B {:?}, rate {rate}, {:.1}s measured",
        r.params.receivers, r.params.senders, r.url, r.params.size, r.params.encoding, r.measured_s
    );
    println!(
        "throughput    {} deliveries/s, {} sends/s ({} deliveries per message)",
        report::si(r.deliveries_per_sec),
        report::si(r.sends_per_sec),
        r.deliveries_per_message
    );
    println!("latency       {}", r.latency_us.human());
    if let Some(lag) = &r.send_lag_us {
        println!("send lag      {} (the bench's own lateness, included above)", lag.human());
    }
    println!(
        "delivery      {} sent, {} delivered, {} lost{}, {} duplicated, {} out of order{}",
        r.sent,
        r.deliveries,
        r.lost,
        if r.lost > 0 {
            format!(" (at {} members, at most {} each)", r.members_with_loss, r.lost_max_per_member)
        } else {
            String::new()
        },
        r.duplicated,
        r.out_of_order,
        if r.drained { "" } else { " — not drained in time" }
    );
    println!("{}", cost.human("delivery"));
    println!("errors        {}", report::human_errors(&r.errors));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("max"), Ok(Rate::Max));
        assert_eq!(parse_rate("MAX"), Ok(Rate::Max));
        assert_eq!(parse_rate("1000"), Ok(Rate::PerSec(1000)));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-5").is_err());
    }

    fn handler(members: usize, senders: u32, window: usize) -> Fanout {
        let mut fanout =
            Fanout::new(members, senders, vec![AckRing::new(window, members as u32 - 1); senders as usize]);
        fanout.measure_from_ns = 1_000;
        fanout
    }

    fn deliver(f: &mut Fanout, member: u32, stamp: Stamp, now_ns: u64) {
        let mut payload = vec![FILLER; 64];
        stamp.write(Encoding::Binary, &mut payload);
        let frame = Frame { fin: true, opcode_bits: 0x2, payload_len: 64, prefix: &payload };
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
        let frame = Frame { fin: true, opcode_bits: 0x1, payload_len: 5, prefix: b"hello" };
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
