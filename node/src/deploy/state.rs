//! What the node remembers about every environment (project × branch): the
//! live release, the push being deployed and the last failure.
//!
//! Persisted as one JSON file written atomically through the node's
//! [`Disk`], so a restart serves every live release again without a push.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::env::Disk;

/// An environment's key: the project and the branch it was pushed on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EnvKey {
    pub project: String,
    pub branch: String,
}

impl std::fmt::Display for EnvKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.project, self.branch)
    }
}

/// A release that serves: a commit and the manifest that lists its artifacts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub commit: String,
    /// CID of the [`super::manifest::Manifest`] blob in the store.
    pub manifest: String,
    /// The repository it was pushed to (empty for a release that came from
    /// another node through cluster state).
    pub repo: String,
    /// Its rank in cluster state (see `cluster::state`); `None` on a node
    /// outside any cluster, or before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precedence: Option<Precedence>,
}

/// The rank of a release among the pushes of its environment: (the push's
/// sequence number in its environment, the node it was pushed to).
pub type Precedence = (u64, crate::net::NodeId);

/// A push that did not go live, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub commit: String,
    pub error: String,
}

/// Everything known about one environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    pub live: Option<Release>,
    /// The commit being built and verified right now.
    pub pending: Option<String>,
    /// The newest push that failed; cleared when a newer push goes live.
    pub failed: Option<Failure>,
    /// The newest push's warrant from its pusher, for its record in
    /// cluster state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_warrant: Option<PushWarrant>,
    /// Releases that served before `live`, newest first, at most the
    /// node's history depth (`gc.history` in the node config): what a
    /// rollback can go back to, so garbage collection keeps their blobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Release>,
}

impl Environment {
    /// Make `release` the live one; the release it replaces (if another)
    /// goes to the front of the history, which keeps at most `depth`.
    pub fn replace_live(&mut self, release: Release, depth: usize) {
        if let Some(old) = self.live.take()
            && old.manifest != release.manifest
        {
            self.history.retain(|r| r.manifest != old.manifest);
            self.history.insert(0, old);
        }
        // Going back to a kept release takes it out of the history.
        self.history.retain(|r| r.manifest != release.manifest);
        self.history.truncate(depth);
        self.live = Some(release);
    }

    /// The manifests of every release kept: the live one, then the history.
    pub fn kept_manifests(&self) -> impl Iterator<Item = &str> {
        self.live
            .iter()
            .chain(&self.history)
            .map(|r| r.manifest.as_str())
    }
}

/// A pusher's warrant for one push (see [`crate::auth::push_statement`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushWarrant {
    /// The commit pushed; `None` for a deletion.
    pub commit: Option<String>,
    pub warrant: crate::auth::Warrant,
}

/// The persisted state of all environments on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentState {
    pub environments: BTreeMap<EnvKey, Environment>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read deployment state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "deployment state {path} is not valid ({source}); move it aside and push again to redeploy"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write deployment state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The on-disk form: a list, because JSON object keys must be strings.
#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    environments: Vec<(EnvKey, Environment)>,
}

const STATE_FILE_VERSION: u32 = 1;

impl DeploymentState {
    /// Load the state at `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let file: StateFile =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            environments: file.environments.into_iter().collect(),
        })
    }

    /// Write the state atomically through `disk`: a crash leaves the old or
    /// the new file, never a torn one.
    pub fn save(&self, disk: &dyn Disk, path: &Path) -> Result<(), StateError> {
        let file = StateFile {
            version: STATE_FILE_VERSION,
            environments: self
                .environments
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("state serialises");
        crate::durable::write_atomically_on(disk, path, &bytes, None).map_err(|source| {
            StateError::Write {
                path: path.to_owned(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/deployments.json");
        assert_eq!(
            DeploymentState::load(&path).unwrap(),
            DeploymentState::default()
        );

        let mut state = DeploymentState::default();
        state.environments.insert(
            EnvKey {
                project: "shop".into(),
                branch: "main".into(),
            },
            Environment {
                live: Some(Release {
                    commit: "abc".into(),
                    manifest: "bafk".into(),
                    repo: "r".into(),
                    precedence: Some((3, crate::net::NodeId([7; 32]))),
                }),
                pending: None,
                push_warrant: None,
                history: vec![],
                failed: Some(Failure {
                    commit: "def".into(),
                    error: "boom".into(),
                }),
            },
        );
        state.save(&crate::env::OsDisk, &path).unwrap();
        assert_eq!(DeploymentState::load(&path).unwrap(), state);
    }

    fn release(n: u8) -> Release {
        Release {
            commit: format!("c{n}"),
            manifest: format!("m{n}"),
            repo: "shop".into(),
            precedence: None,
        }
    }

    #[test]
    fn history_keeps_the_newest_replaced_releases_up_to_its_depth() {
        let mut e = Environment::default();
        for n in 1..=5 {
            e.replace_live(release(n), 3);
        }
        assert_eq!(e.live, Some(release(5)));
        let kept: Vec<_> = e.kept_manifests().collect();
        assert_eq!(kept, ["m5", "m4", "m3", "m2"]);
        // The same release again (a redeploy) adds nothing to the history.
        e.replace_live(release(5), 3);
        assert_eq!(e.history.len(), 3);
        // Going back to a kept release moves it out of the history.
        e.replace_live(release(3), 3);
        let kept: Vec<_> = e.kept_manifests().collect();
        assert_eq!(kept, ["m3", "m5", "m4", "m2"]);
        // Depth 0: only the live release.
        e.replace_live(release(6), 0);
        assert_eq!(e.kept_manifests().collect::<Vec<_>>(), ["m6"]);
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deployments.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = DeploymentState::load(&path).unwrap_err().to_string();
        assert!(err.contains("move it aside"), "{err}");
    }
}
