//! The function Canopy's tests deploy: one wasi:http component whose
//! behaviour is chosen by the last segment of the request path, so a test
//! can mount it anywhere (`/t/hello`, `/api/echo`, ...).
//!
//! - `.../hello`       → `hello from testfn VERSION:<marker>`
//! - `.../loop`        → never answers (spins forever)
//! - `.../oom`         → allocates 1 MiB blocks until memory runs out
//! - `.../echo`        → streams the request body back, chunk by chunk
//! - `.../collect`     → reads the whole request body, then answers
//!   `read N bytes` (or, if the body breaks off, `400 body error <code>`)
//! - `.../headers`     → the method, path and `Host` header it received
//! - `.../stream?n=N`  → N chunks of 64 KiB
//! - `.../env`         → the environment variables it sees, `K=V` per line
//! - `.../entropy`     → what it reads of the host's clocks and randomness:
//!   `wall=<s>.<ns> monotonic=<ns> random=<hex> insecure=<hex> seed=<hex>`
//! - `.../outbound?authority=HOST:PORT` → tries an outbound GET there and
//!   reports `outbound ok <status>` or `outbound error <code>`
//!
//! The marker is a 16-byte ASCII string stored once in the data section.
//! Tests patch those bytes in the `.wasm` to make distinct versions of the
//! function without rebuilding it.

use std::io::Write as _;

use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::{OutputStream, StreamError};

/// The version marker. Exactly these 16 bytes must appear once in the
/// `.wasm`; it is read with a volatile load so the optimiser cannot fold
/// the bytes into code (which would make patching the data section useless).
#[used]
static VERSION_MARKER: [u8; 16] = *b"CANOPY-VERSION-0";

/// Size of each chunk `.../stream` writes and `.../echo` reads.
const CHUNK_SIZE_BYTES: usize = 64 * 1024;

struct TestFn;

impl wasi::exports::http::incoming_handler::Guest for TestFn {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path, query),
            None => (path_with_query.as_str(), ""),
        };
        let action = path.rsplit('/').next().unwrap_or_default();
        match action {
            "hello" => {
                // SAFETY: reading a plain `static` array through a valid
                // pointer; volatile only to stop constant folding.
                let marker = unsafe { core::ptr::read_volatile(&VERSION_MARKER) };
                let marker = String::from_utf8_lossy(&marker).into_owned();
                respond(
                    response_out,
                    200,
                    format!("hello from testfn VERSION:{marker}"),
                );
            }
            "loop" => spin_forever(),
            "oom" => allocate_forever(),
            "echo" => echo(request, response_out),
            "collect" => collect(request, response_out),
            "headers" => {
                let host = request
                    .headers()
                    .get("host")
                    .first()
                    .map(|value| String::from_utf8_lossy(value).into_owned())
                    .unwrap_or_default();
                let method = method_name(request.method());
                respond(
                    response_out,
                    200,
                    format!("method: {method}\npath: {path_with_query}\nhost: {host}\n"),
                );
            }
            "stream" => {
                let chunks = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("n="))
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(1);
                stream_chunks(response_out, chunks);
            }
            "env" => {
                let vars: String = std::env::vars()
                    .map(|(key, value)| format!("{key}={value}\n"))
                    .collect();
                respond(response_out, 200, vars);
            }
            "entropy" => respond(response_out, 200, entropy()),
            "outbound" => {
                let authority = query.strip_prefix("authority=").unwrap_or("127.0.0.1:1");
                respond(response_out, 200, outbound(authority));
            }
            _ => respond(response_out, 404, format!("testfn: no action `{action}`\n")),
        }
    }
}

wasi::http::proxy::export!(TestFn);

/// The host's clocks and generators, as the guest reads them.
fn entropy() -> String {
    let wall = wasi::clocks::wall_clock::now();
    let monotonic = wasi::clocks::monotonic_clock::now();
    let hex = |bytes: Vec<u8>| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let random = hex(wasi::random::random::get_random_bytes(16));
    let insecure = hex(wasi::random::insecure::get_insecure_random_bytes(16));
    let (seed_hi, seed_lo) = wasi::random::insecure_seed::insecure_seed();
    format!(
        "wall={}.{:09} monotonic={monotonic} random={random} insecure={insecure} seed={seed_hi:016x}{seed_lo:016x}",
        wall.seconds, wall.nanoseconds
    )
}

/// An outbound GET to `authority`, reported as text.
fn outbound(authority: &str) -> String {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{OutgoingRequest, Scheme};
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some("/"));
    match outgoing_handler::handle(request, None) {
        Err(code) => format!("outbound error {code:?}\n"),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => format!("outbound ok {}\n", response.status()),
                Some(Ok(Err(code))) => format!("outbound error {code:?}\n"),
                other => format!("outbound error {other:?}\n"),
            }
        }
    }
}

fn method_name(method: Method) -> String {
    match method {
        Method::Get => "GET".to_string(),
        Method::Head => "HEAD".to_string(),
        Method::Post => "POST".to_string(),
        Method::Put => "PUT".to_string(),
        Method::Delete => "DELETE".to_string(),
        Method::Connect => "CONNECT".to_string(),
        Method::Options => "OPTIONS".to_string(),
        Method::Trace => "TRACE".to_string(),
        Method::Patch => "PATCH".to_string(),
        Method::Other(other) => other,
    }
}

/// Send a complete text response.
fn respond(response_out: ResponseOutparam, status: u16, text: String) {
    let body = start_response(response_out, status);
    let mut out = body.write().expect("a new body has a stream");
    let _ = send(&mut out, text.as_bytes());
    drop(out);
    let _ = OutgoingBody::finish(body, None);
}

/// Send the response head and hand back its body for streaming.
fn start_response(response_out: ResponseOutparam, status: u16) -> OutgoingBody {
    let headers = Fields::from_list(&[(
        "content-type".to_string(),
        b"text/plain; charset=utf-8".to_vec(),
    )])
    .expect("content-type is a valid header");
    let response = OutgoingResponse::new(headers);
    response
        .set_status_code(status)
        .expect("a valid status code");
    let body = response.body().expect("a new response has a body");
    ResponseOutparam::set(response_out, Ok(response));
    body
}

fn spin_forever() -> ! {
    let mut counter = 0u64;
    loop {
        counter = core::hint::black_box(counter.wrapping_add(1));
    }
}

fn allocate_forever() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        // Filled with ones so every page is really touched.
        blocks.push(core::hint::black_box(vec![1u8; 1024 * 1024]));
    }
}

fn echo(request: IncomingRequest, response_out: ResponseOutparam) {
    let incoming = request.consume().expect("the body is consumed once");
    let input = incoming.stream().expect("the body has a stream");
    let body = start_response(response_out, 200);
    let mut out = body.write().expect("a new body has a stream");
    loop {
        // `blocking_read` waits for data and returns what is there, up to
        // one chunk: the body is passed on as it arrives, never collected.
        match input.blocking_read(CHUNK_SIZE_BYTES as u64) {
            Ok(chunk) => {
                if !send(&mut out, &chunk) {
                    return; // the client went away
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(_)) => return, // the request body broke off
        }
    }
    drop(out);
    drop(input);
    let _ = OutgoingBody::finish(body, None);
}

/// Read the whole body before answering: the response head waits for it.
fn collect(request: IncomingRequest, response_out: ResponseOutparam) {
    let incoming = request.consume().expect("the body is consumed once");
    let input = incoming.stream().expect("the body has a stream");
    let mut total_bytes = 0usize;
    loop {
        match input.blocking_read(CHUNK_SIZE_BYTES as u64) {
            Ok(chunk) => total_bytes += chunk.len(),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(error)) => {
                let detail = error.to_debug_string();
                drop(input);
                return respond(response_out, 400, format!("body error {detail}\n"));
            }
        }
    }
    respond(response_out, 200, format!("read {total_bytes} bytes\n"))
}

fn stream_chunks(response_out: ResponseOutparam, chunks: usize) {
    let body = start_response(response_out, 200);
    let mut out = body.write().expect("a new body has a stream");
    for index in 0..chunks {
        let chunk = vec![b'a' + (index % 26) as u8; CHUNK_SIZE_BYTES];
        if !send(&mut out, &chunk) {
            return;
        }
    }
    drop(out);
    let _ = OutgoingBody::finish(body, None);
}

/// Write `bytes` to the body and wait until they are handed to the host, so
/// each chunk goes out as it is produced. False when the client went away.
fn send(out: &mut OutputStream, bytes: &[u8]) -> bool {
    out.write_all(bytes).is_ok() && out.blocking_flush().is_ok()
}
