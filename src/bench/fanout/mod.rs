//! `pollcast bench fanout`: R receivers and S senders in one room.
//!
//! Every connection is a member of the room (the URL), so every message a sender sends
//! is delivered to the R receivers *and* to the S − 1 other senders: `R + S − 1`
//! deliveries per message. All of them are counted as deliveries, checked for loss,
//! duplicates and order, and timed, because each is work the server did.
//!
//! Sending, per sender, each loop turn:
//! - `--rate N` (open loop): N messages per second in total, interleaved across senders
//!   ([`Pacer`](super::pacing::Pacer)); each is stamped with the time it was *due*, so
//!   falling behind shows as latency. How late the bench itself sent is reported apart
//!   (`send_lag_us`), so a loaded bench is not mistaken for a slow server. Unsent bytes
//!   per sender are capped; past the cap the sender waits.
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
//! Reading order: this file (the flags and the timeline, step by step), then
//! `members` (the receive side and its hot path), `senders` (the sending side) and
//! `summary` (the report).

mod members;
mod senders;
mod summary;

use std::time::Duration;

use super::report::{self, CpuMark};
use super::stamp::{Encoding, Payload};
use super::track::AckRing;
use super::{check_duration, check_range, Bench, BenchError, Common, IDLE_POLL};
use crate::config::{parse_duration, parse_size};
use members::Fanout;
use senders::Senders;
use summary::FanoutReport;

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

    /// What follows the stamp: `x` repeated, or chat-like JSON text (words from a small
    /// vocabulary), which compresses about as real chat does (for --deflate runs).
    #[arg(long, value_enum, default_value = "filler")]
    pub payload: Payload,
}

/// Runs the scenario.
pub fn run(args: FanoutArgs) -> Result<(), BenchError> {
    let members = check_args(&args)?;
    let mut bench = Bench::prepare(&args.common, u64::from(members))?;
    let need = members - 1; // every other member gets each message
    let rings = match args.rate {
        Rate::Max => vec![AckRing::new(args.window as usize, need); args.senders as usize],
        Rate::PerSec(_) => Vec::new(),
    };
    let mut fanout = Fanout::new(members as usize, args.senders, rings);
    let keys = connect_and_settle(&mut bench, &mut fanout, members, args.senders)?;

    let timeline = Timeline::from(bench.pool.now_ns(), &args);
    fanout.measure_from_ns = timeline.measure_from;
    fanout.measure_to_ns = timeline.measure_to;
    let mut senders = Senders::new(&args, keys, &timeline);
    let interval = send_until_the_end(&mut bench, &mut fanout, &mut senders, &timeline)?;
    let drained = drain_and_close(&mut bench, &mut fanout, &senders, need, args.drain)?;

    let report = FanoutReport::new(&args, &bench, &fanout, &senders, interval, drained);
    report::print(&report, args.common.json)
}

/// Checks the flags; returns the number of members, R + S.
fn check_args(args: &FanoutArgs) -> Result<u32, BenchError> {
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
    // Both counts are ≤ MAX_CONNECTIONS, so the sum fits; `Bench::prepare` checks it.
    Ok(members as u32)
}

/// Opens every member (senders are members 0..S, receivers S..S+R), then waits
/// [`SETTLE`]; any failure ends the run. Returns the senders' pool keys.
fn connect_and_settle(
    bench: &mut Bench,
    fanout: &mut Fanout,
    members: u32,
    senders: u32,
) -> Result<Vec<usize>, BenchError> {
    let keys = bench.connect_all(fanout, members, true)?;
    let settle_until = bench.pool.now_ns() + SETTLE.as_nanos() as u64;
    bench.drive_until(fanout, settle_until, |_, _| false)?;
    if !bench.pool.errors().is_empty() {
        bench.progress.finish();
        return Err(bench.connect_failure());
    }
    Ok(keys[..senders as usize].to_vec())
}

/// The run's timeline, in bench nanoseconds: sending starts at `t0`, the warm-up
/// ends at `measure_from`, the measured interval at `measure_to`.
#[derive(Clone, Copy, Debug)]
struct Timeline {
    t0: u64,           // sending starts
    measure_from: u64, // t0 + --warmup
    measure_to: u64,   // measure_from + --duration
}

impl Timeline {
    fn from(t0: u64, args: &FanoutArgs) -> Timeline {
        let measure_from = t0 + args.warmup.as_nanos() as u64;
        Timeline { t0, measure_from, measure_to: measure_from + args.duration.as_nanos() as u64 }
    }
}

/// CPU time and wall time of the measured interval.
#[derive(Clone, Copy, Debug)]
struct Interval {
    start: CpuMark,     // CPU when it began
    end: CpuMark,       // CPU when it ended
    measured: Duration, // its wall time
    bytes_read: u64,    // bytes read from every socket within it
}

/// Sends through the warm-up and the measured interval, one turn at a time: queue
/// (phase 1), then write, reap, wait and read (phases 2-4).
fn send_until_the_end(
    bench: &mut Bench,
    fanout: &mut Fanout,
    senders: &mut Senders,
    timeline: &Timeline,
) -> Result<Interval, BenchError> {
    let mut start: Option<(CpuMark, u64, u64)> = None; // CPU, time, bytes read at the start of the measured interval
    let mut last_shown = (timeline.t0, 0u64); // (when, deliveries) the bar last showed
    let stage = if timeline.measure_from == timeline.t0 { "fanout" } else { "warm+run" };
    bench.progress.stage(stage, (timeline.measure_to - timeline.t0) / 1_000_000);
    loop {
        let now = bench.pool.now_ns();
        if start.is_none() && now >= timeline.measure_from {
            start = Some((CpuMark::take(&bench.server_pid)?, now, bench.pool.bytes_read()));
        }
        if now >= timeline.measure_to {
            break;
        }
        let next_due = senders.queue(&mut bench.pool, &fanout.rings, now);
        turn_until(bench, fanout, next_due.min(timeline.measure_to))?;
        if bench.pool.open_count() == 0 {
            bench.progress.finish();
            return Err(BenchError::Failed(format!(
                "every connection ended during the run: {}",
                report::human_errors(bench.pool.errors())
            )));
        }
        show_progress(bench, fanout, timeline, &mut last_shown);
    }
    let end = CpuMark::take(&bench.server_pid)?;
    let (start, started_at, read_at_start) =
        start.ok_or_else(|| BenchError::Failed("the run ended before it began".into()))?;
    let measured = Duration::from_nanos(bench.pool.now_ns().saturating_sub(started_at));
    Ok(Interval { start, end, measured, bytes_read: bench.pool.bytes_read() - read_at_start })
}

/// One turn that returns by `wake` (bench time): at once when it is already due,
/// otherwise woken by the timer (or readiness, or the bar's pace).
fn turn_until(bench: &mut Bench, fanout: &mut Fanout, wake: u64) -> Result<(), BenchError> {
    if wake <= bench.pool.now_ns() {
        return bench.turn(fanout, Duration::ZERO);
    }
    bench.pool.wake_at(wake).map_err(|e| BenchError::Failed(format!("timerfd: {e}")))?;
    bench.turn(fanout, IDLE_POLL)
}

/// Updates the bar with the delivery rate since it last showed one.
fn show_progress(bench: &mut Bench, fanout: &Fanout, timeline: &Timeline, last_shown: &mut (u64, u64)) {
    let now = bench.pool.now_ns();
    if !bench.progress.due(now) {
        return;
    }
    let rate = (fanout.deliveries - last_shown.1) as f64 * 1e9 / (now - last_shown.0).max(1) as f64;
    *last_shown = (now, fanout.deliveries);
    let phase = if now < timeline.measure_from { "warm-up" } else { "measuring" };
    let done = (now - timeline.t0) / 1_000_000;
    bench.progress.update(now, done, format!("{phase}: {} deliveries/s", report::si(rate)));
}

/// Stops sending and waits, up to `drain`, for everything sent to reach everyone
/// still there; then closes every connection. `true` if everything arrived.
fn drain_and_close(
    bench: &mut Bench,
    fanout: &mut Fanout,
    senders: &Senders,
    need: u32,
    drain: Duration,
) -> Result<bool, BenchError> {
    bench.progress.stage("drain", 1);
    let expected_unique: u64 = senders.sent.iter().sum::<u64>() * u64::from(need);
    let drain_until = bench.pool.now_ns() + drain.as_nanos() as u64;
    let drained = bench.drive_until(fanout, drain_until, |_, f| f.unique >= expected_unique)?;
    fanout.closing = true;
    bench.close_all(fanout)?;
    bench.progress.finish();
    Ok(drained)
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
}
