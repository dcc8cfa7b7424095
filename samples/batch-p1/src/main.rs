//! batch-p1: a WASI preview1 command module (wasm32-wasip1) doing real work and exiting 0.
//!
//! `batch_p1 [N]` counts the primes up to N (default 1,000,000) with a sieve of
//! Eratosthenes and prints the count and the largest one. It also echoes its arguments and
//! the `GREETING` environment variable and prints its working directory, so tests can check
//! that they reach the guest. `ECHO_ENV=A,B` also prints `A=...` and `B=...`, and
//! `ECHO_FILES=/etc/app/x,...` prints each file as `file /etc/app/x: CONTENT` (volumes).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("args: {}", args.join(" "));
    if let Ok(cwd) = std::env::current_dir() {
        println!("cwd: {}", cwd.display());
    }
    if let Ok(greeting) = std::env::var("GREETING") {
        println!("GREETING={greeting}");
    }
    for name in list("ECHO_ENV") {
        println!("{name}={}", std::env::var(&name).unwrap_or_default());
    }
    for path in list("ECHO_FILES") {
        match std::fs::read_to_string(&path) {
            Ok(content) => println!("file {path}: {content}"),
            Err(e) => println!("file {path}: error: {e}"),
        }
    }
    let n: usize = match args.get(1).map(|s| s.parse()) {
        None => 1_000_000,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("usage: batch_p1 [N]   (N must be a non-negative integer)");
            std::process::exit(2);
        }
    };
    let (count, largest) = primes_up_to(n);
    println!("primes up to {n}: {count}, largest {largest}");
}

/// The comma-separated items of an environment variable.
fn list(var: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn primes_up_to(n: usize) -> (usize, usize) {
    if n < 2 {
        return (0, 0);
    }
    let mut composite = vec![false; n + 1];
    let mut count = 0;
    let mut largest = 0;
    for i in 2..=n {
        if composite[i] {
            continue;
        }
        count += 1;
        largest = i;
        let mut j = i * i;
        while j <= n {
            composite[j] = true;
            j += i;
        }
    }
    (count, largest)
}
