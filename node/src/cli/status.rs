//! `canopy status`: what a node runs, what is deployed, what failed.

use anyhow::Context;
use http_body_util::BodyExt;

use crate::status::StatusReport;

/// Show nodes, deployments per project and branch (live commit, state, the
/// error of a failed push) and certificates.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The admin API of any node (`canopy dream` prints it; also in dream.json).
    #[arg(long, env = "CANOPY_ADMIN")]
    admin: String,
    /// Print the admin API's JSON instead of the table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let url = format!("{}/api/status", args.admin.trim_end_matches('/'));
    let uri: http::Uri = url.parse().with_context(|| {
        format!(
            "--admin {:?} is not a URL like http://127.0.0.1:7070",
            args.admin
        )
    })?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), client.get(uri))
        .await
        .with_context(|| format!("{url} did not answer within 10s"))?
        .with_context(|| format!("cannot reach the admin API at {url}; is the node running?"))?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "{url} answered {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    let report: StatusReport = serde_json::from_slice(&bytes)
        .with_context(|| format!("{url} did not answer with a Canopy status report"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
