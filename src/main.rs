//! The `pollcast` binary: command line → `Config` → `Server::run()`, or a subcommand
//! (`pollcast bench ...`). Nothing else.

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue};
use clap::{CommandFactory, Parser};

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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let note = environment_note(&error);
            let _ = error.print();
            if let Some(note) = note {
                eprintln!("{note}");
            }
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    pollcast::logging::init(cli.serve.log_format);
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
    if let Some(admin) = server.admin_addr() {
        log::info!("admin listening on http://{admin}/ (/metrics, /healthz, /api)");
    }
    log::info!("{} open-files={fd_limit}", config.limits_line());
    if let Err(e) = server.run() {
        log::error!("poll loop failed: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// When a bad value came from an environment variable rather than the command line, the
/// line that says so: clap names only the flag, and the operator would look for it on a
/// command line where it is not.
fn environment_note(error: &clap::Error) -> Option<String> {
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else { return None };
    let Some(ContextValue::String(value)) = error.get(ContextKind::InvalidValue) else { return None };
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let command = Cli::command();
    let env = command.get_arguments().find(|a| a.get_long() == Some(long))?.get_env()?.to_str()?.to_owned();
    let set = std::env::var(&env).ok()?;
    (set == *value).then(|| format!("note: the value came from the environment: {env}={set}"))
}
