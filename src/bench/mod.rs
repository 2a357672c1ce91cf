//! `pollcast bench`: the load generator (stub, to be built).

use std::process::ExitCode;

/// Arguments of `pollcast bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

/// Runs a benchmark scenario.
pub fn run(_args: BenchArgs) -> ExitCode {
    eprintln!("pollcast bench: not built yet");
    ExitCode::FAILURE
}
