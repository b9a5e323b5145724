//! The Quarry server. See `quarryd --help`.

use std::process::ExitCode;

use clap::Parser;
use quarry::server::{run, Args};

fn main() -> ExitCode {
    let config = match Args::parse().check() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("quarryd: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quarryd: {e}");
            ExitCode::FAILURE
        }
    }
}
