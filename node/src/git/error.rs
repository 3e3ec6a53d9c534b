//! The errors of the git module.

use std::path::PathBuf;

/// What can go wrong while hosting or reading repositories.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(
        "invalid repository name {name:?}: use letters, digits, '.', '_' and '-' only \
         (an optional '.git' suffix is allowed), e.g. `shop` or `shop.git`"
    )]
    InvalidRepoName { name: String },

    #[error("no repository named {name:?} under {root}: push to it first to create it")]
    RepoNotFound { name: String, root: PathBuf },

    #[error("could not open the Git repository at {path}: {message}")]
    Open { path: PathBuf, message: String },

    #[error("could not create the bare Git repository at {path}: {message}")]
    Init { path: PathBuf, message: String },

    #[error("object {id} is missing from the repository at {path}: was it pushed?")]
    ObjectMissing { id: gix::ObjectId, path: PathBuf },

    #[error("object {id} is a {actual}, but a {expected} was expected")]
    WrongKind {
        id: gix::ObjectId,
        expected: &'static str,
        actual: String,
    },

    #[error("{context} (repository {path}): {message}")]
    Gix {
        context: &'static str,
        path: PathBuf,
        message: String,
    },

    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("checkout destination {path} is not empty: give an empty or missing directory")]
    DestinationNotEmpty { path: PathBuf },

    #[error(
        "commit {commit} holds the unsafe path {path:?} (a '..', '.git' or separator in a name): \
         refusing to write it"
    )]
    UnsafePath { commit: gix::ObjectId, path: String },
}

impl GitError {
    /// An error from gix, with what we were doing.
    pub(crate) fn gix(
        context: &'static str,
        path: impl Into<PathBuf>,
        err: impl std::fmt::Display,
    ) -> Self {
        GitError::Gix {
            context,
            path: path.into(),
            message: err.to_string(),
        }
    }

    /// An I/O error on `path`, with what we were doing.
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        GitError::Io {
            context,
            path: path.into(),
            source,
        }
    }
}
