//! `pollcast bench idle`: open N connections, complete every upgrade, hold them.
//!
//! With `--server-pid`, the server's resident memory (`VmRSS`, and `RssAnon`, the heap
//! and stacks that connections actually cost) is read from `/proc/PID/status` before
//! the first connect and at the end of the hold, while every connection is still open;
//! the difference over the connections held is the server's memory per idle
//! connection. The bench's own memory per connection is reported the same way.
//! Measure a freshly started server: one that held connections before may reuse the
//! memory they freed, and then seems to grow by nothing.
//!
//! While holding, the bench answers pings, so servers with heartbeats keep everyone.

use std::time::Duration;

use serde::Serialize;

use super::pool::{Errors, Handler};
use super::report;
use super::sys::{self, Rss};
use super::wire::Frame;
use super::{check_duration, check_range, Bench, BenchError, Common, IDLE_POLL, MAX_CONNECTIONS};
use crate::config::parse_duration;

/// Flags of `pollcast bench idle`.
#[derive(clap::Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,

    /// Connections to open and hold.
    #[arg(long, default_value = "1000")]
    pub connections: u32,

    /// How long to hold them once all are open.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub hold: Duration,
}

/// Everything `idle` measured.
#[derive(Debug, Serialize)]
struct IdleReport {
    scenario: &'static str,
    url: String,
    params: Params,
    connected: u64, // upgrades that succeeded
    held: u64,      // still open at the end of the hold
    connect_s: f64, // time to open all of them
    connects_per_sec: f64,
    server_rss_before: Option<Rss>,
    server_rss_after: Option<Rss>,
    server_rss_kib_per_conn: Option<f64>,  // VmRSS growth / held
    server_anon_kib_per_conn: Option<f64>, // RssAnon growth / held
    bench_rss_kib_per_conn: f64,
    errors: Errors,
}

#[derive(Debug, Serialize)]
struct Params {
    connections: u32,
    hold_s: f64,
    sources: usize,
}

/// Counts upgrades; nothing else arrives on an idle connection.
struct Idle {
    connected: u64, // on_open calls
}

impl Handler for Idle {
    fn on_data(&mut self, _tag: u32, _frame: &Frame<'_>, _now_ns: u64) {
        // A relay sends idle clients nothing; anything that does arrive is ignored.
    }

    fn on_open(&mut self, _tag: u32, _opened_ns: u64, _now_ns: u64) {
        self.connected += 1;
    }
}

/// Runs the scenario.
pub fn run(args: IdleArgs) -> Result<(), BenchError> {
    check_range("connections", u64::from(args.connections), 1, MAX_CONNECTIONS)?;
    check_duration("hold", args.hold, false)?;
    let mut bench = Bench::prepare(&args.common, u64::from(args.connections))?;
    let pid = bench.server_pid;
    let server_before = pid.map(sys::process_rss).transpose().map_err(BenchError::Failed)?;
    let own_pid = std::process::id();
    let bench_before = sys::process_rss(own_pid).map_err(BenchError::Failed)?;

    let mut idle = Idle { connected: 0 };
    let started = bench.pool.now_ns();
    bench.connect_all(&mut idle, args.connections, false)?;
    let connect_time = Duration::from_nanos(bench.pool.now_ns() - started);

    bench.progress.stage("hold", args.hold.as_millis() as u64);
    let hold_from = bench.pool.now_ns();
    let hold_until = hold_from + args.hold.as_nanos() as u64;
    loop {
        let now = bench.pool.now_ns();
        if now >= hold_until {
            break;
        }
        if bench.progress.due(now) {
            bench.progress.update(now, (now - hold_from) / 1_000_000, format!("{} open", bench.pool.open_count()));
        }
        bench.turn(&mut idle, Duration::from_nanos(hold_until - now).min(IDLE_POLL))?;
    }
    let held = bench.pool.open_count() as u64;
    let server_after = pid.map(sys::process_rss).transpose().map_err(BenchError::Failed)?;
    let bench_after = sys::process_rss(own_pid).map_err(BenchError::Failed)?;
    bench.close_all(&mut idle)?;
    bench.progress.finish();

    let per_conn = |before: u64, after: u64| report::round3((after as f64 - before as f64) / held.max(1) as f64);
    let (server_rss, server_anon) = match (server_before, server_after) {
        (Some(b), Some(a)) => (Some(per_conn(b.rss_kib, a.rss_kib)), Some(per_conn(b.anon_kib, a.anon_kib))),
        _ => (None, None),
    };
    let report = IdleReport {
        scenario: "idle",
        url: bench.target.url.clone(),
        params: Params { connections: args.connections, hold_s: args.hold.as_secs_f64(), sources: bench.sources },
        connected: idle.connected,
        held,
        connect_s: report::round3(connect_time.as_secs_f64()),
        connects_per_sec: report::round1(idle.connected as f64 / connect_time.as_secs_f64().max(1e-9)),
        server_rss_before: server_before,
        server_rss_after: server_after,
        server_rss_kib_per_conn: server_rss,
        server_anon_kib_per_conn: server_anon,
        bench_rss_kib_per_conn: per_conn(bench_before.rss_kib, bench_after.rss_kib),
        errors: bench.pool.errors().clone(),
    };
    if args.common.json {
        return report::print_json(&report);
    }
    println!(
        "idle          {} of {} connections to {} open in {:.2}s ({} connects/s), {} held for {:.1}s",
        report.connected,
        args.connections,
        report.url,
        report.connect_s,
        report::si(report.connects_per_sec),
        report.held,
        args.hold.as_secs_f64()
    );
    match (server_before, server_after, server_rss, server_anon) {
        (Some(b), Some(a), Some(rss), Some(anon)) => println!(
            "server memory VmRSS {} → {} KiB ({rss:.2} KiB/conn), RssAnon {} → {} KiB ({anon:.2} KiB/conn)",
            b.rss_kib, a.rss_kib, b.anon_kib, a.anon_kib
        ),
        _ => println!("server memory (give --server-pid PID to measure)"),
    }
    println!("bench memory  {:.2} KiB/conn", report.bench_rss_kib_per_conn);
    println!("errors        {}", report::human_errors(&report.errors));
    Ok(())
}
