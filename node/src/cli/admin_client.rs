//! A tiny client for a node's admin API, shared by the subcommands that talk
//! to a running node.

use anyhow::Context;
use http_body_util::BodyExt;

/// How long the CLI waits for a node to answer.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `method` `admin` + `path`; the answer's body if it is a success, else an
/// error that names the URL and carries the node's message.
pub async fn call(method: http::Method, admin: &str, path: &str) -> anyhow::Result<bytes::Bytes> {
    let url = format!("{}{path}", admin.trim_end_matches('/'));
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("--admin {admin:?} is not a URL like http://127.0.0.1:7070"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(http_body_util::Empty::new())?;
    let response = tokio::time::timeout(TIMEOUT, client.request(request))
        .await
        .with_context(|| format!("{url} did not answer within {} s", TIMEOUT.as_secs()))?
        .with_context(|| format!("cannot reach the admin API at {url}; is the node running?"))?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        anyhow::bail!("{url} answered {status}: {message}");
    }
    Ok(bytes)
}
