//! Figures shared by the scenario reports, and their human forms.
//!
//! Owns: latency summaries from a histogram, CPU cost per operation, number
//! formatting, and how a report is printed ([`print`](fn@print)). Each scenario's report struct
//! lives with the scenario and implements [`Summary`]; every report ends with the same
//! [`Tail`] (CPU cost where measured, failures by kind) and is printed either as a
//! human summary or as exactly one JSON line. Must not touch: the pool, the clock.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::pool::Errors;
use super::sys;
use super::BenchError;

/// The highest latency the histograms track, in microseconds (larger values are
/// recorded as this): one minute.
pub const MAX_LATENCY_US: u64 = 60_000_000;
/// Significant figures of the histograms: 0.1% error.
const SIGNIFICANT_FIGURES: u8 = 3;

/// A latency histogram in microseconds.
pub fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy hdrhistogram's rules (low ≥ 1, high ≥ 2·low,
    // 1..=5 significant figures), so creation cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_FIGURES).expect("constant histogram bounds are valid")
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64, // samples
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub fn of(hist: &Histogram<u64>) -> Latency {
        if hist.is_empty() {
            return Latency::default();
        }
        Latency {
            count: hist.len(),
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
            mean: (hist.mean() * 10.0).round() / 10.0,
        }
    }

    /// `p50 1.2ms  p90 ...` for the summary.
    pub fn human(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            micros(self.p50),
            micros(self.p90),
            micros(self.p99),
            micros(self.p999),
            micros(self.max)
        )
    }
}

/// CPU time of the bench and (when `--server-pid` was given) of the server over one
/// measured interval.
#[derive(Clone, Copy, Debug)]
pub struct CpuMark {
    bench: Duration,          // this process's user + system time
    server: Option<Duration>, // the server's, from /proc
}

impl CpuMark {
    /// Reads both clocks now.
    /// With several server processes, their times are added up.
    pub fn take(server_pids: &[u32]) -> Result<CpuMark, BenchError> {
        let times = server_pids.iter().map(|&pid| sys::process_cpu(pid)).collect::<Result<Vec<_>, _>>();
        let times = times.map_err(BenchError::Failed)?;
        let server = (!times.is_empty()).then(|| times.iter().sum());
        Ok(CpuMark { bench: sys::own_cpu(), server })
    }
}

/// CPU spent between two marks, as shares of one core and per operation.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CpuCost {
    pub bench_cpu_share: f64,              // bench CPU time / wall time (1.0 = one core busy)
    pub bench_cpu_ns_per_op: f64,          // bench CPU time / operations
    pub server_cpu_share: Option<f64>,     // likewise for the server (null without --server-pid)
    pub server_cpu_ns_per_op: Option<f64>, // likewise for the server
}

impl CpuCost {
    /// The cost of `ops` operations done between `from` and `to`, `wall` apart.
    pub fn between(from: CpuMark, to: CpuMark, wall: Duration, ops: u64) -> CpuCost {
        let share = |cpu: Duration| round3(cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9));
        let per_op = |cpu: Duration| round1(cpu.as_nanos() as f64 / ops.max(1) as f64);
        let bench = to.bench.saturating_sub(from.bench);
        let server = match (from.server, to.server) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        CpuCost {
            bench_cpu_share: share(bench),
            bench_cpu_ns_per_op: per_op(bench),
            server_cpu_share: server.map(share),
            server_cpu_ns_per_op: server.map(per_op),
        }
    }

    /// Two summary lines: the bench's cost and the server's, per `op`.
    pub fn human(&self, op: &str, busy_poll: bool) -> String {
        let mut out = format!(
            "bench CPU     {:.0}% of a core, {:.0} ns per {op}",
            self.bench_cpu_share * 100.0,
            self.bench_cpu_ns_per_op
        );
        if let (Some(share), Some(per_op)) = (self.server_cpu_share, self.server_cpu_ns_per_op) {
            out.push_str(&format!("\nserver CPU    {:.0}% of a core, {per_op:.0} ns per {op}", share * 100.0));
        }
        if busy_poll {
            out.push_str(
                "\nnote          --busy-poll: the bench keeps its core busy, so its share says nothing of its load",
            );
        } else if self.bench_cpu_share > 0.9 {
            out.push_str("\nnote          the bench used nearly a whole core: it may be the limit, not the server");
        }
        out
    }
}

/// A scenario's report: serialized whole for `--json`, or printed as its own summary
/// lines followed by the shared [`Tail`].
pub trait Summary: Serialize {
    /// The human summary's lines that belong to this scenario alone.
    fn lines(&self) -> Vec<String>;

    /// The CPU cost and error counts every summary ends with.
    fn tail(&self) -> &Tail;
}

/// What every scenario report ends with. Flattened into the report's JSON, so its
/// fields stand last at the top level.
#[derive(Debug, Serialize)]
pub struct Tail {
    #[serde(flatten)]
    pub cpu: Option<OpCost>, // CPU cost per operation (None: the scenario measures none)
    pub errors: Errors, // failures by kind
}

/// A [`CpuCost`] named after the scenario's operation: its JSON fields are
/// `bench_cpu_share`, `bench_cpu_ns_per_<op>`, `server_cpu_share`, `server_cpu_ns_per_<op>`.
#[derive(Clone, Copy, Debug)]
pub struct OpCost {
    pub cost: CpuCost,    // the figures
    pub op: &'static str, // one operation, singular: "delivery", "handshake"
    pub busy_poll: bool,  // --busy-poll: the bench's share is a whole core whatever its load
}

impl Serialize for OpCost {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("bench_cpu_share", &self.cost.bench_cpu_share)?;
        map.serialize_entry(&format!("bench_cpu_ns_per_{}", self.op), &self.cost.bench_cpu_ns_per_op)?;
        map.serialize_entry("server_cpu_share", &self.cost.server_cpu_share)?;
        map.serialize_entry(&format!("server_cpu_ns_per_{}", self.op), &self.cost.server_cpu_ns_per_op)?;
        map.end()
    }
}

/// Prints a report: with `json`, exactly one JSON line; otherwise the scenario's lines,
/// then the CPU lines (where measured) and the errors line.
pub fn print<R: Summary>(report: &R, json: bool) -> Result<(), BenchError> {
    if json {
        return print_json(report);
    }
    for line in report.lines() {
        println!("{line}");
    }
    let tail = report.tail();
    if let Some(cpu) = &tail.cpu {
        println!("{}", cpu.cost.human(cpu.op, cpu.busy_poll));
    }
    println!("errors        {}", human_errors(&tail.errors));
    Ok(())
}

/// Prints one JSON line on stdout.
pub fn print_json<T: Serialize>(report: &T) -> Result<(), BenchError> {
    let line =
        serde_json::to_string(report).map_err(|e| BenchError::Failed(format!("cannot encode the report: {e}")))?;
    println!("{line}");
    Ok(())
}

/// `1234567.0` → `1.23M`.
pub fn si(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.2}G", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e4 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// Microseconds in a readable unit.
pub fn micros(us: u64) -> String {
    match us {
        us if us >= 10_000_000 => format!("{:.1}s", us as f64 / 1e6),
        us if us >= 10_000 => format!("{:.1}ms", us as f64 / 1e3),
        us if us >= 1000 => format!("{:.2}ms", us as f64 / 1e3),
        us => format!("{us}µs"),
    }
}

/// Error counts as `refused×3, http_503×1`, or `none`.
pub fn human_errors(errors: &Errors) -> String {
    if errors.is_empty() {
        return "none".to_owned();
    }
    errors.iter().map(|(kind, n)| format!("{kind}×{n}")).collect::<Vec<_>>().join(", ")
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut hist = latency_histogram();
        for us in 1..=1000 {
            hist.saturating_record(us);
        }
        hist.saturating_record(MAX_LATENCY_US * 10);
        let l = Latency::of(&hist);
        assert_eq!(l.count, 1001);
        assert_eq!((l.p50, l.p90), (501, 901), "the 501st and 901st of 1001 samples");
        assert!(l.max >= MAX_LATENCY_US && l.max < MAX_LATENCY_US + MAX_LATENCY_US / 100, "saturated: {}", l.max);
        assert_eq!(Latency::of(&latency_histogram()).count, 0);
    }

    #[test]
    fn cpu_cost_arithmetic() {
        let from = CpuMark { bench: Duration::from_millis(100), server: Some(Duration::from_secs(1)) };
        let to = CpuMark { bench: Duration::from_millis(600), server: Some(Duration::from_secs(2)) };
        let cost = CpuCost::between(from, to, Duration::from_secs(1), 5_000_000);
        assert_eq!(cost.bench_cpu_share, 0.5);
        assert_eq!(cost.bench_cpu_ns_per_op, 100.0);
        assert_eq!(cost.server_cpu_share, Some(1.0));
        assert_eq!(cost.server_cpu_ns_per_op, Some(200.0));
    }

    #[test]
    fn the_tail_names_cpu_fields_after_the_operation() {
        #[derive(Serialize)]
        struct Report {
            scenario: &'static str,
            #[serde(flatten)]
            tail: Tail,
        }
        let cost = CpuCost {
            bench_cpu_share: 0.5,
            bench_cpu_ns_per_op: 100.0,
            server_cpu_share: None,
            server_cpu_ns_per_op: None,
        };
        let errors = Errors::from([("refused".to_owned(), 2)]);
        let tail = Tail { cpu: Some(OpCost { cost, op: "handshake", busy_poll: false }), errors: errors.clone() };
        let json = serde_json::to_string(&Report { scenario: "churn", tail }).unwrap();
        assert_eq!(
            json,
            r#"{"scenario":"churn","bench_cpu_share":0.5,"bench_cpu_ns_per_handshake":100.0,"server_cpu_share":null,"server_cpu_ns_per_handshake":null,"errors":{"refused":2}}"#
        );
        let json = serde_json::to_string(&Report { scenario: "idle", tail: Tail { cpu: None, errors } }).unwrap();
        assert_eq!(json, r#"{"scenario":"idle","errors":{"refused":2}}"#);
    }

    #[test]
    fn human_numbers() {
        assert_eq!(si(1_234_567.0), "1.23M");
        assert_eq!(si(12_345.0), "12.3k");
        assert_eq!(si(999.0), "999");
        assert_eq!(micros(42), "42µs");
        assert_eq!(micros(1500), "1.50ms");
        assert_eq!(micros(81_000), "81.0ms");
    }
}
