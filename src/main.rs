//! The `pollcast` binary: command line → `Config` → `Server::run()`, or a subcommand
//! (`pollcast bench ...`). Nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use pollcast::config::{parse_duration, parse_size, Config, Mode};
use pollcast::server::{raise_fd_limit, Server};

/// A WebSocket chat and broadcast server on one mio poll loop.
///
/// Every flag has a POLLCAST_* environment variable (e.g. POLLCAST_LISTEN). Sizes take
/// B/KiB/MiB suffixes, durations ms/s/m.
#[derive(Parser, Debug)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Load-test a WebSocket relay (this one or any other): fanout, idle, churn.
    Bench(pollcast::bench::BenchArgs),
    /// Mint an HS256 token with the server's JWT secret (for trying auth out and scripts).
    Token(pollcast::token::TokenArgs),
}

/// The server's flags (the default command).
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (logged).
    #[arg(long, env = "POLLCAST_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// relay: each message goes to every other client of its room; echo: back to its sender.
    #[arg(long, env = "POLLCAST_MODE", value_enum, default_value = "relay")]
    mode: Mode,

    /// Most client connections held at once; more are answered 503.
    #[arg(long, env = "POLLCAST_MAX_CONNECTIONS", default_value = "10000")]
    max_connections: usize,

    /// Largest message accepted (after reassembly); larger ones close the sender with 1009.
    #[arg(long, env = "POLLCAST_MAX_MESSAGE", default_value = "64KiB", value_parser = parse_size)]
    max_message: usize,

    /// Unsent bytes held per client; a client past it is a slow consumer, closed with 1008.
    /// Never below one maximal message.
    #[arg(long, env = "POLLCAST_MAX_QUEUE", default_value = "1MiB", value_parser = parse_size)]
    max_queue: usize,

    /// Largest HTTP request head; larger ones are answered 431.
    #[arg(long, env = "POLLCAST_MAX_REQUEST", default_value = "8KiB", value_parser = parse_size)]
    max_request: usize,

    /// Most header lines in a request head; more are answered 431.
    #[arg(long, env = "POLLCAST_MAX_HEADERS", default_value = "64")]
    max_headers: usize,

    /// Time from accept to a complete request head; slower clients get 408.
    #[arg(long, env = "POLLCAST_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,

    /// Quiet time after which the server pings a client.
    #[arg(long, env = "POLLCAST_PING_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    ping_interval: Duration,

    /// Silence after which a client is closed with 1001 [default: 2 × ping interval].
    #[arg(long, env = "POLLCAST_IDLE_TIMEOUT", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,

    /// How long to wait for a client's Close answer, and to linger after ours.
    #[arg(long, env = "POLLCAST_CLOSE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    close_timeout: Duration,

    /// On SIGINT/SIGTERM, how long to flush the 1001 closes before exiting.
    #[arg(long, env = "POLLCAST_SHUTDOWN_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    shutdown_timeout: Duration,

    /// Bytes read from one client per loop turn before the others get their turn.
    #[arg(long, env = "POLLCAST_READ_BUDGET", default_value = "256KiB", value_parser = parse_size)]
    read_budget: usize,

    /// Browser Origin allowed to upgrade (repeatable, or comma-separated in the env var);
    /// when given, others get 403.
    #[arg(long = "allow-origin", env = "POLLCAST_ALLOW_ORIGIN", value_delimiter = ',')]
    allow_origins: Vec<String>,

    /// Rooms one pollcast.v1 client may be in at once.
    #[arg(long, env = "POLLCAST_MAX_ROOMS_PER_CLIENT", default_value = "32")]
    max_rooms_per_client: usize,

    /// Longest text in a chat send, dm or /msg; longer ones get error too_large.
    #[arg(long, env = "POLLCAST_MAX_TEXT", default_value = "8KiB", value_parser = parse_size)]
    max_text: usize,

    /// SQLite file keeping message history (created if missing; WAL mode).
    #[arg(long, env = "POLLCAST_DB", default_value = "pollcast.db")]
    db: PathBuf,

    /// Keep no history: nothing is stored, no replay.
    #[arg(long, env = "POLLCAST_NO_HISTORY")]
    no_history: bool,

    /// Messages kept per room; older ones are trimmed.
    #[arg(long, env = "POLLCAST_HISTORY_KEEP", default_value = "1000")]
    history_keep: usize,

    /// Most messages one replay (?history=N, join) or history page carries.
    #[arg(long, env = "POLLCAST_HISTORY_MAX", default_value = "500")]
    history_max: usize,

    /// Messages a pollcast.v1 client is sent when it joins a room without asking for a count.
    #[arg(long, env = "POLLCAST_HISTORY_DEFAULT", default_value = "50")]
    history_default: usize,

    /// Messages per second one client may send (bursts of twice that); more are dropped
    /// and answered rate_limited. 0: no limit (the relay is also a load-test target).
    #[arg(long, env = "POLLCAST_MAX_RATE", default_value = "0")]
    max_rate: u32,
}

impl ServeArgs {
    fn into_config(self) -> Config {
        Config {
            listen: self.listen,
            mode: self.mode,
            max_connections: self.max_connections,
            max_message: self.max_message,
            max_queue: self.max_queue,
            max_request: self.max_request,
            max_headers: self.max_headers,
            handshake_timeout: self.handshake_timeout,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout.unwrap_or(2 * self.ping_interval),
            close_timeout: self.close_timeout,
            shutdown_timeout: self.shutdown_timeout,
            read_budget: self.read_budget.max(1),
            allow_origins: self.allow_origins,
            max_rooms_per_client: self.max_rooms_per_client.max(1),
            max_text: self.max_text,
            db: (!self.no_history).then_some(self.db),
            history_keep: self.history_keep.max(1),
            history_max: self.history_max.max(1),
            history_default: self.history_default,
            max_rate: self.max_rate,
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if let Some(Command::Bench(args)) = cli.command {
        return pollcast::bench::run(args);
    }
    if let Some(Command::Token(args)) = cli.command {
        return pollcast::token::run(args);
    }
    let config = cli.serve.into_config();
    let fd_limit = raise_fd_limit();
    let mut server = match Server::bind(config.clone()) {
        Ok(server) => server,
        Err(e) => {
            log::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!("pollcast listening on ws://{}/", server.local_addr());
    log::info!("{} open-files={fd_limit}", config.limits_line());
    if let Err(e) = server.run() {
        log::error!("poll loop failed: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
