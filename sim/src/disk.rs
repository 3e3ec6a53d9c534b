//! The simulated node's disk: crash-consistent, POSIX-strict.
//!
//! [`SimDisk`] implements the node's [`Disk`] seam on the node's real
//! per-run directory — every operation happens there at once, so the node
//! reads its own writes with plain `std::fs` — and journals, in memory,
//! what is not yet durable:
//!
//! - a file's **data** is durable up to the length it had at its last
//!   [`Disk::sync`] (every file made through the seam is new and written
//!   front to back, so "what was synced" is a prefix);
//! - a **directory entry** created, renamed or removed is durable once its
//!   directory is [`Disk::sync_dir`]ed after the change. Until then the
//!   disk keeps the entry's previous file as a hard link in a limbo
//!   directory beside the node's (`<node>.limbo/`): no data is copied, not
//!   even of a large blob, and a new name's pre-image is just "absent".
//! - directories made by [`Disk::create_dir_all`] are durable on return,
//!   as the seam promises (the OS disk syncs their parents).
//!
//! On a simulated crash the harness calls [`SimDisk::crash`] once the
//! node's software is gone. For every non-durable change — file data in
//! the order the files were created, directory entries name by name in
//! name order, each name's changes in the order they were made (never in
//! the order tasks happened to run or be dropped) — it
//! draws from the run's RNG whether the change survives or vanishes, and
//! for unsynced data also whether it is torn (cut to a random prefix
//! between the synced length and what was written). A vanished entry
//! change is undone — a new name removed, a rename or removal undone — and
//! so is every later change of the same name (a name's history survives as
//! a prefix). A crash never invents content: what is left is a prefix of
//! what was written to that file, or the file that was there before.
//!
//! Not modelled: files changed in place (the seam only creates new files),
//! directories lost (see above), reordering of data writes within a file
//! (a tear keeps a prefix), and files written outside the seam (git
//! repositories, deploy scratch, compiled code), which survive whole.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use canopy_node::env::{Disk, DiskFile, Rng};

use crate::faults::{uniform, unit};

/// Chance that an unsynced write (data or directory entry) survives a crash.
const SURVIVE_CHANCE: f64 = 0.4;
/// Chance that unsynced data which does not survive whole is torn (cut to
/// a random prefix) rather than lost back to its synced length.
const TEAR_CHANCE: f64 = 0.5;

/// One node's crash-consistent disk. Keep it across the node's restarts.
#[derive(Debug)]
pub struct SimDisk {
    /// Hard links to entries' previous files, until their change is durable.
    limbo_dir: PathBuf,
    journal: Mutex<Journal>,
}

/// What a crash did to the non-durable changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Non-durable changes at the crash (files with unsynced data, and
    /// directory-entry changes).
    pub unsynced: usize,
    /// Of those, how many were lost: data back to its synced length, entry
    /// changes undone.
    pub lost: usize,
    /// Of those, how many files were torn: unsynced data cut to a prefix.
    pub torn: usize,
}

impl std::fmt::Display for CrashReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lost {} of {} unsynced writes ({} torn)",
            self.lost + self.torn,
            self.unsynced,
            self.torn
        )
    }
}

#[derive(Debug, Default)]
struct Journal {
    next_file: u64,
    next_limbo: u64,
    /// Files created through this disk since the last crash, by id.
    files: BTreeMap<u64, FileRecord>,
    /// Which tracked file each path (live or limbo) links to.
    links: BTreeMap<PathBuf, u64>,
    /// Directory-entry changes not yet durable, in the order they were made.
    changes: Vec<EntryChange>,
}

#[derive(Debug)]
struct FileRecord {
    /// Paths that link to the file (its name, and limbo links).
    links: BTreeSet<PathBuf>,
    /// How much of it is durable.
    synced_len: u64,
}

#[derive(Debug)]
struct EntryChange {
    path: PathBuf,
    dir: PathBuf,
    /// What the name held before: nothing, or the file now linked here.
    before: Option<PathBuf>,
}

impl SimDisk {
    /// A disk for the node whose data lives under `node_dir`; its limbo
    /// directory is `node_dir` with `.limbo` appended (same filesystem, so
    /// hard links work; outside the node's tree, so the node never sees it).
    pub fn new(node_dir: &Path) -> io::Result<SimDisk> {
        let mut limbo = node_dir.as_os_str().to_owned();
        limbo.push(".limbo");
        let limbo_dir = PathBuf::from(limbo);
        std::fs::create_dir_all(node_dir)?;
        std::fs::create_dir_all(&limbo_dir)?;
        Ok(SimDisk {
            limbo_dir,
            journal: Mutex::new(Journal::default()),
        })
    }

    fn journal(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many changes are not yet durable (files with unsynced data are
    /// counted at the crash, not here): directory-entry changes.
    pub fn pending_entries(&self) -> usize {
        self.journal().changes.len()
    }

    /// Keep `path`'s current file, if any, as a limbo link; returns it.
    fn preserve(&self, journal: &mut Journal, path: &Path) -> io::Result<Option<PathBuf>> {
        if std::fs::symlink_metadata(path).is_err() {
            return Ok(None);
        }
        let limbo = self.limbo_dir.join(journal.next_limbo.to_string());
        journal.next_limbo += 1;
        std::fs::hard_link(path, &limbo)?;
        if let Some(id) = journal.links.get(path).copied() {
            journal.link(id, limbo.clone());
        }
        Ok(Some(limbo))
    }

    /// Drop a limbo link made for a change that did not happen.
    fn forget(&self, journal: &mut Journal, limbo: Option<PathBuf>) {
        if let Some(limbo) = limbo {
            journal.unlink(&limbo);
            let _ = std::fs::remove_file(&limbo);
        }
    }

    /// Lose what a crash loses: every non-durable change survives, vanishes
    /// or (unsynced data) is torn, drawn from `rng` in the order the
    /// changes were made. Call it after the node's software is gone and
    /// before it restarts. The journal is empty afterwards.
    pub fn crash(&self, rng: &Rng) -> io::Result<CrashReport> {
        let mut journal = self.journal();
        let mut report = CrashReport::default();
        // Data first, while every file is still reachable by some link.
        for record in journal.files.values() {
            let Some(path) = record.links.iter().next() else {
                continue;
            };
            // A link removed behind the disk's back: nothing to cut.
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            let len = meta.len();
            if len <= record.synced_len {
                continue;
            }
            report.unsynced += 1;
            if unit(rng) < SURVIVE_CHANCE {
                continue;
            }
            let keep = if unit(rng) < TEAR_CHANCE {
                report.torn += 1;
                uniform(rng, record.synced_len, len - 1)
            } else {
                report.lost += 1;
                record.synced_len
            };
            File::options().write(true).open(path)?.set_len(keep)?;
        }
        // Then names: a name's changes survive as a prefix. Name by name,
        // in name order (each name's changes in the order they were made):
        // changes to different names may have been made in an order a
        // replay does not repeat — a crashed host's tasks are dropped, and
        // their temp files removed, in an order that depends on tokio's
        // process-wide task ids.
        let mut changes: Vec<&EntryChange> = journal.changes.iter().collect();
        changes.sort_by(|a, b| a.path.cmp(&b.path));
        let mut undo: BTreeMap<&Path, Option<&Path>> = BTreeMap::new();
        for change in changes {
            report.unsynced += 1;
            let lost = if undo.contains_key(change.path.as_path()) {
                true
            } else if unit(rng) < SURVIVE_CHANCE {
                false
            } else {
                undo.insert(&change.path, change.before.as_deref());
                true
            };
            report.lost += usize::from(lost);
        }
        for (path, before) in undo {
            match before {
                Some(limbo) => std::fs::rename(limbo, path)?,
                None => match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                },
            }
        }
        *journal = Journal {
            next_file: journal.next_file,
            next_limbo: journal.next_limbo,
            ..Journal::default()
        };
        drop(journal);
        std::fs::remove_dir_all(&self.limbo_dir)?;
        std::fs::create_dir_all(&self.limbo_dir)?;
        Ok(report)
    }
}

impl Journal {
    fn link(&mut self, id: u64, path: PathBuf) {
        if let Some(record) = self.files.get_mut(&id) {
            record.links.insert(path.clone());
            self.links.insert(path, id);
        }
    }

    fn unlink(&mut self, path: &Path) {
        let Some(id) = self.links.remove(path) else {
            return;
        };
        if let Some(record) = self.files.get_mut(&id) {
            record.links.remove(path);
            if record.links.is_empty() {
                // Gone from every name: nothing of it can come back.
                self.files.remove(&id);
            }
        }
    }
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Disk for SimDisk {
    fn create_new(&self, path: &Path) -> io::Result<DiskFile> {
        let mut journal = self.journal();
        let file = File::options().write(true).create_new(true).open(path)?;
        let id = journal.next_file;
        journal.next_file += 1;
        journal.files.insert(
            id,
            FileRecord {
                links: BTreeSet::new(),
                synced_len: 0,
            },
        );
        journal.link(id, path.to_path_buf());
        journal.changes.push(EntryChange {
            path: path.to_path_buf(),
            dir: parent(path),
            before: None,
        });
        Ok(DiskFile::new(file, id))
    }

    fn sync(&self, file: &DiskFile) -> io::Result<()> {
        // No fsync: the run's directory is scratch; the journal is the disk.
        let len = file.as_file().metadata()?.len();
        if let Some(record) = self.journal().files.get_mut(&file.id()) {
            record.synced_len = len;
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if from == to {
            return Ok(());
        }
        let mut journal = self.journal();
        std::fs::symlink_metadata(from)?;
        let before_to = self.preserve(&mut journal, to)?;
        let before_from = match self.preserve(&mut journal, from) {
            Ok(before_from) => before_from,
            Err(e) => {
                self.forget(&mut journal, before_to);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(from, to) {
            // Nothing changed: the links kept for the change are not needed.
            self.forget(&mut journal, before_to);
            self.forget(&mut journal, before_from);
            return Err(e);
        }
        journal.unlink(to);
        if let Some(id) = journal.links.get(from).copied() {
            journal.unlink(from);
            journal.link(id, to.to_path_buf());
        }
        journal.changes.push(EntryChange {
            path: to.to_path_buf(),
            dir: parent(to),
            before: before_to,
        });
        journal.changes.push(EntryChange {
            path: from.to_path_buf(),
            dir: parent(from),
            before: before_from,
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut journal = self.journal();
        std::fs::symlink_metadata(path)?;
        let before = self.preserve(&mut journal, path)?;
        if let Err(e) = std::fs::remove_file(path) {
            self.forget(&mut journal, before);
            return Err(e);
        }
        journal.unlink(path);
        journal.changes.push(EntryChange {
            path: path.to_path_buf(),
            dir: parent(path),
            before,
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut journal = self.journal();
        let changes = std::mem::take(&mut journal.changes);
        let (durable, pending): (Vec<_>, Vec<_>) = changes.into_iter().partition(|c| c.dir == dir);
        journal.changes = pending;
        for change in durable {
            if let Some(limbo) = change.before {
                journal.unlink(&limbo);
                std::fs::remove_file(&limbo)?;
            }
        }
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Durable on return, as the seam promises.
        std::fs::create_dir_all(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn disk() -> (tempfile::TempDir, SimDisk, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("n0");
        let disk = SimDisk::new(&node).unwrap();
        (dir, disk, node)
    }

    fn write(disk: &SimDisk, path: &Path, bytes: &[u8], sync: bool) {
        let mut file = disk.create_new(path).unwrap();
        file.write_all(bytes).unwrap();
        if sync {
            disk.sync(&file).unwrap();
        }
    }

    /// write_atomically's discipline, with or without its syncs.
    fn replace(disk: &SimDisk, path: &Path, bytes: &[u8], sync: bool) {
        let tmp = path.with_extension("tmp");
        write(disk, &tmp, bytes, sync);
        disk.rename(&tmp, path).unwrap();
        if sync {
            disk.sync_dir(path.parent().unwrap()).unwrap();
        }
    }

    fn read(path: &Path) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }

    #[test]
    fn synced_then_renamed_then_dir_synced_always_survives() {
        for seed in 0..64 {
            let (_dir, disk, node) = disk();
            let path = node.join("state");
            replace(&disk, &path, b"one", true);
            replace(&disk, &path, b"two", true);
            assert_eq!(disk.pending_entries(), 0);
            let report = disk.crash(&Rng::seeded(seed)).unwrap();
            assert_eq!(report, CrashReport::default());
            assert_eq!(read(&path).as_deref(), Some(&b"two"[..]));
            let names: Vec<_> = std::fs::read_dir(&node).unwrap().collect();
            assert_eq!(names.len(), 1, "no temp file comes back");
        }
    }

    #[test]
    fn unsynced_writes_may_vanish_or_tear_but_the_old_file_stays_whole() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..64 {
            let (_dir, disk, node) = disk();
            let path = node.join("state");
            replace(&disk, &path, b"old contents", true);
            replace(&disk, &path, b"new contents", false);
            let report = disk.crash(&Rng::seeded(seed)).unwrap();
            let after = read(&path);
            match after.as_deref() {
                Some(b"old contents") => outcomes.insert("old"),
                Some(b"new contents") => outcomes.insert("new"),
                Some(torn) if b"new contents".starts_with(torn) => outcomes.insert("torn"),
                other => panic!("seed {seed}: invented {other:?}"),
            };
            assert!(report.unsynced >= 1, "{report:?}");
        }
        assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    }

    #[test]
    fn a_file_never_synced_may_be_gone() {
        let mut gone = false;
        let mut kept = false;
        for seed in 0..32 {
            let (_dir, disk, node) = disk();
            let path = node.join("fresh");
            write(&disk, &path, b"data", false);
            disk.crash(&Rng::seeded(seed)).unwrap();
            match read(&path) {
                None => gone = true,
                Some(bytes) => {
                    assert!(b"data".starts_with(&bytes));
                    kept = true;
                }
            }
        }
        assert!(gone && kept);
    }

    #[test]
    fn an_unsynced_removal_may_be_undone() {
        let mut back = false;
        for seed in 0..32 {
            let (_dir, disk, node) = disk();
            let path = node.join("blob");
            write(&disk, &path, b"blob", true);
            disk.sync_dir(&node).unwrap();
            disk.remove_file(&path).unwrap();
            disk.crash(&Rng::seeded(seed)).unwrap();
            if let Some(bytes) = read(&path) {
                assert_eq!(bytes, b"blob", "a synced file comes back whole");
                back = true;
            }
        }
        assert!(back);
    }

    #[test]
    fn a_crash_replays_from_its_seed() {
        let run = |seed| {
            let (_dir, disk, node) = disk();
            for i in 0..6u8 {
                replace(&disk, &node.join(format!("f{i}")), &[i; 100], i % 2 == 0);
            }
            let report = disk.crash(&Rng::seeded(seed)).unwrap();
            let files: Vec<_> = (0..6).map(|i| read(&node.join(format!("f{i}")))).collect();
            (report, files)
        };
        assert_eq!(run(3), run(3));
    }

    mod model {
        use super::*;
        use canopy_node::env::Rng;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            /// Write a new version of name `n` the way `write_atomically` does.
            Replace {
                n: u8,
                sync_data: bool,
                sync_dir: bool,
            },
            Remove {
                n: u8,
                sync_dir: bool,
            },
            SyncDir,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0..3u8, any::<bool>(), any::<bool>()).prop_map(|(n, sync_data, sync_dir)| {
                    Op::Replace {
                        n,
                        sync_data,
                        sync_dir,
                    }
                }),
                (0..3u8, any::<bool>()).prop_map(|(n, sync_dir)| Op::Remove { n, sync_dir }),
                Just(Op::SyncDir),
            ]
        }

        proptest! {
            /// Whatever happened, a crash leaves each name absent or holding
            /// a prefix of a version once written to it; a version that was
            /// synced and made durable, and not changed since, is whole.
            #[test]
            fn a_crash_never_invents_content(ops in proptest::collection::vec(op(), 1..24), seed in any::<u64>()) {
                let (_dir, disk, node) = disk();
                let mut versions: BTreeMap<u8, Vec<Vec<u8>>> = BTreeMap::new();
                // The name's current version, if it is known to be durable.
                let mut durable: BTreeMap<u8, Option<Vec<u8>>> = BTreeMap::new();
                let mut pending: BTreeSet<u8> = BTreeSet::new();
                for (i, op) in ops.iter().enumerate() {
                    match *op {
                        Op::Replace { n, sync_data, sync_dir } => {
                            let bytes = format!("version {i} of name {n}").into_bytes();
                            let path = node.join(format!("f{n}"));
                            let tmp = node.join(format!("f{n}.tmp{i}"));
                            write(&disk, &tmp, &bytes, sync_data);
                            disk.rename(&tmp, &path).unwrap();
                            versions.entry(n).or_default().push(bytes.clone());
                            pending.insert(n);
                            durable.remove(&n);
                            if sync_dir {
                                disk.sync_dir(&node).unwrap();
                                for p in std::mem::take(&mut pending) {
                                    durable.insert(p, None);
                                }
                                if sync_data {
                                    durable.insert(n, Some(bytes));
                                }
                            }
                        }
                        Op::Remove { n, sync_dir } => {
                            let path = node.join(format!("f{n}"));
                            if path.exists() {
                                disk.remove_file(&path).unwrap();
                                pending.insert(n);
                                durable.remove(&n);
                            }
                            if sync_dir {
                                disk.sync_dir(&node).unwrap();
                                for p in std::mem::take(&mut pending) {
                                    durable.insert(p, None);
                                }
                            }
                        }
                        Op::SyncDir => {
                            disk.sync_dir(&node).unwrap();
                            for p in std::mem::take(&mut pending) {
                                durable.insert(p, None);
                            }
                        }
                    }
                }
                disk.crash(&Rng::seeded(seed)).unwrap();
                for (n, written) in &versions {
                    let after = read(&node.join(format!("f{n}")));
                    if let Some(bytes) = &after {
                        prop_assert!(
                            written.iter().any(|v| v.starts_with(bytes)),
                            "f{n} holds {:?}, never written", String::from_utf8_lossy(bytes)
                        );
                    }
                    if let Some(Some(whole)) = durable.get(n) {
                        prop_assert_eq!(after.as_ref(), Some(whole), "f{} was durable", n);
                    }
                }
                // Temp names hold prefixes of what was written too.
                for entry in std::fs::read_dir(&node).unwrap() {
                    let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                    prop_assert!(versions.values().flatten().any(|v| v.starts_with(&bytes)));
                }
            }
        }
    }
}
