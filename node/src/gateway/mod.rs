//! The HTTP ingress: HTTP/1.1 and HTTP/2 on one port, in plain text (h2c,
//! prior knowledge) or over TLS (ALPN `h2` / `http/1.1`).
//!
//! The gateway owns accepting connections, routing each request by host and
//! then by longest path prefix, serving websites from the blob store, handing
//! function requests to a [`FunctionTarget`] (bodies streamed both ways),
//! its own error responses, and request counters. It does not know how
//! functions run or how routes are derived from a project: the deployment
//! layer builds a [`RouteTable`] and swaps it in with
//! [`Gateway::replace_routes`]; requests in flight keep the table they
//! started with.
//!
//! Every response carries `server: canopy`. Each request is logged at
//! `debug` level.

mod host;
mod metrics;
mod responses;
mod routes;
mod static_site;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::FutureExt;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub use host::{normalize_host, request_host};
pub use metrics::{Metrics, StatusCounts, UNKNOWN_HOST};
pub use routes::{FunctionTarget, Lookup, Route, RouteTable, Site, Target};
pub use static_site::{STREAM_THRESHOLD_BYTES, StaticFile, StaticSite, content_type_for};

use crate::body::Body;
use metrics::Counters;
use responses::{
    method_not_allowed, no_host_message, no_route_message, text, unknown_host_message,
};

/// Limits of a gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// After shutdown is asked for, how long in-flight connections may take
    /// to finish before they are dropped.
    pub shutdown_grace_ms: u64,
    /// Open connections at most; connections beyond are closed on accept.
    pub max_connections: usize,
    /// HTTP/1 clients must send their request headers within this time.
    pub header_read_timeout_ms: u64,
    /// TLS clients ([`Gateway::serve_tls`]) must finish the handshake
    /// within this time.
    pub tls_handshake_timeout_ms: u64,
}

/// `Strict-Transport-Security` on TLS responses for real domains: one year.
pub const HSTS_VALUE: &str = "max-age=31536000";

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            shutdown_grace_ms: 10_000,
            max_connections: 4_096,
            header_read_timeout_ms: 30_000,
            tls_handshake_timeout_ms: 10_000,
        }
    }
}

/// Facts about the matched route, put in the request's extensions before it
/// is handed to a [`FunctionTarget`].
#[derive(Clone, Debug)]
pub struct RouteInfo {
    pub site: Arc<Site>,
    /// The matched route's prefix (`/` or `/a/b`).
    pub prefix: String,
}

/// The HTTP ingress of one node.
pub struct Gateway {
    routes: RwLock<Arc<RouteTable>>,
    counters: Counters,
    config: GatewayConfig,
}

impl Gateway {
    /// A gateway with default limits and an empty route table.
    pub fn new() -> Arc<Self> {
        Self::with_config(GatewayConfig::default())
    }

    pub fn with_config(config: GatewayConfig) -> Arc<Self> {
        debug_assert!(
            config.max_connections > 0,
            "a gateway must accept connections"
        );
        debug_assert!(
            config.tls_handshake_timeout_ms > 0,
            "a zero handshake timeout fails every TLS connection"
        );
        Arc::new(Gateway {
            routes: RwLock::new(Arc::new(RouteTable::new())),
            counters: Counters::default(),
            config,
        })
    }

    /// Swap in a new route table; later requests use it, requests in flight
    /// finish with the old one.
    pub fn replace_routes(&self, table: RouteTable) {
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    /// The route table in use.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Request counts per host and status class since start.
    pub fn metrics(&self) -> Metrics {
        self.counters.snapshot()
    }

    /// Accept connections on `listener` until `shutdown` resolves; then stop
    /// accepting and let open connections finish their requests, for at most
    /// `shutdown_grace_ms`. Must run inside a tokio runtime.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        self.serve_with(listener, Transport::Plain, shutdown).await
    }

    /// Like [`Gateway::serve`], over TLS: each connection first completes a
    /// TLS handshake (within `tls_handshake_timeout_ms`) with `config`
    /// (see [`crate::tls::server_config`]), then is served as HTTP/1.1 or
    /// HTTP/2 — whichever the client speaks, ALPN `h2` included. Responses
    /// for hosts outside localhost carry `Strict-Transport-Security`.
    /// Must run inside a tokio runtime.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        self.serve_with(listener, Transport::Tls(acceptor), shutdown)
            .await
    }

    /// The accept loop shared by plain HTTP and HTTPS.
    async fn serve_with(
        self: Arc<Self>,
        listener: TcpListener,
        transport: Transport,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(self.config.header_read_timeout_ms));
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);

        let graceful = GracefulShutdown::new();
        // Tells connections still in their TLS handshake to give up once
        // shutdown starts (graceful shutdown only reaches HTTP connections).
        let (stopping_tx, stopping_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(self.config.max_connections));
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
                            tracing::warn!(error = %e, "gateway: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // Responses are written in several pieces (head, then
                    // body chunks as the guest streams them): with Nagle on,
                    // a piece that waits for the client's delayed ACK costs
                    // ~40 ms per request on keep-alive connections.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "gateway: cannot set TCP_NODELAY");
                    }
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, max = self.config.max_connections, "gateway: connection limit reached; closing new connection");
                        continue;
                    };
                    let connection = Connection {
                        gateway: self.clone(),
                        builder: builder.clone(),
                        watcher: graceful.watcher(),
                        stopping: stopping_rx.clone(),
                        peer,
                    };
                    let transport = transport.clone();
                    connections.spawn(async move {
                        connection.run(stream, transport).await;
                        drop(permit);
                    });
                }
            }
        }
        drop(listener);
        let _ = stopping_tx.send(true);
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                open = connections.len(),
                grace_ms = self.config.shutdown_grace_ms,
                "gateway: connections still open after the shutdown grace period; dropping them"
            );
        }
        connections.shutdown().await;
        Ok(())
    }

    /// [`Gateway::handle`], plus what a response over TLS adds: HSTS for
    /// hosts outside localhost (see [`crate::tls::wants_hsts`]).
    async fn handle_over(&self, req: Request<Incoming>, secure: bool) -> Response<Body> {
        let hsts = secure && request_host(&req).is_some_and(|host| crate::tls::wants_hsts(&host));
        let mut resp = self.handle(req).await;
        if hsts {
            resp.headers_mut().insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static(HSTS_VALUE),
            );
        }
        resp
    }

    /// Answer one request: route it, serve it, count it. Usable behind any
    /// connection (TLS, a test) as well as from [`Gateway::serve`].
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let host = request_host(&req);
        let table = self.routes();
        let (metrics_key, mut resp) = match host.as_deref() {
            None => (
                UNKNOWN_HOST.to_string(),
                text(StatusCode::NOT_FOUND, no_host_message()),
            ),
            Some(h) => match table.entry(h) {
                None => (
                    UNKNOWN_HOST.to_string(),
                    text(StatusCode::NOT_FOUND, unknown_host_message(h)),
                ),
                Some((key, site)) => (key.to_string(), dispatch(site, req, &path).await),
            },
        };
        resp.headers_mut()
            .insert(header::SERVER, HeaderValue::from_static("canopy"));
        self.counters.record(&metrics_key, resp.status());
        tracing::debug!(
            host = host.as_deref().unwrap_or(""),
            %method,
            path,
            status = resp.status().as_u16(),
            "gateway request"
        );
        resp
    }
}

/// How an accepted TCP stream becomes the byte stream HTTP runs on.
#[derive(Clone)]
enum Transport {
    Plain,
    Tls(tokio_rustls::TlsAcceptor),
}

/// One accepted connection and what serving it needs.
struct Connection {
    gateway: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    stopping: watch::Receiver<bool>,
    peer: SocketAddr,
}

impl Connection {
    async fn run(mut self, stream: TcpStream, transport: Transport) {
        let peer = self.peer;
        match transport {
            Transport::Plain => self.serve_http(stream, false).await,
            Transport::Tls(acceptor) => {
                let timeout_ms = self.gateway.config.tls_handshake_timeout_ms;
                let handshake = tokio::time::timeout(
                    Duration::from_millis(timeout_ms),
                    acceptor.accept(stream),
                );
                let tls = tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "gateway: TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, timeout_ms, "gateway: TLS handshake timed out");
                            return;
                        }
                    },
                    _ = self.stopping.wait_for(|stopping| *stopping) => return,
                };
                self.serve_http(tls, true).await
            }
        }
    }

    /// Serve HTTP/1.1 or HTTP/2 (the auto builder reads the client's first
    /// bytes) on `io` until it closes or graceful shutdown finishes it.
    async fn serve_http<I>(self, io: I, secure: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            gateway,
            builder,
            watcher,
            peer,
            ..
        } = self;
        let gateway_header_timeout_ms = gateway.config.header_read_timeout_ms;
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(gateway.handle_over(req, secure).await) }
        });
        let (io, heard) = crate::silent_client::Watched::new(io);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let deadline = Duration::from_millis(gateway_header_timeout_ms);
        match crate::silent_client::serve_unless_silent(
            Box::pin(watcher.watch(conn)),
            heard,
            deadline,
        )
        .await
        {
            None => tracing::debug!(%peer, "gateway: the client sent nothing; closed"),
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "gateway: connection ended with an error");
            }
            Some(Ok(())) => {}
        }
    }
}

/// Serve a request for a known site.
async fn dispatch(site: &Arc<Site>, mut req: Request<Incoming>, path: &str) -> Response<Body> {
    let Some(route) = site.route_for(path) else {
        return text(StatusCode::NOT_FOUND, no_route_message(site, path));
    };
    if !route.allows(req.method()) {
        let allowed = route.methods.as_deref().unwrap_or(&[]);
        let what = format!("route {:?} of project {:?}", route.prefix, site.project);
        return method_not_allowed(&what, req.method(), allowed);
    }
    match &route.target {
        Target::Function(function) => {
            req.extensions_mut().insert(RouteInfo {
                site: site.clone(),
                prefix: route.prefix.clone(),
            });
            // A panicking function target must cost one 500, not the connection.
            match AssertUnwindSafe(function.call(req)).catch_unwind().await {
                Ok(resp) => resp,
                Err(_) => {
                    tracing::error!(project = %site.project, prefix = %route.prefix, "gateway: function target panicked");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the function failed while handling this request\n".into(),
                    )
                }
            }
        }
        Target::Website(website) => {
            website
                .serve(
                    req.method(),
                    req.headers(),
                    path,
                    req.uri().query(),
                    route.rest(path),
                )
                .await
        }
    }
}

#[cfg(test)]
mod tests;
