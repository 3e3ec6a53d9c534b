//! The disk seam: every write whose durability the node relies on goes
//! through a [`Disk`], so the simulator can model what a crash keeps.
//!
//! The seam covers the operations that decide what survives a crash —
//! creating a file and writing it, syncing it, renaming, removing, syncing
//! a directory, creating directories — and nothing else. Reads stay plain
//! `std::fs`: every implementation works on a real directory whose current
//! contents are what the node reads.
//!
//! Production uses [`OsDisk`], a pass-through to `std::fs`: a [`DiskFile`]
//! is a `std::fs::File` and a write goes straight to it, so streaming a
//! large blob costs what it cost before the seam. The simulator's disk
//! (`canopy_sim::disk`) journals what is not yet durable and decides, on a
//! simulated crash, what of it survives.
//!
//! The contract is POSIX's, strictly: a file's data is durable once the
//! file is [`Disk::sync`]ed; a created, renamed or removed directory entry
//! once its directory is [`Disk::sync_dir`]ed. Only
//! [`Disk::create_dir_all`] is durable on return (it syncs the parent of
//! each directory it creates), so callers need not track new directories.
//!
//! What does not go through the seam, on purpose: git repositories (gix
//! writes them; a push is acknowledged once its pack is indexed and its
//! refs moved, and one acknowledged but never deployed is deployed again
//! at the next start — `Deployer::unfinished_pushes`), deploy scratch and
//! checkout directories, the node key and the local CA, and
//! the runtime's compiled-code cache (rebuilt from the store when it is
//! missing or torn).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a node's durable files are written.
///
/// Implementations operate on a real directory tree; see the module docs
/// for the durability contract.
pub trait Disk: Send + Sync + std::fmt::Debug {
    /// Create a new file for writing; fails if `path` exists. The new
    /// directory entry is durable after [`Disk::sync_dir`] of its parent,
    /// the data after [`Disk::sync`].
    fn create_new(&self, path: &Path) -> io::Result<DiskFile>;

    /// Make everything written to `file` so far durable (fsync).
    fn sync(&self, file: &DiskFile) -> io::Result<()>;

    /// Rename `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Remove the file at `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Make the entries created, renamed or removed in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Create `dir` and its missing ancestors, durably: the parent of every
    /// directory created is synced before this returns.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
}

/// A file opened for writing through a [`Disk`]: a `std::fs::File` (writes
/// go straight to it) and the id the disk that made it knows it by.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    id: u64,
}

impl DiskFile {
    /// Wrap a file a [`Disk`] implementation opened. `id` is the
    /// implementation's name for it (the OS disk uses 0).
    pub fn new(file: File, id: u64) -> Self {
        Self { file, id }
    }

    /// The underlying file (for metadata, permissions, writeback hints).
    pub fn as_file(&self) -> &File {
        &self.file
    }

    /// The id the disk that created this file knows it by.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Write for DiskFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The operating system's disk: `std::fs`, with `fsync` for the syncs.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsDisk;

/// The OS disk as an [`Env`](super::Env) carries it.
pub fn os_disk() -> Arc<dyn Disk> {
    Arc::new(OsDisk)
}

impl Disk for OsDisk {
    fn create_new(&self, path: &Path) -> io::Result<DiskFile> {
        let file = File::options().write(true).create_new(true).open(path)?;
        Ok(DiskFile::new(file, 0))
    }

    fn sync(&self, file: &DiskFile) -> io::Result<()> {
        file.file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let missing = missing_dirs(dir);
        if missing.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(dir)?;
        // Outermost first: each new directory's entry lives in its parent.
        for created in missing.iter().rev() {
            if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
                self.sync_dir(parent)?;
            }
        }
        Ok(())
    }
}

/// `dir` and those of its ancestors that do not exist, innermost first.
pub fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(d) = current.filter(|d| !d.as_os_str().is_empty()) {
        if d.is_dir() {
            break;
        }
        missing.push(d.to_path_buf());
        current = d.parent();
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_disk_writes_renames_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let disk = OsDisk;
        let nested = dir.path().join("a/b");
        assert_eq!(missing_dirs(&nested).len(), 2);
        disk.create_dir_all(&nested).unwrap();
        assert!(missing_dirs(&nested).is_empty());
        let tmp = nested.join("tmp");
        let mut file = disk.create_new(&tmp).unwrap();
        file.write_all(b"hello").unwrap();
        disk.sync(&file).unwrap();
        assert!(disk.create_new(&tmp).is_err(), "create_new never replaces");
        let dest = nested.join("dest");
        disk.rename(&tmp, &dest).unwrap();
        disk.sync_dir(&nested).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        disk.remove_file(&dest).unwrap();
        assert!(!dest.exists());
    }
}
