//! How long an open connection may go without a request: the header-read
//! and idle timeouts, kept by the listener itself.
//!
//! Why not hyper's: hyper 1's HTTP/1 `header_read_timeout` runs whenever its
//! parser waits for a request head, so on a keep-alive connection it starts
//! as soon as a response is sent (idle time and header time are one timer),
//! while in front of it the HTTP/1-or-2 auto builder reads a new
//! connection's first bytes with no deadline at all (a client that connects
//! and says nothing would hold its slot forever). HTTP/2 has no idle
//! timeout in hyper (its keep-alive pings find dead peers, not idle ones).
//! So each connection has an [`Activity`]: the stream ([`Tracked`]) notes
//! the first byte read while no request is open, the service notes when a
//! request starts and when its response body is done ([`InFlight`]), and
//! [`Activity::expired`] resolves when the connection has outlived its
//! bound:
//!
//! - before its first request: `header_read` from the accept (or, once a
//!   byte came, from that byte) to a whole request head;
//! - between requests: `idle` after the last response ended; on HTTP/1 a
//!   request's first byte then gives it `header_read` to finish the head.
//!   On HTTP/2 bytes between requests are pings and settings, not requests,
//!   so only `idle` counts;
//! - while a request is open: no bound here (the function's own timeout
//!   bounds it).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The two bounds an [`Activity`] keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// Why a connection was found expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// It sent nothing after it connected.
    Silent,
    /// A request's head did not arrive whole in time.
    SlowHeaders,
    /// No request came within the idle timeout after the last response.
    Idle,
}

/// What one connection has done lately.
pub(crate) struct Activity {
    /// True while no request is open and no byte of the next one has come:
    /// the next byte read notes its time. Checked on every read, so it is an
    /// atomic; everything else changes once per request.
    listening: AtomicBool,
    state: Mutex<State>,
    /// Wakes [`Activity::expired`] when a deadline may have moved earlier.
    changed: Notify,
}

struct State {
    /// Requests whose response body is not done yet.
    in_flight: usize,
    /// When the connection last had no request open (accepted, or the last
    /// response ended).
    waiting_since: Instant,
    /// The first byte read since `waiting_since`.
    heard_at: Option<Instant>,
    /// Whether a request has started on this connection.
    served: bool,
    http2: bool,
}

impl State {
    /// When the connection expires if nothing changes, and why; `None`
    /// while a request is open.
    fn deadline(&self, t: Timeouts) -> Option<(Instant, Expiry)> {
        if self.in_flight > 0 {
            return None;
        }
        Some(match (self.served, self.http2, self.heard_at) {
            (false, _, None) => (self.waiting_since + t.header_read, Expiry::Silent),
            (false, _, Some(at)) => (at + t.header_read, Expiry::SlowHeaders),
            (true, true, _) | (true, false, None) => (self.waiting_since + t.idle, Expiry::Idle),
            (true, false, Some(at)) => (at + t.header_read, Expiry::SlowHeaders),
        })
    }
}

impl Activity {
    /// The activity of a connection that starts now.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            listening: AtomicBool::new(true),
            state: Mutex::new(State {
                in_flight: 0,
                waiting_since: Instant::now(),
                heard_at: None,
                served: false,
                http2: false,
            }),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the connection speaks HTTP/2 (known from its first request).
    pub(crate) fn is_http2(&self) -> bool {
        self.state().http2
    }

    /// A byte came in while no request was open.
    fn heard(&self) {
        let mut state = self.state();
        if state.in_flight == 0 && state.heard_at.is_none() {
            state.heard_at = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// A request reached the service; it stays open until the returned
    /// guard (kept with its response body) is dropped.
    pub(crate) fn request_started(self: &Arc<Self>, http2: bool) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.served = true;
        state.http2 |= http2;
        state.heard_at = None;
        self.listening.store(false, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once the connection has outlived its bound (see the module
    /// doc), with the reason; never while a request is open.
    pub(crate) async fn expired(&self, timeouts: Timeouts) -> Expiry {
        loop {
            let next = self.state().deadline(timeouts);
            match next {
                // A request is open: only its end can start a deadline.
                None => self.changed.notified().await,
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => {
                    // Deadlines only move later, except when a byte starts
                    // a request head: that notifies. Either way, recompute.
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// An open request; dropped when its response body is done (or dropped).
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let mut state = activity.state();
        debug_assert!(state.in_flight > 0, "a request ended twice");
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.waiting_since = Instant::now();
            state.heard_at = None;
            activity.listening.store(true, Ordering::Relaxed);
            drop(state);
            activity.changed.notify_one();
        }
    }
}

/// A response body that keeps its request open until it is done.
pub(crate) struct Guarded<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Guarded<B> {
    pub(crate) fn new(body: B, in_flight: InFlight) -> Self {
        Guarded {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for Guarded<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A stream that tells its [`Activity`] when a byte comes while no request
/// is open.
pub(crate) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && self.activity.listening.load(Ordering::Relaxed)
            && self.activity.listening.swap(false, Ordering::Relaxed)
        {
            self.activity.heard();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const T: Timeouts = Timeouts {
        header_read: Duration::from_secs(3),
        idle: Duration::from_secs(10),
    };

    /// When `activity` expires, measured from now, with paused time.
    async fn expires_after(activity: &Activity) -> (Duration, Expiry) {
        let start = Instant::now();
        let why = activity.expired(T).await;
        (start.elapsed(), why)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_expires_after_the_header_read_timeout() {
        let activity = Activity::new();
        assert_eq!(
            expires_after(&activity).await,
            (T.header_read, Expiry::Silent)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_gets_the_header_read_timeout_from_its_first_byte() {
        let activity = Activity::new();
        let (mut client, server) = tokio::io::duplex(64);
        let mut tracked = Tracked::new(server, activity.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
        client.write_all(b"G").await.unwrap();
        let mut byte = [0u8; 1];
        tracked.read_exact(&mut byte).await.unwrap();
        // 2 s spent silent, then 3 s from the byte: 5 s after the accept.
        assert_eq!(
            expires_after(&activity).await,
            (T.header_read, Expiry::SlowHeaders)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_request_never_expires_and_idle_time_starts_at_its_end() {
        let activity = Activity::new();
        let request = activity.request_started(false);
        let waited = tokio::time::timeout(Duration::from_secs(600), activity.expired(T)).await;
        assert!(waited.is_err(), "a connection expired with a request open");
        drop(request);
        assert_eq!(expires_after(&activity).await, (T.idle, Expiry::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn on_http1_the_next_requests_first_byte_cuts_idle_time_to_header_time() {
        let activity = Activity::new();
        drop(activity.request_started(false));
        let (mut client, server) = tokio::io::duplex(64);
        let mut tracked = Tracked::new(server, activity.clone());
        let watch = tokio::spawn({
            let activity = activity.clone();
            async move { expires_after(&activity).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        client.write_all(b"G").await.unwrap();
        let mut byte = [0u8; 1];
        tracked.read_exact(&mut byte).await.unwrap();
        // Expired at 1 s + header_read, well before the idle timeout.
        let (after, why) = watch.await.unwrap();
        assert_eq!(why, Expiry::SlowHeaders);
        assert_eq!(after, Duration::from_secs(1) + T.header_read);
    }

    #[tokio::test(start_paused = true)]
    async fn on_http2_bytes_between_requests_do_not_count() {
        let activity = Activity::new();
        drop(activity.request_started(true));
        assert!(activity.is_http2());
        let (mut client, server) = tokio::io::duplex(64);
        let mut tracked = Tracked::new(server, activity.clone());
        client.write_all(b"ping").await.unwrap();
        let mut bytes = [0u8; 4];
        tracked.read_exact(&mut bytes).await.unwrap();
        assert_eq!(expires_after(&activity).await, (T.idle, Expiry::Idle));
    }
}
