//! The `pollcast` binary: command line → `Config` → `Server::run()`, or a subcommand
//! (`pollcast bench ...`). Nothing else.

use std::process::ExitCode;

use clap::Parser;

use pollcast::config::Config;
use pollcast::server::Server;
use pollcast::sys::raise_fd_limit;

/// A WebSocket chat and broadcast server on one mio poll loop.
///
/// Every flag has a POLLCAST_* environment variable (e.g. POLLCAST_LISTEN). Sizes take
/// B/KiB/MiB suffixes, durations ms/s/m.
#[derive(Parser, Debug)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// The server's flags (the default command): every one is a field of `Config`.
    #[command(flatten)]
    serve: Config,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Load-test a WebSocket relay (this one or any other): fanout, idle, churn.
    Bench(pollcast::bench::BenchArgs),
    /// Mint an HS256 token with the server's JWT secret (for trying auth out and scripts).
    Token(pollcast::token::TokenArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Bench(args)) => return pollcast::bench::run(args),
        Some(Command::Token(args)) => return pollcast::token::run(args),
        None => {}
    }
    let config = cli.serve;
    for warning in config.warnings() {
        log::warn!("{warning}");
    }
    let fd_limit = raise_fd_limit();
    let mut server = match Server::bind(config.clone()) {
        Ok(server) => server,
        Err(e) => {
            log::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!("pollcast listening on {}://{}/", server.scheme(), server.local_addr());
    log::info!("{} open-files={fd_limit}", config.limits_line());
    if let Err(e) = server.run() {
        log::error!("poll loop failed: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
