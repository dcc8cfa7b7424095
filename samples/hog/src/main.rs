//! hog: a `wasi:cli` command that allocates (and touches) memory 1 MiB at a time until an
//! allocation fails. Under a memory limit the runtime refuses to grow its linear memory,
//! the allocator fails, Rust aborts (a wasm trap), and the container ends `OOMKilled`.

fn main() {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        // vec![1; n] writes every byte, so the memory is really used, not just reserved.
        chunks.push(vec![1u8; 1 << 20]);
        if chunks.len() % 16 == 0 {
            println!("allocated {} MiB", chunks.len());
        }
    }
}
