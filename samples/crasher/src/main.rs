//! crasher: a `wasi:cli` command that fails after a delay, to exercise restarts, back-off
//! and exit statuses.
//!
//! `crasher [MS|panic|overflow]`: with a number (else `CRASH_AFTER_MS`, else 1000) it
//! prints a line, sleeps that many milliseconds and exits with status 1. `panic` panics (a
//! wasm trap: exit code 134, like an aborting native process); `overflow` recurses until the
//! stack is exhausted (a trap: exit code 139, like SIGSEGV).

use std::time::Duration;

fn main() {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("panic") => panic!("crasher: asked to panic"),
        Some("overflow") => {
            let depth = recurse(std::hint::black_box(1));
            println!("unreachable: {depth}");
            return;
        }
        _ => {}
    }
    let ms: u64 = arg
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

/// Unbounded recursion the optimizer cannot turn into a loop (on purpose).
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let mut frame = [0u8; 256];
    frame[(n % 256) as usize] = n as u8;
    let below = recurse(std::hint::black_box(n + 1));
    below.wrapping_add(u64::from(std::hint::black_box(frame)[0]))
}
