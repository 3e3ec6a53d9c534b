//! The response body a guest streams, as the node's shared [`Body`] type.
//!
//! Two things the raw wasi:http body does not do: it is not `Sync` (the
//! node's body type must be), and it ends *cleanly* when the guest dies
//! mid-stream (its finish channel is simply dropped), which would pass a
//! truncated body off as complete. So end-of-stream is only reported once
//! the guest's task has returned successfully; a trap or timeout turns it
//! into a body error, and the client sees a broken response.
//!
//! [`Body`]: crate::body::Body

use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::function::{GuestTask, Outcome};
use crate::body::BoxError;

/// A guest's response body, ending only when the guest ended well.
pub struct GuestBody {
    /// Behind a mutex only to be `Sync`: it is reached through `get_mut`,
    /// so it is never locked on the streaming path.
    inner: Mutex<HyperOutgoingBody>,
    /// The guest's task; aborted if the body is dropped early.
    task: GuestTask,
    name: String,
    ended: bool,
}

impl GuestBody {
    pub fn new(inner: HyperOutgoingBody, task: GuestTask, name: String) -> Self {
        Self {
            inner: Mutex::new(inner),
            task,
            name,
            ended: false,
        }
    }
}

/// Why a guest's response body broke off.
#[derive(Debug, thiserror::Error)]
#[error("the response body of function `{name}` broke off: {reason}")]
pub struct GuestBodyError {
    name: String,
    reason: String,
}

impl HttpBody for GuestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let inner = this.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(error)) => {
                this.ended = true;
                this.task.abort();
                Poll::Ready(Some(Err(Box::new(GuestBodyError {
                    name: this.name.clone(),
                    reason: error.to_string(),
                }))))
            }
            None => {
                let outcome = ready!(this.task.poll_outcome(cx));
                this.ended = true;
                match outcome {
                    Outcome::Returned => Poll::Ready(None),
                    Outcome::Failed(failure) => Poll::Ready(Some(Err(Box::new(GuestBodyError {
                        name: this.name.clone(),
                        reason: failure.message(&this.name),
                    })))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            return SizeHint::with_exact(0);
        }
        match self.inner.lock() {
            Ok(inner) => inner.size_hint(),
            Err(poisoned) => poisoned.into_inner().size_hint(),
        }
    }
}
