//! Streaming writes of a blob whose CID is known in advance (a blob fetched
//! from a peer): the content is hashed as it arrives and only published under
//! its CID if it matches, so unverified bytes never become a blob.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use cid::Cid;

use super::hash::{CidHasher, check_supported};
use super::{BlobStore, StoreError};
use crate::env::{Disk, DiskFile};

/// A blob being written chunk by chunk into the store's temp directory.
///
/// Made by [`BlobStore::begin_write`], completed by
/// [`BlobStore::finish_write`]. Dropping it unfinished removes the temp file.
pub struct BlobWriter {
    expected: Cid,
    tmp_path: PathBuf,
    /// Writes go straight to the file; the disk removes it if unfinished.
    file: Option<DiskFile>,
    disk: Arc<dyn Disk>,
    hasher: CidHasher,
    written_bytes: u64,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("expected", &self.expected.to_string())
            .field("tmp_path", &self.tmp_path)
            .field("written_bytes", &self.written_bytes)
            .finish()
    }
}

impl BlobWriter {
    /// The CID the content must hash to.
    pub fn expected(&self) -> &Cid {
        &self.expected
    }

    /// Bytes written so far.
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes
    }

    /// Append `chunk` to the blob being written.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let Some(file) = self.file.as_mut() else {
            return Err(StoreError::io(
                "write temp file",
                &self.tmp_path,
                std::io::Error::other("writer already finished"),
            ));
        };
        file.write_all(chunk)
            .map_err(|e| StoreError::io("write temp file", &self.tmp_path, e))?;
        start_writeback(file.as_file(), self.written_bytes, chunk.len() as u64);
        self.hasher.update(chunk);
        self.written_bytes += chunk.len() as u64;
        Ok(())
    }
}

/// Ask the kernel to start writing `len` bytes at `offset` to disk now,
/// without waiting: a large blob then reaches [`BlobStore::finish_write`]'s
/// fsync mostly written, instead of flushing all of it there. Only a hint:
/// the fsync remains what makes the blob durable, so a failure is ignored.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain syscall on a file descriptor this writer owns.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.take().is_some()
            && let Err(e) = self.disk.remove_file(&self.tmp_path)
        {
            tracing::warn!(path = %self.tmp_path.display(), error = %e, "blob store: could not remove temp file");
        }
    }
}

impl BlobStore {
    /// Start writing a blob that must hash to `expected`.
    pub fn begin_write(&self, expected: Cid) -> Result<BlobWriter, StoreError> {
        check_supported(&expected)?;
        let (tmp_path, file) = self.create_tmp()?;
        Ok(BlobWriter {
            expected,
            tmp_path,
            file: Some(file),
            disk: self.disk.clone(),
            hasher: CidHasher::new(),
            written_bytes: 0,
        })
    }

    /// Verify the written content against the expected CID and, if it
    /// matches, publish it as that blob (atomically, like [`BlobStore::put`]).
    ///
    /// On a mismatch the temp file is removed and [`StoreError::Mismatch`]
    /// is returned: nothing is stored.
    pub fn finish_write(&self, mut writer: BlobWriter) -> Result<Cid, StoreError> {
        let Some(file) = writer.file.take() else {
            return Err(StoreError::io(
                "finish temp file",
                &writer.tmp_path,
                std::io::Error::other("writer already finished"),
            ));
        };
        let mut actual = std::mem::take(&mut writer.hasher).finish();
        if crate::bugs::active(crate::bugs::Bug::AcceptUnverifiedBlob) {
            actual = writer.expected;
        }
        if actual != writer.expected {
            drop(file);
            self.remove_quietly(&writer.tmp_path);
            return Err(StoreError::Mismatch {
                expected: writer.expected,
                actual: actual.to_string(),
            });
        }
        self.touch(&actual);
        if self.holds_intact_size(&actual, writer.written_bytes)? {
            drop(file);
            self.remove_quietly(&writer.tmp_path);
            return Ok(actual);
        }
        self.publish(&actual, &writer.tmp_path, file)?;
        Ok(actual)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BlobStore, StoreError, cid_of};

    #[test]
    fn chunks_matching_the_cid_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let cid = cid_of(b"hello world");
        let mut w = store.begin_write(cid).unwrap();
        w.write_chunk(b"hello ").unwrap();
        w.write_chunk(b"world").unwrap();
        assert_eq!(w.written_bytes(), 11);
        assert_eq!(store.finish_write(w).unwrap(), cid);
        assert_eq!(store.get(&cid).unwrap().as_ref(), b"hello world");
    }

    #[test]
    fn mismatching_content_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let cid = cid_of(b"hello world");
        let mut w = store.begin_write(cid).unwrap();
        w.write_chunk(b"hello WORLD").unwrap();
        let err = store.finish_write(w).unwrap_err();
        assert!(matches!(err, StoreError::Mismatch { .. }), "{err}");
        assert!(!store.contains(&cid));
        assert!(store.list().unwrap().is_empty());
        // Dropping an unfinished writer leaves no temp file behind.
        drop(store.begin_write(cid).unwrap());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
