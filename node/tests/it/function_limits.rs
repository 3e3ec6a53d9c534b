//! A function's own limits beyond time and memory (issue 13): `limits.fuel`
//! and the request-body limit (`limits.body`, else the node's
//! `limits.wasm.request_body`), with the real test guest served over
//! HTTP/1.1 (helpers from `runtime.rs`).

use std::convert::Infallible;
use std::num::NonZeroU64;
use std::time::Duration;

use bytes::Bytes;
use canopy_node::runtime::{FunctionLimits, RequestBodyLimits, Runtime, RuntimeConfig};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::runtime::{STEP_DEADLINE, config, get, load, send, serve, testfn_wasm, text};

const MIB: usize = 1 << 20;

/// `len` bytes that are not all alike, so a reordered or lost chunk shows.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A request body of `total` bytes in 64 KiB frames, with no
/// `Content-Length` (hyper sends it chunked).
fn chunked(bytes: &[u8]) -> super::runtime::ClientBody {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = bytes
        .chunks(64 << 10)
        .map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk))))
        .collect();
    BodyExt::boxed(StreamBody::new(futures::stream::iter(frames)))
}

/// A guest that spins until its fuel runs out gets an error naming
/// `functions.<name>.limits.fuel`, well before its timeout, while a request
/// beside it is answered; the function serves on afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_out_of_fuel_gets_an_error_naming_the_limit_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let limits = FunctionLimits {
        // Long enough that only the fuel can stop the loop in time.
        timeout: Duration::from_secs(600),
        fuel: NonZeroU64::new(200_000_000),
        ..FunctionLimits::default()
    };
    let address = serve(load(&runtime, testfn_wasm()).await, limits).await;

    let spinning = tokio::spawn(async move { get(address, "/t/loop").await });
    let (status, _, body) = get(address, "/t/hello").await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));

    let (status, _, body) = tokio::time::timeout(STEP_DEADLINE, spinning)
        .await
        .expect("the loop runs out of fuel long before its timeout")
        .unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        text(&body),
        "function `testfn` failed: it used all its fuel (functions.testfn.limits.fuel = 200000000)\n"
    );
    let (status, _, body) = get(address, "/t/hello").await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
}

/// A `Content-Length` over the limit is answered 413 as soon as the head
/// arrives: the client has sent no byte of the body, and no instance was
/// taken. A client that does send the body (hyper's, as reqwest's) gets
/// the same answer, not a broken pipe: the refusal reads what it sends.
#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_the_guest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let limits = FunctionLimits {
        body_bytes: Some(MIB as u64),
        ..FunctionLimits::default()
    };
    let function = load(&runtime, testfn_wasm()).await;
    let address = serve(function.clone(), limits).await;
    let uses_before = function.uses();

    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"POST /t/echo HTTP/1.1\r\nhost: t\r\ncontent-length: 5242880\r\n\r\n")
        .await
        .unwrap();
    // The whole refusal arrives though not a byte of the body was sent
    // (its body then waits, to read what the client may still send).
    let message = "function `testfn` accepts request bodies up to 1 MiB \
                   (functions.testfn.limits.body); this one is 5 MiB\n";
    let mut response = Vec::new();
    tokio::time::timeout(STEP_DEADLINE, async {
        while !String::from_utf8_lossy(&response).contains(message) {
            let mut buffer = [0u8; 4096];
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "closed before the refusal arrived");
            response.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .expect("answered without the body");
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{response}"
    );
    assert_eq!(function.uses(), uses_before, "no instance was taken");

    let request = Request::post(format!("http://{address}/t/echo"))
        .body(Full::new(Bytes::from(payload(5 * MIB))).boxed())
        .unwrap();
    let (status, _, body) = send(request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", text(&body));
    assert!(
        text(&body).ends_with("this one is 5 MiB\n"),
        "{}",
        text(&body)
    );
    assert_eq!(function.uses(), uses_before);
}

/// A body without `Content-Length` is counted as it streams: past the
/// limit it breaks off, and a guest that had not answered yet is replaced
/// by a 413 (not the 400 it answers itself, nor a 500). Here the limit is
/// the node's default, and the message says so. The function serves on.
#[tokio::test]
async fn a_streamed_body_over_the_limit_gets_413_and_the_function_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(RuntimeConfig {
        request_body: RequestBodyLimits {
            default_bytes: MIB as u64,
            max_bytes: 4 * MIB as u64,
        },
        ..config(dir.path())
    })
    .unwrap();
    let address = serve(
        load(&runtime, testfn_wasm()).await,
        FunctionLimits::default(),
    )
    .await;

    // Just past the limit, so the node has read nearly all of it.
    let request = Request::post(format!("http://{address}/t/collect"))
        .body(chunked(&payload(MIB + (64 << 10))))
        .unwrap();
    let (status, _, body) = send(request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", text(&body));
    assert_eq!(
        text(&body),
        "function `testfn` accepts request bodies up to 1 MiB (limits.wasm.request_body, \
         the node's default; functions.testfn.limits.body sets the function's own); \
         this one is larger\n"
    );

    let (status, _, body) = get(address, "/t/hello").await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
}

/// A body of exactly the limit, declared or streamed, reaches the guest
/// whole and in order.
#[tokio::test]
async fn a_body_within_the_limit_reaches_the_guest_intact() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(config(dir.path())).unwrap();
    let limits = FunctionLimits {
        timeout: Duration::from_secs(60),
        body_bytes: Some(2 * MIB as u64),
        ..FunctionLimits::default()
    };
    let address = serve(load(&runtime, testfn_wasm()).await, limits).await;
    let sent = payload(2 * MIB);

    let declared = Request::post(format!("http://{address}/t/echo"))
        .body(Full::new(Bytes::from(sent.clone())).boxed())
        .unwrap();
    let (status, _, echoed) = send(declared).await;
    assert_eq!(status, StatusCode::OK, "{}", text(&echoed));
    assert!(
        echoed == sent[..],
        "the echoed body differs from what was sent"
    );

    let streamed = Request::post(format!("http://{address}/t/echo"))
        .body(chunked(&sent))
        .unwrap();
    let (status, _, echoed) = send(streamed).await;
    assert_eq!(status, StatusCode::OK, "{}", text(&echoed));
    assert!(
        echoed == sent[..],
        "the echoed body differs from what was sent"
    );

    let counted = Request::post(format!("http://{address}/t/collect"))
        .body(chunked(&sent))
        .unwrap();
    let (status, _, body) = send(counted).await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert_eq!(text(&body), format!("read {} bytes\n", 2 * MIB));
}
