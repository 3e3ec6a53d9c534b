//! Canopy's example function: answers every request with a greeting and the
//! path it was asked for.
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the result,
//! `target/wasm32-wasip2/release/hello.wasm`, is a WASI 0.2 component
//! exporting `wasi:http/incoming-handler`, runnable by Canopy (and by
//! `wasmtime serve`).

use std::io::Write as _;

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());

        let headers = Fields::from_list(&[(
            "content-type".to_string(),
            b"text/plain; charset=utf-8".to_vec(),
        )])
        .expect("content-type is a valid header");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("a new response has a body");
        ResponseOutparam::set(response_out, Ok(response));

        let mut out = body.write().expect("a new body has a stream");
        // A write error means the client went away: nothing left to do.
        let _ = writeln!(out, "Hello from Canopy!\n{path}");
        let _ = out.blocking_flush();
        drop(out);
        let _ = OutgoingBody::finish(body, None);
    }
}

wasi::http::proxy::export!(Hello);
