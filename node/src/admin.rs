//! The admin API: node status as JSON, health, tokens, invites, and the Git
//! remote.
//!
//! Routes (every one but health needs a token, see [`crate::auth`]):
//! - `GET /api/health` → `{"ok": true}` once the node serves (public).
//! - `GET /api/status` → [`crate::status::StatusReport`]; a project token
//!   sees its project only.
//! - `POST /api/cluster/invite[?ttl=SECONDS]` → [`InviteAnswer`] (admin;
//!   cluster nodes; at most [`AdminOptions::max_invite_ttl`]).
//! - `GET /api/tokens` → every [`crate::auth::TokenEntry`] (admin).
//! - `POST /api/tokens` with a [`TokenRequest`] → [`IssuedToken`] (admin).
//! - `DELETE /api/tokens/<id>` → the revoked [`crate::auth::TokenEntry`] (admin).
//! - `GET /api/domains` → every [`DomainOwner`] (a project token: its own).
//! - `POST /api/domains/transfer` with a [`DomainTransfer`] → the new
//!   [`DomainOwner`] (admin).
//! - `/git/<project>.git/...` → the smart-HTTP Git remote (push only), for
//!   an admin token or a token of `<project>`, sent as HTTP Basic.
//!
//! It must not serve user traffic; that is the gateway's.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::auth::{Authority, Caller, Issuer, Principal, TokenId, Unauthenticated};
use crate::body::{self, Body};
use crate::git::{GitHttp, Repos};
use crate::listener::{Handler, ListenerConfig};
use crate::status::StatusReport;

/// Where the Git remote is mounted on the admin port.
pub const GIT_MOUNT: &str = "/git";

/// The longest invite lifetime unless the node config says otherwise: 1 h.
pub const DEFAULT_MAX_INVITE_TTL: Duration = Duration::from_secs(3600);

/// How long a client of a TLS admin port has to finish its handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long open admin connections may take to finish their requests once
/// the node stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The largest JSON body the admin API reads (token requests): 16 KiB.
const MAX_API_BODY_BYTES: usize = 16 * 1024;

/// What the admin API needs from the node.
pub trait AdminSource: Send + Sync + 'static {
    /// The node's status, and its peers' when it is in a cluster.
    fn status(&self) -> futures::future::BoxFuture<'_, StatusReport>;

    /// Issue an invite token valid for `ttl_s` seconds (cluster nodes only).
    /// `warrantor` is the admin's token: the invite's record in cluster
    /// state carries its warrant, without which no node honours the
    /// admission.
    fn invite(
        &self,
        ttl_s: u64,
        warrantor: &crate::auth::Token,
    ) -> Result<InviteAnswer, InviteError>;

    /// Remove the member whose id starts with `node` from the cluster, at
    /// the request of the admin holding `warrantor`; its full id.
    fn remove_node(
        &self,
        node: &str,
        warrantor: &crate::auth::Token,
    ) -> Result<String, InviteError>;

    /// Every claimed domain and its owning project.
    fn domains(&self) -> crate::deploy::domains::Owners;

    /// Give `domain` to `project`, at the request of the admin holding
    /// `warrantor` (its warrant goes on the cluster record).
    fn transfer_domain(
        &self,
        domain: &str,
        project: &str,
        warrantor: &crate::auth::Token,
    ) -> Result<(), crate::deploy::domains::DomainError>;
}

/// One claimed domain, as `GET /api/domains` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainOwner {
    pub domain: String,
    pub project: String,
}

/// The body of `POST /api/domains/transfer`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainTransfer {
    pub domain: String,
    /// The project that owns it from now on.
    pub to: String,
}

/// Why a node issued no invite; the text is the answer's `error`.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    #[error("this node is not part of a cluster: add a `cluster:` section to its config")]
    NotInCluster,
    /// The cluster refused (the node is not an admitted member yet, ...).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::member::InviteRefusal),
    /// The cluster refused a removal.
    #[error(transparent)]
    Remove(#[from] crate::cluster::member::RemoveRefusal),
}

/// The body of `POST /api/cluster/remove`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRemoval {
    /// The node's id, or at least its first 16 hex digits.
    pub node: String,
}

/// The answer of `POST /api/cluster/invite`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct InviteAnswer {
    /// `canopy-invite-…`: give it to the new node as `cluster.invite`.
    pub token: String,
    /// This node's peer addresses: give one to the new node as `cluster.peers`.
    pub peers: Vec<String>,
    pub expires_at_unix_s: u64,
}

/// The body of `POST /api/tokens`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// `admin` or `project:NAME`.
    pub principal: String,
    #[serde(default)]
    pub label: String,
    /// Lifetime in seconds; absent: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

/// The answer of `POST /api/tokens`: the only time the token is shown.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssuedToken {
    pub token: String,
    pub id: TokenId,
    pub principal: Principal,
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_unix_s: Option<u64>,
}

/// How the admin API guards itself.
#[derive(Clone, Debug)]
pub struct AdminOptions {
    /// Answer only requests whose `Host` is a loopback name or address
    /// (`canopy dream`: a web page on another site cannot reach the admin
    /// API by pointing a DNS name at 127.0.0.1).
    pub loopback_hosts_only: bool,
    /// The longest lifetime of a cluster invite.
    pub max_invite_ttl: Duration,
    /// Open connections at most; new ones beyond are closed on accept
    /// (`limits.admin.max_connections`).
    pub max_connections: usize,
    /// Open connections from one client IP address at most; new ones
    /// beyond are closed on accept (`limits.admin.max_connections_per_address`).
    pub max_connections_per_address: usize,
    /// Clients must send a request's headers within this time, from the
    /// accept for a new connection (`limits.admin.header_read_timeout`).
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed
    /// (`limits.admin.idle_timeout`).
    pub idle_timeout: Duration,
}

/// The admin port's open connections at most unless configured: 256.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Open admin connections from one client address at most unless
/// configured: 32 (a `git push` and a CLI need a few).
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 32;

/// How long an admin client may take to send its request headers unless
/// configured: 30 s.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an idle keep-alive admin connection stays open unless
/// configured: 60 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for AdminOptions {
    fn default() -> Self {
        Self {
            loopback_hosts_only: false,
            max_invite_ttl: DEFAULT_MAX_INVITE_TTL,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

pub struct Admin {
    source: Arc<dyn AdminSource>,
    git: Arc<GitHttp>,
    authority: Authority,
    options: AdminOptions,
}

impl Admin {
    pub fn new(
        source: Arc<dyn AdminSource>,
        git: Arc<GitHttp>,
        authority: Authority,
        options: AdminOptions,
    ) -> Arc<Self> {
        Arc::new(Self {
            source,
            git,
            authority,
            options,
        })
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if self.options.loopback_hosts_only && !addressed_to_loopback(&req) {
            return error(
                StatusCode::FORBIDDEN,
                "this admin API answers only requests addressed to localhost or a loopback \
                 address (a guard against DNS rebinding); use http://127.0.0.1:PORT",
            );
        }
        let path = req.uri().path().to_owned();
        if (req.method(), path.as_str()) == (&Method::GET, "/api/health") {
            return json(StatusCode::OK, &serde_json::json!({"ok": true}));
        }
        if let Some(rest) = path
            .strip_prefix(GIT_MOUNT)
            .and_then(|rest| rest.strip_prefix('/'))
        {
            return self.git(rest, req).await;
        }
        let caller = match self.authority.authenticate(req.headers()) {
            Ok(caller) => caller,
            Err(e) => return unauthenticated(&e, "Bearer"),
        };
        match (req.method(), path.as_str()) {
            (&Method::GET, "/api/status") => {
                let mut report = self.source.status().await;
                visible_to(&caller, &mut report);
                json(StatusCode::OK, &report)
            }
            (&Method::POST, "/api/cluster/invite") => self.invite(&caller, req.uri().query()),
            (&Method::POST, "/api/cluster/remove") => self.remove_node(&caller, req).await,
            (&Method::GET, "/api/tokens") => match caller.must_be_admin("list tokens") {
                Ok(()) => json(StatusCode::OK, &self.authority.list()),
                Err(e) => error(StatusCode::FORBIDDEN, &e.to_string()),
            },
            (&Method::POST, "/api/tokens") => self.create_token(&caller, req).await,
            (&Method::DELETE, p) if p.starts_with("/api/tokens/") => {
                self.revoke_token(&caller, &p["/api/tokens/".len()..])
            }
            (&Method::GET, "/api/domains") => {
                let owners = self
                    .source
                    .domains()
                    .into_iter()
                    .filter(|(_, project)| caller.principal.may_deploy(project))
                    .map(|(domain, project)| DomainOwner { domain, project })
                    .collect::<Vec<_>>();
                json(StatusCode::OK, &owners)
            }
            (&Method::POST, "/api/domains/transfer") => self.transfer_domain(&caller, req).await,
            (_, "/api/domains" | "/api/domains/transfer") => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET /api/domains or POST /api/domains/transfer",
            ),
            (_, "/api/cluster/invite") => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST to issue an invite",
            ),
            (_, "/api/health" | "/api/status") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "use GET for the admin API")
            }
            (_, p) if p == "/api/tokens" || p.starts_with("/api/tokens/") => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET /api/tokens, POST /api/tokens or DELETE /api/tokens/ID",
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                "not an admin API path; try GET /api/status, or push to /git/<project>.git",
            ),
        }
    }

    /// The Git remote: `rest` is the path below [`GIT_MOUNT`].
    async fn git(&self, rest: &str, mut req: Request<Incoming>) -> Response<Body> {
        let caller = match self.authority.authenticate(req.headers()) {
            Ok(caller) => caller,
            Err(e) => return unauthenticated(&e, "Basic"),
        };
        // A path that names no repository gets the remote's own 404.
        let project = rest.split('/').next().map(Repos::normalize_name);
        if let Some(Ok(project)) = &project
            && let Err(problem) = crate::config::names::check_label(project)
        {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "{project:?} is not a project name: it {problem}; push to /git/<project>.git \
                     where <project> is canopy.yaml's `project:`\n"
                ),
            );
        }
        if let Some(Ok(project)) = project
            && let Err(forbidden) = caller.may_deploy(&project)
        {
            tracing::info!(token = %caller.token, project, "push refused: token of another project");
            return text(StatusCode::FORBIDDEN, format!("{forbidden}\n"));
        }
        // The push's record in cluster state carries this token's warrant.
        req.extensions_mut()
            .insert(crate::git::Pusher(caller.credential.clone()));
        self.git.handle(req).await
    }

    fn invite(&self, caller: &Caller, query: Option<&str>) -> Response<Body> {
        if let Err(e) = caller.must_be_admin("issue cluster invites") {
            return error(StatusCode::FORBIDDEN, &e.to_string());
        }
        let max = self.options.max_invite_ttl.as_secs();
        let ttl_s = match query
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ttl=")))
            .map(str::parse::<u64>)
        {
            None => max.min(DEFAULT_MAX_INVITE_TTL.as_secs()),
            Some(Ok(ttl_s)) if (1..=max).contains(&ttl_s) => ttl_s,
            Some(Ok(ttl_s)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "an invite may live 1 to {max} seconds (this node's \
                         admin.max_invite_ttl), not {ttl_s}"
                    ),
                );
            }
            Some(Err(_)) => {
                return error(StatusCode::BAD_REQUEST, "ttl must be a number of seconds");
            }
        };
        match self.source.invite(ttl_s, &caller.credential) {
            Ok(answer) => json(StatusCode::OK, &answer),
            Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
        }
    }

    /// `POST /api/cluster/remove` (admin): `{"node"}`.
    async fn remove_node(&self, caller: &Caller, req: Request<Incoming>) -> Response<Body> {
        if let Err(e) = caller.must_be_admin("remove nodes") {
            return error(StatusCode::FORBIDDEN, &e.to_string());
        }
        let request: NodeRemoval =
            match read_json(req, "a removal", r#"{"node": "<node id>"}"#).await {
                Ok(request) => request,
                Err(response) => return response,
            };
        match self.source.remove_node(&request.node, &caller.credential) {
            Ok(id) => {
                tracing::info!(node = %id, by = %caller.token, "node removed from the cluster");
                json(StatusCode::OK, &NodeRemoval { node: id })
            }
            Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
        }
    }

    /// `POST /api/domains/transfer` (admin): `{"domain", "to"}`.
    async fn transfer_domain(&self, caller: &Caller, req: Request<Incoming>) -> Response<Body> {
        if let Err(e) = caller.must_be_admin("transfer domains") {
            return error(StatusCode::FORBIDDEN, &e.to_string());
        }
        let request: DomainTransfer = match read_json(
            req,
            "a transfer",
            r#"{"domain": "shop.example.com", "to": "shop"}"#,
        )
        .await
        {
            Ok(request) => request,
            Err(response) => return response,
        };
        let domain = match crate::config::names::normalize_domain(&request.domain) {
            Ok(domain) => domain,
            Err(problem) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("domain `{}` {problem}", request.domain),
                );
            }
        };
        if let Err(problem) = crate::config::names::check_label(&request.to) {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("project `{}` {problem}", request.to),
            );
        }
        match self
            .source
            .transfer_domain(&domain, &request.to, &caller.credential)
        {
            Ok(()) => {
                tracing::info!(%domain, to = %request.to, by = %caller.token, "domain transferred");
                json(
                    StatusCode::OK,
                    &DomainOwner {
                        domain,
                        project: request.to,
                    },
                )
            }
            Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
        }
    }

    async fn create_token(&self, caller: &Caller, req: Request<Incoming>) -> Response<Body> {
        if let Err(e) = caller.must_be_admin("create tokens") {
            return error(StatusCode::FORBIDDEN, &e.to_string());
        }
        let bytes = match Limited::new(req.into_body(), MAX_API_BODY_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("a token request is at most {MAX_API_BODY_BYTES} bytes of JSON"),
                );
            }
        };
        let request: TokenRequest = match serde_json::from_slice(&bytes) {
            Ok(request) => request,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "the body is not a token request ({e}); send \
                         {{\"principal\": \"project:NAME\", \"label\": \"ci\", \"ttl_s\": 86400}}"
                    ),
                );
            }
        };
        let principal: Principal = match request.principal.parse() {
            Ok(principal) => principal,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let ttl = request.ttl_s.map(Duration::from_secs);
        match self
            .authority
            .issue(principal, &request.label, ttl, Issuer::Caller(caller))
        {
            Ok((token, record)) => {
                tracing::info!(token = %record.id, principal = %record.principal, by = %caller.token, "token created");
                json(
                    StatusCode::CREATED,
                    &IssuedToken {
                        token: token.reveal(),
                        id: record.id,
                        principal: record.principal,
                        label: record.label,
                        expires_at_unix_s: record.expires_at_unix_s,
                    },
                )
            }
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    }

    fn revoke_token(&self, caller: &Caller, id: &str) -> Response<Body> {
        if let Err(e) = caller.must_be_admin("revoke tokens") {
            return error(StatusCode::FORBIDDEN, &e.to_string());
        }
        let Ok(id) = id.parse::<TokenId>() else {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("{id:?} is not a token id (16 hex digits, see `canopy token list`)"),
            );
        };
        match self.authority.revoke(&id, caller) {
            Ok(entry) => {
                tracing::info!(token = %id, by = %caller.token, "token revoked");
                json(StatusCode::OK, &entry)
            }
            Err(crate::auth::BookError::NotFound(_)) => error(
                StatusCode::NOT_FOUND,
                &format!("no token has id {id}; `canopy token list` shows them"),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    /// Serve plain HTTP until `shutdown` resolves (a loopback admin port).
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        self.serve_with(listener, None, shutdown).await
    }

    /// Serve over TLS with `config` until `shutdown` resolves: an admin
    /// port off loopback, where tokens and pushes cross the network. A
    /// client that does not finish its handshake within
    /// [`TLS_HANDSHAKE_TIMEOUT`] is dropped.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        self.serve_with(listener, Some(acceptor), shutdown).await
    }

    async fn serve_with(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let options = &self.options;
        let config = ListenerConfig {
            name: "admin",
            max_connections: options.max_connections,
            max_connections_per_address: options.max_connections_per_address,
            header_read_timeout: options.header_read_timeout,
            idle_timeout: options.idle_timeout,
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            http2_keep_alive_interval: crate::listener::HTTP2_KEEP_ALIVE_INTERVAL,
            http2_keep_alive_timeout: crate::listener::HTTP2_KEEP_ALIVE_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
        };
        let admin = self;
        let handler: Handler = Arc::new(move |req, _peer| Box::pin(admin.clone().handle(req)));
        crate::listener::serve(listener, tls, config, handler, shutdown).await
    }
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec_pretty(value).expect("admin answers serialise");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body::full(bytes))
        .expect("valid response")
}

/// An API error: `{"error": message}`.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body::full(message))
        .expect("valid response")
}

/// 401 with the challenge `scheme` (`Basic` makes `git` send credentials).
/// The body is text, which `git` shows its user.
fn unauthenticated(e: &Unauthenticated, scheme: &str) -> Response<Body> {
    tracing::debug!(error = %e, "request without a valid token");
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(
            header::WWW_AUTHENTICATE,
            format!("{scheme} realm=\"canopy\""),
        )
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body::full(format!("{e}\n")))
        .expect("valid response")
}

/// Keep what `caller` may see of `report`: a project token sees its own
/// project's deployments only.
fn visible_to(caller: &Caller, report: &mut StatusReport) {
    if caller.principal.is_admin() {
        return;
    }
    let principal = &caller.principal;
    report
        .deployments
        .retain(|d| principal.may_deploy(&d.project));
    for node in &mut report.nodes {
        node.serving.retain(|env, _| {
            env.split_once('@')
                .is_some_and(|(project, _)| principal.may_deploy(project))
        });
    }
}

/// Whether the request's `Host` (or HTTP/2 `:authority`) is `localhost`, a
/// name below it, or a loopback address.
fn addressed_to_loopback<B>(req: &Request<B>) -> bool {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let Some(host) = host else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // `[::1]:port`
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The request's body as `T` (JSON, at most [`MAX_API_BODY_BYTES`]), or the
/// answer to give: 413 when too large, 400 naming `what` it should be and
/// an `example`.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    what: &str,
    example: &str,
) -> Result<T, Response<Body>> {
    let Ok(body) = Limited::new(req.into_body(), MAX_API_BODY_BYTES)
        .collect()
        .await
    else {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("{what} is at most {MAX_API_BODY_BYTES} bytes of JSON"),
        ));
    };
    serde_json::from_slice(&body.to_bytes()).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("the body is not {what} ({e}); send {example}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> Request<()> {
        Request::builder()
            .uri("/api/status")
            .header(header::HOST, host)
            .body(())
            .unwrap()
    }

    #[test]
    fn only_loopback_hosts_pass_the_rebinding_guard() {
        for host in [
            "localhost",
            "localhost:7070",
            "shop.localhost:80",
            "127.0.0.1:7070",
            "127.8.0.1",
            "[::1]:7070",
            "LOCALHOST.",
        ] {
            assert!(addressed_to_loopback(&with_host(host)), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:7070",
            "localhost.evil.example",
            "10.0.0.1:7070",
            "[::2]:7070",
            "",
        ] {
            assert!(!addressed_to_loopback(&with_host(host)), "{host}");
        }
        let no_host = Request::builder().uri("/").body(()).unwrap();
        assert!(!addressed_to_loopback(&no_host));
    }
}
