//! crasher: a `wasi:cli` command that exits with status 1 after a delay, to exercise
//! restarts and back-off. The delay in milliseconds comes from the first argument, else the
//! `CRASH_AFTER_MS` environment variable, else 1000.

use std::time::Duration;

fn main() {
    let ms: u64 = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("CRASH_AFTER_MS").ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    // The working directory the runtime passes (wasi:cli/environment.initial-cwd). Rust's
    // std::env::current_dir() does not consult it yet (wasi-libc starts at "/").
    let cwd = wasip2::cli::environment::initial_cwd().unwrap_or_default();
    println!("crasher: exiting with status 1 in {ms} ms (initial-cwd {cwd:?})");
    std::thread::sleep(Duration::from_millis(ms));
    eprintln!("crasher: goodbye");
    std::process::exit(1);
}
