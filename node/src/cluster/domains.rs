//! The domain book of a node in a cluster: owners in cluster state, so a
//! domain claimed through one node is owned on every node.

use crate::deploy::domains::{DomainBook, DomainError, MAX_DOMAINS, Owners, claim_in};

use super::driver::ClusterHandle;

/// [`DomainBook`] on cluster state.
pub struct ClusterDomains {
    handle: ClusterHandle,
}

impl ClusterDomains {
    pub fn new(handle: ClusterHandle) -> Self {
        Self { handle }
    }
}

impl DomainBook for ClusterDomains {
    fn owners(&self) -> Owners {
        self.handle.read(|state| state.domain_owners())
    }

    fn claim(&self, project: &str, domains: &[String]) -> Result<(), DomainError> {
        self.handle.update(|state| {
            let mut owners = state.domain_owners();
            let before = owners.clone();
            claim_in(&mut owners, project, domains)?;
            for (domain, owner) in &owners {
                if before.get(domain) != Some(owner) {
                    state
                        .set_domain_owner(domain, owner, None)
                        .map_err(|e| DomainError::Cluster(e.to_string()))?;
                }
            }
            Ok(())
        })
    }

    fn transfer(
        &self,
        domain: &str,
        project: &str,
        warrantor: &crate::auth::Token,
    ) -> Result<(), DomainError> {
        self.handle.update(|state| {
            let owners = state.domain_owners();
            if !owners.contains_key(domain) && owners.len() >= MAX_DOMAINS {
                return Err(DomainError::Full);
            }
            state
                .set_domain_owner(domain, project, Some(warrantor))
                .map_err(|e| DomainError::Cluster(e.to_string()))
        })
    }
}
