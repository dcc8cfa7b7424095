# wharf's everyday recipes. `just --list` shows them.

# Build the wharf binary (debug).
build:
    cargo build

# The README's test command: unit, handler and end-to-end tests from one build.
test *ARGS:
    ./scripts/test {{ARGS}}

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

fmt:
    cargo fmt --all

# Everything CI does.
ci:
    ./.ci/run

# Store write throughput and latency with durability on (see BENCHMARKS.md).
bench:
    cargo bench -p wharf-control --bench store

# A control plane with the demo applied (Ctrl-C stops it).
up:
    ./scripts/up

# Runtime: pod start, HTTP requests/s, memory per idle HTTP container (see BENCHMARKS.md).
bench-runtime:
    cargo bench -p wharf-runtime --bench runtime

# Build the sample guests next to their YAML.
samples:
    samples/build.sh

# Scheduler throughput with simulated nodes (see BENCHMARKS.md).
bench-scheduler:
    cargo bench -p wharf-control --bench scheduler

# Pods on a node: start latency, requests/s, density (see BENCHMARKS.md).
bench-pods:
    cargo bench --bench pods

# hello-http direct / through the proxy / `wasmtime serve` (wrk), and the cluster DNS (dnsperf)
bench-serve:
    scripts/bench-serve

# Every benchmark in sequence on a quiet machine, peers in the same run; rewrites the
# "Latest full run" section of BENCHMARKS.md.
bench-all:
    scripts/bench-all --write
