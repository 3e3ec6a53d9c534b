//! Why a push did not go live, why a stored release could not be loaded, and
//! why the ledger refused a record.
//!
//! Every message is phrased for a person: a deploy error's text is what
//! `canopy status` and the admin API show as the environment's `error`.

use crate::config::{Diagnostic, Diagnostics};
use crate::env::BlockingError;
use crate::git::GitError;
use crate::runtime::RuntimeError;
use crate::store::StoreError;

use super::EnvKey;

/// Why a push did not go live; the previous release keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The directory to check the commit out into could not be made.
    #[error("{0}")]
    CheckoutDir(#[source] std::io::Error),

    #[error("checkout task failed: {0}")]
    CheckoutTask(#[source] BlockingError),

    /// The commit could not be checked out of the repository.
    #[error(transparent)]
    Checkout(#[from] GitError),

    #[error(
        "canopy.yaml: not found at the root of commit {commit}; add a canopy.yaml (see docs/canopy-yaml.md)"
    )]
    NoProjectFile {
        /// The commit's short id.
        commit: String,
    },

    #[error("canopy.yaml: cannot read: {0}")]
    ReadProjectFile(#[source] std::io::Error),

    #[error(
        "canopy.yaml says `project: {declared}` but it was pushed to the repository of project \
         {repository}; push it to /git/{declared}.git, or change `project:` to {repository}"
    )]
    ProjectMismatch {
        declared: String,
        repository: String,
    },

    /// `canopy.yaml` does not parse, or names files that are not there.
    #[error(transparent)]
    ProjectFile(#[from] Diagnostics),

    /// A function's committed `wasm` file cannot be read.
    #[error(transparent)]
    ReadComponent(Box<Diagnostic>),

    /// A push acknowledged before a restart found no room in the deploy
    /// queue when the node started again.
    #[error("not deployed after the node restarted: {0}")]
    NotQueued(#[source] super::QueueFull),

    /// A function's build command failed or timed out.
    #[error(transparent)]
    Build(Box<Diagnostic>),

    /// `domains:` names a domain another project owns, or the domain book
    /// refused the claim.
    #[error("domains: {0}")]
    Domain(#[from] super::domains::DomainError),

    /// A build succeeded but its output cannot be read or is not a
    /// wasi:http component.
    #[error(transparent)]
    BuildOutput(Box<Diagnostic>),

    /// A component does not compile (or does not link) in the runtime.
    #[error(transparent)]
    Compile(Box<Diagnostic>),

    /// Blocking work (checking files, storing websites) did not finish.
    #[error("deploy task failed: {0}")]
    Task(#[source] BlockingError),

    /// A website's files cannot be listed or read.
    #[error("{0}")]
    WebsiteFiles(#[source] std::io::Error),

    /// An artifact or the manifest could not be stored and verified.
    #[error(transparent)]
    Store(Box<StoreError>),

    /// Built and verified here, but cluster state did not record it.
    #[error("cannot record the release in cluster state: {0}")]
    Record(#[source] RecordError),

    /// Built and verified here, but this node could not record it on its
    /// own disk (full, or read-only): it would be forgotten at a restart,
    /// so it does not go live.
    #[error(
        "{0}; the previous release keeps serving (free space on the node's data disk, then push again)"
    )]
    Save(#[source] super::state::StateError),
}

/// Why a stored release could not be loaded (at a restart, or to install
/// what cluster state chose).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Cid(#[from] InvalidCid),

    #[error(transparent)]
    Store(Box<StoreError>),

    /// The manifest blob is not a manifest.
    #[error("{0}")]
    Manifest(#[from] serde_json::Error),

    #[error(transparent)]
    Compile(#[from] RuntimeError),

    /// The manifest belongs to another environment than the one installed.
    #[error("manifest {manifest_cid} is for {project}@{branch}, not {key}")]
    WrongEnvironment {
        manifest_cid: cid::Cid,
        project: String,
        branch: String,
        key: EnvKey,
    },
}

// A store error is large; boxed, it keeps every `Result` small.
impl From<StoreError> for DeployError {
    fn from(e: StoreError) -> Self {
        DeployError::Store(Box::new(e))
    }
}

impl From<StoreError> for LoadError {
    fn from(e: StoreError) -> Self {
        LoadError::Store(Box::new(e))
    }
}

/// A CID in a manifest or in deployment state that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid CID {text:?}: {source}")]
pub struct InvalidCid {
    pub text: String,
    #[source]
    pub source: cid::Error,
}

/// Why a release could not be recorded in the ledger.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Its manifest names a blob by a CID that does not parse.
    #[error(transparent)]
    Cid(#[from] InvalidCid),

    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// The ledger (cluster state) refused to record a push or a removal. Its
/// cause is the ledger's own error; the deployer only reports it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct LedgerError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl LedgerError {
    pub fn new(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        LedgerError(Box::new(cause))
    }
}
