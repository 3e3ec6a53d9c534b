//! `canopy status`: what a node runs, what is deployed, what failed.

use anyhow::Context;

use crate::status::StatusReport;

/// Show the cluster and its convergence, every node (peers, state, what it
/// serves and holds), deployments per project and branch (live commit,
/// state, the error of a failed push) and certificates. A project's token
/// sees that project only.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    target: super::admin_client::AdminTarget,
    /// Print the admin API's JSON instead of the table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let bytes = client.call(http::Method::GET, "/api/status", None).await?;
    let report: StatusReport = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} did not answer with a Canopy status report",
            client.admin
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
