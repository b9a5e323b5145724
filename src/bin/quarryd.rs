//! The Quarry server. See `quarryd --help`.

use std::process::ExitCode;

use clap::Parser;
use quarry::server::{run, Args, SHARD_THREAD_PREFIX};

fn main() -> ExitCode {
    // A panic on a shard's thread stops the node at once (see `fail_node`), after the
    // usual message with its cause.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        if let Some(name) = thread.name().filter(|n| n.starts_with(SHARD_THREAD_PREFIX)) {
            quarry::server::fail_node(name, "panicked (see above)");
        }
    }));
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
