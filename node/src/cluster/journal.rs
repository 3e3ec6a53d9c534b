//! The state document on disk: a full save plus the changes made since.
//!
//! Saving the whole automerge document on every change costs time and
//! writes in proportion to the state's history (megabytes once a cluster
//! has seen a few hundred pushes), and it runs under the state's lock. So
//! a change is appended as its own file of the changes since the last save
//! (`save_incremental`, cheap), and the document is saved whole again —
//! compacted — only once those files add up to as much as the last full
//! save (or [`MAX_CHANGE_FILES`] of them): a full save's cost is spread
//! over at least as many bytes of changes, and the directory holds at most
//! about twice the document.
//!
//! ```text
//! cluster/state.automerge           the last full save
//! cluster/state.changes/0000000042  changes after it, in order
//! ```
//!
//! Every file is written whole or not at all (`durable::write_atomically_on`
//! through the node's [`Disk`], so the simulator crashes it). A crash after
//! a full save but before the change files it covers are removed leaves
//! changes the document already has: loading them again is a no-op.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::env::Disk;

/// At most this many change files before a full save.
pub const MAX_CHANGE_FILES: usize = 256;

/// Change files may add up to the last full save's size, and at least this.
pub const MIN_CHANGE_BYTES: u64 = 1024 * 1024;

/// What was on disk at start: the last full save and the changes after it,
/// oldest first.
#[derive(Debug, Default)]
pub struct Saved {
    pub document: Option<Vec<u8>>,
    pub changes: Vec<(PathBuf, Vec<u8>)>,
}

/// Writes the state document as a full save plus change files.
#[derive(Debug)]
pub struct Journal {
    disk: Arc<dyn Disk>,
    document: PathBuf,
    changes_dir: PathBuf,
    /// The next change file's number.
    next: u64,
    /// Change files written since the last full save, and their bytes.
    change_files: usize,
    change_bytes: u64,
    /// The last full save's size; `None`: none yet (or the last write
    /// failed), so the next save must be full.
    document_bytes: Option<u64>,
}

impl Journal {
    /// Read what is saved at `document` (and its change directory beside
    /// it), and a journal that continues it.
    pub fn open(disk: Arc<dyn Disk>, document: &Path) -> io::Result<(Journal, Saved)> {
        let changes_dir = document.with_extension("changes");
        let saved_document = match std::fs::read(document) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut numbered = Vec::new();
        match std::fs::read_dir(&changes_dir) {
            Ok(entries) => {
                for entry in entries {
                    let path = entry?.path();
                    // Anything else (a temporary file of a write a crash
                    // cut short) is not a change file.
                    if let Some(n) = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.parse::<u64>().ok())
                    {
                        numbered.push((n, path));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        numbered.sort();
        let next = numbered.last().map_or(0, |(n, _)| n + 1);
        let mut changes = Vec::with_capacity(numbered.len());
        for (_, path) in numbered {
            let bytes = std::fs::read(&path)?;
            changes.push((path, bytes));
        }
        let journal = Journal {
            disk,
            document: document.to_owned(),
            changes_dir,
            next,
            change_files: changes.len(),
            change_bytes: changes.iter().map(|(_, b)| b.len() as u64).sum(),
            document_bytes: saved_document.as_ref().map(|d| d.len() as u64),
        };
        let saved = Saved {
            document: saved_document,
            changes,
        };
        Ok((journal, saved))
    }

    /// Whether the next save must be the whole document: there is none on
    /// disk yet, the change files have grown as large as it, or a write
    /// failed (the changes it held are in no file).
    pub fn wants_full_save(&self) -> bool {
        match self.document_bytes {
            None => true,
            Some(document) => {
                self.change_files >= MAX_CHANGE_FILES
                    || self.change_bytes >= document.max(MIN_CHANGE_BYTES)
            }
        }
    }

    /// Save the whole document, then remove the change files it covers.
    pub fn save_full(&mut self, document: &[u8]) -> io::Result<()> {
        self.document_bytes = None;
        crate::durable::write_atomically_on(self.disk.as_ref(), &self.document, document, None)?;
        self.document_bytes = Some(document.len() as u64);
        if self.change_files > 0 {
            self.remove_change_files()?;
        }
        Ok(())
    }

    /// Append the changes since the last save as a change file.
    pub fn save_changes(&mut self, changes: &[u8]) -> io::Result<()> {
        debug_assert!(self.document_bytes.is_some(), "changes follow a full save");
        let path = self.changes_dir.join(format!("{:010}", self.next));
        self.next += 1;
        if let Err(e) = self.write_change_file(&path, changes) {
            // These changes are in no file now: the next save is full.
            self.document_bytes = None;
            return Err(e);
        }
        self.change_files += 1;
        self.change_bytes += changes.len() as u64;
        Ok(())
    }

    fn write_change_file(&self, path: &Path, changes: &[u8]) -> io::Result<()> {
        self.disk.create_dir_all(&self.changes_dir)?;
        crate::durable::write_atomically_on(self.disk.as_ref(), path, changes, None)
    }

    fn remove_change_files(&mut self) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.changes_dir)? {
            let path = entry?.path();
            self.disk.remove_file(&path)?;
        }
        self.disk.sync_dir(&self.changes_dir)?;
        self.change_files = 0;
        self.change_bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(dir: &Path) -> (Journal, Saved) {
        Journal::open(crate::env::os_disk(), &dir.join("state.automerge")).unwrap()
    }

    #[test]
    fn a_full_save_then_changes_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, saved) = journal(dir.path());
        assert!(saved.document.is_none() && saved.changes.is_empty());
        assert!(j.wants_full_save());
        j.save_full(b"doc").unwrap();
        assert!(!j.wants_full_save());
        for i in 0..12u8 {
            j.save_changes(&[i]).unwrap();
        }
        let (j, saved) = journal(dir.path());
        assert_eq!(saved.document.as_deref(), Some(&b"doc"[..]));
        let changes: Vec<u8> = saved.changes.iter().map(|(_, c)| c[0]).collect();
        assert_eq!(
            changes,
            (0..12).collect::<Vec<_>>(),
            "numbered in order past 9"
        );
        assert_eq!(j.next, 12);
    }

    #[test]
    fn a_full_save_is_due_once_changes_outgrow_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = journal(dir.path());
        j.save_full(&[0; 10]).unwrap();
        j.save_changes(&vec![1; MIN_CHANGE_BYTES as usize - 1])
            .unwrap();
        assert!(!j.wants_full_save());
        j.save_changes(&[1]).unwrap();
        assert!(j.wants_full_save());
        j.save_full(&[0; 20]).unwrap();
        assert!(!j.wants_full_save());
        let (_, saved) = journal(dir.path());
        assert!(saved.changes.is_empty(), "the full save removed them");
        assert_eq!(saved.document.unwrap().len(), 20);
    }

    #[test]
    fn too_many_change_files_ask_for_a_full_save() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = journal(dir.path());
        j.save_full(b"doc").unwrap();
        for _ in 0..MAX_CHANGE_FILES {
            assert!(!j.wants_full_save());
            j.save_changes(b"c").unwrap();
        }
        assert!(j.wants_full_save());
    }

    #[test]
    fn a_failed_change_write_makes_the_next_save_full() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = journal(dir.path());
        j.save_full(b"doc").unwrap();
        // A file where the change directory should be: the write fails.
        std::fs::write(dir.path().join("state.changes"), b"in the way").unwrap();
        assert!(j.save_changes(b"c").is_err());
        assert!(j.wants_full_save());
    }

    #[test]
    fn a_temporary_file_left_by_a_crash_is_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = journal(dir.path());
        j.save_full(b"doc").unwrap();
        j.save_changes(b"c").unwrap();
        std::fs::write(dir.path().join("state.changes/.0000000001.tmp"), b"torn").unwrap();
        let (j, saved) = journal(dir.path());
        assert_eq!(saved.changes.len(), 1);
        assert_eq!(j.next, 1);
    }
}
