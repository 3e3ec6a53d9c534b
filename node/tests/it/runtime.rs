//! The runtime end to end: real components (built from `tests/guests` and
//! `docs/examples`), served by a hyper server on 127.0.0.1, called by a
//! real HTTP client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use canopy_node::runtime::{
    Allocator, Function, FunctionLimits, LoadStats, Runtime, RuntimeConfig, RuntimeError, raw_cid,
};
use canopy_node::test_guests::Guest;
use futures::StreamExt as _;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How long any single step may take before the test fails (compiling a
/// component in a debug build on a busy 2-core machine is the slow part).
pub(super) const STEP_DEADLINE: Duration = Duration::from_secs(120);

pub(super) type ClientBody = BoxBody<Bytes, Infallible>;

pub(super) fn testfn_wasm() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| read_guest(Guest::TESTFN))
}

fn hello_wasm() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| read_guest(Guest::HELLO))
}

/// The guest's component, built; panics with what to do if the build fails.
fn read_guest(guest: Guest) -> Vec<u8> {
    let wasm = guest.build().unwrap_or_else(|e| panic!("{e}"));
    std::fs::read(&wasm).unwrap_or_else(|e| panic!("read {}: {e}", wasm.display()))
}

pub(super) fn config(cache_dir: &std::path::Path) -> RuntimeConfig {
    RuntimeConfig {
        max_instances: 16,
        ..RuntimeConfig::new(cache_dir)
    }
}

pub(super) async fn load(runtime: &Runtime, wasm: &[u8]) -> Arc<Function> {
    tokio::time::timeout(STEP_DEADLINE, runtime.load(&raw_cid(wasm), wasm))
        .await
        .expect("loading took too long")
        .expect("the component loads")
}

/// Serve `function` as `testfn` on a fresh port (hyper-util's auto server,
/// HTTP/1.1) and return the address.
pub(super) async fn serve(function: Arc<Function>, limits: FunctionLimits) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let function = function.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let function = function.clone();
                    async move { Ok::<_, Infallible>(function.handle(request, &limits, "testfn").await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http1_only()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

pub(super) fn client() -> Client<HttpConnector, ClientBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub(super) fn empty() -> ClientBody {
    Full::new(Bytes::new()).boxed()
}

/// GET `path` and return the status, headers and whole body.
pub(super) async fn get(address: SocketAddr, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    let request = Request::get(format!("http://{address}{path}"))
        .body(empty())
        .unwrap();
    send(request).await
}

pub(super) async fn send(request: Request<ClientBody>) -> (StatusCode, http::HeaderMap, Bytes) {
    tokio::time::timeout(STEP_DEADLINE, async {
        let response = client()
            .request(request)
            .await
            .expect("the request is answered");
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .expect("the body arrives whole")
            .to_bytes();
        (parts.status, parts.headers, body)
    })
    .await
    .expect("the response took too long")
}

pub(super) fn text(body: &Bytes) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[tokio::test]
async fn hello_example_answers_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let function = load(&runtime, hello_wasm()).await;
    let address = serve(function, FunctionLimits::default()).await;

    let (status, headers, body) = get(address, "/some/path?x=1").await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(text(&body), "Hello from Canopy!\n/some/path?x=1\n");
}

#[tokio::test]
async fn patched_version_marker_makes_a_distinct_function() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let original = testfn_wasm();
    let marker = b"CANOPY-VERSION-0";
    let positions: Vec<usize> = original
        .windows(marker.len())
        .enumerate()
        .filter(|(_, window)| window == marker)
        .map(|(at, _)| at)
        .collect();
    assert_eq!(
        positions.len(),
        1,
        "the marker appears exactly once in testfn.wasm"
    );
    let at = positions[0];
    let mut patched = original.to_vec();
    patched[at..at + marker.len()].copy_from_slice(b"CANOPY-VERSION-7");

    let v0 = serve(load(&runtime, original).await, FunctionLimits::default()).await;
    let v7 = serve(load(&runtime, &patched).await, FunctionLimits::default()).await;
    let (_, _, body) = get(v0, "/t/hello").await;
    assert_eq!(text(&body), "hello from testfn VERSION:CANOPY-VERSION-0");
    let (status, _, body) = get(v7, "/t/hello").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text(&body), "hello from testfn VERSION:CANOPY-VERSION-7");
    assert_eq!(runtime.load_stats().compiled, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_guest_times_out_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let limits = FunctionLimits {
        timeout: Duration::from_secs(2),
        ..FunctionLimits::default()
    };
    let address = serve(load(&runtime, testfn_wasm()).await, limits).await;

    // As many spinning guests as worker threads: if they did not yield,
    // nothing else could run.
    let loops: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(address, "/t/loop").await }))
        .collect();
    let (status, _, body) = get(address, "/t/hello").await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert!(
        loops.iter().all(|spinning| !spinning.is_finished()),
        "hello must be answered while the loops still run"
    );

    for spinning in loops {
        let (status, _, body) =
            tokio::time::timeout(limits.timeout + Duration::from_secs(10), spinning)
                .await
                .expect("the loop is stopped soon after its timeout")
                .unwrap();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(text(&body), "function `testfn` exceeded its 2s timeout\n");
    }
}

#[tokio::test]
async fn a_memory_bomb_hits_its_limit_and_the_next_request_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let limits = FunctionLimits {
        timeout: Duration::from_secs(30),
        memory_bytes: 32 << 20,
        ..FunctionLimits::default()
    };
    let address = serve(load(&runtime, testfn_wasm()).await, limits).await;

    let (status, _, body) = get(address, "/t/oom").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        text(&body),
        "function `testfn` failed: it exceeded its memory limit of 32 MiB\n"
    );
    let (status, _, body) = get(address, "/t/hello").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(&body).starts_with("hello from testfn"));
}

#[tokio::test]
async fn echo_streams_five_mebibytes_back_intact() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let limits = FunctionLimits {
        timeout: Duration::from_secs(60),
        ..FunctionLimits::default()
    };
    let address = serve(load(&runtime, testfn_wasm()).await, limits).await;

    const CHUNK_BYTES: usize = 64 * 1024;
    const CHUNKS: usize = 80; // 5 MiB
    let payload: Vec<u8> = (0..CHUNK_BYTES * CHUNKS).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = payload
        .chunks(CHUNK_BYTES)
        .map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk))))
        .collect();
    // A streamed request body (chunked, no content-length).
    let body = BodyExt::boxed(StreamBody::new(futures::stream::iter(chunks)));
    let request = Request::post(format!("http://{address}/t/echo"))
        .body(body)
        .unwrap();
    let (status, _, echoed) = send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed.len(), payload.len());
    assert!(
        echoed == payload[..],
        "the echoed body differs from what was sent"
    );
}

#[tokio::test]
async fn the_response_body_streams_before_the_guest_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let limits = FunctionLimits {
        timeout: Duration::from_secs(60),
        ..FunctionLimits::default()
    };
    let address = serve(load(&runtime, testfn_wasm()).await, limits).await;

    // 64 GiB: only a streamed body can start arriving.
    let request = Request::get(format!("http://{address}/t/stream?n=1000000"))
        .body(empty())
        .unwrap();
    let received = tokio::time::timeout(STEP_DEADLINE, async {
        let response = client().request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body().into_data_stream();
        let mut received = Vec::new();
        while received.len() < 1 << 20 {
            let chunk = body.next().await.expect("the stream goes on").unwrap();
            received.extend_from_slice(&chunk);
        }
        received
    })
    .await
    .expect("the first mebibyte arrives");
    assert!(received[..64 * 1024].iter().all(|&byte| byte == b'a'));
    assert!(
        received[64 * 1024..128 * 1024]
            .iter()
            .all(|&byte| byte == b'b')
    );

    // A finite stream arrives whole and ends cleanly.
    let (status, _, body) = get(address, "/t/stream?n=3").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 3 * 64 * 1024);
}

#[tokio::test]
async fn the_guest_sees_method_path_and_host() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let address = serve(
        load(&runtime, testfn_wasm()).await,
        FunctionLimits::default(),
    )
    .await;

    let request = Request::put(format!("http://{address}/shop/headers?q=1"))
        .header(header::HOST, "shop.example.test")
        .body(empty())
        .unwrap();
    let (status, _, body) = send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        text(&body),
        "method: PUT\npath: /shop/headers?q=1\nhost: shop.example.test\n"
    );
}

#[tokio::test]
async fn the_guest_sees_only_its_own_name_in_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let address = serve(
        load(&runtime, testfn_wasm()).await,
        FunctionLimits::default(),
    )
    .await;
    let (status, _, body) = get(address, "/t/env").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text(&body), "CANOPY_FUNCTION=testfn\n");
}

#[tokio::test]
async fn outbound_http_is_denied() {
    // A listener the guest would reach if outbound requests were allowed.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let accepted = tokio::spawn(async move { target.accept().await.is_ok() });

    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let address = serve(
        load(&runtime, testfn_wasm()).await,
        FunctionLimits::default(),
    )
    .await;
    let (status, _, body) = get(address, &format!("/t/outbound?authority={target_addr}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text(&body).starts_with("outbound error") && text(&body).contains("HttpRequestDenied"),
        "{}",
        text(&body)
    );
    assert!(!accepted.is_finished(), "the guest never connected out");
    accepted.abort();
}

#[tokio::test]
async fn the_production_defaults_start() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(RuntimeConfig::new(dir.path())).expect("the default runtime starts");
    // Either allocator serves; which one this machine got is worth seeing.
    eprintln!(
        "allocator with the production defaults: {:?}",
        runtime.allocator()
    );
    let address = serve(
        load(&runtime, hello_wasm()).await,
        FunctionLimits::default(),
    )
    .await;
    let (status, _, _) = get(address, "/").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_restart_loads_compiled_code_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = testfn_wasm();
    let cid = raw_cid(wasm);
    {
        let first = Runtime::new(config(dir.path())).unwrap();
        load(&first, wasm).await;
        load(&first, wasm).await;
        assert_eq!(
            first.load_stats(),
            LoadStats {
                compiled: 1,
                from_disk: 0,
                from_memory: 1
            }
        );
        assert!(first.cache_path(&cid).exists());
    }

    let second = Runtime::new(config(dir.path())).unwrap();
    let function = load(&second, wasm).await;
    assert_eq!(
        second.load_stats(),
        LoadStats {
            compiled: 0,
            from_disk: 1,
            from_memory: 0
        }
    );
    let address = serve(function, FunctionLimits::default()).await;
    let (status, _, body) = get(address, "/t/hello").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(&body).starts_with("hello from testfn"));
}

#[tokio::test]
async fn a_corrupted_cache_file_is_recompiled_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = testfn_wasm();
    let cid = raw_cid(wasm);
    let path = {
        let first = Runtime::new(config(dir.path())).unwrap();
        load(&first, wasm).await;
        first.cache_path(&cid)
    };
    let mut damaged = std::fs::read(&path).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&path, &damaged).unwrap();

    let second = Runtime::new(config(dir.path())).unwrap();
    let function = load(&second, wasm).await;
    assert_eq!(
        second.load_stats(),
        LoadStats {
            compiled: 1,
            from_disk: 0,
            from_memory: 0
        }
    );
    assert_ne!(
        std::fs::read(&path).unwrap(),
        damaged,
        "the cache entry is rewritten"
    );
    let address = serve(function, FunctionLimits::default()).await;
    let (status, _, _) = get(address, "/t/hello").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn older_wasi_patch_versions_link() {
    // Rewrite every `@0.2.12` (what the guest was built against) to
    // `@0.2.10`, as another toolchain would have produced.
    let original = testfn_wasm();
    let (from, to) = (b"@0.2.12", b"@0.2.10");
    let mut patched = original.to_vec();
    let mut replaced = 0;
    let mut at = 0;
    while let Some(offset) = patched[at..]
        .windows(from.len())
        .position(|window| window == from)
    {
        let start = at + offset;
        patched[start..start + from.len()].copy_from_slice(to);
        replaced += 1;
        at = start + from.len();
    }
    assert!(replaced > 0, "testfn imports WASI @0.2.12");

    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let address = serve(load(&runtime, &patched).await, FunctionLimits::default()).await;
    let (status, _, body) = get(address, "/t/hello").await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
}

#[tokio::test]
async fn a_full_pool_answers_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 1,
        ..config(dir.path())
    })
    .unwrap();
    assert_eq!(runtime.allocator(), Allocator::Pooling);
    let limits = FunctionLimits {
        timeout: Duration::from_secs(5),
        ..FunctionLimits::default()
    };
    let address = serve(load(&runtime, testfn_wasm()).await, limits).await;

    let spinning = tokio::spawn(async move { get(address, "/t/loop").await });
    // Until the loop holds the only slot, hello may still get it.
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let (status, headers, body) = loop {
        let answer = get(address, "/t/hello").await;
        if answer.0 != StatusCode::OK || tokio::time::Instant::now() > deadline {
            break answer;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", text(&body));
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert!(
        text(&body).contains("every instance slot is busy"),
        "{}",
        text(&body)
    );
    let (status, _, _) = spinning.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn artifacts_that_are_not_functions_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let refuse = |bytes: &'static [u8]| {
        let runtime = runtime.clone();
        async move {
            let error = runtime.load(&raw_cid(bytes), bytes).await.unwrap_err();
            (error.to_string(), error)
        }
    };

    let (message, error) = refuse(b"\0asm\x01\0\0\0").await;
    assert!(
        matches!(error, RuntimeError::CoreModule { .. }),
        "{message}"
    );
    assert!(
        message.contains("is a core WebAssembly module, not a component"),
        "{message}"
    );
    assert!(message.contains("wasm32-wasip2"), "{message}");

    let (message, error) = refuse(b"#!/bin/sh\necho hello\n").await;
    assert!(matches!(error, RuntimeError::NotWasm { .. }), "{message}");
    assert!(message.contains("is not WebAssembly"), "{message}");

    // An empty but valid component: it exports no handler.
    let (message, error) = refuse(b"\0asm\x0d\0\x01\0").await;
    assert!(
        matches!(error, RuntimeError::NotHttpProxy { .. }),
        "{message}"
    );
    assert!(message.contains("is not a wasi:http proxy"), "{message}");
    assert!(message.contains("wasi:http/incoming-handler"), "{message}");

    // A component that is cut short.
    let truncated = &testfn_wasm()[..1000];
    let error = runtime
        .load(&raw_cid(truncated), truncated)
        .await
        .unwrap_err();
    assert!(matches!(error, RuntimeError::Compile { .. }), "{error}");

    // Bytes that do not match their CID.
    let error = runtime
        .load(&raw_cid(b"other"), hello_wasm())
        .await
        .unwrap_err();
    assert!(matches!(error, RuntimeError::CidMismatch { .. }), "{error}");
    assert_eq!(runtime.load_stats(), LoadStats::default());
}

/// A clock a test sets by hand.
#[derive(Debug)]
struct FixedClock {
    wall: Duration,
    monotonic: Duration,
}

impl canopy_node::runtime::GuestClock for FixedClock {
    fn wall(&self) -> Duration {
        self.wall
    }

    fn monotonic(&self) -> Duration {
        self.monotonic
    }
}

/// What `testfn`'s `entropy` action reports, run directly on a function
/// whose runtime has `guest` as its environment.
async fn entropy_with(
    cache_dir: &std::path::Path,
    guest: canopy_node::runtime::GuestEnv,
    requests: usize,
) -> Vec<String> {
    let runtime = Runtime::with_guest_env(config(cache_dir), guest).unwrap();
    let function = load(&runtime, testfn_wasm()).await;
    let mut answers = Vec::new();
    for _ in 0..requests {
        let request = Request::get("/t/entropy")
            .header(header::HOST, "shop.example.test")
            .body(empty())
            .unwrap();
        let response = function
            .handle(request, &FunctionLimits::default(), "testfn")
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        answers.push(text(&body));
    }
    answers
}

#[tokio::test]
async fn functions_read_the_nodes_clock_and_random_stream() {
    use canopy_node::env::Rng;
    use canopy_node::runtime::GuestEnv;
    let dir = tempfile::tempdir().unwrap();
    let clock = || {
        Arc::new(FixedClock {
            wall: Duration::new(1_800_000_000, 250),
            monotonic: Duration::from_nanos(42_000),
        })
    };
    let first = entropy_with(dir.path(), GuestEnv::new(clock(), Rng::seeded(7)), 2).await;
    let again = entropy_with(dir.path(), GuestEnv::new(clock(), Rng::seeded(7)), 2).await;
    let other = entropy_with(dir.path(), GuestEnv::new(clock(), Rng::seeded(8)), 1).await;

    assert!(
        first[0].starts_with("wall=1800000000.000000250 monotonic=42000 random="),
        "{}",
        first[0]
    );
    // The same seed replays every byte a guest reads ...
    assert_eq!(first, again);
    // ... each instance draws fresh seeds (two requests differ) ...
    assert_ne!(first[0], first[1]);
    // ... and another seed gives other bytes.
    assert_ne!(first[0], other[0]);
}

/// Wait until `check` holds for the runtime's memory budget report.
async fn wait_budget(
    runtime: &Runtime,
    what: &str,
    check: impl Fn(&canopy_node::runtime::MemoryBudgetReport) -> bool,
) {
    let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
    loop {
        let report = runtime.memory_budget();
        if check(&report) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: the memory budget stayed at {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Issue 13: the memory of every running instance comes from one node-wide
/// budget. A request whose instance does not fit while another holds the
/// budget gets a 503 naming it; the memory comes back when an instance
/// ends, and the next request runs.
#[tokio::test]
async fn instances_share_the_node_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    // How much one instance of testfn takes when it starts.
    let probe = Runtime::new(config(&dir.path().join("probe"))).unwrap();
    let address = serve(load(&probe, testfn_wasm()).await, FunctionLimits::default()).await;
    assert_eq!(get(address, "/t/hello").await.0, StatusCode::OK);
    wait_budget(&probe, "the probe ended", |r| r.in_use_bytes == 0).await;
    let one_instance = probe.memory_budget().peak_bytes;
    assert!(one_instance > 0, "an instance takes memory from the budget");

    // Room for one instance, not two.
    let runtime = Runtime::new(RuntimeConfig {
        memory_budget_bytes: one_instance + one_instance / 2,
        ..config(dir.path())
    })
    .unwrap();
    let limits = FunctionLimits {
        timeout: Duration::from_secs(60),
        ..FunctionLimits::default()
    };
    let address = serve(load(&runtime, testfn_wasm()).await, limits).await;

    // An echo whose request body stays open holds its instance.
    let (body_tx, body_rx) =
        futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
    body_tx
        .unbounded_send(Ok(Frame::data(Bytes::from_static(b"held"))))
        .unwrap();
    let held = Request::post(format!("http://{address}/t/echo"))
        .body(BodyExt::boxed(StreamBody::new(body_rx)))
        .unwrap();
    let held = tokio::spawn(send(held));
    wait_budget(&runtime, "the held instance started", |r| {
        r.in_use_bytes > 0
    })
    .await;

    let (status, headers, body) = get(address, "/t/hello").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", text(&body));
    let message = text(&body);
    assert!(message.contains("limits.wasm.memory_budget"), "{message}");
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert!(runtime.memory_budget().refused >= 1);

    drop(body_tx);
    let (status, _, body) = held.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text(&body), "held");
    wait_budget(&runtime, "the held instance ended", |r| r.in_use_bytes == 0).await;
    let (status, _, body) = get(address, "/t/hello").await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert!(runtime.memory_budget().peak_bytes <= runtime.memory_budget().budget_bytes);
}

/// testfn with `version` (at most 16 bytes) in its marker: a distinct
/// component (another CID) that answers `/t/hello` with the version.
fn testfn_version(version: &str) -> Vec<u8> {
    const MARKER: &[u8; 16] = b"CANOPY-VERSION-0";
    let mut wasm = testfn_wasm().to_vec();
    let at = wasm
        .windows(16)
        .position(|w| w == MARKER)
        .expect("testfn embeds its version marker");
    let mut replacement = [b'-'; 16];
    replacement[..version.len()].copy_from_slice(version.as_bytes());
    wasm[at..at + 16].copy_from_slice(&replacement);
    wasm
}

/// Issue 13: an idle function's code can leave memory and comes back from
/// the compiled-code cache with its next request, which it answers as
/// before.
#[tokio::test]
async fn an_unloaded_function_loads_back_on_its_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let function = load(&runtime, testfn_wasm()).await;
    let address = serve(function.clone(), FunctionLimits::default()).await;
    assert_eq!(get(address, "/t/hello").await.0, StatusCode::OK);
    assert_eq!(function.uses(), 1);

    assert!(
        function.unload_code(),
        "its code was resident and is cached"
    );
    assert!(!function.is_resident());
    assert!(!function.unload_code(), "nothing left to unload");
    let (status, _, body) = get(address, "/t/hello").await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert!(text(&body).starts_with("hello from testfn"));
    assert!(function.is_resident());
    assert_eq!(function.uses(), 2);
    assert_eq!(
        runtime.load_stats().compiled,
        1,
        "loaded back from the cache, not compiled again"
    );

    // Without its compiled code on disk it stays resident: unloading it
    // would leave nothing to load back.
    std::fs::remove_file(runtime.cache_path(function.cid())).unwrap();
    assert!(!function.unload_code());
    assert_eq!(get(address, "/t/hello").await.0, StatusCode::OK);
}

/// The resident memory of this process, in bytes.
fn own_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Memory per loaded function, resident and after its code is unloaded
/// (docs/performance.md). Run by name: it compiles 40 components.
#[tokio::test]
#[ignore = "a measurement, not a check: run it by name"]
async fn idle_function_memory() {
    const FUNCTIONS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    // One first, so what every function shares is in the baseline.
    let first = load(&runtime, &testfn_version("v0")).await;
    let before = own_rss_bytes();
    let mut functions = Vec::new();
    for i in 1..=FUNCTIONS {
        let function = load(&runtime, &testfn_version(&format!("v{i}"))).await;
        let address = serve(function.clone(), FunctionLimits::default()).await;
        assert_eq!(get(address, "/t/hello").await.0, StatusCode::OK);
        functions.push(function);
    }
    let loaded = own_rss_bytes();
    for function in &functions {
        assert!(function.unload_code());
    }
    let unloaded = own_rss_bytes();
    let per = |bytes: u64| bytes as f64 / FUNCTIONS as f64 / 1024.0;
    eprintln!(
        "{FUNCTIONS} functions: {:.0} KiB each resident, {:.0} KiB each after unloading their code",
        per(loaded.saturating_sub(before)),
        per(unloaded.saturating_sub(before)),
    );
    drop(first);
}
