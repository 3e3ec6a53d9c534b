//! Streaming, verified reads of one blob.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Deref;
use std::path::PathBuf;

use cid::Cid;

use super::hash::CidHasher;
use super::{BlobStore, StoreError};

/// Reads a blob as a stream, hashing as it goes.
///
/// The bytes it yields are **not trusted until end-of-file**: the read that
/// reaches the end compares the hash with the CID, and on a mismatch fails
/// with an `io::Error` of kind `InvalidData` carrying
/// [`StoreError::Corrupt`] (the blob is quarantined). A consumer must not act
/// on the content (execute it, cache it, acknowledge it) before that read.
///
/// `S` is how it reaches the store: a borrow ([`BlobStore::open_blob`]) or
/// an `Arc` ([`BlobStore::open_blob_shared`]), for a reader that moves
/// between tasks and the blocking pool.
pub struct BlobReader<S: Deref<Target = BlobStore>> {
    store: S,
    cid: Cid,
    path: PathBuf,
    file: File,
    size_bytes: u64,
    state: State,
}

enum State {
    Reading(CidHasher),
    /// End reached and the hash matched.
    Verified,
    /// End reached and the hash did not match; every later read fails too.
    Corrupt(PathBuf),
}

impl<S: Deref<Target = BlobStore>> BlobReader<S> {
    pub(super) fn new(store: S, cid: Cid, path: PathBuf, file: File, size_bytes: u64) -> Self {
        Self {
            store,
            cid,
            path,
            file,
            size_bytes,
            state: State::Reading(CidHasher::new()),
        }
    }

    /// The CID this reader verifies against.
    pub fn cid(&self) -> &Cid {
        &self.cid
    }

    /// The size of the stored file when it was opened.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
}

impl<S: Deref<Target = BlobStore>> Read for BlobReader<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let hasher = match &mut self.state {
            State::Reading(hasher) => hasher,
            State::Verified => return Ok(0),
            State::Corrupt(quarantined) => {
                let err = StoreError::Corrupt {
                    cid: self.cid,
                    path: quarantined.clone(),
                };
                return Err(io::Error::new(io::ErrorKind::InvalidData, err));
            }
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self
            .file
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), StoreError::io("read blob", &self.path, e)))?;
        if n > 0 {
            hasher.update(&buf[..n]);
            return Ok(n);
        }
        let State::Reading(hasher) = std::mem::replace(&mut self.state, State::Verified) else {
            unreachable!("matched State::Reading above");
        };
        if hasher.finish() == self.cid {
            return Ok(0);
        }
        let err = self.store.quarantine(&self.cid, &self.file);
        if let StoreError::Corrupt { path, .. } = &err {
            self.state = State::Corrupt(path.clone());
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, err))
    }
}
