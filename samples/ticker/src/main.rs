//! ticker: a `wasi:cli` command (a wasm32-wasip2 component) that logs a line every second,
//! forever (or `TICKS` times when that variable is set). The sleep is a host-side timer, so
//! an idle ticker costs no CPU.

use std::time::Duration;

fn main() {
    let limit: Option<u64> = std::env::var("TICKS").ok().and_then(|s| s.parse().ok());
    let interval = std::env::var("INTERVAL_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        n += 1;
        println!("tick {n}");
        if limit.is_some_and(|l| n >= l) {
            return;
        }
        std::thread::sleep(interval);
    }
}
