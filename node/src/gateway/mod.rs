//! The HTTP ingress: HTTP/1.1 and HTTP/2 on one port, in plain text (h2c,
//! prior knowledge) or over TLS (ALPN `h2` / `http/1.1`).
//!
//! The gateway owns routing each request by host and then by longest path
//! prefix, serving websites from the blob store, handing function requests
//! to a [`FunctionTarget`] (bodies streamed both ways), its own error
//! responses, and request counters; its connections (caps, timeouts) are
//! [`crate::listener`]'s, with the bounds of [`GatewayConfig`]. It does not know how
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

use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::FutureExt;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::net::TcpListener;

pub use host::{normalize_host, request_host};
pub use metrics::{Metrics, StatusCounts, UNKNOWN_HOST};
pub use routes::{FunctionTarget, Lookup, Route, RouteTable, Site, Target};
pub use static_site::{STREAM_THRESHOLD_BYTES, StaticFile, StaticSite, content_type_for};

use crate::body::Body;
use crate::listener::{Handler, ListenerConfig, Peer};
use metrics::Counters;
use responses::{
    method_not_allowed, no_host_message, no_route_message, text, unknown_host_message,
};

/// Limits of a gateway (`limits.gateway` in the node config for the
/// connection bounds).
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// After shutdown is asked for, how long in-flight connections may take
    /// to finish before they are dropped.
    pub shutdown_grace_ms: u64,
    /// Open connections at most; connections beyond are closed on accept.
    pub max_connections: usize,
    /// Open connections from one client IP address at most; connections
    /// beyond are closed on accept.
    pub max_connections_per_address: usize,
    /// Clients must send a request's headers within this time: from the
    /// accept for a new connection, else from the request's first byte.
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout_ms: u64,
    /// TLS clients ([`Gateway::serve_tls`]) must finish the handshake
    /// within this time.
    pub tls_handshake_timeout_ms: u64,
}

/// `Strict-Transport-Security` on TLS responses for real domains: one year.
pub const HSTS_VALUE: &str = "max-age=31536000";

/// The gateway's open connections at most unless configured: 4,096.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4_096;

/// Open gateway connections from one client address at most unless
/// configured: 256 (a browser opens ~6 per host; a NAT of many users more).
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;

/// How long a gateway client may take to send its request headers unless
/// configured: 30 s.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an idle keep-alive gateway connection stays open unless
/// configured: 60 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            shutdown_grace_ms: 10_000,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT.as_millis() as u64,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT.as_millis() as u64,
            tls_handshake_timeout_ms: 10_000,
        }
    }
}

impl GatewayConfig {
    /// The bounds of the gateway's listeners.
    fn listener(&self) -> ListenerConfig {
        ListenerConfig {
            name: "gateway",
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            tls_handshake_timeout: Duration::from_millis(self.tls_handshake_timeout_ms),
            http2_keep_alive_interval: crate::listener::HTTP2_KEEP_ALIVE_INTERVAL,
            http2_keep_alive_timeout: crate::listener::HTTP2_KEEP_ALIVE_TIMEOUT,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
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
            config.max_connections > 0 && config.max_connections_per_address > 0,
            "a gateway must accept connections"
        );
        debug_assert!(
            config.header_read_timeout_ms > 0 && config.idle_timeout_ms > 0,
            "a zero timeout closes every connection"
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
        self.serve_with(listener, None, shutdown).await
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
        self.serve_with(listener, Some(acceptor), shutdown).await
    }

    async fn serve_with(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let config = self.config.listener();
        let gateway = self;
        let handler: Handler = Arc::new(move |req, peer: Peer| {
            let gateway = gateway.clone();
            Box::pin(async move { gateway.handle_over(req, peer.tls).await })
        });
        crate::listener::serve(listener, tls, config, handler, shutdown).await
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
