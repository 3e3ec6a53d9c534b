//! The admin API: node status as JSON, health, and the Git remote.
//!
//! Routes:
//! - `GET /api/health` → `{"ok": true}` once the node serves.
//! - `GET /api/status` → [`crate::status::StatusReport`].
//! - `POST /api/cluster/invite[?ttl=SECONDS]` → [`InviteAnswer`] (cluster nodes).
//! - `/git/<repo>.git/...` → the smart-HTTP Git remote (push only).
//!
//! It must not serve user traffic; that is the gateway's.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use crate::body::{self, Body};
use crate::git::GitHttp;
use crate::status::StatusReport;

/// Where the Git remote is mounted on the admin port.
pub const GIT_MOUNT: &str = "/git";

/// What the admin API needs from the node.
pub trait AdminSource: Send + Sync + 'static {
    /// The node's status, and its peers' when it is in a cluster.
    fn status(&self) -> futures::future::BoxFuture<'_, StatusReport>;

    /// Issue an invite token valid for `ttl_s` seconds (cluster nodes only).
    fn invite(&self, ttl_s: u64) -> Result<InviteAnswer, InviteError>;
}

/// Why a node issued no invite; the text is the answer's `error`.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    #[error("this node is not part of a cluster: add a `cluster:` section to its config")]
    NotInCluster,
    /// The cluster refused (the node is not an admitted member yet, ...).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::member::InviteRefusal),
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

pub struct Admin {
    source: Arc<dyn AdminSource>,
    git: Arc<GitHttp>,
}

impl Admin {
    pub fn new(source: Arc<dyn AdminSource>, git: Arc<GitHttp>) -> Arc<Self> {
        Arc::new(Self { source, git })
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        if path
            .strip_prefix(GIT_MOUNT)
            .is_some_and(|rest| rest.starts_with('/'))
        {
            return self.git.handle(req).await;
        }
        match (req.method(), path.as_str()) {
            (&Method::GET, "/api/health") => json(StatusCode::OK, &serde_json::json!({"ok": true})),
            (&Method::GET, "/api/status") => json(StatusCode::OK, &self.source.status().await),
            (&Method::POST, "/api/cluster/invite") => {
                let ttl_s = req
                    .uri()
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ttl=")))
                    .map(str::parse::<u64>);
                match ttl_s {
                    Some(Err(_)) => json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": "ttl must be a number of seconds"}),
                    ),
                    Some(Ok(ttl_s)) => self.invite(ttl_s),
                    None => self.invite(3600),
                }
            }
            (_, "/api/cluster/invite") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST to issue an invite\n",
            ),
            (_, "/api/health" | "/api/status") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET for the admin API\n",
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not an admin API path; try GET /api/status, or push to /git/<name>.git\n",
            ),
        }
    }

    fn invite(&self, ttl_s: u64) -> Response<Body> {
        match self.source.invite(ttl_s) {
            Ok(answer) => json(StatusCode::OK, &answer),
            Err(error) => json(
                StatusCode::CONFLICT,
                &serde_json::json!({ "error": error.to_string() }),
            ),
        }
    }

    /// Serve until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            tracing::warn!(error = %e, "admin accept failed");
                            continue;
                        }
                    };
                    let admin = self.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let admin = admin.clone();
                        async move { Ok::<_, Infallible>(admin.handle(req).await) }
                    });
                    let conn = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "admin connection ended with an error");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
        Ok(())
    }
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec_pretty(value).expect("status serialises");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body::full(bytes))
        .expect("valid response")
}

fn text(status: StatusCode, message: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body::full(message))
        .expect("valid response")
}
