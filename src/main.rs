//! `wharf`: parse the command line, set up logging, run the command, and turn its outcome
//! into an exit code (0 or 1) and one line on stderr.

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;
use wharf::cli::{self, Cli};

/// The allocator wharf runs with: glibc's malloc spent a quarter of a ten-thousand-pod
/// start in its own bookkeeping (BENCHMARKS.md, "mimalloc").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are not errors; usage errors exit 1 like every other error.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    std::panic::set_hook(Box::new(|info| {
        let message = info.to_string().replace('\n', " ");
        // `println!` panics when stdout is a closed pipe (`wharf get po | head`): end
        // quietly, as a program killed by SIGPIPE would (128 + 13).
        if message.contains("failed printing to stdout") {
            std::process::exit(141);
        }
        eprintln!("error: internal error: {message}");
    }));
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cli.command.default_log_filter()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    if cli.command.is_daemon() {
        raise_open_files_limit();
    }
    wharf_control::pki::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(line) = cli::error_line(&e) {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as service managers and Go's
/// runtime do: every client connection, watch and pod address holds a descriptor, and the
/// common soft default of 1024 is reached by a thousand idle clients.
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // No hard limit: Linux still caps descriptors at fs.nr_open (2^20 by default).
    let target = limit.maximum.unwrap_or(1 << 20);
    let Some(current) = limit.current.filter(|&c| c < target) else {
        return;
    };
    let raised = Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(from = current, to = target, "raised the open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
}
