//! spinner: a `wasi:cli` command that spins forever without ever calling the host.
//! The runtime must keep it from starving other pods (epoch-based yields and the CPU
//! limit) and must still be able to stop it.

fn main() {
    println!("spinning");
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}
