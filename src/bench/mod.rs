//! `pollcast bench`: the load generator, built like the server: one `mio` poll loop
//! driving many client connections, no threads, no async runtime, so one core can
//! load a server running on another.
//!
//! Reading order:
//!
//! - this file: the command line, the hard caps, and what every scenario shares
//!   (resolve the URL, raise the open-file limit, choose source addresses, open many
//!   connections at a bounded pace, close them politely);
//! - [`pool`]: the IO shell, one `Poll` over every connection (its doc lists the phases
//!   of a turn); [`wire`]: the client half of RFC 6455 as pure code; [`stamp`]: what a
//!   message carries; [`track`]: loss, duplicates, reordering, the closed-loop window;
//!   [`pacing`]: the open-loop schedule; [`deflate`]: permessage-deflate (`--deflate`);
//!   [`tls`]: `wss://` trust and TLS error names (the per-connection session is
//!   `pool::tls`);
//! - the scenarios: [`fanout`], [`idle`], [`churn`]; [`report`] and [`progress`] print.
//!
//! Works against any RFC 6455 server that relays every message to the *other* clients
//! connected to the same URL.

pub mod churn;
pub mod deflate;
pub mod fanout;
pub mod idle;
pub mod pacing;
pub mod pool;
pub mod progress;
pub mod report;
pub mod stamp;
pub mod sys;
pub mod timer;
pub mod tls;
pub mod track;
pub mod url;
pub mod wire;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::parse_duration;
use pool::{AfterOpen, Handler, Pool, PoolConfig, TlsTarget};
use progress::Progress;
use url::Target;

/// `--url` when none is given.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:8080/bench";
/// Most connections any scenario opens at once.
pub const MAX_CONNECTIONS: u64 = 100_000;
/// Longest any timed stage may be.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Connects in flight at once while opening many: below the usual listen backlog
/// (1024), so no SYN is dropped and retried a second later.
const MAX_PENDING_CONNECTS: usize = 512;
/// Descriptors kept free beyond the connections (stdio, epoll, /proc reads).
const SPARE_FDS: u64 = 32;
/// Source addresses at most (127.0.0.1 ..= 127.0.0.250).
const MAX_SOURCES: u32 = 250;
/// How long closing every connection at the end may take, beyond which they are dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Poll timeout when nothing else is due: also the progress bar's pace.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Arguments of `pollcast bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The scenarios.
#[derive(clap::Subcommand, Debug)]
pub enum Scenario {
    /// R receivers and S senders in one room: deliveries/s, latency, loss, CPU per delivery.
    Fanout(fanout::FanoutArgs),
    /// Open N connections and hold them: the server's memory per connection.
    Idle(idle::IdleArgs),
    /// Connect, upgrade, close, C at a time: handshakes/s and errors by kind.
    Churn(churn::ChurnArgs),
}

/// Flags every scenario takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// The relay to load, ws://HOST(:PORT)/PATH or wss://HOST(:PORT)/PATH (TLS, default
    /// port 443); every client of this URL gets the others' messages.
    #[arg(long, default_value = DEFAULT_URL)]
    pub url: String,

    /// wss:// only: accept any server certificate without checking it. For servers with
    /// self-signed test certificates only; it gives up what TLS authentication is for.
    #[arg(long, conflicts_with = "ca_file")]
    pub insecure: bool,

    /// wss:// only: trust the CA certificates in this PEM file (or a self-signed server
    /// certificate itself) instead of the system's bundle (/etc/ssl/certs/ca-certificates.crt).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// The server's process id: adds its CPU time per operation (fanout, churn) or its
    /// memory per connection (idle), read from /proc. Several (comma-separated or the
    /// flag repeated) are added up: the nodes of a cluster and its Redis, say.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// Print exactly one JSON line with every figure instead of the summary.
    #[arg(long)]
    pub json: bool,

    /// Source addresses to spread connections over (127.0.0.1, 127.0.0.2, ...)
    /// [default: as many as the ephemeral port range needs; loopback targets only].
    #[arg(long)]
    pub sources: Option<u32>,

    /// Time allowed for TCP connect + upgrade (with wss://, the TLS handshake too), per
    /// connection.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Offer permessage-deflate (RFC 7692, no context takeover either way). Where the
    /// server accepts, its compressed messages are inflated and ours are sent
    /// compressed; where it declines, frames stay plain.
    #[arg(long)]
    pub deflate: bool,

    /// Never sleep waiting for the server: poll for readiness again at once, keeping one
    /// core busy. On loopback, a write to a socket whose reader sleeps pays to wake it on
    /// the writer's own time; with the bench on a core of its own, this keeps that cost
    /// out of the server's figures.
    #[arg(long)]
    pub busy_poll: bool,
}

/// Why a run failed.
#[derive(Debug)]
pub enum BenchError {
    /// Bad arguments: exit status 2.
    Usage(String),
    /// The run could not be done (unreachable server, failed connections): status 1.
    Failed(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Usage(m) | BenchError::Failed(m) => f.write_str(m),
        }
    }
}

/// Runs a benchmark scenario; errors are printed, never panicked.
pub fn run(args: BenchArgs) -> ExitCode {
    let result = match args.scenario {
        Scenario::Fanout(args) => fanout::run(args),
        Scenario::Idle(args) => idle::run(args),
        Scenario::Churn(args) => churn::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(BenchError::Usage(message)) => {
            eprintln!("pollcast bench: {message}");
            ExitCode::from(2)
        }
        Err(BenchError::Failed(message)) => {
            eprintln!("pollcast bench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Checks `value` against `1..=max`, naming the flag in the error.
pub fn check_range(flag: &str, value: u64, min: u64, max: u64) -> Result<(), BenchError> {
    if value < min || value > max {
        return Err(BenchError::Usage(format!("--{flag} must be between {min} and {max} (got {value})")));
    }
    Ok(())
}

/// Checks a duration flag against `MAX_DURATION` (and, when `positive`, above zero).
pub fn check_duration(flag: &str, value: Duration, positive: bool) -> Result<(), BenchError> {
    if value > MAX_DURATION || (positive && value.is_zero()) {
        return Err(BenchError::Usage(format!(
            "--{flag} must be {}at most {}s (got {value:?})",
            if positive { "above 0 and " } else { "" },
            MAX_DURATION.as_secs()
        )));
    }
    Ok(())
}

/// What every scenario works with: the target, the connection pool, the bar.
pub struct Bench {
    pub target: Target,       // the resolved --url
    pub pool: Pool,           // every connection
    pub progress: Progress,   // the bar on stderr
    pub server_pid: Vec<u32>, // --server-pid, checked readable (none: not measured)
    pub sources: usize,       // source addresses in use
    pub fd_limit: u64,        // the open-file limit after raising it
    pub start: Instant,       // the origin of every `_ns` timestamp
}

impl Bench {
    /// Validates the common flags for a run of up to `connections` connections at
    /// once, raises the open-file limit, picks source addresses.
    pub fn prepare(common: &Common, connections: u64) -> Result<Bench, BenchError> {
        check_range("connections in total", connections, 1, MAX_CONNECTIONS)?;
        check_duration("handshake-timeout", common.handshake_timeout, true)?;
        let target = Target::parse(&common.url).map_err(BenchError::Usage)?;
        let tls = tls_target(common, &target)?;
        for &pid in &common.server_pid {
            sys::process_cpu(pid).map_err(|e| BenchError::Usage(format!("--server-pid: {e}")))?;
        }
        let fd_limit = crate::sys::raise_fd_limit();
        if connections + SPARE_FDS > fd_limit {
            return Err(BenchError::Usage(format!(
                "{connections} connections need {} open files but the limit is {fd_limit} \
                 (raise the hard limit: ulimit -Hn)",
                connections + SPARE_FDS
            )));
        }
        let sources = choose_sources(&target, common.sources, connections)?;
        let start = Instant::now();
        let config = PoolConfig {
            target: target.clone(),
            sources: sources.clone(),
            handshake_timeout: common.handshake_timeout,
            close_timeout: CLOSE_TIMEOUT,
            deflate: common.deflate,
            busy_poll: common.busy_poll,
            tls,
        };
        let pool = Pool::new(config, start).map_err(|e| BenchError::Failed(format!("cannot create a poll: {e}")))?;
        Ok(Bench {
            target,
            pool,
            progress: Progress::new(),
            server_pid: common.server_pid.clone(),
            sources: sources.len(),
            fd_limit,
            start,
        })
    }

    /// Opens `count` connections named `0..count`, at most `MAX_PENDING_CONNECTS` in
    /// flight, and waits until each is open or failed. Returns the pool key of each
    /// (meaningful for the open ones). With `all_or_nothing`, the first failure ends
    /// the run with an error that names it.
    pub fn connect_all<H: Handler>(
        &mut self,
        handler: &mut H,
        count: u32,
        all_or_nothing: bool,
    ) -> Result<Vec<usize>, BenchError> {
        let mut keys = vec![usize::MAX; count as usize];
        let mut next: u32 = 0;
        self.progress.stage("connect", u64::from(count));
        loop {
            while next < count && self.pool.pending() < MAX_PENDING_CONNECTS {
                if let Ok(key) = self.pool.open(next, AfterOpen::Hold) {
                    keys[next as usize] = key;
                }
                next += 1;
            }
            if all_or_nothing && !self.pool.errors().is_empty() {
                self.progress.finish();
                return Err(self.connect_failure());
            }
            if next == count && self.pool.pending() == 0 {
                break;
            }
            self.turn(handler, IDLE_POLL)?;
            let now_ns = self.pool.now_ns();
            if self.progress.due(now_ns) {
                let done = u64::from(next) - self.pool.pending() as u64;
                self.progress.update(now_ns, done, format!("{} open", self.pool.open_count()));
            }
        }
        if self.pool.open_count() == 0 {
            self.progress.finish();
            return Err(self.connect_failure());
        }
        Ok(keys)
    }

    /// The error for connections that failed, with a hint for the usual causes.
    pub fn connect_failure(&self) -> BenchError {
        let errors = self.pool.errors();
        let wrong_name = format!("{}wrong_name", tls::CERT_ERROR_PREFIX);
        let hint = if errors.contains_key("refused") {
            " (is a server listening there?)"
        } else if errors.contains_key("http_503") {
            " (the server's connection limit?)"
        } else if errors.contains_key("out_of_fds") {
            " (raise the open-file limit: ulimit -n)"
        } else if errors.contains_key("no_source_port") {
            " (out of ephemeral ports: try --sources)"
        } else if errors.contains_key(&wrong_name) {
            &format!(
                " (the server's certificate is not for '{}': use a host name it carries, or --insecure \
                 for a test certificate)",
                self.target.host
            )
        } else if errors.keys().any(|kind| kind.starts_with(tls::CERT_ERROR_PREFIX)) {
            " (the server's certificate is not trusted: give its CA, or a self-signed certificate \
             itself, with --ca-file PEM, or pass --insecure for a self-signed test certificate)"
        } else if errors.contains_key("tls_not_tls") {
            " (the server does not speak TLS: use ws://)"
        } else if !self.target.tls && errors.contains_key("bad_response") {
            " (a TLS server? use wss://)"
        } else {
            ""
        };
        BenchError::Failed(format!("cannot connect to {}: {}{hint}", self.target, report::human_errors(errors)))
    }

    /// One turn with nothing new to send: flush, reap, poll.
    pub fn turn<H: Handler>(&mut self, handler: &mut H, timeout: Duration) -> Result<(), BenchError> {
        self.pool.flush(handler);
        self.pool.reap();
        self.pool.poll(handler, timeout).map_err(|e| BenchError::Failed(format!("poll failed: {e}")))
    }

    /// Turns until `done` holds or `deadline_ns` passes; `true` if `done` held.
    pub fn drive_until<H: Handler>(
        &mut self,
        handler: &mut H,
        deadline_ns: u64,
        mut done: impl FnMut(&Pool, &H) -> bool,
    ) -> Result<bool, BenchError> {
        loop {
            if done(&self.pool, handler) {
                return Ok(true);
            }
            let now_ns = self.pool.now_ns();
            if now_ns >= deadline_ns {
                return Ok(false);
            }
            let left = Duration::from_nanos(deadline_ns - now_ns);
            self.turn(handler, left.min(IDLE_POLL))?;
        }
    }

    /// Starts the closing handshake on every connection and waits, bounded, until all
    /// are finished; the rest are dropped.
    pub fn close_all<H: Handler>(&mut self, handler: &mut H) -> Result<(), BenchError> {
        self.pool.close_all();
        let deadline_ns = self.pool.now_ns() + (CLOSE_TIMEOUT + IDLE_POLL).as_nanos() as u64;
        self.drive_until(handler, deadline_ns, |pool, _| pool.is_empty())?;
        self.pool.flush(handler);
        self.pool.reap();
        Ok(())
    }
}

/// The TLS settings every connection shares, for a `wss://` target; `--insecure` and
/// `--ca-file` are refused with `ws://`, where they would silently mean nothing.
fn tls_target(common: &Common, target: &Target) -> Result<Option<TlsTarget>, BenchError> {
    if !target.tls {
        if common.insecure || common.ca_file.is_some() {
            return Err(BenchError::Usage(format!(
                "--insecure and --ca-file apply to wss:// URLs only (got {})",
                target.url
            )));
        }
        return Ok(None);
    }
    let trust = match (&common.ca_file, common.insecure) {
        (_, true) => tls::Trust::Anything,
        (Some(path), false) => tls::Trust::CaFile(path),
        (None, false) => tls::Trust::System,
    };
    let config = tls::client_config(trust).map_err(BenchError::Usage)?;
    let name = tls::server_name(&target.host).map_err(BenchError::Usage)?;
    Ok(Some(TlsTarget { config, name }))
}

/// Source addresses for `connections` connections: one (the kernel's choice) unless
/// the ephemeral port range cannot hold them all, then 127.0.0.2, 127.0.0.3, ... too.
fn choose_sources(target: &Target, asked: Option<u32>, connections: u64) -> Result<Vec<Option<IpAddr>>, BenchError> {
    let per_source = u64::from(sys::ports_per_source());
    let needed = connections.div_ceil(per_source).max(1);
    let count = match asked {
        Some(n) => {
            check_range("sources", u64::from(n), 1, u64::from(MAX_SOURCES))?;
            u64::from(n)
        }
        None => needed,
    };
    if count == 1 {
        return Ok(vec![None]);
    }
    let IpAddr::V4(ip) = target.addr.ip() else {
        return Err(BenchError::Usage(format!(
            "{connections} connections need {count} source addresses, which only works for 127.x.x.x targets"
        )));
    };
    if !ip.is_loopback() {
        return Err(BenchError::Usage(format!(
            "{connections} connections need {count} source addresses, which only works for 127.x.x.x targets"
        )));
    }
    if count > u64::from(MAX_SOURCES) {
        return Err(BenchError::Usage(format!(
            "{connections} connections need more than {MAX_SOURCES} source addresses"
        )));
    }
    // The first is 127.0.0.1 as the kernel picks it; the others are bound explicitly.
    let mut sources = vec![None];
    sources.extend((2..=count as u8).map(|last| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))));
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_grow_with_the_connection_count() {
        let target = Target::parse("ws://127.0.0.1:9/").unwrap();
        assert_eq!(choose_sources(&target, None, 10).unwrap(), vec![None]);
        let per_source = u64::from(sys::ports_per_source());
        let three = choose_sources(&target, None, 2 * per_source + 1).unwrap();
        assert_eq!(three.len(), 3);
        assert_eq!(three[2], Some("127.0.0.3".parse().unwrap()));
        assert_eq!(choose_sources(&target, Some(4), 10).unwrap().len(), 4);
        assert!(matches!(choose_sources(&target, Some(0), 10), Err(BenchError::Usage(_))));
        let v6 = Target::parse("ws://[::1]:9/").unwrap();
        assert!(matches!(choose_sources(&v6, Some(2), 10), Err(BenchError::Usage(_))));
    }

    #[test]
    fn range_checks_name_the_flag() {
        let err = check_range("receivers", 0, 1, 10).unwrap_err();
        assert!(err.to_string().contains("--receivers"));
        assert!(check_duration("duration", Duration::ZERO, true).is_err());
        assert!(check_duration("warmup", Duration::ZERO, false).is_ok());
        assert!(check_duration("hold", MAX_DURATION + Duration::from_secs(1), false).is_err());
    }
}
