//! Who owns which domain: a domain in `domains:` belongs to the first
//! project that deploys it, and only a cluster admin moves it
//! (`canopy domain transfer`).
//!
//! Two places enforce it. A push whose `domains:` names another project's
//! domain fails with an error naming the owner (its release never serves),
//! and the route table serves a domain only for its owner — so where two
//! nodes of a cluster let two projects claim one domain at once, both
//! follow the one owner cluster state settles on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use crate::env::Disk;

/// Most domains one node's book holds (all projects together).
pub const MAX_DOMAINS: usize = 10_000;

/// Domain → owning project.
pub type Owners = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error(
        "domain {domain} belongs to project `{owner}`; remove it from `domains:`, or ask a cluster admin to run `canopy domain transfer {domain} --to {wanted}`"
    )]
    Taken {
        domain: String,
        owner: String,
        wanted: String,
    },
    #[error("the node holds {MAX_DOMAINS} domains already; transfer or drop some first")]
    Full,
    #[error("cannot save the domain book {path}: {source}")]
    Save {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster state refused the domain record: {0}")]
    Cluster(String),
}

/// Where ownership is kept: a file on a standalone node, cluster state in a
/// cluster.
pub trait DomainBook: Send + Sync + 'static {
    /// Every claimed domain and its owner.
    fn owners(&self) -> Owners;

    /// Claim every one of `domains` for `project`; if another project owns
    /// any of them, claim none and say which.
    fn claim(&self, project: &str, domains: &[String]) -> Result<(), DomainError>;

    /// Give `domain` to `project` (a cluster admin's decision).
    /// Give `domain` to `project` at the request of the admin holding
    /// `warrantor`.
    fn transfer(
        &self,
        domain: &str,
        project: &str,
        warrantor: &crate::auth::Token,
    ) -> Result<(), DomainError>;
}

/// Which of `domains` another project than `project` owns first, if any.
pub fn taken_by_another(owners: &Owners, project: &str, domains: &[String]) -> Option<DomainError> {
    domains.iter().find_map(|domain| {
        let owner = owners.get(domain)?;
        (owner != project).then(|| DomainError::Taken {
            domain: domain.clone(),
            owner: owner.clone(),
            wanted: project.to_owned(),
        })
    })
}

/// The domain book of a standalone node: `DATA_DIR/domains.json`.
pub struct LocalDomains {
    disk: Arc<dyn Disk>,
    path: PathBuf,
    owners: Mutex<Owners>,
}

impl LocalDomains {
    /// Open the book at `path` (empty if the file does not exist).
    pub fn open(disk: Arc<dyn Disk>, path: PathBuf) -> anyhow::Result<Self> {
        let owners = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a domain book ({e}); restore it from a backup, or remove it and \
                     let projects claim their domains again on their next push",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Owners::new(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        Ok(Self {
            disk,
            path,
            owners: Mutex::new(owners),
        })
    }

    /// Apply `change` to a copy, save it, then keep it: a change the disk
    /// refused is not made in memory either.
    fn change(
        &self,
        change: impl FnOnce(&mut Owners) -> Result<(), DomainError>,
    ) -> Result<(), DomainError> {
        let mut owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = owners.clone();
        change(&mut next)?;
        if next == *owners {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&next).expect("domain owners serialise");
        crate::durable::write_atomically_on(self.disk.as_ref(), &self.path, &bytes, Some(0o600))
            .map_err(|source| DomainError::Save {
                path: self.path.clone(),
                source,
            })?;
        *owners = next;
        Ok(())
    }
}

impl DomainBook for LocalDomains {
    fn owners(&self) -> Owners {
        self.owners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn claim(&self, project: &str, domains: &[String]) -> Result<(), DomainError> {
        self.change(|owners| claim_in(owners, project, domains))
    }

    fn transfer(
        &self,
        domain: &str,
        project: &str,
        _: &crate::auth::Token,
    ) -> Result<(), DomainError> {
        self.change(|owners| {
            if !owners.contains_key(domain) && owners.len() >= MAX_DOMAINS {
                return Err(DomainError::Full);
            }
            owners.insert(domain.to_owned(), project.to_owned());
            Ok(())
        })
    }
}

/// Claim `domains` for `project` in `owners`, all or none.
pub fn claim_in(owners: &mut Owners, project: &str, domains: &[String]) -> Result<(), DomainError> {
    if let Some(taken) = taken_by_another(owners, project, domains) {
        return Err(taken);
    }
    let new = domains.iter().filter(|d| !owners.contains_key(*d)).count();
    if owners.len() + new > MAX_DOMAINS {
        return Err(DomainError::Full);
    }
    for domain in domains {
        owners
            .entry(domain.clone())
            .or_insert_with(|| project.to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(dir: &std::path::Path) -> LocalDomains {
        LocalDomains::open(crate::env::os_disk(), dir.join("domains.json")).unwrap()
    }

    #[test]
    fn the_first_project_owns_a_domain_until_an_admin_moves_it() {
        let dir = tempfile::tempdir().unwrap();
        let domains = book(dir.path());
        let shop = vec![
            "shop.example.com".to_owned(),
            "www.shop.example.com".to_owned(),
        ];
        domains.claim("shop", &shop).unwrap();
        // Claiming again is fine; another project gets the owner's name.
        domains.claim("shop", &shop).unwrap();
        let error = domains
            .claim(
                "rival",
                &["new.example.com".into(), "shop.example.com".into()],
            )
            .unwrap_err();
        assert!(
            matches!(&error, DomainError::Taken { domain, owner, .. } if domain == "shop.example.com" && owner == "shop"),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("canopy domain transfer shop.example.com --to rival")
        );
        // All or none: the free domain was not claimed either.
        assert!(!domains.owners().contains_key("new.example.com"));

        domains
            .transfer(
                "shop.example.com",
                "rival",
                &crate::auth::Token::generate(&crate::env::Rng::seeded(1)),
            )
            .unwrap();
        domains
            .claim("rival", &["shop.example.com".into()])
            .unwrap();
        // It survives a restart.
        let reopened = book(dir.path());
        assert_eq!(reopened.owners()["shop.example.com"], "rival");
        assert_eq!(reopened.owners()["www.shop.example.com"], "shop");
    }

    /// Deploys of different projects run at once: two claims of one domain
    /// at the same moment give it to exactly one of them.
    #[test]
    #[expect(
        clippy::disallowed_methods,
        reason = "two OS threads are what makes the claims race"
    )]
    fn two_projects_claiming_a_domain_at_once_give_it_to_one() {
        let dir = tempfile::tempdir().unwrap();
        let domains = book(dir.path());
        let start = std::sync::Barrier::new(2);
        let wanted = ["shop.example.com".to_owned()];
        let results: Vec<Result<(), DomainError>> = std::thread::scope(|scope| {
            let claims: Vec<_> = ["shop", "rival"]
                .into_iter()
                .map(|project| {
                    let (domains, start, wanted) = (&domains, &start, &wanted);
                    scope.spawn(move || {
                        start.wait();
                        domains.claim(project, wanted)
                    })
                })
                .collect();
            claims.into_iter().map(|c| c.join().unwrap()).collect()
        });
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        let owner = &domains.owners()["shop.example.com"];
        let loser = if owner == "shop" { 1 } else { 0 };
        assert!(
            matches!(&results[loser], Err(DomainError::Taken { owner: o, .. }) if o == owner),
            "{results:?}"
        );
    }
}
