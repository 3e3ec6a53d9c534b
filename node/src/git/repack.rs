//! Repacking a repository, git's `gc --auto` after a push without the git
//! binary.
//!
//! Every push leaves a pack of its own. A project pushed thousands of times
//! would keep thousands of packs (every object lookup searches each index),
//! and every object a deleted branch or a force push left behind. So after
//! a push, when a repository holds more than [`RepackPolicy::max_packs`]
//! packs or the push deleted a branch, all its packs are merged into one:
//! the objects its branches and tags reach, and every object of a pack
//! younger than [`RepackPolicy::min_age`]. Whatever else the old packs held
//! goes with them.
//!
//! A young pack's objects are all kept: a deploy reads its commit's objects
//! after the push is acknowledged, and a force push or a branch deletion
//! meanwhile must not take them from under it. They go at a later merge,
//! once older (the merged pack's age is the merge's). Each merge writes the
//! whole history once, so merges are spaced by `max_packs` pushes. The
//! caller holds the repository's push lock, so no pack appears meanwhile.
//! The new pack and its index are complete before any old pack is removed,
//! and a reader with an old pack open keeps reading it until it closes it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use gix::odb::pack;
use gix::prelude::Finalize;

use super::error::error_chain;

/// When a repository is repacked (`gc.git_packs` and `gc.git_pack_age` in
/// the node config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepackPolicy {
    /// Packs a repository may hold before a push repacks it.
    pub max_packs: usize,
    /// How old a pack must be for what no ref reaches in it to go (a
    /// younger one may hold a commit a deploy is about to read).
    pub min_age: Duration,
}

/// The default [`RepackPolicy::max_packs`]: git's `gc.autoPackLimit` is 50.
pub const DEFAULT_MAX_PACKS: usize = 32;
/// The default [`RepackPolicy::min_age`]: far longer than a push waits for
/// its deploy to read its commit.
pub const DEFAULT_MIN_PACK_AGE: Duration = Duration::from_secs(10 * 60);

impl Default for RepackPolicy {
    fn default() -> Self {
        Self {
            max_packs: DEFAULT_MAX_PACKS,
            min_age: DEFAULT_MIN_PACK_AGE,
        }
    }
}

/// What a repack did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repacked {
    /// Old packs merged (and removed).
    pub packs_merged: usize,
    /// Packs the repository holds now.
    pub packs_now: usize,
    /// Objects in the new pack.
    pub objects: usize,
    /// Bytes of the packs merged, and of the pack that replaced them.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Why a repack failed. Nothing is removed when it does.
#[derive(Debug, thiserror::Error)]
pub enum RepackError {
    #[error("cannot read the packs of {path}: {source}")]
    List { path: PathBuf, source: io::Error },
    #[error("cannot open repository {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("cannot list what the branches and tags of {path} reach: {message}")]
    Count { path: PathBuf, message: String },
    #[error("cannot write the new pack of {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// One pack of a repository: its `.pack` file (with an `.idx` beside it).
#[derive(Clone, Debug)]
struct PackFile {
    data: PathBuf,
    modified: SystemTime,
    bytes: u64,
}

impl PackFile {
    /// The pack's files: data, index and whatever git keeps beside them.
    fn files(&self) -> impl Iterator<Item = PathBuf> + '_ {
        ["pack", "idx", "rev", "bitmap", "keep"]
            .into_iter()
            .map(|ext| self.data.with_extension(ext))
    }
}

/// The finished packs of `pack_dir`: a pack being written (no index yet)
/// or kept (a push still holding it) is left out.
fn packs(pack_dir: &Path) -> io::Result<Vec<PackFile>> {
    let entries = match std::fs::read_dir(pack_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != "pack")
            || !path.with_extension("idx").is_file()
            || path.with_extension("keep").exists()
        {
            continue;
        }
        let meta = std::fs::metadata(&path)?;
        out.push(PackFile {
            data: path,
            modified: meta.modified()?,
            bytes: meta.len(),
        });
    }
    out.sort_by(|a, b| a.data.cmp(&b.data));
    Ok(out)
}

fn pack_dir(repo_dir: &Path) -> PathBuf {
    repo_dir.join("objects").join("pack")
}

/// After a push: if it deleted a branch or `repo_dir` holds more than
/// `policy.max_packs` packs, merge every pack into one holding what its
/// refs reach and everything in the packs younger than `policy.min_age`
/// (at `now`). `None` if it was not due, or the merge changed nothing.
pub(crate) fn repack_if_due(
    repo_dir: &Path,
    policy: &RepackPolicy,
    deleted_a_branch: bool,
    now: SystemTime,
) -> Result<Option<Repacked>, RepackError> {
    let dir = pack_dir(repo_dir);
    let list_error = |source| RepackError::List {
        path: dir.clone(),
        source,
    };
    let before = packs(&dir).map_err(list_error)?;
    if before.is_empty() || !(deleted_a_branch || before.len() > policy.max_packs) {
        return Ok(None);
    }
    let young: Vec<&PackFile> = before
        .iter()
        .filter(|p| {
            now.duration_since(p.modified)
                .map_or(true, |age| age < policy.min_age)
        })
        .collect();
    let repo = gix::open(repo_dir).map_err(|e| RepackError::Open {
        path: repo_dir.to_owned(),
        message: error_chain(&e),
    })?;
    let keep = young_objects(&repo, &young)?;
    let written = write_reachable(&repo, &dir, keep)?;
    // The new pack may have the name of an old one (nothing changed): it
    // then stays, whole.
    let merged: Vec<&PackFile> = before.iter().filter(|p| p.data != written.data).collect();
    if merged.is_empty() {
        return Ok(None);
    }
    for pack in &merged {
        for file in pack.files() {
            if let Err(e) = std::fs::remove_file(&file)
                && e.kind() != io::ErrorKind::NotFound
            {
                // The pack's objects are in the new one too: a leftover
                // costs disk, not correctness.
                tracing::warn!(path = %file.display(), error = %e, "repack: could not remove an old pack file");
            }
        }
    }
    let packs_now = packs(&dir).map_err(list_error)?.len();
    Ok(Some(Repacked {
        packs_merged: merged.len(),
        packs_now,
        objects: written.objects,
        bytes_before: merged.iter().map(|p| p.bytes).sum(),
        bytes_after: written.bytes,
    }))
}

/// Every object of the `young` packs.
fn young_objects(
    repo: &gix::Repository,
    young: &[&PackFile],
) -> Result<Vec<gix::ObjectId>, RepackError> {
    let mut out = Vec::new();
    for pack in young {
        let index = pack::index::File::at(pack.data.with_extension("idx"), repo.object_hash())
            .map_err(|e| RepackError::Count {
                path: repo.path().to_owned(),
                message: error_chain(&e),
            })?;
        out.extend(index.iter().map(|entry| entry.oid));
    }
    Ok(out)
}

/// A pack written into the repository, indexed.
struct WrittenPack {
    data: PathBuf,
    objects: usize,
    bytes: u64,
}

/// Write one pack of every object the refs of `repo` reach (commits, their
/// trees and files, annotated tags) and of `keep` into `dir`, with its
/// index.
fn write_reachable(
    repo: &gix::Repository,
    dir: &Path,
    keep: Vec<gix::ObjectId>,
) -> Result<WrittenPack, RepackError> {
    let count_error = |message: String| RepackError::Count {
        path: repo.path().to_owned(),
        message,
    };
    let write_error = |message: String| RepackError::Write {
        path: repo.path().to_owned(),
        message,
    };
    let (tips, tags) = ref_tips(repo).map_err(count_error)?;
    let mut handle = repo.clone().into_sync().objects.to_cache_arc();
    // Pack copies locate entries by pack id, which must stay valid.
    handle.prevent_pack_unload();
    handle.ignore_replacements = true;
    let commits: Vec<gix::ObjectId> = gix::traverse::commit::Simple::new(tips, handle.clone())
        .map(|info| info.map(|info| info.id))
        .collect::<Result<_, _>>()
        .map_err(|e| count_error(error_chain(&e)))?;
    // Counting keeps each object once, whichever way it is reached.
    let mut input = commits
        .into_iter()
        .chain(tags)
        .chain(keep)
        .map(Ok::<_, gix::Error>);
    let interrupt = AtomicBool::new(false);
    let (counts, _) = pack::data::output::count::objects_unthreaded(
        &handle,
        &mut input,
        &gix::progress::Discard,
        &interrupt,
        pack::data::output::count::objects::ObjectExpansion::TreeContents,
    )
    .map_err(|e| count_error(error_chain(&e)))?;
    let objects = counts.len();
    let entries = pack::data::output::entry::iter_from_counts(
        counts,
        handle,
        Box::new(gix::progress::Discard),
        pack::data::output::entry::iter_from_counts::Options {
            thread_limit: Some(1),
            mode: pack::data::output::entry::iter_from_counts::Mode::PackCopyAndBaseObjects,
            allow_thin_pack: false,
            chunk_size: 1000,
            version: Default::default(),
            compression: gix::zlib::Compression::default(),
        },
    )
    .map_err(|e| write_error(error_chain(&e)))?;
    let mut in_order = gix::parallel::InOrderIter::from(entries);

    // The pack goes to a temporary file first, then is indexed into place
    // (which names it by its checksum, as git does).
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|e| write_error(e.to_string()))?;
    let mut pack_bytes = pack::data::output::bytes::FromEntriesIter::new(
        in_order.by_ref(),
        &mut temp,
        u32::try_from(objects).map_err(|_| write_error(format!("{objects} objects")))?,
        pack::data::Version::default(),
        repo.object_hash(),
    );
    for written in pack_bytes.by_ref() {
        written.map_err(|e| write_error(error_chain(&e)))?;
    }
    drop(pack_bytes);
    in_order
        .inner
        .finalize()
        .map_err(|e| write_error(error_chain(&e)))?;
    let file = temp.reopen().map_err(|e| write_error(e.to_string()))?;
    let outcome = pack::Bundle::write_to_directory(
        &mut io::BufReader::new(file),
        Some(dir),
        &mut gix::progress::Discard,
        &interrupt,
        // Not thin: every delta's base is in the pack itself.
        None::<gix::OdbHandle>,
        repo.object_hash(),
        pack::bundle::write::Options::default(),
    )
    .map_err(|e| write_error(error_chain(&e)))?;
    let data = outcome
        .data_path
        .ok_or_else(|| write_error("the pack was not written to disk".to_owned()))?;
    if let Some(keep) = outcome.keep_path {
        // Kept only while it is being written; from now on it is a pack
        // like the others.
        std::fs::remove_file(keep).map_err(|e| write_error(e.to_string()))?;
    }
    let bytes = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
    Ok(WrittenPack {
        data,
        objects,
        bytes,
    })
}

/// The commits the refs of `repo` point to (peeled), and the annotated tag
/// objects among them.
fn ref_tips(repo: &gix::Repository) -> Result<(Vec<gix::ObjectId>, Vec<gix::ObjectId>), String> {
    let platform = repo.references().map_err(|e| error_chain(&e))?;
    let mut tips = Vec::new();
    let mut tags = Vec::new();
    for reference in platform.all().map_err(|e| error_chain(&e))? {
        let mut reference = reference.map_err(|e| e.to_string())?;
        let Some(target) = reference.target().try_id().map(ToOwned::to_owned) else {
            continue;
        };
        let peeled = reference
            .peel_to_id()
            .map_err(|e| error_chain(&e))?
            .detach();
        if peeled != target {
            tags.push(target);
        }
        // Traversal starts from commits; a tag of a tree or a file keeps
        // just that object.
        match repo.find_header(peeled).map(|h| h.kind()) {
            Ok(gix::object::Kind::Commit) => tips.push(peeled),
            Ok(_) => tags.push(peeled),
            Err(e) => return Err(error_chain(&e)),
        }
    }
    tips.sort();
    tips.dedup();
    Ok((tips, tags))
}
