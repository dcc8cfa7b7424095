#!/usr/bin/env bash
# Builds every sample guest in release and copies each .wasm next to its YAML:
#   samples/hello-http/hello_http.wasm, samples/ticker/ticker.wasm, ...
# The samples are their own cargo workspace (samples/Cargo.toml) with their own target dir
# (samples/target), so building them never waits on, or invalidates, wharf's own build.
# Prints the directory holding the built guests. Safe to run repeatedly (cargo is a no-op
# when nothing changed).
#
# `build.sh --push` then pushes every built guest to the cluster registry of $KUBECONFIG
# under the reference samples/images.txt gives it (what the sample manifests name), with
# `$WHARF push` (WHARF defaults to `wharf` on the PATH).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
export CARGO_TARGET_DIR="$here/target"

# Add the wasm targets only when missing (never updates the toolchain itself).
installed="$(rustup target list --installed 2>/dev/null || true)"
for t in wasm32-wasip1 wasm32-wasip2; do
    if ! grep -qx "$t" <<<"$installed"; then
        rustup target add "$t" >&2
    fi
done

# Components (wasi:cli commands and the wasi:http handler).
cargo build --quiet --locked --release --target wasm32-wasip2 \
    -p hello-http -p ticker -p crasher -p spinner -p hog -p frontend -p backend -p kv-store \
    -p pod-lister -p echo >&2
# A preview1 core module.
cargo build --quiet --locked --release --target wasm32-wasip1 -p batch-p1 >&2

p2="$CARGO_TARGET_DIR/wasm32-wasip2/release"
p1="$CARGO_TARGET_DIR/wasm32-wasip1/release"
install -m 0644 "$p2/hello_http.wasm" hello-http/hello_http.wasm
install -m 0644 "$p2/ticker.wasm"     ticker/ticker.wasm
install -m 0644 "$p2/crasher.wasm"    crasher/crasher.wasm
install -m 0644 "$p2/spinner.wasm"    spinner/spinner.wasm
install -m 0644 "$p2/hog.wasm"        hog/hog.wasm
install -m 0644 "$p2/frontend.wasm"   two-tier/frontend.wasm
install -m 0644 "$p2/backend.wasm"    two-tier/backend.wasm
install -m 0644 "$p2/kv_store.wasm"   kv-store/kv_store.wasm
install -m 0644 "$p2/pod-lister.wasm" pod-lister/pod_lister.wasm
install -m 0644 "$p2/echo.wasm"       echo/echo.wasm
install -m 0644 "$p1/batch_p1.wasm"   batch-p1/batch_p1.wasm
if [ "${1:-}" = "--push" ]; then
    while read -r file ref; do
        case "$file" in ''|'#'*) continue ;; esac
        "${WHARF:-wharf}" push "$here/$file" "$ref" >&2
    done < "$here/images.txt"
fi
echo "$here"
