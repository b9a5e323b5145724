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
    let args = Args::parse();
    init_logging();
    let config = match args.check() {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// One line per event on stderr, filtered by `RUST_LOG` (default `info`, e.g.
/// `RUST_LOG=quarry=debug`). Under systemd, journald stamps the time itself.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        logs.without_time().init();
    } else {
        logs.init();
    }
}
