//! End-to-end tests of the runtime with the real sample guests (built by samples/build.sh).
//! Every await is bounded; nothing sleeps to wait for a state.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use wharf_runtime::{
    AllocatorKind, ContainerSpec, ExitReason, HttpLimits, ImagePullError, LogOptions, LogStream,
    Mount, PullOptions, Resources, Runtime, StartError, WorkloadKind,
};

const MIB: u64 = 1024 * 1024;

async fn pull(rt: &Runtime, reference: &str) -> Arc<wharf_runtime::Image> {
    within(300, &format!("pull {reference}"), rt.pull(reference))
        .await
        .unwrap_or_else(|e| panic!("pull {reference}: {e}"))
}

async fn log_texts(rt: &Runtime, id: &str, options: LogOptions) -> Vec<String> {
    within(10, "read logs", rt.logs(id).expect("logs").read(options))
        .await
        .expect("read logs")
        .into_iter()
        .map(|l| l.text)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_command_runs_with_args_and_env_and_logs_in_cri_format() {
    build_samples().await;
    let rt = shared_runtime();
    let image = pull(&rt, &batch_p1()).await;
    assert_eq!(image.kind(), WorkloadKind::WasiP1Command);

    let mut spec = ContainerSpec::new(unique_id("p1"));
    spec.argv = vec!["batch_p1".into(), "1000".into()];
    spec.env = vec![("GREETING".into(), "hi there".into())];
    let data = tempfile::tempdir().expect("tempdir");
    spec.mounts = vec![Mount {
        host_path: data.path().into(),
        guest_path: "/data".into(),
        read_only: true,
    }];
    spec.working_dir = Some("/data".into());
    let container = within(30, "start", rt.start(spec, &image))
        .await
        .expect("start");
    let status = within(60, "wait", container.wait()).await;
    assert_eq!(
        (status.reason, status.code),
        (ExitReason::Completed, 0),
        "{status:?}"
    );

    let texts = log_texts(&rt, container.id(), LogOptions::default()).await;
    assert_eq!(
        texts,
        vec![
            "args: batch_p1 1000",
            // WASI preview1 has no working directory: wasi-libc starts p1 guests at "/".
            // (Components get `working_dir` through wasi:cli/environment; see the crasher.)
            "cwd: /",
            "GREETING=hi there",
            "primes up to 1000: 168, largest 997"
        ]
    );
    // The file itself is in the CRI format: `<RFC 3339 nanos> stdout F <text>`.
    let raw = std::fs::read_to_string(
        shared_data_dir()
            .join("logs")
            .join(container.id())
            .join("0.log"),
    )
    .expect("log file");
    let first = raw.lines().next().expect("a line");
    let (timestamp, rest) = first.split_once(' ').expect("timestamp");
    assert_eq!(rest, "stdout F args: batch_p1 1000");
    assert_eq!(
        timestamp.len(),
        "2026-11-21T10:00:00.000000000Z".len(),
        "{timestamp}"
    );
    assert!(
        timestamp.ends_with('Z')
            && timestamp.as_bytes()[10] == b'T'
            && timestamp.as_bytes()[19] == b'.'
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_command_runs_and_can_be_followed() {
    build_samples().await;
    let rt = shared_runtime();
    let image = pull(&rt, &ticker()).await;
    assert_eq!(image.kind(), WorkloadKind::WasiCliCommand);

    let mut spec = ContainerSpec::new(unique_id("ticker"));
    spec.env = vec![
        ("TICKS".into(), "5".into()),
        ("INTERVAL_MS".into(), "30".into()),
    ];
    let container = within(30, "start", rt.start(spec, &image))
        .await
        .expect("start");
    // Follow from the start: the stream yields every line and ends when the container does.
    let follow = rt.logs(container.id()).expect("logs").follow(None);
    let lines: Vec<_> = within(30, "follow", follow.collect::<Vec<_>>()).await;
    let texts: Vec<_> = lines.into_iter().map(|l| l.expect("line").text).collect();
    assert_eq!(
        texts,
        (1..=5).map(|i| format!("tick {i}")).collect::<Vec<_>>()
    );
    let status = within(10, "wait", container.wait()).await;
    assert_eq!(
        (status.reason, status.code),
        (ExitReason::Completed, 0),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_component_serves_concurrent_requests_and_drains_on_stop() {
    build_samples().await;
    let rt = shared_runtime();
    let image = pull(&rt, &hello_http()).await;
    assert_eq!(image.kind(), WorkloadKind::WasiHttp);

    let data = tempfile::tempdir().expect("tempdir");
    let mut spec = ContainerSpec::new(unique_id("hello"));
    spec.env = vec![
        ("POD_NAME".into(), "web-0".into()),
        ("NODE_NAME".into(), "node-a".into()),
    ];
    spec.mounts = vec![Mount {
        host_path: data.path().into(),
        guest_path: "/data".into(),
        read_only: false,
    }];
    spec.resources = Resources {
        memory_bytes: Some(64 * MIB),
        cpu_millicores: Some(1000),
    };
    // 32 at once: more than a container's default share of the test runtime's small pool.
    spec.http.max_concurrency = Some(32);
    spec.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let container = within(30, "start", rt.start(spec, &image))
        .await
        .expect("start");
    let addr = container.http_addr().expect("listening");
    assert_ne!(addr.port(), 0);

    let client = client();
    let url = format!("http://{addr}/");
    for n in 1..=3 {
        let (status, body) = within(30, "GET", get(&client, &url)).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("hello from pod web-0 on node node-a"),
            "{body}"
        );
        assert!(
            body.contains(&format!("request #{n} (counted in /data/counter)")),
            "{body}"
        );
    }

    // 32 concurrent requests, each in its own instance.
    let requests = (0..32).map(|i| {
        let client = client.clone();
        let url = format!("http://{addr}/concurrent/{i}");
        async move { get(&client, &url).await }
    });
    let answers = within(60, "concurrent GETs", futures::future::join_all(requests)).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    assert_eq!(container.stats().requests, 35);

    // A request in flight when stop() is called is still answered (drain), and the port is
    // closed afterwards.
    let slow = tokio::spawn({
        let client = client.clone();
        let url = format!("http://{addr}/sleep/300");
        async move { get(&client, &url).await }
    });
    // Wait (bounded) until the slow request has reached the container.
    within(10, "slow request arrives", async {
        while container.stats().requests < 36 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let status = within(10, "stop", container.stop(Duration::from_secs(5))).await;
    assert_eq!(
        (status.reason, status.code),
        (ExitReason::Completed, 0),
        "{status:?}"
    );
    let (slow_status, slow_body) = within(10, "slow answer", slow).await.expect("slow task");
    assert_eq!(slow_status, 200, "{slow_body}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after stop"
    );

    let texts = log_texts(&rt, container.id(), LogOptions::default()).await;
    assert!(texts.iter().any(|t| t == "/ -> 200"), "{texts:?}");
    assert_eq!(texts.len(), 36, "one log line per request: {texts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_1_is_error_1_and_previous_attempt_log_is_kept() {
    build_samples().await;
    let rt = shared_runtime();
    let image = pull(&rt, &crasher()).await;
    let id = unique_id("crasher");
    for (attempt, ms) in [(0, "10"), (1, "20")] {
        let mut spec = ContainerSpec::new(&id);
        spec.restart_count = attempt;
        spec.argv = vec!["crasher".into(), ms.into()];
        spec.working_dir = Some("/srv/app".into());
        let container = within(30, "start", rt.start(spec, &image))
            .await
            .expect("start");
        let status = within(30, "wait", container.wait()).await;
        assert_eq!(
            (status.reason, status.code),
            (ExitReason::Error, 1),
            "{status:?}"
        );
    }
    let current = log_texts(&rt, &id, LogOptions::default()).await;
    assert_eq!(
        current,
        vec![
            "crasher: exiting with status 1 in 20 ms (initial-cwd \"/srv/app\")",
            "crasher: goodbye"
        ]
    );
    let lines = within(
        10,
        "read",
        rt.logs(&id).expect("logs").read(LogOptions {
            tail: Some(1),
            previous: true,
        }),
    )
    .await
    .expect("previous");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].stream, LogStream::Stderr);
    let previous = log_texts(
        &rt,
        &id,
        LogOptions {
            tail: None,
            previous: true,
        },
    )
    .await;
    assert_eq!(
        previous[0],
        "crasher: exiting with status 1 in 10 ms (initial-cwd \"/srv/app\")"
    );
}

/// Latency of `n` sequential GETs.
async fn latencies(client: &HttpClient, url: &str, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (status, body) = within(30, "GET", get(client, url)).await;
        assert_eq!(status, 200, "{body}");
        out.push(t.elapsed());
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinners_do_not_starve_http_and_stop_within_grace() {
    build_samples().await;
    let rt = shared_runtime();
    let hello = pull(&rt, &hello_http()).await;
    let spin = pull(&rt, &spinner()).await;

    let mut spec = ContainerSpec::new(unique_id("hello"));
    spec.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let web = within(30, "start", rt.start(spec, &hello))
        .await
        .expect("start");
    let url = format!("http://{}/", web.http_addr().expect("addr"));
    let client = client();
    let baseline = latencies(&client, &url, 20).await;

    // One spinner per worker thread: one limited to 100m, one unlimited (it still yields
    // every epoch).
    let mut spinners = Vec::new();
    for cpu in [Some(100), None] {
        let mut spec = ContainerSpec::new(unique_id("spinner"));
        spec.resources.cpu_millicores = cpu;
        spinners.push(
            within(30, "start spinner", rt.start(spec, &spin))
                .await
                .expect("start"),
        );
    }
    let loaded = latencies(&client, &url, 20).await;
    let median = |v: &[Duration]| v[v.len() / 2];
    eprintln!(
        "hello-http latency: idle p50 {:?} max {:?}; with spinners p50 {:?} max {:?}",
        median(&baseline),
        baseline[baseline.len() - 1],
        median(&loaded),
        loaded[loaded.len() - 1]
    );
    let bound = Duration::from_millis(500);
    assert!(
        loaded[loaded.len() - 1] < bound,
        "a request took {:?} with spinners running",
        loaded[loaded.len() - 1]
    );

    // The limited spinner was throttled to about a tenth of a core.
    let limited = spinners[0].stats();
    assert!(limited.cpu_throttled > Duration::ZERO, "{limited:?}");
    assert!(limited.cpu_time < limited.cpu_throttled, "{limited:?}");

    // Stopping a `loop {}` completes well within the grace period.
    for spinner in &spinners {
        let grace = Duration::from_secs(2);
        let t = Instant::now();
        let status = within(10, "stop spinner", spinner.stop(grace)).await;
        assert!(t.elapsed() < grace, "stop took {:?}", t.elapsed());
        assert_eq!(
            (status.reason, status.code),
            (ExitReason::Error, 137),
            "{status:?}"
        );
    }
    within(10, "stop web", web.stop(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_is_oom_killed() {
    build_samples().await;
    let rt = shared_runtime();
    let image = pull(&rt, &hog()).await;
    let mut spec = ContainerSpec::new(unique_id("hog"));
    spec.resources.memory_bytes = Some(32 * MIB);
    let container = within(30, "start", rt.start(spec, &image))
        .await
        .expect("start");
    let status = within(60, "wait", container.wait()).await;
    assert_eq!(
        (status.reason, status.code),
        (ExitReason::OOMKilled, 137),
        "{status:?}"
    );
    assert_eq!(container.stats().oom_events, 1);
    assert_eq!(
        container.stats().memory_bytes,
        0,
        "memory returned when the instance is gone"
    );
    let texts = log_texts(&rt, container.id(), LogOptions::default()).await;
    assert!(texts.iter().any(|t| t == "allocated 16 MiB"), "{texts:?}");
    assert!(
        texts
            .last()
            .is_some_and(|t| t.starts_with("wharf: OOMKilled")),
        "{texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_sleeping_command_at_once() {
    build_samples().await;
    let rt = shared_runtime();
    let image = pull(&rt, &ticker()).await;
    let spec = ContainerSpec::new(unique_id("ticker"));
    let container = within(30, "start", rt.start(spec, &image))
        .await
        .expect("start");
    // Wait for the first tick through the log, then stop while it sleeps in the host.
    let mut follow = Box::pin(rt.logs(container.id()).expect("logs").follow(None));
    let first = within(30, "first tick", follow.next())
        .await
        .expect("a line")
        .expect("line");
    assert_eq!(first.text, "tick 1");
    let t = Instant::now();
    let status = within(10, "stop", container.stop(Duration::from_secs(30))).await;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(
        (status.reason, status.code),
        (ExitReason::Error, 137),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_is_an_image_pull_error() {
    build_samples().await;
    let rt = shared_runtime();
    let image = pull(&rt, &batch_p1()).await;
    let right = format!("{}@{}", batch_p1(), image.digest());
    assert_eq!(pull(&rt, &right).await.digest(), image.digest());

    let wrong = format!("{}@sha256:{}", batch_p1(), "0".repeat(64));
    let err = within(30, "pull", rt.pull(&wrong))
        .await
        .expect_err("mismatch");
    assert!(
        matches!(err, ImagePullError::DigestMismatch { .. }),
        "{err}"
    );
    assert_eq!(err.reason(), "ErrImagePull");
    assert!(err.to_string().contains("digest mismatch"), "{err}");

    let missing = within(30, "pull", rt.pull("/nonexistent/app.wasm"))
        .await
        .expect_err("missing");
    assert!(matches!(missing, ImagePullError::Read { .. }), "{missing}");
    let invalid = within(30, "pull", rt.pull("app.wasm@sha256:xyz"))
        .await
        .expect_err("invalid");
    assert_eq!(invalid.reason(), "InvalidImageName");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_runnable_binaries_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::new(config(dir.path())).expect("runtime");
    let text = dir.path().join("text.wasm");
    std::fs::write(&text, b"not wasm at all").expect("write");
    let err = within(30, "pull", rt.pull(&text.display().to_string()))
        .await
        .expect_err("invalid");
    assert!(matches!(err, ImagePullError::Invalid { .. }), "{err}");
    // An empty core module: valid wasm, but no _start.
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x01\0\0\0").expect("write");
    let err = within(30, "pull", rt.pull(&empty.display().to_string()))
        .await
        .expect_err("not runnable");
    assert!(matches!(err, ImagePullError::NotRunnable { .. }), "{err}");
}

/// The smallest runnable command: a core module exporting an empty `_start`.
const START_ONLY: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // types: () -> ()
    0x03, 0x02, 0x01, 0x00, // functions: one of type 0
    0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // export _start
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code: an empty body
];

/// A local image file is read and hashed again only when it changed: while it stays as it
/// was, pulls of its held image read nothing; a new version is read by the next pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_local_images_are_not_read_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    // Trust file times at once (the default waits a second after a change).
    config.local_image_settle = Duration::ZERO;
    let rt = Runtime::new(config).expect("runtime");
    let app = dir.path().join("app.wasm");
    std::fs::write(&app, START_ONLY).expect("write");
    let reference = app.display().to_string();
    let pulled = |rt: Runtime, reference: String| async move {
        within(
            60,
            "pull",
            rt.pull_with(&reference, &PullOptions::default()),
        )
        .await
        .expect("pull")
    };

    let first = pulled(rt.clone(), reference.clone()).await;
    assert_eq!(rt.stats().local_reads, 1);
    for _ in 0..3 {
        let again = pulled(rt.clone(), reference.clone()).await;
        assert_eq!(again.image_id, first.image_id);
        assert!(Arc::ptr_eq(&again.image, &first.image));
        assert_eq!(again.size, first.size);
    }
    assert_eq!(
        rt.stats().local_reads,
        1,
        "an unchanged file is not read again"
    );
    // A pin is still checked: a wrong one is refused, not answered with the held image.
    let wrong = format!("{reference}@sha256:{}", "0".repeat(64));
    let err = within(60, "pull", rt.pull(&wrong))
        .await
        .expect_err("a wrong pin");
    assert!(
        matches!(err, ImagePullError::DigestMismatch { .. }),
        "{err}"
    );
    assert_eq!(
        rt.stats().local_reads,
        2,
        "a wrong pin is checked by reading"
    );
    let right = format!("{reference}@{}", first.image_id);
    let pinned = pulled(rt.clone(), right).await;
    assert!(Arc::ptr_eq(&pinned.image, &first.image));
    assert_eq!(rt.stats().local_reads, 2);

    // A new version (a custom section more) is read by the next pull.
    let mut changed = START_ONLY.to_vec();
    changed.extend_from_slice(&[0x00, 0x02, 0x01, b'x']);
    std::fs::write(&app, &changed).expect("rewrite");
    let second = pulled(rt.clone(), reference.clone()).await;
    assert_eq!(rt.stats().local_reads, 3);
    assert_ne!(second.image_id, first.image_id);
    assert_eq!(second.size, changed.len() as u64);

    // Checks still run on every pull: a file gone is an error, not the held image.
    std::fs::remove_file(&app).expect("remove");
    let err = within(60, "pull", rt.pull(&reference))
        .await
        .expect_err("gone");
    assert!(matches!(err, ImagePullError::Read { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_once_cached_on_disk_and_corrupt_entries_rebuilt() {
    build_samples().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = batch_p1();

    // Concurrent pulls of one image compile it once; a second pull does not compile.
    let rt = Runtime::new(config(dir.path())).expect("runtime");
    let (a, b) = within(300, "pulls", async {
        tokio::join!(rt.pull(&reference), rt.pull(&reference))
    })
    .await;
    let (a, b) = (a.expect("pull a"), b.expect("pull b"));
    assert!(Arc::ptr_eq(&a, &b));
    pull(&rt, &reference).await;
    let stats = rt.stats();
    assert_eq!(
        (stats.compiles, stats.cache_hits, stats.images),
        (1, 0, 1),
        "{stats:?}"
    );
    // Forgotten in memory: the next pull loads the artifact from disk, no compile.
    assert!(rt.forget_image(&a.digest()));
    pull(&rt, &reference).await;
    assert_eq!(
        (rt.stats().compiles, rt.stats().cache_hits),
        (1, 1),
        "{:?}",
        rt.stats()
    );
    let digest = a.digest();
    drop((a, b, rt));

    // A new runtime on the same data dir (a node restart) loads the artifact.
    let rt = Runtime::new(config(dir.path())).expect("runtime");
    pull(&rt, &reference).await;
    assert_eq!(
        (rt.stats().compiles, rt.stats().cache_hits),
        (0, 1),
        "{:?}",
        rt.stats()
    );
    let artifact = dir
        .path()
        .join("compiled")
        .join(rt.engine_fingerprint())
        .join(format!("{}.cwasm", digest.hex()));
    drop(rt);

    // Flip bytes in the artifact: the checksum catches it, it is rebuilt, and it runs.
    let mut bytes = std::fs::read(&artifact).expect("artifact");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&artifact, &bytes).expect("corrupt");
    let rt = Runtime::new(config(dir.path())).expect("runtime");
    let image = pull(&rt, &reference).await;
    let stats = rt.stats();
    assert_eq!(
        (stats.cache_discarded, stats.compiles, stats.cache_hits),
        (1, 1, 0),
        "{stats:?}"
    );
    let mut spec = ContainerSpec::new(unique_id("rebuilt"));
    spec.argv = vec!["batch_p1".into(), "100".into()];
    let container = within(30, "start", rt.start(spec, &image))
        .await
        .expect("start");
    assert_eq!(
        within(30, "wait", container.wait()).await.reason,
        ExitReason::Completed
    );
    drop((container, image, rt));

    // Garbage with a matching checksum: wasmtime refuses it, it is rebuilt.
    std::fs::write(&artifact, b"garbage").expect("garbage");
    let sum = dir
        .path()
        .join("compiled")
        .join(artifact.parent().and_then(|p| p.file_name()).expect("fp"));
    let checksum = sum.join(format!("{}.cwasm.sha256", digest.hex()));
    {
        use sha2::Digest as _;
        let hex: String = sha2::Sha256::digest(b"garbage")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(&checksum, hex).expect("checksum");
    }
    let rt = Runtime::new(config(dir.path())).expect("runtime");
    pull(&rt, &reference).await;
    assert_eq!(
        (rt.stats().cache_discarded, rt.stats().compiles),
        (1, 1),
        "{:?}",
        rt.stats()
    );
    drop(rt);
    let rt = Runtime::new(config(dir.path())).expect("runtime");
    pull(&rt, &reference).await;
    assert_eq!(
        (rt.stats().cache_hits, rt.stats().compiles),
        (1, 0),
        "{:?}",
        rt.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_over_http_with_pin_redirect_and_blob_reuse() {
    build_samples().await;
    let wasm = bytes::Bytes::from(std::fs::read(hello_http()).expect("sample"));
    let digest = wharf_runtime::Digest::of(&wasm);
    let (addr, hits, server) = serve_image(wasm).await;
    let dir = tempfile::tempdir().expect("tempdir");

    let rt = Runtime::new(config(dir.path())).expect("runtime");
    let pinned = format!("http://{addr}/old/hello.wasm@{digest}");
    let image = pull(&rt, &pinned).await;
    assert_eq!(
        (image.kind(), image.digest()),
        (WorkloadKind::WasiHttp, digest)
    );
    assert_eq!(rt.stats().fetches, 1);
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "redirect + image"
    );
    drop((image, rt));

    // Restarted node: the pinned blob is on disk, nothing is fetched.
    let rt = Runtime::new(config(dir.path())).expect("runtime");
    pull(&rt, &pinned).await;
    assert_eq!(rt.stats().fetches, 0);
    // Unpinned: fetched once, then remembered (IfNotPresent).
    let unpinned = format!("http://{addr}/hello.wasm");
    pull(&rt, &unpinned).await;
    assert_eq!(rt.stats().fetches, 1);
    drop(rt);
    let rt = Runtime::new(config(dir.path())).expect("runtime");
    pull(&rt, &unpinned).await;
    assert_eq!(rt.stats().fetches, 0);

    let wrong = format!("http://{addr}/hello.wasm@sha256:{}", "1".repeat(64));
    let err = within(30, "pull", rt.pull(&wrong))
        .await
        .expect_err("mismatch");
    assert!(
        matches!(err, ImagePullError::DigestMismatch { .. }),
        "{err}"
    );
    let missing = within(30, "pull", rt.pull(&format!("http://{addr}/missing.wasm")))
        .await
        .expect_err("404");
    assert!(
        err.reason() == "ErrImagePull" && missing.to_string().contains("404"),
        "{missing}"
    );
    let https = within(30, "pull", rt.pull("https://example.com/a.wasm"))
        .await
        .expect_err("https");
    assert!(
        matches!(https, ImagePullError::UnsupportedScheme { .. }),
        "{https}"
    );
    server.abort();
}

/// A tiny image server: `/hello.wasm` serves the bytes, `/old/hello.wasm` redirects to it.
async fn serve_image(
    wasm: bytes::Bytes,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::atomic::AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (wasm, counter) = (wasm.clone(), counter.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let wasm = wasm.clone();
                        async move {
                            let response = match req.uri().path() {
                                "/hello.wasm" => hyper::Response::new(Full::new(wasm)),
                                "/old/hello.wasm" => hyper::Response::builder()
                                    .status(301)
                                    .header("location", "/hello.wasm")
                                    .body(Full::new(bytes::Bytes::new()))
                                    .expect("response"),
                                _ => hyper::Response::builder()
                                    .status(404)
                                    .body(Full::new(bytes::Bytes::new()))
                                    .expect("response"),
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, hits, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors_and_shutdown() {
    build_samples().await;
    let rt = shared_runtime();
    assert!(
        matches!(
            rt.allocator(),
            AllocatorKind::Pooling {
                total_instances: 64
            }
        ),
        "{:?}",
        rt.allocator()
    );
    let hello = pull(&rt, &hello_http()).await;
    let err = within(
        10,
        "start",
        rt.start(ContainerSpec::new(unique_id("x")), &hello),
    )
    .await
    .expect_err("no addr");
    assert!(matches!(err, StartError::NoListenAddress { .. }), "{err}");
    let err = within(10, "start", rt.start(ContainerSpec::new("../etc"), &hello))
        .await
        .expect_err("bad id");
    assert!(matches!(err, StartError::InvalidId(_)), "{err}");
    let mut spec = ContainerSpec::new(unique_id("x"));
    spec.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
    spec.mounts = vec![Mount {
        host_path: "/nonexistent/dir".into(),
        guest_path: "/data".into(),
        read_only: true,
    }];
    let err = within(10, "start", rt.start(spec, &hello))
        .await
        .expect_err("bad mount");
    assert!(matches!(err, StartError::Mount(_)), "{err}");

    // shutdown() kills what is left, even a spinner.
    let spin = pull(&rt, &spinner()).await;
    let container = within(
        10,
        "start",
        rt.start(ContainerSpec::new(unique_id("spin")), &spin),
    )
    .await
    .expect("start");
    assert!(within(10, "shutdown", rt.shutdown(Duration::from_secs(5))).await);
    assert_eq!(container.status().map(|s| s.code), Some(137));
    let err = within(
        10,
        "start",
        rt.start(ContainerSpec::new(unique_id("late")), &spin),
    )
    .await
    .expect_err("shut down");
    assert!(matches!(err, StartError::ShuttingDown), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_http_is_denied_unless_the_network_allows_it() {
    build_samples().await;
    let (upstream, _, server) = serve_image(bytes::Bytes::from_static(b"upstream says hi")).await;
    let rt = shared_runtime();
    let image = pull(&rt, &hello_http()).await;
    let client = client();
    let url_for = |c: &wharf_runtime::Container| {
        format!(
            "http://{}/fetch/{upstream}/hello.wasm",
            c.http_addr().expect("addr")
        )
    };
    for (network, allowed) in [
        (wharf_runtime::NetworkAccess::None, false),
        (
            wharf_runtime::NetworkAccess::Hosts(vec!["127.0.0.1:1".into()]),
            false,
        ),
        (
            wharf_runtime::NetworkAccess::Hosts(vec![upstream.to_string()]),
            true,
        ),
        (wharf_runtime::NetworkAccess::All, true),
    ] {
        let mut spec = ContainerSpec::new(unique_id("egress"));
        spec.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
        spec.network = network.clone();
        let container = within(30, "start", rt.start(spec, &image))
            .await
            .expect("start");
        let (status, body) = within(30, "GET", get(&client, &url_for(&container))).await;
        assert_eq!(status, 200, "{body}");
        if allowed {
            assert_eq!(body, "upstream status 200\nupstream says hi", "{network:?}");
        } else {
            assert!(
                body.contains("fetch failed") && body.contains("HttpRequestDenied"),
                "{network:?}: {body}"
            );
        }
        within(10, "stop", container.stop(Duration::from_secs(5))).await;
    }
    server.abort();
}

/// A resolver that knows one service name.
#[derive(Debug)]
struct OneService {
    host: &'static str,
    port: u16,
    addr: std::net::SocketAddr,
}

impl wharf_runtime::ServiceResolver for OneService {
    fn resolve(&self, host: &str, port: u16) -> Option<std::net::SocketAddr> {
        (host == self.host && port == self.port).then_some(self.addr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_http_to_a_service_name_goes_where_the_resolver_says() {
    build_samples().await;
    let (upstream, _, server) = serve_image(bytes::Bytes::from_static(b"upstream says hi")).await;
    let rt = shared_runtime();
    let image = pull(&rt, &hello_http()).await;
    let client = client();
    let mut spec = ContainerSpec::new(unique_id("services"));
    spec.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
    // No network at all, but the service name is cluster-internal.
    spec.network = wharf_runtime::NetworkAccess::None;
    spec.services = Some(Arc::new(OneService {
        host: "backend",
        port: 80,
        addr: upstream,
    }));
    let container = within(30, "start", rt.start(spec, &image))
        .await
        .expect("start");
    let base = format!("http://{}", container.http_addr().expect("addr"));
    let (status, body) = within(
        30,
        "GET",
        get(&client, &format!("{base}/fetch/backend/hello.wasm")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "upstream status 200\nupstream says hi");
    // Another port of the name, or the upstream's own address, is not a service: denied.
    for target in ["backend:81".to_string(), upstream.to_string()] {
        let (_, body) = within(
            30,
            "GET",
            get(&client, &format!("{base}/fetch/{target}/hello.wasm")),
        )
        .await;
        assert!(body.contains("HttpRequestDenied"), "{target}: {body}");
    }
    within(10, "stop", container.stop(Duration::from_secs(5))).await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_on_demand_when_the_pool_cannot_be_set_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    // Larger than the 4 GiB reservation per memory: wasmtime refuses this pool.
    config.pooling = Some(wharf_runtime::PoolingConfig {
        total_instances: 8,
        max_memory_bytes: 1 << 40,
    });
    let rt = Runtime::new(config).expect("runtime");
    match rt.allocator() {
        AllocatorKind::OnDemand { reason } => assert!(reason.contains("pooling"), "{reason}"),
        other => panic!("expected the on-demand fallback, got {other:?}"),
    }
    // And it runs things.
    build_samples().await;
    let image = pull(&rt, &batch_p1()).await;
    let mut spec = ContainerSpec::new(unique_id("ondemand"));
    spec.argv = vec!["batch_p1".into(), "10".into()];
    let container = within(30, "start", rt.start(spec, &image))
        .await
        .expect("start");
    assert_eq!(
        within(30, "wait", container.wait()).await.reason,
        ExitReason::Completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_end_the_container_with_signal_like_exit_codes() {
    build_samples().await;
    let rt = shared_runtime();
    let image = pull(&rt, &crasher()).await;
    for (mode, code) in [("panic", 134), ("overflow", 139)] {
        let mut spec = ContainerSpec::new(unique_id(mode));
        spec.argv = vec!["crasher".into(), mode.into()];
        let container = within(30, "start", rt.start(spec, &image))
            .await
            .expect("start");
        let status = within(60, "wait", container.wait()).await;
        assert_eq!(
            (status.reason, status.code),
            (ExitReason::Error, code),
            "{mode}: {status:?}"
        );
        assert!(status.message.starts_with("wasm trap"), "{status:?}");
        let texts = log_texts(&rt, container.id(), LogOptions::default()).await;
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with("wharf: Error: wasm trap")),
            "{texts:?}"
        );
    }
}

/// Opens a connection to `addr` and sends a GET of `path` without reading the answer.
async fn send_get(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: pod\r\n\r\n").as_bytes())
        .await
        .expect("send");
    stream
}

/// Waits (bounded) until `check` holds.
async fn until(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    within(secs, what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Issue 19: 2,000 requests that never return, to one container, take at most its share
/// of the node's instance pool (the rest are refused with 503), leave another container
/// on the same runtime answering normally, and free their instances when their clients
/// go away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_requests_to_one_container_leave_the_pool_to_the_others() {
    const HUNG: usize = 2000;
    build_samples().await;
    let rt = shared_runtime(); // a pool of 64 instances: a container's share is 16
    let image = pull(&rt, &hello_http()).await;
    let start = |name: &str| {
        let mut spec = ContainerSpec::new(unique_id(name));
        spec.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
        within(30, "start", rt.start(spec, &image))
    };
    let slow = start("slow").await.expect("start slow");
    let other = start("other").await.expect("start other");
    let slow_addr = slow.http_addr().expect("listening");
    let client = client();

    let mut hung = Vec::with_capacity(HUNG);
    for batch in 0..HUNG / 100 {
        let opened =
            futures::future::join_all((0..100).map(|_| send_get(slow_addr, "/sleep/600000")));
        hung.extend(within(30, &format!("batch {batch} of hung requests"), opened).await);
    }
    until(60, "every hung request reached the container", || {
        slow.stats().requests >= HUNG as u64
    })
    .await;
    let stats = slow.stats();
    assert_eq!(stats.in_flight, 16, "{stats:?}");
    assert_eq!(stats.rejected, HUNG as u64 - 16, "{stats:?}");

    // The other container is untouched; the slow one refuses at once.
    for _ in 0..3 {
        let (status, body) = within(
            10,
            "GET other",
            get(
                &client,
                &format!("http://{}/", other.http_addr().expect("addr")),
            ),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = within(
        10,
        "GET slow",
        get(&client, &format!("http://{slow_addr}/")),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("at most 16"), "{body}");

    // The clients go away: their instances are cancelled and freed.
    drop(hung);
    until(20, "abandoned requests free their instances", || {
        slow.stats().in_flight == 0
    })
    .await;
    let (status, body) = within(
        10,
        "GET slow again",
        get(&client, &format!("http://{slow_addr}/")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    within(10, "stop", slow.stop(Duration::from_secs(1))).await;
    within(10, "stop", other.stop(Duration::from_secs(1))).await;
}

/// A request that does not answer within its container's request timeout gets 504 and
/// its instance is dropped; a request beyond an explicit concurrency limit gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_timeout_gets_504_and_frees_its_instance() {
    build_samples().await;
    let rt = shared_runtime();
    let image = pull(&rt, &hello_http()).await;
    let mut spec = ContainerSpec::new(unique_id("timeout"));
    spec.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
    spec.http = HttpLimits {
        request_timeout: Some(Duration::from_millis(300)),
        max_concurrency: Some(1),
    };
    let container = within(30, "start", rt.start(spec, &image))
        .await
        .expect("start");
    let addr = container.http_addr().expect("listening");
    let client = client();

    let hung = send_get(addr, "/sleep/600000").await;
    until(10, "the hung request runs", || {
        container.stats().in_flight == 1
    })
    .await;
    let (status, body) = within(
        10,
        "GET while busy",
        get(&client, &format!("http://{addr}/")),
    )
    .await;
    assert_eq!(status, 503, "{body}");

    let started = Instant::now();
    let (status, body) = within(10, "GET slow", async {
        // The hung one times out first, then this one gets the slot and times out too.
        until(10, "the slot is free", || container.stats().in_flight == 0).await;
        get(&client, &format!("http://{addr}/sleep/10000")).await
    })
    .await;
    assert_eq!(status, 504, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    until(10, "the timed-out instance is freed", || {
        container.stats().in_flight == 0
    })
    .await;
    assert_eq!(container.stats().timed_out, 2);
    drop(hung);
    let (status, body) = within(10, "GET fast", get(&client, &format!("http://{addr}/"))).await;
    assert_eq!(status, 200, "{body}");
    within(10, "stop", container.stop(Duration::from_secs(1))).await;
}

/// `Runtime::usage` reports what the guests' instances use: a spinner limited to 300m
/// about 0.3 CPU-seconds per second, an idle ticker next to nothing, both with memory and
/// a peak; a stopped container leaves the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_measures_guest_cpu_and_memory() {
    build_samples().await;
    let rt = shared_runtime();
    let spin = pull(&rt, &spinner()).await;
    let tick = pull(&rt, &ticker()).await;
    let mut spec = ContainerSpec::new(unique_id("usage-spin"));
    spec.resources.cpu_millicores = Some(300);
    let spinner = within(30, "start spinner", rt.start(spec, &spin))
        .await
        .expect("start");
    let ticker = within(
        30,
        "start ticker",
        rt.start(ContainerSpec::new(unique_id("usage-tick")), &tick),
    )
    .await
    .expect("start");
    let of = |snap: &wharf_runtime::UsageSnapshot, id: &str| {
        snap.containers
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {snap:?}"))
    };
    // Let both settle (the spinner's first period may use its saved-up quota).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = rt.usage();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = rt.usage();
    let elapsed = second
        .taken_at
        .duration_since(first.taken_at)
        .expect("monotonic enough")
        .as_secs_f64();
    let rate = |id: &str| {
        let (a, b) = (of(&first, id), of(&second, id));
        assert_eq!(a.started_at, b.started_at);
        (b.cpu_nanos - a.cpu_nanos) as f64 / 1e9 / elapsed
    };
    let spin_rate = rate(spinner.id());
    let tick_rate = rate(ticker.id());
    eprintln!("spinner {spin_rate:.3} cores, ticker {tick_rate:.3} cores");
    assert!((0.2..=0.4).contains(&spin_rate), "spinner at {spin_rate}");
    assert!(tick_rate < 0.05, "ticker at {tick_rate}");
    for id in [spinner.id(), ticker.id()] {
        let u = of(&second, id);
        assert_eq!(u.instances, 1, "{u:?}");
        assert!(
            u.memory_bytes > wharf_runtime::INSTANCE_OVERHEAD_BYTES,
            "{u:?}"
        );
        assert!(u.peak_memory_bytes >= u.memory_bytes, "{u:?}");
    }
    // Requests shorter than an epoch interval are charged too (their last slice).
    let hello = pull(&rt, &hello_http()).await;
    let mut spec = ContainerSpec::new(unique_id("usage-web"));
    spec.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let web = within(30, "start web", rt.start(spec, &hello))
        .await
        .expect("start");
    let url = format!("http://{}/", web.http_addr().expect("addr"));
    let client = client();
    for _ in 0..5 {
        let (status, _) = within(10, "request", get(&client, &url)).await;
        assert_eq!(status, 200);
    }
    let served = of(&rt.usage(), web.id());
    assert!(served.cpu_nanos > 0, "{served:?}");
    // A handler counts the requests it received; a command counts none.
    assert_eq!(served.requests, Some(5), "{served:?}");
    assert_eq!(of(&second, ticker.id()).requests, None);
    within(10, "stop", web.stop(Duration::from_secs(1))).await;
    within(10, "stop", spinner.stop(Duration::from_secs(1))).await;
    within(10, "stop", ticker.stop(Duration::from_secs(1))).await;
    let after = rt.usage();
    assert!(
        after
            .containers
            .iter()
            .all(|c| c.id != spinner.id() && c.id != ticker.id()),
        "{after:?}"
    );
}
