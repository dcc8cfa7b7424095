//! wharf-runtime: the wasm "container runtime" of a wharf node.
//!
//! It owns the wasmtime engine, fetches and caches images, compiles them once per digest,
//! and runs instances under the limits of their container spec. It knows nothing of the
//! API types beyond a small spec struct, so that the engine can be tested and benchmarked
//! on its own. The engine arrives with the node issue.
