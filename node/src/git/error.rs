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
        err: impl std::error::Error + 'static,
    ) -> Self {
        GitError::Gix {
            context,
            path: path.into(),
            message: error_chain(&err),
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

/// An error and its causes on one line (`outer: inner: root`): gix's errors
/// put the useful detail in their sources.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
