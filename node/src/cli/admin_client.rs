//! A small client for a node's admin API, shared by the subcommands that
//! talk to a running node, and how they find the node and a token.

use std::path::PathBuf;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};

/// How long the CLI waits for a node to answer.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Which node to talk to, and as whom: what every command that talks to a
/// node takes. Without flags it finds the `canopy dream` running on this
/// machine.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AdminTarget {
    /// The admin API of any node, like http://127.0.0.1:7070 (`canopy dream`
    /// prints it). Default: the running dream's.
    #[arg(long, env = "CANOPY_ADMIN", value_name = "URL")]
    pub admin: Option<String>,
    /// A token: an admin token, or a project's for that project's commands
    /// (`canopy token create`; a node's first admin token is in
    /// DATA_DIR/admin-token). Default: the running dream's.
    #[arg(
        long,
        env = "CANOPY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

/// What `canopy dream` leaves for other commands on this machine: its admin
/// API and admin token. A copy of its `dream.json`'s facts, in
/// `$XDG_STATE_HOME/canopy/dream.json` (`~/.local/state/canopy/dream.json`),
/// mode 0600, removed when the dream stops.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DreamPointer {
    pub admin: String,
    pub token: String,
    /// The dream's own `dream.json`.
    pub dream_json: PathBuf,
    pub pid: u32,
}

impl DreamPointer {
    /// Where the running dream's pointer lives; `None` without a home.
    pub fn path() -> Option<PathBuf> {
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|home| PathBuf::from(home).join(".local/state"))
            })?;
        Some(state.join("canopy/dream.json"))
    }

    /// The running dream's pointer, if there is one and its process lives.
    pub fn find() -> Option<Self> {
        let bytes = std::fs::read(Self::path()?).ok()?;
        let pointer: Self = serde_json::from_slice(&bytes).ok()?;
        std::path::Path::new(&format!("/proc/{}", pointer.pid))
            .exists()
            .then_some(pointer)
    }
}

impl AdminTarget {
    /// The client these flags (or the running dream) name.
    pub fn client(&self) -> anyhow::Result<AdminClient> {
        let dream = DreamPointer::find();
        let admin = match (&self.admin, &dream) {
            (Some(admin), _) => admin.clone(),
            (None, Some(dream)) => dream.admin.clone(),
            (None, None) => anyhow::bail!(
                "which node? pass --admin URL (or set CANOPY_ADMIN), or start `canopy dream` \
                 on this machine"
            ),
        };
        // The dream's token serves only the dream's admin API.
        let token = self.token.clone().or_else(|| {
            dream
                .filter(|d| d.admin.trim_end_matches('/') == admin.trim_end_matches('/'))
                .map(|d| d.token)
        });
        Ok(AdminClient { admin, token })
    }
}

/// One node's admin API, with the token to send.
#[derive(Clone, Debug)]
pub struct AdminClient {
    pub admin: String,
    token: Option<String>,
}

impl AdminClient {
    /// `method` `path` with an optional JSON body; the answer's body if it
    /// is a success, else an error that names the URL and carries the
    /// node's message.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<bytes::Bytes> {
        let url = format!("{}{path}", self.admin.trim_end_matches('/'));
        let uri: http::Uri = url.parse().with_context(|| {
            format!(
                "--admin {:?} is not a URL like http://127.0.0.1:7070",
                self.admin
            )
        })?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<bytes::Bytes>>();
        let mut request = http::Request::builder().method(method).uri(uri);
        if let Some(token) = &self.token {
            request = request.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            );
        }
        let request = match body {
            Some(json) => request
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(serde_json::to_vec(&json)?.into()))?,
            None => request.body(Full::default())?,
        };
        let response = tokio::time::timeout(TIMEOUT, client.request(request))
            .await
            .with_context(|| format!("{url} did not answer within {} s", TIMEOUT.as_secs()))?
            .with_context(|| {
                format!("cannot reach the admin API at {url}; is the node running?")
            })?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
            let hint = match (status, &self.token) {
                (http::StatusCode::UNAUTHORIZED, None) => {
                    "\n  help: pass --token TOKEN (or set CANOPY_TOKEN); a node's first admin token is in its DATA_DIR/admin-token"
                }
                _ => "",
            };
            anyhow::bail!("{url} answered {status}: {message}{hint}");
        }
        Ok(bytes)
    }
}
