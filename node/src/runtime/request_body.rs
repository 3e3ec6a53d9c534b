//! The request-body limit of a function: which limit applies (the
//! function's own `limits.body`, else the node's default, never more than
//! the node's maximum), and a body wrapper that counts bytes as they stream
//! in and breaks the body off past the limit.
//!
//! A declared `Content-Length` over the limit is refused before the guest
//! runs (see `function.rs`); the wrapper catches bodies without one
//! (chunked, HTTP/2) whatever their framing says.
//!
//! A refusal's body ([`RefusalBody`]) reads and throws away the rest of
//! the refused body, a bounded amount, before it ends: a server that
//! closes a connection with request bytes still unread resets it, and the
//! client, still sending, sees a broken pipe instead of the 413.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};

use crate::body::BoxError;

/// Default of `limits.wasm.request_body`: the limit of functions that set
/// no `limits.body`.
pub const DEFAULT_REQUEST_BODY_BYTES: u64 = 32 << 20;
/// Default of `limits.wasm.max_request_body`: the most a function's
/// `limits.body` may ask for.
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 1 << 30;
/// The most of a refused request body read (and thrown away) so that the
/// client can read the refusal; past it the connection is closed.
pub const MAX_DISCARD_BYTES: u64 = 64 << 20;

/// A request body, its error type made wasi:http's.
pub type RequestBody = Pin<Box<dyn Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Send>>;

/// `body` as a [`RequestBody`].
pub fn request_body<B>(body: B) -> RequestBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    Box::pin(body.map_err(Into::into))
}

/// The node's request-body limits (`limits.wasm` in the node config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestBodyLimits {
    /// For functions that set no `limits.body`.
    pub default_bytes: u64,
    /// The most any function may accept.
    pub max_bytes: u64,
}

impl Default for RequestBodyLimits {
    /// 32 MiB unless a function says otherwise, 1 GiB at most.
    fn default() -> Self {
        Self {
            default_bytes: DEFAULT_REQUEST_BODY_BYTES,
            max_bytes: DEFAULT_MAX_REQUEST_BODY_BYTES,
        }
    }
}

impl RequestBodyLimits {
    /// The limit for a function whose `limits.body` is `requested`.
    pub fn resolve(&self, requested: Option<u64>) -> BodyLimit {
        let (bytes, set_by) = match requested {
            None => (self.default_bytes, BodyLimitSource::NodeDefault),
            // Refused at deploy on this node; a release built by a node
            // with a higher maximum is held to this one's.
            Some(bytes) if bytes > self.max_bytes => (self.max_bytes, BodyLimitSource::NodeMaximum),
            Some(bytes) => (bytes, BodyLimitSource::Function),
        };
        let limit = BodyLimit {
            bytes: bytes.min(self.max_bytes),
            set_by,
        };
        debug_assert!(limit.bytes <= self.max_bytes);
        limit
    }
}

/// The request-body limit one function runs with, and where it comes from
/// (for the message that names it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimit {
    pub bytes: u64,
    pub set_by: BodyLimitSource,
}

/// Which setting a [`BodyLimit`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLimitSource {
    /// The function's `limits.body` in canopy.yaml.
    Function,
    /// The node's `limits.wasm.request_body` (the function set none).
    NodeDefault,
    /// The node's `limits.wasm.max_request_body` (the function asked for more).
    NodeMaximum,
}

impl BodyLimit {
    /// The setting to change, for function `name`:
    /// `functions.api.limits.body`.
    pub fn setting(&self, name: &str) -> String {
        match self.set_by {
            BodyLimitSource::Function => format!("functions.{name}.limits.body"),
            BodyLimitSource::NodeDefault => format!(
                "limits.wasm.request_body, the node's default; functions.{name}.limits.body sets the function's own"
            ),
            BodyLimitSource::NodeMaximum => {
                "limits.wasm.max_request_body, the node's maximum".to_string()
            }
        }
    }
}

/// The body's length as its `Content-Length` header declares it, if it has
/// one that is a number.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Set once a [`LimitedBody`] has broken off its body for going past the
/// limit, with what is left of that body; read by whoever answers the
/// request.
#[derive(Clone, Default)]
pub struct Overflow(Arc<OverflowState>);

#[derive(Default)]
struct OverflowState {
    happened: AtomicBool,
    rest: Mutex<Option<RequestBody>>,
}

impl Overflow {
    /// Whether the body went past its limit.
    pub fn happened(&self) -> bool {
        self.0.happened.load(Ordering::Acquire)
    }

    /// The rest of the body that went past its limit (once).
    pub fn take_rest(&self) -> Option<RequestBody> {
        self.0
            .rest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn mark(&self, rest: Option<RequestBody>) {
        *self.0.rest.lock().unwrap_or_else(PoisonError::into_inner) = rest;
        self.0.happened.store(true, Ordering::Release);
    }
}

/// A request body that ends with an error once more than `limit_bytes`
/// have come through, and marks its [`Overflow`] (handing it the rest).
/// The frame that crosses the limit is not passed on.
pub struct LimitedBody {
    /// `None` once it went past the limit.
    inner: Option<RequestBody>,
    limit_bytes: u64,
    seen_bytes: u64,
    overflow: Overflow,
}

impl LimitedBody {
    pub fn new(inner: RequestBody, limit_bytes: u64, overflow: Overflow) -> Self {
        Self {
            inner: Some(inner),
            limit_bytes,
            seen_bytes: 0,
            overflow,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Some(Err(too_large(this.limit_bytes))));
        };
        let frame = match inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            this.seen_bytes = this.seen_bytes.saturating_add(data.len() as u64);
            if this.seen_bytes > this.limit_bytes {
                this.overflow.mark(this.inner.take());
                return Poll::Ready(Some(Err(too_large(this.limit_bytes))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |inner| inner.size_hint())
    }
}

/// The body of a refusal: `message`, then, before it ends, the rest of the
/// refused request body read and thrown away — at most
/// [`MAX_DISCARD_BYTES`], until `deadline` — so the client can finish
/// sending and read the refusal on a connection that closes cleanly.
pub struct RefusalBody {
    // Only polled through `&mut`; the mutex makes the body `Sync` as the
    // node's response bodies are.
    state: Mutex<RefusalState>,
}

struct RefusalState {
    message: Option<Bytes>,
    rest: Option<RequestBody>,
    discarded_bytes: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl RefusalBody {
    pub fn new(
        message: impl Into<Bytes>,
        rest: Option<RequestBody>,
        deadline: tokio::time::Instant,
    ) -> Self {
        Self {
            state: Mutex::new(RefusalState {
                message: Some(message.into()),
                rest,
                discarded_bytes: 0,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
            }),
        }
    }
}

impl Body for RefusalBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let state = self
            .get_mut()
            .state
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(message) = state.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        while let Some(rest) = state.rest.as_mut() {
            if state.deadline.as_mut().poll(cx).is_ready() {
                state.rest = None;
                break;
            }
            match rest.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, Bytes::len) as u64;
                    state.discarded_bytes = state.discarded_bytes.saturating_add(len);
                    if state.discarded_bytes > MAX_DISCARD_BYTES {
                        state.rest = None;
                    }
                }
                Poll::Ready(Some(Err(_)) | None) => state.rest = None,
            }
        }
        Poll::Ready(None)
    }
}

/// What the guest reads when the body breaks off: wasi:http's own error
/// for a request body that is too large.
fn too_large(limit_bytes: u64) -> wasmtime_wasi_http::Error {
    wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn chunked(sizes: &[usize]) -> RequestBody {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = sizes
            .iter()
            .map(|&size| Ok(Frame::data(Bytes::from(vec![7u8; size]))))
            .collect();
        request_body(StreamBody::new(futures::stream::iter(frames)))
    }

    #[tokio::test]
    async fn a_body_within_the_limit_passes_whole() {
        let overflow = Overflow::default();
        let body = LimitedBody::new(chunked(&[10, 20, 30]), 60, overflow.clone());
        let bytes = body.collect().await.map(|c| c.to_bytes());
        assert_eq!(bytes.map(|b| b.len()).ok(), Some(60));
        assert!(!overflow.happened());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_breaks_off_and_marks_the_overflow() {
        let overflow = Overflow::default();
        let mut body = LimitedBody::new(chunked(&[40, 40, 40]), 60, overflow.clone());
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().map(Bytes::len), Some(40));
        assert!(!overflow.happened());
        let second = body.frame().await.unwrap();
        assert!(
            matches!(
                second,
                Err(wasmtime_wasi_http::Error::HttpRequestBodySize(Some(60)))
            ),
            "{second:?}"
        );
        assert!(overflow.happened());
        // It stays broken: no later frame gets through.
        assert!(body.frame().await.unwrap().is_err());
        // The rest is handed over: the third frame.
        let rest = overflow.take_rest().expect("the rest of the body");
        assert_eq!(rest.collect().await.unwrap().to_bytes().len(), 40);
        assert!(overflow.take_rest().is_none());
    }

    #[tokio::test]
    async fn a_refusal_sends_its_message_then_reads_the_rest_before_it_ends() {
        let (tx, rx) =
            futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, std::convert::Infallible>>();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
        let mut refusal = RefusalBody::new(
            "too large\n",
            Some(request_body(StreamBody::new(rx))),
            deadline,
        );
        let first = refusal.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().map(|b| &b[..]), Some(&b"too large\n"[..]));
        // It does not end while the client is still sending.
        let mut end = tokio::spawn(async move { refusal.frame().await.is_none() });
        tx.unbounded_send(Ok(Frame::data(Bytes::from(vec![1u8; 1000]))))
            .unwrap();
        tokio::task::yield_now().await;
        assert!(
            futures::poll!(&mut end).is_pending(),
            "the refusal ended before the request body did"
        );
        drop(tx);
        assert!(end.await.unwrap(), "the refusal ends with the request body");
    }

    #[test]
    fn the_limit_is_the_functions_else_the_nodes_default_never_past_its_maximum() {
        let node = RequestBodyLimits {
            default_bytes: 32 << 20,
            max_bytes: 1 << 30,
        };
        assert_eq!(
            node.resolve(None),
            BodyLimit {
                bytes: 32 << 20,
                set_by: BodyLimitSource::NodeDefault
            }
        );
        assert_eq!(
            node.resolve(Some(1 << 20)),
            BodyLimit {
                bytes: 1 << 20,
                set_by: BodyLimitSource::Function
            }
        );
        assert_eq!(
            node.resolve(Some(2 << 30)),
            BodyLimit {
                bytes: 1 << 30,
                set_by: BodyLimitSource::NodeMaximum
            }
        );
        assert_eq!(
            node.resolve(Some(1 << 20)).setting("api"),
            "functions.api.limits.body"
        );
    }

    #[test]
    fn content_length_is_read_when_it_is_a_number() {
        let mut headers = HeaderMap::new();
        assert_eq!(declared_length(&headers), None);
        headers.insert(http::header::CONTENT_LENGTH, "5242880".parse().unwrap());
        assert_eq!(declared_length(&headers), Some(5 << 20));
        headers.insert(http::header::CONTENT_LENGTH, "lots".parse().unwrap());
        assert_eq!(declared_length(&headers), None);
    }
}
