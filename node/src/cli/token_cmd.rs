//! `canopy token create|list|revoke`: the credentials of admins and
//! deployers.

use std::time::Duration;

use anyhow::Context;

use super::admin_client::AdminTarget;
use crate::admin::{IssuedToken, TokenRequest};
use crate::auth::{TokenEntry, TokenId};
use crate::config::{format_duration, parse_duration};

/// Create, list and revoke tokens (needs an admin token).
///
/// A project token may push to its project and read its status; the first
/// push with it creates the project. An admin token may do anything. A
/// token is shown once, when it is created: the cluster keeps only its hash.
///
/// Push with a token the way Git hosts take one, as the password:
///
///   git push http://canopy:TOKEN@127.0.0.1:7070/git/shop.git main
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a token and print it on its own line (stdout); what it is
    /// goes to stderr, so `TOKEN=$(canopy token create --project shop)` works.
    Create {
        #[command(flatten)]
        target: AdminTarget,
        /// A token for this project's deployers.
        #[arg(
            long,
            value_name = "NAME",
            conflicts_with = "cluster_admin",
            required_unless_present = "cluster_admin"
        )]
        project: Option<String>,
        /// A token for the cluster's operators: every project, tokens and
        /// invites. (`--admin` names the node to ask.)
        #[arg(long)]
        cluster_admin: bool,
        /// How long it stays valid, like 30d, 12h or 90m. Default: until revoked.
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// A name for it, shown in `canopy token list` and in refusals.
        #[arg(long, value_name = "LABEL", default_value = "")]
        name: String,
        /// Print the token and its facts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every token: id, principal, label, age, expiry, revocation.
    List {
        #[command(flatten)]
        target: AdminTarget,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (from `canopy token list`); every node
    /// refuses it once cluster state has synced, within seconds.
    Revoke {
        #[command(flatten)]
        target: AdminTarget,
        /// The token's id: 16 hex digits.
        id: TokenId,
    },
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| format!("{e}; write it like 30d, 12h or 90m"))
}

pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create {
            target,
            project,
            cluster_admin: _,
            ttl,
            name,
            json,
        } => {
            let principal = match project {
                Some(project) => format!("project:{project}"),
                None => "admin".to_owned(),
            };
            let request = TokenRequest {
                principal,
                label: name,
                ttl_s: ttl.map(|ttl| ttl.as_secs().max(1)),
            };
            let bytes = target
                .client()?
                .call(
                    http::Method::POST,
                    "/api/tokens",
                    Some(serde_json::to_value(&request)?),
                )
                .await?;
            let issued: IssuedToken =
                serde_json::from_slice(&bytes).context("the node did not answer with a token")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&issued)?);
                return Ok(());
            }
            println!("{}", issued.token);
            let expiry = match ttl {
                Some(ttl) => format!("expires in {}", format_duration(ttl)),
                None => "does not expire; revoke it to end it".to_owned(),
            };
            eprintln!(
                "Created token {} for {} ({expiry}). It is shown only now: keep it like a password.",
                issued.id, issued.principal
            );
            Ok(())
        }
        TokenCommand::List { target, json } => {
            let client = target.client()?;
            let bytes = client.call(http::Method::GET, "/api/tokens", None).await?;
            let entries: Vec<TokenEntry> = serde_json::from_slice(&bytes)
                .context("the node did not answer with a token list")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", render_list(&entries, unix_now_s()));
            }
            Ok(())
        }
        TokenCommand::Revoke { target, id } => {
            let client = target.client()?;
            let path = format!("/api/tokens/{id}");
            let bytes = client.call(http::Method::DELETE, &path, None).await?;
            let entry: TokenEntry =
                serde_json::from_slice(&bytes).context("the node did not answer with the token")?;
            println!(
                "Revoked token {} ({}, {:?}); every node refuses it once cluster state has synced.",
                entry.record.id, entry.record.principal, entry.record.label
            );
            Ok(())
        }
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "the CLI shows ages and expiries in the OS's time"
)]
fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The table `canopy token list` prints.
fn render_list(entries: &[TokenEntry], now: u64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if entries.is_empty() {
        out.push_str("no tokens\n");
        return out;
    }
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            let r = &e.record;
            let state = match (&e.revoked, r.expires_at_unix_s) {
                (Some(revoked), _) => format!(
                    "revoked {} ago",
                    format_duration(Duration::from_secs(
                        now.saturating_sub(revoked.revoked_at_unix_s)
                    ))
                ),
                (None, Some(at)) if at <= now => format!(
                    "expired {} ago",
                    format_duration(Duration::from_secs(now - at))
                ),
                (None, Some(at)) => format!(
                    "live, expires in {}",
                    format_duration(Duration::from_secs(at - now))
                ),
                (None, None) => "live".to_owned(),
            };
            [
                r.id.to_string(),
                r.principal.to_string(),
                r.label.clone(),
                format!(
                    "{} ago",
                    format_duration(Duration::from_secs(now.saturating_sub(r.created_at_unix_s)))
                ),
                state,
            ]
        })
        .collect();
    let headers = ["ID", "PRINCIPAL", "LABEL", "CREATED", "STATE"];
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: [&str; 5]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ", w = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(headers);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Principal, Revocation, Token, TokenRecord};
    use crate::env::Rng;

    #[test]
    fn the_list_shows_state_and_age() {
        let rng = Rng::seeded(5);
        let now = 1_800_000_000;
        let record = |label: &str, principal: Principal, expires: Option<u64>| TokenRecord {
            id: Token::generate(&rng).id(),
            principal,
            label: label.to_owned(),
            secret_sha256: Token::generate(&rng).secret_hash(),
            created_at_unix_s: now - 3600,
            expires_at_unix_s: expires,
            created_by: "test".to_owned(),
            warrant_key: None,
        };
        let entries = vec![
            TokenEntry {
                record: record("first admin token", Principal::Admin, None),
                revoked: None,
            },
            TokenEntry {
                record: record(
                    "ci",
                    Principal::project("shop").unwrap(),
                    Some(now + 30 * 86_400),
                ),
                revoked: None,
            },
            TokenEntry {
                record: record(
                    "laptop",
                    Principal::project("blog").unwrap(),
                    Some(now - 60),
                ),
                revoked: None,
            },
            TokenEntry {
                record: record("old", Principal::Admin, None),
                revoked: Some(Revocation {
                    revoked_at_unix_s: now - 120,
                    revoked_by: "token 00".to_owned(),
                }),
            },
        ];
        insta::assert_snapshot!(render_list(&entries, now));
    }
}
