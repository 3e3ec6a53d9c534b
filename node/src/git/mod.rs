//! The Git remote users push to, and reading pushed commits.
//!
//! Owns: the bare repositories under one root directory ([`Repos`]), the smart
//! HTTP receive-pack protocol that accepts a normal `git push` ([`GitHttp`]),
//! the bounds a push must keep ([`GitLimits`]), the notification that a push
//! was acknowledged ([`PushEvent`]), reading a
//! commit's files ([`checkout`], [`read_file`], [`commit_info`]), merging
//! a repository's packs after pushes ([`RepackPolicy`]) and the DNS label of
//! a branch ([`branch_label`]).
//!
//! Everything is done in-process with gix; the node never runs the `git`
//! binary. This module does not build, deploy or replicate anything: it hands
//! a [`PushEvent`] to whoever listens and stops there.

mod error;
mod event;
mod http;
mod label;
mod limits;
mod pktline;
mod read;
mod receive;
mod repack;
mod repos;

pub use error::GitError;
pub use event::{Admission, PushEvent, PushListener, Pusher, RefUpdate};
pub use http::GitHttp;
pub use label::branch_label;
pub use limits::{GitLimits, OverLimit};
pub use read::{CommitInfo, checkout, commit_info, read_file};
pub use repack::{RepackError, RepackPolicy, Repacked};
pub use repos::Repos;

/// Results of this module.
pub type Result<T, E = GitError> = std::result::Result<T, E>;
