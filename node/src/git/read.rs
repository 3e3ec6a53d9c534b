//! Reading a pushed commit: its files, one file, its summary.
//!
//! These are blocking functions (file I/O, decompression): call them through
//! `env::spawn_blocking` inside the node (the simulator runs it inline).

use std::path::{Component, Path, PathBuf};

use gix::objs::tree::EntryKind;

use super::error::error_chain;
use super::{GitError, Result};

/// What a person wants to see about a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    pub id: gix::ObjectId,
    /// The first line of the message.
    pub summary: String,
    /// `Name <email>` of the author.
    pub author: String,
}

/// Writes the tree of `commit` into `dest`, which must be missing or empty.
///
/// Regular files keep their executable bit; directories are created;
/// symbolic links are created only when their target stays inside the tree
/// (relative, and any `..` only at the start, not climbing above the root),
/// otherwise skipped with a warning; submodules are skipped.
pub fn checkout(repo_dir: &Path, commit: gix::ObjectId, dest: &Path) -> Result<()> {
    let repo = open(repo_dir)?;
    let tree_id = commit_tree(&repo, commit)?;
    prepare_dest(dest)?;

    // Depth-first with an explicit stack: a deep tree cannot overflow ours.
    // Each item: a tree id and its path relative to the root, as components.
    let mut stack: Vec<(gix::ObjectId, Vec<String>)> = vec![(tree_id, Vec::new())];
    while let Some((tree_id, dir)) = stack.pop() {
        let tree = find(&repo, tree_id, gix::object::Kind::Tree)?;
        let decoded = tree
            .try_into_tree()
            .map_err(|e| GitError::gix("could not read a tree", repo_dir, e))?;
        let entries: Vec<(EntryKind, String, gix::ObjectId)> = decoded
            .decode()
            .map_err(|e| GitError::gix("could not decode a tree", repo_dir, e))?
            .entries
            .iter()
            .map(|e| (e.mode.kind(), e.filename.to_string(), e.oid.to_owned()))
            .collect();
        for (kind, name, id) in entries {
            let tree_path = dir
                .iter()
                .chain(Some(&name))
                .cloned()
                .collect::<Vec<_>>()
                .join("/");
            if !is_safe_name(&name) {
                return Err(GitError::UnsafePath {
                    commit,
                    path: tree_path,
                });
            }
            let target = dir
                .iter()
                .fold(dest.to_path_buf(), |p, c| p.join(c))
                .join(&name);
            match kind {
                EntryKind::Tree => {
                    std::fs::create_dir(&target)
                        .map_err(|e| GitError::io("could not create directory", &target, e))?;
                    let mut sub = dir.clone();
                    sub.push(name);
                    stack.push((id, sub));
                }
                EntryKind::Blob | EntryKind::BlobExecutable => {
                    let data = blob(&repo, id)?;
                    std::fs::write(&target, &data)
                        .map_err(|e| GitError::io("could not write file", &target, e))?;
                    set_executable(&target, kind == EntryKind::BlobExecutable)?;
                }
                EntryKind::Link => {
                    let link = blob(&repo, id)?;
                    let link = String::from_utf8_lossy(&link).into_owned();
                    if link_stays_inside(dir.len(), &link) {
                        std::os::unix::fs::symlink(&link, &target)
                            .map_err(|e| GitError::io("could not create symlink", &target, e))?;
                    } else {
                        tracing::warn!(
                            %commit, path = %tree_path, target = %link,
                            "skipping a symbolic link that points outside the repository tree"
                        );
                    }
                }
                EntryKind::Commit => {
                    tracing::debug!(%commit, path = %tree_path, "skipping submodule");
                }
            }
        }
    }
    Ok(())
}

/// The content of the regular file at `path` (`a/b/c.txt`, relative to the
/// root) in `commit`; `None` when there is no regular file there (missing,
/// a directory, a symlink or a submodule).
pub fn read_file(repo_dir: &Path, commit: gix::ObjectId, path: &str) -> Result<Option<Vec<u8>>> {
    let repo = open(repo_dir)?;
    let tree_id = commit_tree(&repo, commit)?;
    let tree = find(&repo, tree_id, gix::object::Kind::Tree)?
        .try_into_tree()
        .map_err(|e| GitError::gix("could not read a tree", repo_dir, e))?;
    let entry = tree
        .lookup_entry_by_path(path)
        .map_err(|e| GitError::gix("could not look up a path", repo_dir, e))?;
    match entry {
        Some(entry) if entry.mode().is_blob() => Ok(Some(blob(&repo, entry.object_id())?)),
        _ => Ok(None),
    }
}

/// The summary and author of `commit`.
pub fn commit_info(repo_dir: &Path, commit: gix::ObjectId) -> Result<CommitInfo> {
    let repo = open(repo_dir)?;
    let object = find(&repo, commit, gix::object::Kind::Commit)?;
    let commit_obj = object
        .try_into_commit()
        .map_err(|e| GitError::gix("could not read a commit", repo_dir, e))?;
    let summary = commit_obj
        .message()
        .map_err(|e| GitError::gix("could not decode a commit message", repo_dir, e))?
        .summary()
        .to_string();
    let author = commit_obj
        .author()
        .map_err(|e| GitError::gix("could not decode a commit author", repo_dir, e))?;
    Ok(CommitInfo {
        id: commit,
        summary,
        author: format!(
            "{} <{}>",
            author.name.to_string().trim(),
            author.email.to_string().trim()
        ),
    })
}

fn open(repo_dir: &Path) -> Result<gix::Repository> {
    gix::open(repo_dir).map_err(|e| GitError::Open {
        path: repo_dir.to_owned(),
        message: error_chain(&e),
    })
}

/// The object `id`, which must exist and be of `kind`.
fn find(
    repo: &gix::Repository,
    id: gix::ObjectId,
    kind: gix::object::Kind,
) -> Result<gix::Object<'_>> {
    let object = repo
        .try_find_object(id)
        .map_err(|e| GitError::gix("could not read an object", repo.path(), e))?
        .ok_or_else(|| GitError::ObjectMissing {
            id,
            path: repo.path().to_owned(),
        })?;
    if object.kind != kind {
        return Err(GitError::WrongKind {
            id,
            expected: kind_name(kind),
            actual: kind_name(object.kind).to_owned(),
        });
    }
    Ok(object)
}

fn kind_name(kind: gix::object::Kind) -> &'static str {
    match kind {
        gix::object::Kind::Tree => "tree",
        gix::object::Kind::Blob => "blob",
        gix::object::Kind::Commit => "commit",
        gix::object::Kind::Tag => "tag",
    }
}

fn commit_tree(repo: &gix::Repository, commit: gix::ObjectId) -> Result<gix::ObjectId> {
    let commit = find(repo, commit, gix::object::Kind::Commit)?
        .try_into_commit()
        .map_err(|e| GitError::gix("could not read a commit", repo.path(), e))?;
    let tree_id = commit
        .tree_id()
        .map_err(|e| GitError::gix("could not decode a commit", repo.path(), e))?;
    Ok(tree_id.detach())
}

fn blob(repo: &gix::Repository, id: gix::ObjectId) -> Result<Vec<u8>> {
    let mut object = find(repo, id, gix::object::Kind::Blob)?;
    Ok(std::mem::take(&mut object.data))
}

fn prepare_dest(dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)
        .map_err(|e| GitError::io("could not create checkout directory", dest, e))?;
    let mut entries = std::fs::read_dir(dest)
        .map_err(|e| GitError::io("could not read checkout directory", dest, e))?;
    if entries.next().is_some() {
        return Err(GitError::DestinationNotEmpty {
            path: dest.to_owned(),
        });
    }
    Ok(())
}

fn set_executable(path: &Path, executable: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| GitError::io("could not set permissions of", path, e))
}

/// A tree entry name that cannot escape or alias anything on disk.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.eq_ignore_ascii_case(".git")
        && !name.contains(['/', '\\', '\0'])
}

/// Whether a symlink at depth `link_depth` (number of directories between
/// the root and the link) pointing at `target` stays inside the tree.
///
/// Lexical, and therefore strict: `..` may only lead the target. A `..` after
/// a name could climb out through another symlink (`dirlink/..`), which a
/// lexical check cannot see, so such targets are refused.
fn link_stays_inside(link_depth: usize, target: &str) -> bool {
    let path = PathBuf::from(target);
    let mut ups = 0usize;
    let mut seen_name = false;
    for component in path.components() {
        match component {
            Component::ParentDir if !seen_name => ups += 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
            Component::CurDir => {}
            Component::Normal(_) => seen_name = true,
        }
    }
    !target.is_empty() && ups <= link_depth
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_targets() {
        assert!(link_stays_inside(0, "file.txt"));
        assert!(link_stays_inside(0, "./dir/file.txt"));
        assert!(link_stays_inside(1, "../file.txt"));
        assert!(link_stays_inside(2, "../../a/b"));
        assert!(!link_stays_inside(0, "../file.txt"));
        assert!(!link_stays_inside(1, "../../file.txt"));
        assert!(!link_stays_inside(0, "/etc/passwd"));
        assert!(!link_stays_inside(3, "a/../../x"));
        assert!(!link_stays_inside(0, ""));
    }

    #[test]
    fn unsafe_names() {
        for bad in ["", ".", "..", ".git", ".GIT", "a/b", "a\\b"] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
        assert!(is_safe_name(".gitignore"));
        assert!(is_safe_name("..."));
    }
}
