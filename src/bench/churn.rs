//! `pollcast bench churn`: connect → upgrade → close, `--concurrency` at a time, for
//! `--duration`.
//!
//! Each connection sends its Close (1000) as soon as the `101` arrives, waits for the
//! server's Close and then for the server to close TCP (RFC 6455 §7.1.1: the server
//! closes first, so TIME_WAIT stays on its side and our ephemeral ports are not used
//! up), and is replaced at once. Reported: handshakes per second, the time from
//! connect to `101` (p50 ... max), clean closes, and every failure by kind.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::pool::{AfterOpen, End, Handler};
use super::report::{self, CpuCost, CpuMark, Latency, OpCost, Summary, Tail};
use super::wire::Frame;
use super::{check_duration, check_range, Bench, BenchError, Common, CLOSE_TIMEOUT, IDLE_POLL};
use crate::config::parse_duration;

/// Largest `--concurrency`.
const MAX_CONCURRENCY: u64 = 10_000;
/// Failures with not a single success after which the run stops early: the server is
/// clearly not there, and hammering it for the whole duration shows nothing more.
const GIVE_UP_AFTER_FAILURES: u64 = 200;

/// Flags of `pollcast bench churn`.
#[derive(clap::Args, Debug, Clone)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,

    /// Connections in flight at once.
    #[arg(long, default_value = "32")]
    pub concurrency: u32,

    /// How long to keep starting new connections.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
}

/// Runs the scenario.
pub fn run(args: ChurnArgs) -> Result<(), BenchError> {
    check_range("concurrency", u64::from(args.concurrency), 1, MAX_CONCURRENCY)?;
    check_duration("duration", args.duration, true)?;
    let mut bench = Bench::prepare(&args.common, u64::from(args.concurrency))?;
    let start_mark = CpuMark::take(&bench.server_pid)?;
    let t0 = bench.pool.now_ns();
    let mut churn = Churn::new(t0 + args.duration.as_nanos() as u64);
    bench.progress.stage("churn", args.duration.as_millis() as u64);
    churn_until_the_end(&mut bench, &mut churn, args.concurrency as usize, t0)?;
    let end_mark = CpuMark::take(&bench.server_pid)?;
    let measured = Duration::from_nanos(bench.pool.now_ns() - t0);
    finish(&mut bench, &mut churn)?;
    let cost = CpuCost::between(start_mark, end_mark, measured, churn.measured);
    report::print(&ChurnReport::new(&args, &bench, &churn, measured, cost), args.common.json)
}

/// Keeps `concurrency` connections cycling until the end of `--duration`; gives up
/// early when the server is clearly not there.
fn churn_until_the_end(bench: &mut Bench, churn: &mut Churn, concurrency: usize, t0: u64) -> Result<(), BenchError> {
    let mut next_tag: u32 = 0;
    loop {
        let now = bench.pool.now_ns();
        if now >= churn.until_ns {
            return Ok(());
        }
        let failures: u64 = bench.pool.errors().values().sum();
        if churn.handshakes == 0 && failures >= GIVE_UP_AFTER_FAILURES {
            bench.progress.finish();
            return Err(bench.connect_failure());
        }
        while bench.pool.len() < concurrency {
            if bench.pool.open(next_tag, AfterOpen::Close).is_err() {
                break; // counted; try again next turn rather than spin on it
            }
            next_tag = next_tag.wrapping_add(1);
        }
        bench.turn(churn, Duration::from_nanos(churn.until_ns - now).min(IDLE_POLL))?;
        let now = bench.pool.now_ns();
        if bench.progress.due(now) {
            let rate = churn.handshakes as f64 * 1e9 / (now - t0).max(1) as f64;
            bench.progress.update(now, (now - t0) / 1_000_000, format!("{} handshakes/s", report::si(rate)));
        }
    }
}

/// Lets the connections in flight finish their cycle, then drops the stragglers; a run
/// without a single handshake is a failure.
fn finish(bench: &mut Bench, churn: &mut Churn) -> Result<(), BenchError> {
    let settle_until = bench.pool.now_ns() + CLOSE_TIMEOUT.as_nanos() as u64;
    bench.drive_until(churn, settle_until, |pool, _| pool.is_empty())?;
    bench.close_all(churn)?;
    bench.progress.finish();
    if churn.handshakes == 0 {
        return Err(bench.connect_failure());
    }
    Ok(())
}

/// Counts what each connection got to.
struct Churn {
    handshakes: u64,      // upgrades that succeeded, whole run
    measured: u64,        // of which before the end of --duration
    clean_closes: u64,    // closing handshakes completed
    hist: Histogram<u64>, // connect → 101, µs
    until_ns: u64,        // the end of --duration, bench time
}

impl Churn {
    /// Nothing counted yet; `until_ns` ends the measured interval.
    fn new(until_ns: u64) -> Churn {
        Churn { handshakes: 0, measured: 0, clean_closes: 0, hist: report::latency_histogram(), until_ns }
    }
}

impl Handler for Churn {
    fn on_data(&mut self, _tag: u32, _frame: &Frame<'_>, _now_ns: u64) {
        // Nothing is sent to a connection that closes at once; ignore what arrives.
    }

    fn on_open(&mut self, _tag: u32, opened_ns: u64, now_ns: u64) {
        self.handshakes += 1;
        if now_ns < self.until_ns {
            self.measured += 1;
        }
        self.hist.saturating_record(now_ns.saturating_sub(opened_ns) / 1000);
    }

    fn on_end(&mut self, _tag: u32, end: &End) {
        if *end == End::Clean {
            self.clean_closes += 1;
        }
    }
}

/// Everything `churn` measured.
#[derive(Debug, Serialize)]
struct ChurnReport {
    scenario: &'static str, // "churn"
    url: String,            // --url
    params: Params,         // the flags, echoed
    measured_s: f64,        // the measured interval
    handshakes: u64,        // within --duration
    handshakes_per_sec: f64,
    clean_closes: u64,             // closing handshakes completed, whole run
    handshake_latency_us: Latency, // connect → 101
    #[serde(flatten)]
    tail: Tail, // CPU per handshake, errors
}

/// The parameters, echoed in the report.
#[derive(Debug, Serialize)]
struct Params {
    concurrency: u32, // --concurrency
    duration_s: f64,  // --duration
    sources: usize,   // source addresses used
    busy_poll: bool,  // --busy-poll
}

impl ChurnReport {
    fn new(args: &ChurnArgs, bench: &Bench, churn: &Churn, measured: Duration, cost: CpuCost) -> ChurnReport {
        let secs = measured.as_secs_f64().max(1e-9);
        ChurnReport {
            scenario: "churn",
            url: bench.target.url.clone(),
            params: Params {
                concurrency: args.concurrency,
                duration_s: args.duration.as_secs_f64(),
                sources: bench.sources,
                busy_poll: args.common.busy_poll,
            },
            measured_s: report::round3(secs),
            handshakes: churn.measured,
            handshakes_per_sec: report::round1(churn.measured as f64 / secs),
            clean_closes: churn.clean_closes,
            handshake_latency_us: Latency::of(&churn.hist),
            tail: Tail {
                cpu: Some(OpCost { cost, op: "handshake", busy_poll: args.common.busy_poll }),
                errors: bench.pool.errors().clone(),
            },
        }
    }
}

impl Summary for ChurnReport {
    fn lines(&self) -> Vec<String> {
        vec![
            format!(
                "churn         {} at a time on {} for {:.1}s: {} handshakes, {} handshakes/s, {} clean closes",
                self.params.concurrency,
                self.url,
                self.measured_s,
                self.handshakes,
                report::si(self.handshakes_per_sec),
                self.clean_closes
            ),
            format!("connect→101   {}", self.handshake_latency_us.human()),
        ]
    }

    fn tail(&self) -> &Tail {
        &self.tail
    }
}
