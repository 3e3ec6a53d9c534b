//! `canopy domain list|transfer`: which project owns which domain.

use anyhow::Context;

use super::admin_client::AdminTarget;
use crate::admin::{DomainOwner, DomainTransfer};

/// List and transfer domains.
///
/// A domain in a project's `domains:` belongs to the first project that
/// deploys it; another project that lists it gets a deploy error naming the
/// owner. A cluster admin moves a domain to another project with
/// `canopy domain transfer`; the old owner stops answering for it at once,
/// and the new owner serves it from its next deploy (or at once, if its live
/// release already lists it).
#[derive(Debug, clap::Args)]
pub struct DomainArgs {
    #[command(subcommand)]
    command: DomainCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DomainCommand {
    /// Every claimed domain and its owner (a project token sees its own).
    List {
        #[command(flatten)]
        target: AdminTarget,
        #[arg(long)]
        json: bool,
    },
    /// Give a domain to another project (needs an admin token).
    Transfer {
        #[command(flatten)]
        target: AdminTarget,
        /// The domain, like shop.example.com or *.shop.example.com.
        domain: String,
        /// The project that owns it from now on.
        #[arg(long, value_name = "PROJECT")]
        to: String,
    },
}

pub async fn run(args: DomainArgs) -> anyhow::Result<()> {
    match args.command {
        DomainCommand::List { target, json } => {
            let bytes = target
                .client()?
                .call(http::Method::GET, "/api/domains", None)
                .await?;
            let owners: Vec<DomainOwner> =
                serde_json::from_slice(&bytes).context("the node did not answer with domains")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&owners)?);
            } else if owners.is_empty() {
                println!(
                    "No domain is claimed yet: a project claims those in its `domains:` when it deploys."
                );
            } else {
                let width = owners
                    .iter()
                    .map(|o| o.domain.len())
                    .max()
                    .unwrap_or(6)
                    .max(6);
                println!("{:width$}  PROJECT", "DOMAIN");
                for owner in owners {
                    println!("{:width$}  {}", owner.domain, owner.project);
                }
            }
            Ok(())
        }
        DomainCommand::Transfer { target, domain, to } => {
            let request = DomainTransfer { domain, to };
            let bytes = target
                .client()?
                .call(
                    http::Method::POST,
                    "/api/domains/transfer",
                    Some(serde_json::to_value(&request)?),
                )
                .await?;
            let owner: DomainOwner = serde_json::from_slice(&bytes)
                .context("the node did not answer with the domain")?;
            println!("{} now belongs to project {}.", owner.domain, owner.project);
            Ok(())
        }
    }
}
