//! What garbage collection needs of the store: which blobs were stored since
//! the collector last looked, and removing a blob unless it was.
//!
//! The collector ([`crate::gc`]) decides what is garbage from what the
//! deployments reference; a deploy in flight stores blobs that nothing
//! references until it goes live. Every store of a blob (a new one, or a
//! deduplicated `put` of content already stored) *touches* it first, and
//! [`BlobStore::remove_untouched`] checks the touch and removes the file
//! under one lock, so a blob a deploy has just stored or re-stored is never
//! removed under it: either the removal comes first and the deploy's store
//! writes the blob again, or the touch comes first and the removal skips it.
//!
//! A deploy or install holds the store ([`BlobStore::hold`]) from its first
//! store to going live: while any hold lasts, the touched set is not
//! emptied, so what a deploy stored stays untouchable however long it takes
//! (a slow build outlasting the grace period included). The set is then
//! bounded by what the deploys in flight store.

use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, MutexGuard, PoisonError};

use cid::Cid;

use super::{BlobStore, StoreError};
use crate::bugs::{self, Bug};

/// The touched blobs, and the holds that keep them touched.
#[derive(Debug, Default)]
pub(super) struct Touched {
    blobs: BTreeSet<Cid>,
    holds: usize,
}

/// A deploy in flight: while it lives, nothing stored since the collector
/// last looked is removed. Made by [`BlobStore::hold`].
#[must_use = "the hold ends when dropped"]
pub struct StoreHold {
    store: Arc<BlobStore>,
}

impl Drop for StoreHold {
    fn drop(&mut self) {
        let mut touched = self.store.touched();
        debug_assert!(touched.holds > 0, "a hold ends once");
        touched.holds -= 1;
    }
}

impl BlobStore {
    fn touched(&self) -> MutexGuard<'_, Touched> {
        self.touched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record that `cid` was just stored (or found stored).
    pub(super) fn touch(&self, cid: &Cid) {
        self.touched().blobs.insert(*cid);
    }

    /// Keep everything stored from now until the hold drops (and since the
    /// collector last looked) out of the collector's reach.
    pub fn hold(self: &Arc<Self>) -> StoreHold {
        self.touched().holds += 1;
        StoreHold {
            store: self.clone(),
        }
    }

    /// The blobs stored since the last call. The set starts again empty,
    /// unless a deploy holds the store: then it is kept (and only grows)
    /// until the last hold ends.
    pub fn take_touched(&self) -> BTreeSet<Cid> {
        let mut touched = self.touched();
        if touched.holds > 0 {
            touched.blobs.clone()
        } else {
            std::mem::take(&mut touched.blobs)
        }
    }

    /// Remove the blob `cid` unless it was stored since the last
    /// [`BlobStore::take_touched`]. Returns the bytes freed, `None` if the
    /// blob was kept (touched) or absent.
    ///
    /// Not synced: a removal a crash undoes leaves a blob the next
    /// collection removes again.
    pub fn remove_untouched(&self, cid: &Cid) -> Result<Option<u64>, StoreError> {
        let touched = self.touched();
        if touched.blobs.contains(cid) && !bugs::active(Bug::SkipGcGrace) {
            return Ok(None);
        }
        let path = self.blob_path(cid);
        let _publishing = self.publish_lock.lock().unwrap_or_else(|p| p.into_inner());
        let size_bytes = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read metadata of", &path, e)),
        };
        match self.disk.remove_file(&path) {
            Ok(()) => Ok(Some(size_bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("remove blob", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BlobStore, cid_of};

    #[test]
    fn a_blob_stored_since_the_last_look_is_kept_then_removable() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let cid = store.put(b"site v1").unwrap();
        assert_eq!(store.remove_untouched(&cid).unwrap(), None);
        assert!(store.contains(&cid));
        assert_eq!(store.take_touched().into_iter().collect::<Vec<_>>(), [cid]);
        assert_eq!(store.remove_untouched(&cid).unwrap(), Some(7));
        assert!(!store.contains(&cid));
        // Gone already: nothing freed, no error.
        assert_eq!(store.remove_untouched(&cid).unwrap(), None);
    }

    #[test]
    fn a_hold_keeps_what_was_stored_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(BlobStore::open(dir.path()).unwrap());
        let hold = store.hold();
        let cid = store.put(b"built by a slow deploy").unwrap();
        // Pass after pass while the deploy runs: still touched.
        for _ in 0..3 {
            assert!(store.take_touched().contains(&cid));
            assert_eq!(store.remove_untouched(&cid).unwrap(), None);
        }
        drop(hold);
        // The pass after it ended sees it touched once more, then not.
        assert!(store.take_touched().contains(&cid));
        assert!(store.take_touched().is_empty());
        assert!(store.remove_untouched(&cid).unwrap().is_some());
    }

    #[test]
    fn storing_content_already_stored_touches_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let cid = store.put(b"shared file").unwrap();
        store.take_touched();
        // A new deploy stores the same file: it is deduplicated, not
        // rewritten, but it belongs to that deploy now.
        assert_eq!(store.put(b"shared file").unwrap(), cid);
        assert_eq!(store.remove_untouched(&cid).unwrap(), None);
        store.take_touched();
        assert_eq!(store.put_reader(&b"shared file"[..]).unwrap(), cid);
        assert_eq!(store.remove_untouched(&cid).unwrap(), None);
        store.take_touched();
        let mut writer = store.begin_write(cid_of(b"shared file")).unwrap();
        writer.write_chunk(b"shared file").unwrap();
        store.finish_write(writer).unwrap();
        assert_eq!(store.remove_untouched(&cid).unwrap(), None);
        assert!(store.contains(&cid));
    }
}
