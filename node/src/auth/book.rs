//! Where token records live: [`TokenBook`], and [`LocalBook`] for a node
//! outside any cluster (cluster nodes keep them in cluster state, see
//! `cluster::tokens`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Principal, SecretHash, Token, TokenId};
use crate::env::Disk;

/// The most token records a book holds (revoked ones included): a bound on
/// the cluster state an admin can make every node carry.
pub const MAX_TOKENS: usize = 10_000;
/// The longest token label, in characters.
pub const MAX_LABEL_LEN: usize = 64;

/// What a node keeps of a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: TokenId,
    pub principal: Principal,
    /// A person's name for it (`ci`, `laptop`), shown in lists and errors.
    pub label: String,
    pub secret_sha256: SecretHash,
    pub created_at_unix_s: u64,
    /// `None`: it does not expire (revoke it to end it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_unix_s: Option<u64>,
    /// Who created it: `token <id>` or `node <id>` (a node's first admin token).
    pub created_by: String,
    /// The public half of the token's warrant key (hex): what checks the
    /// warrants of records written at this token's request (see
    /// [`super::Token::warrant`]). `None` in records older than warrants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warrant_key: Option<String>,
}

/// That a token was revoked: permanent, kept beside the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub revoked_at_unix_s: u64,
    /// `token <id>` of the admin who revoked it.
    pub revoked_by: String,
}

/// A record and its revocation, if any: one line of `canopy token list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    #[serde(flatten)]
    pub record: TokenRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

/// Why a book did not take a change.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error("this cluster already holds {MAX_TOKENS} tokens, its limit; revoke tokens nobody uses")]
    Full,
    #[error("token {0} already exists")]
    Exists(TokenId),
    #[error("no token has id {0}; `canopy token list` shows them")]
    NotFound(TokenId),
    #[error("cannot save the token records to {}: {source}", .path.display())]
    Save {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot record it in cluster state: {0}")]
    Cluster(String),
}

/// Token records and revocations. A revocation is never undone: once a
/// book has one for an id, that token is refused for good.
pub trait TokenBook: Send + Sync + 'static {
    fn get(&self, id: &TokenId) -> Option<TokenEntry>;

    /// Every token, sorted by id.
    fn list(&self) -> Vec<TokenEntry>;

    /// Add a new record (its id must be new), at the request of
    /// `warrantor`'s holder (the new token itself for a node's first one).
    fn insert(&self, record: TokenRecord, warrantor: &Token) -> Result<(), BookError>;

    /// Revoke token `id` at the request of `warrantor`'s holder; revoking a
    /// revoked token keeps the first revocation.
    fn revoke(
        &self,
        id: &TokenId,
        revocation: Revocation,
        warrantor: &Token,
    ) -> Result<(), BookError>;
}

/// The book of a standalone node: `DATA_DIR/tokens.json` (mode 0600),
/// rewritten whole and atomically on every change.
pub struct LocalBook {
    disk: Arc<dyn Disk>,
    path: PathBuf,
    entries: Mutex<BTreeMap<TokenId, TokenEntry>>,
}

#[derive(Default, Serialize, Deserialize)]
struct LocalFile {
    tokens: Vec<TokenEntry>,
}

impl LocalBook {
    /// Open the book at `path` (empty if the file does not exist).
    pub fn open(disk: Arc<dyn Disk>, path: PathBuf) -> anyhow::Result<Self> {
        let file: LocalFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a token file ({e}); restore it from a backup, or remove it \
                     and restart to get a new first admin token",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LocalFile::default(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        let entries = file
            .tokens
            .into_iter()
            .map(|entry| (entry.record.id, entry))
            .collect();
        Ok(Self {
            disk,
            path,
            entries: Mutex::new(entries),
        })
    }

    fn save(&self, entries: &BTreeMap<TokenId, TokenEntry>) -> Result<(), BookError> {
        let file = LocalFile {
            tokens: entries.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("token records serialise");
        crate::durable::write_atomically_on(self.disk.as_ref(), &self.path, &bytes, Some(0o600))
            .map_err(|source| BookError::Save {
                path: self.path.clone(),
                source,
            })
    }

    fn change(
        &self,
        change: impl FnOnce(&mut BTreeMap<TokenId, TokenEntry>) -> Result<(), BookError>,
    ) -> Result<(), BookError> {
        let mut entries = self.entries.lock().expect("token book lock");
        let mut changed = entries.clone();
        change(&mut changed)?;
        // Saved first: a change the disk refused is not made in memory either.
        self.save(&changed)?;
        *entries = changed;
        Ok(())
    }
}

impl TokenBook for LocalBook {
    fn get(&self, id: &TokenId) -> Option<TokenEntry> {
        self.entries
            .lock()
            .expect("token book lock")
            .get(id)
            .cloned()
    }

    fn list(&self) -> Vec<TokenEntry> {
        let entries = self.entries.lock().expect("token book lock");
        entries.values().cloned().collect()
    }

    fn insert(&self, record: TokenRecord, _: &Token) -> Result<(), BookError> {
        self.change(|entries| {
            if entries.contains_key(&record.id) {
                return Err(BookError::Exists(record.id));
            }
            if entries.len() >= MAX_TOKENS {
                return Err(BookError::Full);
            }
            entries.insert(
                record.id,
                TokenEntry {
                    record,
                    revoked: None,
                },
            );
            Ok(())
        })
    }

    fn revoke(&self, id: &TokenId, revocation: Revocation, _: &Token) -> Result<(), BookError> {
        self.change(|entries| {
            let entry = entries.get_mut(id).ok_or(BookError::NotFound(*id))?;
            entry.revoked.get_or_insert(revocation);
            Ok(())
        })
    }
}
