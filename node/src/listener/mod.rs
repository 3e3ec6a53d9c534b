//! Accepting and serving HTTP connections, for every listener of a node
//! (the gateway, plain and TLS, and the admin port).
//!
//! One loop owns what a listener must bound: open connections at most
//! (listener-wide, and per client address: [`per_address`]), the TLS
//! handshake's deadline, how long a client may take to send a request's
//! headers and stay idle between requests ([`activity`]), HTTP/2 keep-alive
//! pings, and a graceful shutdown bounded by a grace period. Over a cap a
//! new connection is closed at once: the node never queues or crashes on a
//! flood. Requests are handed to a [`Handler`]; this module knows nothing
//! of routes or the admin API.

mod activity;
mod per_address;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::body::Body;
use activity::{Activity, Expiry, Guarded, InFlight, Timeouts, Tracked};
use per_address::AddressSlots;

/// How often an HTTP/2 connection with nothing received is pinged, so a
/// peer that vanished (and holds a request open) is found: 20 s.
pub const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// How long a ping's answer may take before the connection is closed: 20 s.
pub const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The bounds of one listener.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Names the listener in logs (`gateway`, `admin`).
    pub name: &'static str,
    /// Open connections at most; new ones beyond are closed on accept.
    pub max_connections: usize,
    /// Open connections from one client IP address at most; new ones
    /// beyond are closed on accept.
    pub max_connections_per_address: usize,
    /// From a new connection's accept, or a request's first byte, to its
    /// whole head (HTTP/1); a connection that sends nothing is closed too.
    pub header_read_timeout: Duration,
    /// How long a connection may wait for its next request after a
    /// response (HTTP/1 keep-alive and HTTP/2).
    pub idle_timeout: Duration,
    /// TLS clients must finish their handshake within this time.
    pub tls_handshake_timeout: Duration,
    /// HTTP/2 keep-alive pings: interval and how long an answer may take.
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
    /// After shutdown is asked for, how long open connections may take to
    /// finish their requests before they are dropped.
    pub shutdown_grace: Duration,
}

/// What the handler knows of a request's connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Answers requests: the gateway's router, the admin API.
pub type Handler =
    Arc<dyn Fn(Request<Incoming>, Peer) -> BoxFuture<'static, Response<Body>> + Send + Sync>;

/// Accept connections on `listener` (over TLS when `tls` is given) and
/// serve `handler` on them, until `shutdown` resolves; then stop accepting,
/// let open connections finish their requests for at most
/// `config.shutdown_grace`, and drop the rest. Must run inside a tokio
/// runtime.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    config: ListenerConfig,
    handler: Handler,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    debug_assert!(
        config.max_connections > 0,
        "a listener must accept connections"
    );
    debug_assert!(config.max_connections_per_address > 0);
    debug_assert!(
        !config.header_read_timeout.is_zero() && !config.idle_timeout.is_zero(),
        "a zero timeout closes every connection"
    );
    debug_assert!(
        !config.tls_handshake_timeout.is_zero(),
        "a zero handshake timeout fails every TLS connection"
    );
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own header-read timeout would also cut idle keep-alive
    // connections (it runs from the moment a head is awaited): the
    // connection's Activity keeps both bounds instead.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(config.http2_keep_alive_interval)
        .keep_alive_timeout(config.http2_keep_alive_timeout);
    let name = config.name;
    let shared = Arc::new(Shared {
        builder,
        handler,
        tls,
        timeouts: Timeouts {
            header_read: config.header_read_timeout,
            idle: config.idle_timeout,
        },
        tls_handshake_timeout: config.tls_handshake_timeout,
        name,
    });

    // Tells every connection to finish (graceful shutdown for HTTP,
    // giving up for a TLS handshake) once shutdown starts.
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let per_address = AddressSlots::new(config.max_connections_per_address, config.max_connections);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning, keep serving.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(listener = name, %peer, max = config.max_connections, "connection limit reached; closing new connection");
                    continue;
                };
                let Some(slot) = per_address.try_take(peer.ip()) else {
                    tracing::debug!(listener = name, %peer, max = config.max_connections_per_address, "connection limit per address reached; closing new connection");
                    continue;
                };
                // Responses are written in several pieces (head, then body
                // chunks as a guest streams them): with Nagle on, a piece
                // that waits for the client's delayed ACK costs ~40 ms per
                // request on keep-alive connections.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(listener = name, %peer, error = %e, "cannot set TCP_NODELAY");
                }
                let shared = shared.clone();
                let stopping = stopping_rx.clone();
                connections.spawn(async move {
                    shared.run(stream, peer, stopping).await;
                    drop((slot, permit));
                });
            }
        }
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(config.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            open = connections.len(),
            grace_ms = config.shutdown_grace.as_millis() as u64,
            "connections still open after the shutdown grace period; dropping them"
        );
    }
    connections.shutdown().await;
    Ok(())
}

/// What every connection of one listener shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    handler: Handler,
    tls: Option<tokio_rustls::TlsAcceptor>,
    timeouts: Timeouts,
    tls_handshake_timeout: Duration,
    name: &'static str,
}

impl Shared {
    /// Serve one accepted connection until it closes, expires, or shutdown
    /// finishes it.
    async fn run(
        self: Arc<Self>,
        stream: TcpStream,
        addr: SocketAddr,
        mut stopping: watch::Receiver<bool>,
    ) {
        let name = self.name;
        let Some(acceptor) = self.tls.clone() else {
            let peer = Peer { addr, tls: false };
            return self.serve_http(stream, peer, stopping).await;
        };
        let handshake = tokio::time::timeout(self.tls_handshake_timeout, acceptor.accept(stream));
        let tls = tokio::select! {
            done = handshake => match done {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(listener = name, peer = %addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(listener = name, peer = %addr, "TLS handshake timed out");
                    return;
                }
            },
            _ = stopping.wait_for(|stopping| *stopping) => return,
        };
        let peer = Peer { addr, tls: true };
        self.serve_http(tls, peer, stopping).await
    }

    /// Serve HTTP/1.1 or HTTP/2 (the auto builder reads the client's first
    /// bytes to tell) on `io`.
    async fn serve_http<I>(&self, io: I, peer: Peer, mut stopping: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let name = self.name;
        let activity = Activity::new();
        let service = Service {
            handler: self.handler.clone(),
            activity: activity.clone(),
            peer,
        };
        let io = TokioIo::new(Tracked::new(io, activity.clone()));
        let mut conn = Box::pin(
            self.builder
                .serve_connection_with_upgrades(io, service)
                .into_owned(),
        );
        // Set once the connection was asked to finish gracefully: by
        // shutdown (the listener's grace period bounds it), or on HTTP/2
        // when idle (a GOAWAY; bounded by `close_by`).
        let mut finishing = false;
        let mut close_by: Option<Instant> = None;
        let ended = loop {
            tokio::select! {
                ended = conn.as_mut() => break ended,
                _ = stopping.wait_for(|stopping| *stopping), if !finishing => {
                    conn.as_mut().graceful_shutdown();
                    finishing = true;
                }
                why = activity.expired(self.timeouts), if !finishing => {
                    if why == Expiry::Idle && activity.is_http2() {
                        tracing::debug!(listener = name, peer = %peer.addr, "idle HTTP/2 connection; sending GOAWAY");
                        conn.as_mut().graceful_shutdown();
                        finishing = true;
                        close_by = Some(Instant::now() + self.timeouts.header_read);
                    } else {
                        // No request is open: closing loses nothing.
                        tracing::debug!(listener = name, peer = %peer.addr, reason = ?why, "connection expired; closed");
                        return;
                    }
                }
                () = tokio::time::sleep_until(close_by.unwrap_or_else(Instant::now)), if close_by.is_some() => {
                    tracing::debug!(listener = name, peer = %peer.addr, "HTTP/2 connection did not close after GOAWAY; dropped");
                    return;
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(listener = name, peer = %peer.addr, error = %e, "connection ended with an error");
        }
    }
}

/// The hyper service of one connection: the handler, with every request
/// noted in the connection's [`Activity`] until its response body is done.
#[derive(Clone)]
struct Service {
    handler: Handler,
    activity: Arc<Activity>,
    peer: Peer,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Guarded<Body>>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        let in_flight = self
            .activity
            .request_started(req.version() == Version::HTTP_2);
        Answer {
            response: (self.handler)(req, self.peer),
            in_flight: Some(in_flight),
        }
    }
}

/// The handler's answer to come, then its body tied to the request's
/// [`InFlight`] guard.
struct Answer {
    response: BoxFuture<'static, Response<Body>>,
    in_flight: Option<InFlight>,
}

impl Future for Answer {
    type Output = Result<Response<Guarded<Body>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = std::task::ready!(self.response.as_mut().poll(cx));
        let in_flight = self
            .in_flight
            .take()
            .expect("an answer is polled to its end once");
        Poll::Ready(Ok(response.map(|body| Guarded::new(body, in_flight))))
    }
}

#[cfg(test)]
mod tests;
