//! The bare repositories a node hosts: `<root>/<name>.git`, created on the
//! first push.

use std::path::{Path, PathBuf};

use super::error::error_chain;
use super::{GitError, Result};

/// The bare repositories under one root directory.
#[derive(Clone, Debug)]
pub struct Repos {
    root: PathBuf,
}

impl Repos {
    /// Repositories under `root` (created when missing).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| GitError::io("could not create the repositories directory", &root, e))?;
        Ok(Self { root })
    }

    /// The directory holding every repository.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The canonical name of a repository as written in a URL: `shop` and
    /// `shop.git` are both `shop`. Names are `[A-Za-z0-9._-]+` and may not
    /// start with `.`.
    pub fn normalize_name(name: &str) -> Result<String> {
        let bare = name.strip_suffix(".git").unwrap_or(name);
        let valid = !bare.is_empty()
            && !bare.starts_with('.')
            && bare
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(bare.to_owned())
        } else {
            Err(GitError::InvalidRepoName {
                name: name.to_owned(),
            })
        }
    }

    /// The directory of repository `name` (which need not exist).
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let name = Self::normalize_name(name)?;
        Ok(self.root.join(format!("{name}.git")))
    }

    /// Whether repository `name` exists.
    pub fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.dir(name)?.join("HEAD").is_file())
    }

    /// Opens repository `name`, creating an empty bare one if needed.
    pub fn open_or_init(&self, name: &str) -> Result<gix::Repository> {
        let dir = self.dir(name)?;
        if self.exists(name)? {
            return gix::open(&dir).map_err(|e| GitError::Open {
                path: dir.clone(),
                message: error_chain(&e),
            });
        }
        let repo = gix::init_bare(&dir).map_err(|e| GitError::Init {
            path: dir.clone(),
            message: error_chain(&e),
        })?;
        // Production is `main` (design.md); point HEAD there whatever the
        // library's default branch name is.
        std::fs::write(dir.join("HEAD"), b"ref: refs/heads/main\n")
            .map_err(|e| GitError::io("could not write HEAD of", &dir, e))?;
        tracing::info!(repo = name, path = %dir.display(), "created bare repository");
        Ok(repo)
    }

    /// Opens existing repository `name`.
    pub fn open(&self, name: &str) -> Result<gix::Repository> {
        let dir = self.dir(name)?;
        if !self.exists(name)? {
            return Err(GitError::RepoNotFound {
                name: name.to_owned(),
                root: self.root.clone(),
            });
        }
        gix::open(&dir).map_err(|e| GitError::Open {
            path: dir,
            message: error_chain(&e),
        })
    }

    /// The names of all repositories, sorted (without `.git`).
    pub fn list(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| GitError::io("could not list repositories in", &self.root, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| GitError::io("could not list repositories in", &self.root, e))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            let Some(name) = file_name.strip_suffix(".git") else {
                continue;
            };
            if Self::normalize_name(name).ok().as_deref() == Some(name) && self.exists(name)? {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Every branch of repository `name` and its commit, sorted by branch name.
    pub fn branches(&self, name: &str) -> Result<Vec<(String, gix::ObjectId)>> {
        Ok(refs(&self.open(name)?)?
            .into_iter()
            .filter_map(|(refname, id)| {
                refname
                    .strip_prefix("refs/heads/")
                    .map(|branch| (branch.to_owned(), id))
            })
            .collect())
    }
}

/// Every direct ref under `refs/` and the object it points at, sorted by name.
/// Symbolic refs are skipped.
pub(crate) fn refs(repo: &gix::Repository) -> Result<Vec<(String, gix::ObjectId)>> {
    let path = repo.path().to_owned();
    let platform = repo
        .references()
        .map_err(|e| GitError::gix("could not read references", &path, e))?;
    let mut refs = std::collections::BTreeMap::new();
    for reference in platform
        .all()
        .map_err(|e| GitError::gix("could not read references", &path, e))?
    {
        let reference =
            reference.map_err(|e| GitError::gix("could not read a reference", &path, e))?;
        let name = reference.name().as_bstr().to_string();
        if let Some(id) = reference.target().try_id() {
            refs.insert(name, id.to_owned());
        }
    }
    Ok(refs.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_checked() {
        assert_eq!(Repos::normalize_name("shop").unwrap(), "shop");
        assert_eq!(Repos::normalize_name("shop.git").unwrap(), "shop");
        assert_eq!(Repos::normalize_name("my_app-2.0").unwrap(), "my_app-2.0");
        for bad in ["", ".git", "..", ".hidden", "a/b", "a b", "é", "x%2e"] {
            let err = Repos::normalize_name(bad).unwrap_err();
            assert!(
                err.to_string().contains("invalid repository name"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn init_on_first_use_then_list_and_branches() {
        let root = tempfile::tempdir().unwrap();
        let repos = Repos::new(root.path().join("repos")).unwrap();
        assert!(matches!(
            repos.open("shop"),
            Err(GitError::RepoNotFound { .. })
        ));
        repos.open_or_init("shop.git").unwrap();
        repos.open_or_init("shop").unwrap();
        assert!(root.path().join("repos/shop.git/HEAD").is_file());
        assert_eq!(repos.list().unwrap(), vec!["shop".to_owned()]);
        assert_eq!(repos.branches("shop").unwrap(), vec![]);
    }
}
