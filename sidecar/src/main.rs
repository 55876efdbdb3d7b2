//! `ferry-sidecar`: Ferry's data plane, one binary with three modes.
//!
//! - `proxy`: the dual-write CQL proxy injected next to each source node.
//! - `backfill`: copies historical data token range by token range (a Job).
//! - `validate`: compares source and target, optionally repairing (a Job).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ferry-sidecar",
    version,
    about = "Ferry's data plane: CQL proxy, backfill and validation"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Dual-write CQL proxy: forwards to the source node, mirrors writes to the target.
    Proxy,
    /// Copy historical data from the source to the target, token range by token range.
    Backfill,
    /// Compare source and target and report (or repair) differences.
    Validate,
}

/// The error a mode returns until its issue lands: never a fake success.
#[derive(Debug, thiserror::Error)]
#[error("`ferry-sidecar {0}` is not implemented yet")]
struct NotImplemented(&'static str);

fn run(mode: Mode) -> Result<(), NotImplemented> {
    match mode {
        Mode::Proxy => Err(NotImplemented("proxy")),
        Mode::Backfill => Err(NotImplemented("backfill")),
        Mode::Validate => Err(NotImplemented("validate")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}
