//! `pollcast bench idle`: open N connections, complete every upgrade, hold them.
//!
//! With `--server-pid`, the server's resident memory (`VmRSS`, and `RssAnon`, the heap
//! and stacks that connections actually cost) is read from `/proc/PID/status` before
//! the first connect and at the end of the hold, while every connection is still open;
//! the difference over the connections held is the server's memory per idle
//! connection. The bench's own memory per connection is reported the same way.
//!
//! The baseline is only as good as the server is fresh. A server that held connections
//! before keeps the memory they freed (its allocator seldom returns heap to the
//! system), so new connections reuse it and `RssAnon` grows by less than they cost, or
//! by nothing or less than nothing. No figure the bench can read from outside tells
//! reused memory from new, so the figures are reported as measured, and when `RssAnon`
//! grew by less than `MIN_PLAUSIBLE_BYTES_PER_CONN` per connection the summary says
//! why they are not a cost per connection (the JSON has `server_memory_reused: true`):
//! measure a freshly started server.
//!
//! While holding, the bench answers pings, so servers with heartbeats keep everyone.

use std::time::Duration;

use serde::Serialize;

use super::pool::Handler;
use super::report::{self, Summary, Tail};
use super::sys::{self, Rss};
use super::wire::Frame;
use super::{check_duration, check_range, Bench, BenchError, Common, IDLE_POLL, MAX_CONNECTIONS};
use crate::config::parse_duration;

/// Server memory growth per held connection below which the growth is taken for reused
/// memory, not the connections' cost. A heuristic: any server keeps more than this per
/// connection in user space (a buffer, a slot, a socket handle; pollcast's own is
/// ~0.8 KiB), while a server reusing freed memory typically shows 0 ± 0.05 KiB.
const MIN_PLAUSIBLE_BYTES_PER_CONN: f64 = 128.0;

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

/// Runs the scenario.
pub fn run(args: IdleArgs) -> Result<(), BenchError> {
    check_range("connections", u64::from(args.connections), 1, MAX_CONNECTIONS)?;
    check_duration("hold", args.hold, false)?;
    let mut bench = Bench::prepare(&args.common, u64::from(args.connections))?;
    let before = Memory::read(&bench.server_pid)?;

    let mut idle = Idle { connected: 0 };
    let started = bench.pool.now_ns();
    bench.connect_all(&mut idle, args.connections, false)?;
    let connect_time = Duration::from_nanos(bench.pool.now_ns() - started);

    hold(&mut bench, &mut idle, args.hold)?;
    let held = bench.pool.open_count() as u64;
    let after = Memory::read(&bench.server_pid)?;
    bench.close_all(&mut idle)?;
    bench.progress.finish();

    let report = IdleReport::new(&args, &bench, idle.connected, held, connect_time, (before, after));
    report::print(&report, args.common.json)
}

/// Keeps every connection open for `hold`, answering pings.
fn hold(bench: &mut Bench, idle: &mut Idle, hold: Duration) -> Result<(), BenchError> {
    bench.progress.stage("hold", hold.as_millis() as u64);
    let hold_from = bench.pool.now_ns();
    let hold_until = hold_from + hold.as_nanos() as u64;
    loop {
        let now = bench.pool.now_ns();
        if now >= hold_until {
            return Ok(());
        }
        if bench.progress.due(now) {
            bench.progress.update(now, (now - hold_from) / 1_000_000, format!("{} open", bench.pool.open_count()));
        }
        bench.turn(idle, Duration::from_nanos(hold_until - now).min(IDLE_POLL))?;
    }
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

/// Resident memory of the server (when its PID is known) and of the bench, at one moment.
#[derive(Clone, Copy, Debug)]
struct Memory {
    server: Option<Rss>, // None without --server-pid
    bench: Rss,          // this process
}

impl Memory {
    /// Reads the server's (added up over several processes), then our own.
    fn read(server_pids: &[u32]) -> Result<Memory, BenchError> {
        let each = server_pids.iter().map(|&pid| sys::process_rss(pid)).collect::<Result<Vec<_>, _>>();
        let each = each.map_err(BenchError::Failed)?;
        let server = (!each.is_empty()).then(|| Rss {
            rss_kib: each.iter().map(|r| r.rss_kib).sum(),
            anon_kib: each.iter().map(|r| r.anon_kib).sum(),
        });
        let bench = sys::process_rss(std::process::id()).map_err(BenchError::Failed)?;
        Ok(Memory { server, bench })
    }
}

/// Everything `idle` measured.
#[derive(Debug, Serialize)]
struct IdleReport {
    scenario: &'static str, // "idle"
    url: String,            // --url
    params: Params,         // the flags, echoed
    connected: u64,         // upgrades that succeeded
    held: u64,              // still open at the end of the hold
    connect_s: f64,         // time to open all of them
    connects_per_sec: f64,  // connected / connect_s
    server_rss_before: Option<Rss>,
    server_rss_after: Option<Rss>,
    server_rss_kib_per_conn: Option<f64>,  // VmRSS growth / held
    server_anon_kib_per_conn: Option<f64>, // RssAnon growth / held
    server_memory_reused: Option<bool>,    // RssAnon grew too little to be the cost: see the module doc
    bench_rss_kib_per_conn: f64,           // our VmRSS growth / held
    #[serde(flatten)]
    tail: Tail,       // errors (idle measures no CPU)
}

/// The parameters, echoed in the report.
#[derive(Debug, Serialize)]
struct Params {
    connections: u32, // --connections
    hold_s: f64,      // --hold
    sources: usize,   // source addresses used
}

impl IdleReport {
    fn new(
        args: &IdleArgs,
        bench: &Bench,
        connected: u64,
        held: u64,
        connect_time: Duration,
        (before, after): (Memory, Memory),
    ) -> IdleReport {
        let per_conn = |before: u64, after: u64| report::round3((after as f64 - before as f64) / held.max(1) as f64);
        let server = before.server.zip(after.server);
        IdleReport {
            scenario: "idle",
            url: bench.target.url.clone(),
            params: Params { connections: args.connections, hold_s: args.hold.as_secs_f64(), sources: bench.sources },
            connected,
            held,
            connect_s: report::round3(connect_time.as_secs_f64()),
            connects_per_sec: report::round1(connected as f64 / connect_time.as_secs_f64().max(1e-9)),
            server_rss_before: before.server,
            server_rss_after: after.server,
            server_rss_kib_per_conn: server.map(|(b, a)| per_conn(b.rss_kib, a.rss_kib)),
            server_anon_kib_per_conn: server.map(|(b, a)| per_conn(b.anon_kib, a.anon_kib)),
            server_memory_reused: server.map(|(b, a)| grew_too_little(b.anon_kib, a.anon_kib, held)),
            bench_rss_kib_per_conn: per_conn(before.bench.rss_kib, after.bench.rss_kib),
            tail: Tail { cpu: None, errors: bench.pool.errors().clone() },
        }
    }

    /// The server's memory line, and a note when the figures cannot be a cost per connection.
    fn server_lines(&self) -> Vec<String> {
        let (Some(b), Some(a), Some(rss), Some(anon)) = (
            self.server_rss_before,
            self.server_rss_after,
            self.server_rss_kib_per_conn,
            self.server_anon_kib_per_conn,
        ) else {
            return vec!["server memory (give --server-pid PID to measure)".to_owned()];
        };
        let mut lines = vec![format!(
            "server memory VmRSS {} → {} KiB ({rss:.2} KiB/conn), RssAnon {} → {} KiB ({anon:.2} KiB/conn)",
            b.rss_kib, a.rss_kib, b.anon_kib, a.anon_kib
        )];
        if self.server_memory_reused == Some(true) {
            lines.push(format!(
                "note          RssAnon grew by < {MIN_PLAUSIBLE_BYTES_PER_CONN:.0} B/conn: the server reused memory freed \
                 by earlier connections, so this is not its cost per connection; measure a freshly started server"
            ));
        }
        lines
    }
}

/// Did the server's memory grow by less than any connection costs? Then it reused
/// memory (see the module doc).
fn grew_too_little(before_kib: u64, after_kib: u64, held: u64) -> bool {
    let growth_bytes = (after_kib as f64 - before_kib as f64) * 1024.0;
    growth_bytes < MIN_PLAUSIBLE_BYTES_PER_CONN * held.max(1) as f64
}

impl Summary for IdleReport {
    fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "idle          {} of {} connections to {} open in {:.2}s ({} connects/s), {} held for {:.1}s",
            self.connected,
            self.params.connections,
            self.url,
            self.connect_s,
            report::si(self.connects_per_sec),
            self.held,
            self.params.hold_s
        )];
        lines.extend(self.server_lines());
        lines.push(format!("bench memory  {:.2} KiB/conn", self.bench_rss_kib_per_conn));
        lines
    }

    fn tail(&self) -> &Tail {
        &self.tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(anon_before: u64, anon_after: u64) -> IdleReport {
        let rss = |anon_kib| Rss { rss_kib: anon_kib + 4000, anon_kib };
        IdleReport {
            scenario: "idle",
            url: "ws://127.0.0.1:9/".to_owned(),
            params: Params { connections: 100, hold_s: 1.0, sources: 1 },
            connected: 100,
            held: 100,
            connect_s: 0.1,
            connects_per_sec: 1000.0,
            server_rss_before: Some(rss(anon_before)),
            server_rss_after: Some(rss(anon_after)),
            server_rss_kib_per_conn: Some((anon_after as f64 - anon_before as f64) / 100.0),
            server_anon_kib_per_conn: Some((anon_after as f64 - anon_before as f64) / 100.0),
            server_memory_reused: Some(grew_too_little(anon_before, anon_after, 100)),
            bench_rss_kib_per_conn: 2.0,
            tail: Tail { cpu: None, errors: Default::default() },
        }
    }

    #[test]
    fn memory_that_did_not_grow_is_explained() {
        for (before, after) in [(9000, 9000), (9000, 8000), (9000, 9002)] {
            let lines = report(before, after).lines();
            assert!(lines[2].starts_with("note ") && lines[2].contains("freshly started server"), "{lines:?}");
            assert_eq!(lines.len(), 4);
        }
        assert!(report(9000, 9000).lines()[1].contains("(0.00 KiB/conn)"));
    }

    #[test]
    fn memory_that_grew_needs_no_note() {
        let lines = report(9000, 10_000).lines();
        assert!(lines[1].contains("RssAnon 9000 → 10000 KiB (10.00 KiB/conn)"), "{lines:?}");
        assert_eq!(lines.len(), 3);
    }
}
