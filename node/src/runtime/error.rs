//! What can go wrong when the runtime starts or loads a function.
//!
//! Failures while *serving* a request never surface here: they become HTTP
//! responses (see `responses.rs`).

use std::path::PathBuf;

/// An error from [`Runtime::new`](super::Runtime::new) or
/// [`Runtime::load`](super::Runtime::load).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The wasmtime engine could not be configured.
    #[error("cannot start the WebAssembly engine: {reason}")]
    Engine { reason: String },

    /// The compiled-code cache directory cannot be used.
    #[error(
        "cannot use the compiled-code cache directory `{}`: {source}; \
         check that it exists and that the node may write to it",
        path.display()
    )]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The bytes do not hash to the CID they were loaded under.
    #[error(
        "the artifact does not match its CID {cid}: its {hash} digest differs; \
         the stored copy is corrupt or mislabelled — re-fetch it from the store"
    )]
    CidMismatch { cid: String, hash: String },

    /// The CID uses a hash function the runtime cannot check.
    #[error(
        "the CID {cid} uses multihash code {code:#x}, which the runtime cannot verify; \
         store artifacts under sha2-256 CIDs"
    )]
    UnsupportedCidHash { cid: String, code: u64 },

    /// The bytes are not WebAssembly at all.
    #[error(
        "artifact {cid} is not WebAssembly (it does not start with the `\\0asm` magic bytes); \
         a function must be a WASI 0.2 component, e.g. built with \
         `cargo build --release --target wasm32-wasip2`"
    )]
    NotWasm { cid: String },

    /// A core module where a component was expected.
    #[error(
        "artifact {cid} is a core WebAssembly module, not a component; \
         Canopy runs WASI 0.2 components that export `wasi:http/incoming-handler`: \
         build with `--target wasm32-wasip2`, or wrap the module with \
         `wasm-tools component new`"
    )]
    CoreModule { cid: String },

    /// wasmtime rejected the component.
    #[error("artifact {cid} is not a valid WebAssembly component: {reason}")]
    Compile { cid: String, reason: String },

    /// The component imports something the runtime does not provide.
    #[error(
        "function {cid} imports an interface Canopy does not provide: {reason}; \
         functions may import WASI 0.2 (`wasi:cli`, `wasi:io`, `wasi:clocks`, \
         `wasi:random`, `wasi:filesystem`, `wasi:sockets`) and `wasi:http`"
    )]
    Link { cid: String, reason: String },

    /// The component is not a `wasi:http` proxy.
    #[error(
        "function {cid} is not a wasi:http proxy: it does not export \
         `wasi:http/incoming-handler@0.2.x` ({reason}); export the handler \
         (in Rust: `wasi::http::proxy::export!`), as `wasmtime serve` expects"
    )]
    NotHttpProxy { cid: String, reason: String },

    /// The compile task stopped before it finished (the node is shutting down).
    #[error("compiling function {cid} was interrupted: {reason}")]
    CompileInterrupted { cid: String, reason: String },
}
