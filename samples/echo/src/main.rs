//! echo: a `wasi:cli` command (a wasm32-wasip2 component) that writes every line of its
//! standard input back to its standard output, prefixed with `echo: `, and ends when its
//! input does. Run with `stdin: true` to feed it with `kubectl attach -i`.

use std::io::{BufRead, Write};

fn main() {
    println!("echo: ready");
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(out, "echo: {line}");
        let _ = out.flush();
    }
    println!("echo: end of input");
}
