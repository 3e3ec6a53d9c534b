//! A small client for a node's admin API, shared by the subcommands that
//! talk to a running node, and how they find the node and a token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

/// How long the CLI waits for a node to answer.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Which node to talk to, and as whom: what every command that talks to a
/// node takes. Without flags it finds the `canopy dream` running on this
/// machine.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AdminTarget {
    /// The admin API of any node, like http://127.0.0.1:7070 (`canopy dream`
    /// prints it), or https://node1.example.net:7070 for a node whose admin
    /// port is off loopback. Default: the running dream's.
    #[arg(long, env = "CANOPY_ADMIN", value_name = "URL")]
    pub admin: Option<String>,
    /// The CA certificate an https:// admin port's certificate must chain
    /// to: the node's `local_ca` ca.pem (DATA_DIR/tls/ca.pem, or the one
    /// `canopy cluster init --ca-dir` made). Without it, only public CAs
    /// are trusted.
    #[arg(long, env = "CANOPY_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
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
        Ok(AdminClient {
            admin,
            token,
            ca: self.ca.clone(),
        })
    }
}

/// One node's admin API, with the token to send.
#[derive(Clone, Debug)]
pub struct AdminClient {
    pub admin: String,
    token: Option<String>,
    /// The CA to trust for an https:// admin port.
    ca: Option<PathBuf>,
}

/// The connector for http:// and https:// admin URLs: TLS trusts `ca`
/// alone when given, else the public web PKI (never this machine's store,
/// so that a result does not depend on where the CLI runs).
fn connector(
    ca: Option<&Path>,
) -> anyhow::Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>>
{
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certificates: Vec<_> = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("--ca {}: cannot read it", path.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("--ca {}: not a PEM certificate file", path.display()))?;
            if certificates.is_empty() {
                anyhow::bail!(
                    "--ca {}: holds no certificate; give the node CA's ca.pem",
                    path.display()
                );
            }
            for certificate in certificates {
                roots.add(certificate).with_context(|| {
                    format!("--ca {}: not a usable CA certificate", path.display())
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot configure TLS 1.2 and 1.3")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build())
}

/// What to say when the admin API cannot be reached at all.
fn unreachable_help(url: &str, error: &(dyn std::error::Error + 'static), ca: bool) -> String {
    let chain = std::iter::successors(Some(error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    let mut message = format!("cannot reach the admin API at {url}: {chain}");
    if chain.contains("certificate") || chain.contains("UnknownIssuer") {
        message.push_str(if ca {
            "\n  help: the admin port's certificate does not chain to --ca, or does not name the host in the URL (see admin_names in its node config)"
        } else {
            "\n  help: trust the node's CA with --ca FILE (or CANOPY_CA): its ca.pem, in DATA_DIR/tls or the node config's local_ca"
        });
    } else if url.starts_with("http:") && chain.contains("closed") {
        message.push_str("\n  help: an admin port off loopback speaks TLS only: use https://");
    } else {
        message.push_str("\n  help: is the node running, and is that its admin address?");
    }
    message
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
                .build::<_, Full<bytes::Bytes>>(connector(self.ca.as_deref())?);
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
            .map_err(|e| anyhow::anyhow!(unreachable_help(&url, &e, self.ca.is_some())))?;
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
