//! The one HTTP body type that flows between gateway, runtime and admin API.
//!
//! Bodies are streamed: a function's response body is the guest's output
//! stream, a large website file a stream from the store (files up to the
//! gateway's streaming threshold are read whole, in one blocking read).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

/// Errors a body stream can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A streamed HTTP body, boxed so every producer has the same type.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding `bytes` in full (small, generated responses).
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body (HEAD, 304, 204).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}
