#!/usr/bin/env python3
"""Where the CPU of a control plane bench goes (BENCHMARKS.md, "Where the time goes").

Reads `perf script -F comm,tid,time,ip,sym,dso` output (a `perf record --call-graph
dwarf` of a bench) on stdin and prints shares of all samples. Each sample goes to a side
(the load generator, the in-process controllers, etcd's process, else the API server)
and then to the innermost frame that names a category (allocation, memcpy and
core/alloc frames skipped, so an allocation counts for whoever made it).

Usage: perf-classify.py [FROM [TO]]  (perf timestamps in seconds: a phase of the run)"""
import re, sys, collections

SIDE_RULES = [
    ("in-process controllers/scheduler (informers)", re.compile(r"kube_runtime|wharf_control::controllers|wharf_control::scheduler|in_process_client|leaderelection")),
    ("startup (PKI, kubeconfig)", re.compile(r"rcgen|wharf_control::pki|controlplane::start|kubeconfig")),
    ("load generator", re.compile(r"kube_client::|hyper::client|hyper_util::client|hyper::proto::h1::dispatch::Client|api::drive|api::api_creates|scheduler::run::\{\{closure\}\}.*bench|tower::buffer|kube_client|rustls::client|ClientConnection|api::raw_etcd|api::rbac|hyper_rustls")),
]
CATS = [
    ("store: fsync (kernel)", re.compile(r"fdatasync|fsync|jbd2|ext4_sync|blkdev|file_write_and_wait")),
    ("TLS (rustls/ring)", re.compile(r"rustls|\bring::|\bring_core|(^|[^A-Za-z])ring_|aes_|gcm_|ChaCha|chacha|poly1305|sha256|sha512|x25519|p256|ecp_nistz|bn_mul|GFp_|aws_lc")),
    ("JSON encode/decode", re.compile(r"serde_json|serde_core|Deserialize|Serialize|visit_map|visit_seq|serde::de|serde::ser|<serde|serde_path_to_error|ryu|itoa")),
    ("authorization", re.compile(r"apiserver::authz|apiserver::rbac|authz::")),
    ("authentication", re.compile(r"apiserver::auth::|jsonwebtoken|x509")),
    ("admission/validation/defaults", re.compile(r"api::validation|api::typed|fieldcheck|api::fields|apiserver::quota|limitranger|admit_|prepare_create|api::apply|record_update|strategies::|k8s_openapi")),
    ("watch cache / watch fan-out", re.compile(r"store::cache|apiserver::watch|WatchCache|store::Memo")),
    ("events (Event objects)", re.compile(r"wharf_control::events")),
    ("store: etcd client (gRPC)", re.compile(r"etcd_client|tonic|h2::|prost")),
    ("store: fjall/lsm", re.compile(r"fjall|lsm_tree|value_log|FjallStore|store::fjall_store|xxhash|lz4|crc32")),
    ("store: other store layers", re.compile(r"wharf_control::store|apiserver::ipam|encryption")),
    ("HTTP (hyper/axum/tower)", re.compile(r"hyper|axum|tower|http::|httparse|h1::|matchit|apiserver::request|apiserver::resources|apiserver::audit|apiserver::metrics|metrics::")),
    ("kernel: network/loopback", re.compile(r"tcp_|ip_|__x64_sys_(sendto|sendmsg|recvfrom|recvmsg|write|writev|read|readv)|sock_|skb|loopback|net_rx|__netif|inet_")),
    ("kernel: futex/scheduling/epoll", re.compile(r"futex|schedule|epoll|__x64_sys_sched|try_to_wake_up|finish_task_switch|hrtimer|nanosleep")),
    ("tokio runtime", re.compile(r"tokio::|mio::")),
]
GENERIC = re.compile(r"^(<\*const|<\*mut|alloc_impl|grow_impl|deallocate_impl|copy_to_nonoverlapping|clone<|<alloc::|<core::|indexmap::|cmp<|eq<|drop_in_place<alloc|malloc|free|cfree|realloc|calloc|_int_|__memcpy|__memmove|__memset|memcpy|memmove|memset|__rust_|alloc::|core::|std::|hashbrown|__libc|_start|main$|\[unknown\]|__GI_|tcache|__strlen|__memcmp|bcmp|memcmp|unlink_chunk|malloc_consolidate|arena_)")

def side_of(comm, frames):
    if comm.startswith("etcd"):
        return "etcd server process"
    if comm in ("cargo",):
        return "cargo"
    if any(re.search(r"tonic|etcd_client|h2::", sym) for sym, _ in frames):
        return "API server (+ its store, controllers)"
    for sym, dso in frames:
        for name, rx in SIDE_RULES:
            if rx.search(sym):
                return name
    return "API server (+ its store, controllers)"

def category(frames):
    for sym, dso in frames:
        if GENERIC.search(sym) and "serde_json" not in sym:
            continue
        for name, rx in CATS:
            if rx.search(sym):
                return name
    # fall back: first non-generic frame's crate
    for sym, dso in frames:
        if not GENERIC.search(sym):
            if "kernel" in dso:
                return "kernel: other"
            return "other: " + sym.split("::")[0][:40]
    return "other: unresolved"

def samples(f):
    head, frames = None, []
    for line in f:
        line = line.rstrip("\n")
        if not line.strip():
            if head is not None:
                yield head, frames
            head, frames = None, []
            continue
        if not line.startswith((" ", "\t")):
            head, frames = line, []
        else:
            parts = line.strip().split(None, 1)
            if len(parts) < 2:
                continue
            rest = parts[1]
            m = re.match(r"(.*) \((.*)\)$", rest)
            sym, dso = (m.group(1), m.group(2)) if m else (rest, "")
            sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
            frames.append((sym, dso))
    if head is not None:
        yield head, frames

def main():
    by_side = collections.Counter()
    by_cat = collections.Counter()
    by_side_cat = collections.Counter()
    top = collections.Counter()
    total = 0
    lo = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    hi = float(sys.argv[2]) if len(sys.argv) > 2 else 1e18
    for head, frames in samples(sys.stdin):
        f = head.split()
        comm = f[0]
        try:
            t = float(f[2].rstrip(":"))
        except (IndexError, ValueError):
            continue
        if not (lo <= t < hi):
            continue
        period = 1
        s = side_of(comm, frames)
        c = category(frames) if s != "etcd server process" else ("kernel" if frames and "kernel" in frames[0][1] else "user (Go)")
        by_side[s] += period; by_cat[c] += period; by_side_cat[(s, c)] += period; total += period
        if frames:
            top[(s, frames[0][0][:90])] += period
    print(f"total samples {total}")
    for s, n in by_side.most_common():
        print(f"\n## {s}: {100*n/total:.1f}%")
        for (s2, c), m in sorted(by_side_cat.items(), key=lambda kv: -kv[1]):
            if s2 == s and 100*m/total >= 0.3:
                print(f"  {100*m/total:5.1f}%  {c}")
    print("\n## top leaf symbols")
    for (s, sym), n in top.most_common(40):
        print(f"  {100*n/total:5.1f}%  [{s[:12]}] {sym}")
main()
