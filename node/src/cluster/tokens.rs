//! The token book of a node in a cluster: token records and revocations in
//! cluster state, so a token created on one node works on every node, and a
//! revocation reaches every node with the next sync.

use crate::auth::{
    BookError, MAX_TOKENS, Revocation, Token, TokenBook, TokenEntry, TokenId, TokenRecord,
};

use super::driver::ClusterHandle;

/// [`TokenBook`] on cluster state.
pub struct ClusterBook {
    handle: ClusterHandle,
}

impl ClusterBook {
    pub fn new(handle: ClusterHandle) -> Self {
        Self { handle }
    }
}

impl TokenBook for ClusterBook {
    fn get(&self, id: &TokenId) -> Option<TokenEntry> {
        self.handle.read(|state| state.token(id))
    }

    fn list(&self) -> Vec<TokenEntry> {
        self.handle
            .read(|state| state.tokens())
            .into_values()
            .collect()
    }

    fn insert(&self, record: TokenRecord, warrantor: &Token) -> Result<(), BookError> {
        self.handle.update(|state| {
            if state.token(&record.id).is_some() {
                return Err(BookError::Exists(record.id));
            }
            if state.token_count() >= MAX_TOKENS {
                return Err(BookError::Full);
            }
            state
                .put_token(&record, warrantor)
                .map_err(|e| BookError::Cluster(e.to_string()))
        })
    }

    fn revoke(
        &self,
        id: &TokenId,
        revocation: Revocation,
        warrantor: &Token,
    ) -> Result<(), BookError> {
        self.handle.update(|state| {
            if state.token(id).is_none() {
                return Err(BookError::NotFound(*id));
            }
            state
                .revoke_token(id, &revocation, warrantor)
                .map_err(|e| BookError::Cluster(e.to_string()))
        })
    }
}
