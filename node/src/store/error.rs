//! The errors a [`BlobStore`](super::BlobStore) reports.

use std::io;
use std::path::PathBuf;

use cid::Cid;

/// What went wrong in the blob store, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("blob store: could not {action} {path}: {source} (check that the data directory exists, is writable and the disk is not full)", path = .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The store does not hold this blob.
    #[error(
        "blob {cid} is not in this node's store; it must be put (or fetched from a peer) first"
    )]
    NotFound { cid: Cid },

    /// The stored bytes do not hash to their CID (disk corruption or
    /// tampering). The bad file was moved aside so it is never served.
    #[error("blob {cid} failed verification: its bytes do not hash to its CID; the bad copy was moved to {path} — put the original content again (or fetch it from a peer) to heal the store", path = .path.display())]
    Corrupt { cid: Cid, path: PathBuf },

    /// Content written for a known CID (a blob fetched from a peer) does not
    /// hash to it; nothing was stored.
    #[error(
        "content written as blob {expected} hashes to {actual} instead; it was discarded — fetch the blob again from another peer"
    )]
    Mismatch { expected: Cid, actual: String },

    /// The CID is not one this store can hold.
    #[error(
        "CID {cid} is not a CIDv1 with codec raw (0x55) and multihash sha2-256; this store only holds those"
    )]
    UnsupportedCid { cid: Cid },
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The [`StoreError`] carried inside an `io::Error` returned by a
    /// [`BlobReader`](super::BlobReader), if there is one.
    pub fn from_io_error(err: &io::Error) -> Option<&StoreError> {
        err.get_ref()
            .and_then(|inner| inner.downcast_ref::<StoreError>())
    }
}
